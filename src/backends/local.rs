//! [`LocalModel`]: a member whose candle model runs in this process (CPU, CUDA or
//! Metal), behind the engine's [`Backend`] trait.

use candle_core::Tensor;
use tutti_models::{Model, ModelInfo, ModelTokenizer};

use crate::engine::{Backend, EngineError, Logits, Result};

/// Most ids one [`Backend::forward_rows`] call feeds the model at once.
const ROWS_PER_FORWARD: usize = 64;

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

    /// Every position's logits from `cached` on, in forwards of at most
    /// [`ROWS_PER_FORWARD`] ids (which bounds the logits held at once: 64 rows of a
    /// 262,144-id vocabulary are 64 MiB).
    fn rows(&mut self, context: &[u32], cached: usize) -> Result<Vec<Logits>> {
        let start = cached.min(self.model.lm.position()).min(context.len());
        if start == context.len() {
            return Ok(Vec::new());
        }
        self.model.lm.truncate(start);
        // Rows the backend already held before `cached` are not asked for.
        let skip = cached - start;
        let mut logits = Vec::with_capacity(context.len() - cached);
        let mut at = start;
        for piece in context[start..].chunks(ROWS_PER_FORWARD) {
            let out = self.model.lm.forward_rows(piece).map_err(|e| self.err(e))?;
            for r in 0..out.dim(0)? {
                if at + r < start + skip {
                    continue;
                }
                let row = out.get(r)?;
                logits.push(if self.device_logits {
                    Logits::Tensor(row)
                } else {
                    Logits::Host(row.to_vec1::<f32>()?.into())
                });
            }
            if self.device_logits {
                out.device().synchronize()?;
            }
            at += piece.len();
        }
        Ok(logits)
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

    fn forward_rows(&mut self, context: &[u32], cached: usize) -> Result<Vec<Logits>> {
        self.rows(context, cached)
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

    fn info(&self) -> Option<&ModelInfo> {
        Some(&self.model.info)
    }

    fn fork(&self) -> Option<Box<dyn Backend>> {
        Some(Box::new(LocalModel::new(self.model.fork()?)))
    }

    fn fork_with_prefix(&self, len: usize) -> Option<(Box<dyn Backend>, usize)> {
        let (model, kept) = self.model.fork_with_prefix(len)?;
        let mut fork = LocalModel::new(model);
        fork.device_logits = self.device_logits;
        Some((Box::new(fork), kept))
    }

    fn chunk_invariant(&self) -> bool {
        !self.device_logits && self.model.lm.chunk_invariant()
    }

    fn kv_bytes_per_token(&self) -> u64 {
        self.model.lm.kv_bytes_per_token()
    }

    fn local_model(&mut self) -> Option<&mut (dyn tutti_models::CausalLm + 'static)> {
        (self.model.lm.device().is_cpu() && !self.device_logits).then(|| self.model.lm.as_mut())
    }
}
