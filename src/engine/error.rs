//! Errors of the generation engine. Each variant says what was wrong and, where there
//! is one, what the user can change.

use crate::align::AlignError;

/// The most candidates a member may propose per step (a request's top-k).
pub const MAX_TOP_K: usize = 1024;

/// Errors of building an [`crate::engine::Ensemble`] and of generating with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A member could not be loaded or failed while running.
    #[error("member `{member}`: {source}")]
    Model {
        member: String,
        #[source]
        source: tutti_models::Error,
    },
    /// Vocabulary surfaces or a vocabulary map could not be built.
    #[error("member `{member}`: {source}")]
    Align {
        member: String,
        #[source]
        source: AlignError,
    },
    /// A tensor operation outside the models failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("top-k kernel failed: {0}")]
    Kernel(#[from] tutti_kernels::KernelError),
    /// An ensemble needs at least one member.
    #[error("no members: an ensemble needs at least one model")]
    NoMembers,
    /// Weights must be finite, non-negative and not all zero.
    #[error("invalid weights {weights:?}: {reason}")]
    BadWeights { weights: Vec<f32>, reason: String },
    /// `top_k` must be between 1 and [`MAX_TOP_K`].
    #[error("top-k must be between 1 and {max} (got {0})", max = MAX_TOP_K)]
    BadTopK(usize),
    /// A sampling parameter out of range.
    #[error("invalid sampling setting: {0}")]
    BadSampling(String),
    /// A gate spec that is not `always`, `disagree` or `uncertain:T` with 0 ≤ T ≤ 1.
    #[error(
        "invalid gate `{0}`: expected `always`, `disagree` or `uncertain:T` with T between 0 and 1"
    )]
    BadGate(String),
    /// An unknown combination rule.
    #[error("invalid combine rule `{0}`: expected mean, confidence, product, max or entropy")]
    BadCombine(String),
    /// A request that does not fit the ensemble (member slots, weights, prompt ids).
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// A model spec with a malformed suffix.
    #[error("invalid model spec `{spec}`: {reason}")]
    BadSpec { spec: String, reason: String },
    /// The ensemble TOML file could not be read or parsed.
    #[error("ensemble file {path}: {reason}")]
    Config { path: String, reason: String },
    /// Generation needs a non-empty prompt.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt does not fit a member's context.
    #[error("the prompt is {tokens} tokens for member `{member}`, whose context holds {max}; shorten the prompt")]
    PromptTooLong {
        member: String,
        tokens: usize,
        max: usize,
    },
    /// A member's context is full.
    #[error("member `{member}`: the context of {max} tokens is full")]
    ContextFull { member: String, max: usize },
    /// The chosen bytes cannot be written with a member's tokens (no byte tokens).
    #[error("member `{member}` has no tokens for the bytes {bytes:?}")]
    Untokenizable { member: String, bytes: Vec<u8> },
    /// A served member could not be reached, refused a request or answered something
    /// unusable (its spec names it).
    #[error("member `{member}`: {reason}")]
    Remote { member: String, reason: String },
    /// A request whose KV cache alone would take more than a batch's budget.
    #[error(
        "the request needs {n:.1} MiB of KV cache (its prompt plus max_tokens in every member), more than the KV budget of {b:.1} MiB; lower max_tokens, shorten the prompt or raise the budget (--kv-budget)",
        n = *needs as f64 / 1048576.0,
        b = *budget as f64 / 1048576.0
    )]
    KvBudget { needs: u64, budget: u64 },
    /// A member index outside the ensemble.
    #[error("no member #{index}: the ensemble has {len} members")]
    NoSuchMember { index: usize, len: usize },
}

/// Result alias of the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
