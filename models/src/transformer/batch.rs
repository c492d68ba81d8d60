//! Batched forwards: the new ids of several sequences that share one model's weights
//! go through the layers as one set of rows (each weight row read once for all of
//! them), each sequence appending to and attending over its own KV cache. Rows are
//! ragged: a prompt chunk of one sequence sits beside another's single decode id.
//!
//! Under batch-invariant numerics every row takes the kernels it would take alone, so
//! a sequence's logits are the same bits as its own forward gives, whatever shares the
//! batch; that is what lets a scheduler batch requests without changing any answer.

use super::{Part, Scratch, Transformer};
use crate::{CausalLm, Error, Result};
use candle_core::Tensor;
use std::sync::Arc;

impl Transformer {
    /// [`crate::forward_batch`] on decoders.
    pub fn forward_batch(batch: &mut [(&mut Transformer, &[u32])]) -> Result<Vec<Tensor>> {
        let Some((lead, _)) = batch.first() else {
            return Ok(Vec::new());
        };
        if !lead.host_path {
            return Err(Error::Batch(
                "only GGUF models on the CPU's llama.cpp-exact path batch",
            ));
        }
        if lead.blocks.iter().any(|b| b.attn.by_shape) {
            return Err(Error::Batch(
                "llama.cpp numerics depend on the batch; load with batch-invariant numerics",
            ));
        }
        let id = lead.weights_id.clone();
        if batch.iter().any(|(t, _)| !Arc::ptr_eq(&t.weights_id, &id)) {
            return Err(Error::Batch(
                "the models do not share weights; batch a model with its forks",
            ));
        }
        let mut parts = Vec::with_capacity(batch.len());
        let mut ids_all = Vec::new();
        for (t, ids) in batch.iter_mut() {
            if t.caches_lost() {
                t.truncate(0);
            }
            t.check_input(ids)?;
            parts.push(Part {
                pos0: t.position,
                s: ids.len(),
                row0: ids_all.len(),
            });
            ids_all.extend_from_slice(ids);
        }
        let mut caches = Vec::with_capacity(batch.len());
        for (t, _) in batch.iter_mut() {
            caches.push(t.take_caches()?);
        }
        let mut sc = Scratch::default();
        let result = batch[0].0.run_rows(
            &parts,
            &ids_all,
            &mut caches,
            super::RowsOut::Last,
            None,
            &mut sc,
        );
        for ((t, _), (c, p)) in batch.iter_mut().zip(caches.into_iter().zip(&parts)) {
            t.put_caches(c);
            match &result {
                Ok(_) => t.position = p.pos0 + p.s,
                Err(_) => t.truncate(p.pos0),
            }
        }
        let (logits, _) = result?;
        let vocab = logits.len() / parts.len();
        logits
            .chunks_exact(vocab)
            .map(|row| Ok(Tensor::from_slice(row, vocab, &batch[0].0.device)?))
            .collect()
    }
}
