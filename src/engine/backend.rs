//! How the engine reaches a member's model: the [`Backend`] trait.
//!
//! The step never knows what runs a member. A backend is given the member's whole
//! committed context and how much of it the backend already holds, and answers with the
//! next-token distribution as [`Logits`]: every logit (on the host or in a device
//! tensor) or only the most probable ids with the mass the others share (what a serving
//! engine's `top_logprobs` gives). [`LocalModel`], a candle model in this process, is one
//! implementation; a model behind a server is another.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use tutti_models::{Model, ModelTokenizer};

use super::error::{EngineError, Result};

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
    /// The loaded model, for a member that runs in this process.
    fn local(&self) -> Option<&Model> {
        None
    }
    fn local_mut(&mut self) -> Option<&mut Model> {
        None
    }
    /// How many of the most probable ids a sparse backend should return per step (the
    /// request's top-k; set before each generation). Dense backends ignore it.
    fn set_top_n(&mut self, _n: usize) {}
    /// Requests made to a server since the backend connected (`None` in process).
    fn round_trips(&self) -> Option<usize> {
        None
    }
}

/// A candle model loaded in this process.
pub struct LocalModel {
    model: Model,
    device_logits: bool,
}

impl LocalModel {
    /// Wraps a loaded model; logits stay on the device by default for members off the
    /// CPU.
    pub fn new(model: Model) -> LocalModel {
        let device_logits = !model.lm.device().is_cpu();
        LocalModel {
            model,
            device_logits,
        }
    }

    /// A forward from `cached`, scoring the ids after the first fed one when `score`.
    fn run(&mut self, context: &[u32], cached: usize, score: bool) -> Result<(Logits, Vec<f32>)> {
        let mut start = cached.min(self.model.lm.position()).min(context.len());
        if start == context.len() {
            // Everything is cached but the logits are wanted again: recompute the
            // last position.
            start = start
                .checked_sub(1)
                .ok_or_else(|| self.err(tutti_models::Error::EmptyInput))?;
        }
        // Always, even when the position already says `start`: a forward that panicked
        // part-way left rows past the position in its first layers' caches, and the
        // cut is O(1).
        self.model.lm.truncate(start);
        let ids = &context[start..];
        let (out, scores) = if score {
            self.model.lm.forward_scored(ids)
        } else {
            self.model.lm.forward(ids).map(|t| (t, Vec::new()))
        }
        .map_err(|e| self.err(e))?;
        let logits = if self.device_logits {
            // Wait for the device so that the forward's time is the forward's.
            out.device().synchronize()?;
            Logits::Tensor(out)
        } else {
            let v: Vec<f32> = out.to_vec1()?;
            Logits::Host(v.into())
        };
        Ok((logits, scores))
    }

    fn err(&self, source: tutti_models::Error) -> EngineError {
        EngineError::Model {
            member: self.model.info.name.clone(),
            source,
        }
    }
}

impl Backend for LocalModel {
    fn name(&self) -> &str {
        &self.model.info.name
    }

    fn tokenizer(&self) -> &ModelTokenizer {
        &self.model.tokenizer
    }

    fn logit_width(&self) -> usize {
        self.model.lm.vocab_size()
    }

    fn context_length(&self) -> usize {
        self.model.info.context_length
    }

    fn forward(&mut self, context: &[u32], cached: usize) -> Result<Logits> {
        self.run(context, cached, false).map(|(l, _)| l)
    }

    fn forward_scored(&mut self, context: &[u32], cached: usize) -> Result<(Logits, Vec<f32>)> {
        self.run(context, cached, true)
    }

    fn input_embeddings(&self) -> Option<Result<Tensor>> {
        Some(self.model.lm.input_embeddings().map_err(EngineError::from))
    }

    fn uses_host_cpu(&self) -> bool {
        self.model.lm.device().is_cpu()
    }

    fn device_name(&self) -> String {
        tutti_models::device_name(self.model.lm.device())
    }

    fn keep_logits_on_device(&mut self, on: bool) -> bool {
        self.device_logits = on;
        true
    }

    fn local(&self) -> Option<&Model> {
        Some(&self.model)
    }

    fn local_mut(&mut self) -> Option<&mut Model> {
        Some(&mut self.model)
    }
}

/// The device a local member's model sits on (the CPU for other backends).
pub fn device_of(backend: &dyn Backend) -> Device {
    backend
        .local()
        .map_or(Device::Cpu, |m| m.lm.device().clone())
}
