//! How the engine reaches a member's model: the [`Backend`] trait.
//!
//! The step never knows what runs a member. A backend is given the member's whole
//! committed context and how much of it the backend already holds, and answers with the
//! next-token distribution as [`Logits`]: every logit (on the host or in a device
//! tensor) or only the most probable ids with the mass the others share (what a serving
//! engine's `top_logprobs` gives). The implementations live in `crate::backends`: a
//! candle model in this process, and a model behind a server.

use std::sync::Arc;

use candle_core::Tensor;
use tutti_models::{ModelInfo, ModelTokenizer};

use super::error::Result;

/// A member's next-token distribution, as its backend delivers it.
#[derive(Clone, Debug)]
pub enum Logits {
    /// Every logit, on the host.
    Host(Arc<[f32]>),
    /// Every logit, left in the tensor where the model computed them: top-k and
    /// gathers run on its device and only a few numbers cross to the host.
    Tensor(Tensor),
    /// Only the most probable ids.
    Sparse(Arc<SparseLogits>),
}

/// The head of a distribution: the most probable ids with their log-probabilities at
/// temperature 1, most probable first, and the probability mass all other ids share.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseLogits {
    pub top: Vec<(u32, f32)>,
    pub rest: f32,
}

/// A model taking part in an ensemble, wherever it runs.
pub trait Backend: Send {
    /// Short display name.
    fn name(&self) -> &str;
    /// The model's tokenizer (always local: candidates are compared as bytes here).
    fn tokenizer(&self) -> &ModelTokenizer;
    /// Width of the model's output (ids at or past it have no probability).
    fn logit_width(&self) -> usize;
    /// The longest context (prompt plus generated ids) the model accepts.
    fn context_length(&self) -> usize;
    /// The distribution of the id that follows `context`. The backend already holds
    /// the first `cached` ids from earlier calls; whatever it holds past them is stale
    /// (a rollback) and is dropped.
    fn forward(&mut self, context: &[u32], cached: usize) -> Result<Logits>;
    /// The distribution after each id of `context[cached..]` (`cached` below the
    /// context's length), in order: row `i` is what [`Backend::forward`] of
    /// `context[..cached + i + 1]` would give, bit for bit. One forward over all of
    /// them where the backend can (a model in this process with chunk-invariant
    /// numerics), else one per id.
    fn forward_rows(&mut self, context: &[u32], cached: usize) -> Result<Vec<Logits>> {
        (cached + 1..=context.len())
            .map(|end| self.forward(&context[..end], end - 1))
            .collect()
    }
    /// [`Backend::forward`], plus the natural-log probability the model gives each id
    /// of `context[cached + 1..]` given the ids before it (empty when the backend
    /// cannot score; then the prompt's perplexity is unknown).
    fn forward_scored(&mut self, context: &[u32], cached: usize) -> Result<(Logits, Vec<f32>)> {
        Ok((self.forward(context, cached)?, Vec::new()))
    }
    /// Input embedding table `[rows, hidden]` (F32), for alignments that compare
    /// embeddings; `None` when the backend cannot provide it.
    fn input_embeddings(&self) -> Option<Result<Tensor>> {
        None
    }
    /// Whether forwards run on this machine's CPU cores (such members run one after
    /// another: concurrent CPU forwards fight over the same cores).
    fn uses_host_cpu(&self) -> bool;
    /// Where the model runs, for logs and reports.
    fn device_name(&self) -> String;
    /// Ask for [`Logits::Tensor`] instead of [`Logits::Host`] where the backend can
    /// (takes effect at the next forward). Returns whether it can.
    fn keep_logits_on_device(&mut self, _on: bool) -> bool {
        false
    }
    /// What is known of the model's weights, for a member that runs in this process.
    fn info(&self) -> Option<&ModelInfo> {
        None
    }
    /// Another handle on the same weights with a cache of its own (a second member of
    /// the same model shares them instead of loading again), where the backend can.
    fn fork(&self) -> Option<Box<dyn Backend>> {
        None
    }
    /// [`Backend::fork`] holding a copy of the first `len` positions this backend holds,
    /// where it can copy them; returns the fork and how many it holds.
    fn fork_with_prefix(&self, len: usize) -> Option<(Box<dyn Backend>, usize)> {
        let _ = len;
        self.fork().map(|f| (f, 0))
    }
    /// How many of the most probable ids a sparse backend should return per step (the
    /// request's top-k; set before each generation). Dense backends ignore it.
    fn set_top_n(&mut self, _n: usize) {}
    /// Requests made to a server since the backend connected (`None` in process).
    fn round_trips(&self) -> Option<usize> {
        None
    }
    /// Bytes of KV cache the backend holds per context position on this machine (0 for
    /// a served model, or when unknown): what a request's cache budget counts.
    fn kv_bytes_per_token(&self) -> u64 {
        0
    }
    /// Whether the model gives a position the same logits however its context was fed
    /// (`tutti_models::CausalLm::chunk_invariant`): a new text may then keep what the
    /// backend holds of its common prefix with the last one.
    fn chunk_invariant(&self) -> bool {
        false
    }
    /// The model itself, for a backend that runs one on this machine's CPU: batched
    /// decoding feeds several forks of it together (`tutti_models::forward_batch`).
    fn local_model(&mut self) -> Option<&mut (dyn tutti_models::CausalLm + 'static)> {
        None
    }
}
