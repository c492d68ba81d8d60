//! The generation engine: one decoding loop for a single model and for ensembles.
//!
//! A single model is a one-member [`Ensemble`]. Each step reads top to bottom:
//! members forward their pending ids (in parallel, one thread each) →
//! softmax with temperature and top-k per member ([`step::Distribution`]) → union of
//! candidates keyed by bytes ([`step::Union`]) → each member's probability of each
//! candidate (its own id, else through the alignment, [`mapper`]) → weighted average
//! renormalised over the union ([`step::combine`]) → greedy or seeded sampling
//! ([`step::choose`]) → feedback: every member commits the chosen bytes in its own
//! tokenization, rolling its KV cache back when re-tokenizing changes earlier ids
//! ([`Member::commit`]).
//!
//! ```no_run
//! use tutti::engine::{Ensemble, MemberSpec, PromptMode};
//! let mut ens = Ensemble::builder()
//!     .member(MemberSpec::new("models-cache/SmolLM2-135M-Instruct.Q4_1.gguf"))
//!     .member(MemberSpec::new("models-cache/gemma-3-270m-q4_k_m.gguf").weight(0.5))
//!     .max_tokens(32)
//!     .build()?;
//! let out = ens.generate("The capital of France is", PromptMode::Raw, &mut |t| print!("{t}"))?;
//! println!("\n{} tokens, {:.0}% ensembled", out.tokens, 100.0 * out.ensembled_share);
//! # Ok::<(), tutti::engine::EngineError>(())
//! ```

pub mod config;
mod ensemble;
mod error;
pub mod mapper;
pub mod member;
pub mod output;
pub mod step;

pub use config::EnsembleFile;
pub use ensemble::{
    validate_weights, Combine, Ensemble, EnsembleBuilder, Gate, Generation, MemberReport,
    MemberSpec, PromptMode, Settings, StepTime, StopReason, StopRules, Timing,
};
pub use error::{EngineError, Result};
pub use member::Member;
pub use step::Sampling;
