//! One member of an ensemble: a loaded model, its byte vocabulary and its decoding
//! state (committed ids, KV position, last logits).
//!
//! The state invariant: `committed` is everything the member has been told (prompt
//! plus generated ids in its own tokenization); its KV cache holds `committed[..kv_len]`;
//! the ids `committed[kv_len..]` are pending and go into the next forward in one call.
//! Feedback ([`Member::commit`]) appends the chosen bytes in the member's own
//! tokenization and, when re-tokenizing a short tail changes ids that are already in
//! the cache, truncates the cache to the longest common prefix (a *rollback*).

use std::time::Instant;

use candle_core::Tensor;
use tutti_models::Model;

use super::error::{EngineError, Result};
use crate::vocab::Vocab;

/// How many generated tokens before the new bytes are re-encoded with them. Long
/// enough to merge a word split across steps, short enough to keep feedback cheap.
pub const TAIL_WINDOW: usize = 8;

/// What one [`Member::commit`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Committed ids that were replaced by the re-encoding (0: no rollback).
    pub replaced: usize,
    /// Ids appended.
    pub appended: usize,
}

/// A model taking part in the ensemble, with its weight and decoding state.
pub struct Member {
    model: Model,
    vocab: Vocab,
    name: String,
    weight: f32,
    committed: Vec<u32>,
    prompt_len: usize,
    kv_len: usize,
    /// Logits after `committed[..kv_len]`, valid while nothing is pending.
    logits: Option<Vec<f32>>,
    /// The same logits left where the model computed them, when `device_topk` is on.
    logits_tensor: Option<Tensor>,
    /// Top-k and gathers run on the logits tensor (`tutti_kernels`' device dispatch)
    /// instead of on a host copy of the row. On by default for members off the CPU.
    device_topk: bool,
    /// `vocab.is_candidate(id)` for every logit id: the device top-k's mask (empty while
    /// `device_topk` is off).
    candidate_mask: Vec<bool>,
    rollbacks: usize,
    rolled_back_tokens: usize,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("committed", &self.committed.len())
            .field("kv_len", &self.kv_len)
            .finish()
    }
}

impl Member {
    /// Wraps a loaded model; reads its byte vocabulary.
    pub fn new(model: Model, weight: f32) -> Result<Member> {
        let name = model.info.name.clone();
        let vocab = Vocab::from_tokenizer(
            model.tokenizer.inner(),
            model.tokenizer.eos_ids(),
            Some(model.lm.vocab_size()),
        )
        .map_err(|source| EngineError::Align {
            member: name.clone(),
            source,
        })?;
        let device_topk = !model.lm.device().is_cpu();
        let mut m = Member {
            model,
            vocab,
            name,
            weight,
            committed: Vec::new(),
            prompt_len: 0,
            kv_len: 0,
            logits: None,
            logits_tensor: None,
            device_topk: false,
            candidate_mask: Vec::new(),
            rollbacks: 0,
            rolled_back_tokens: 0,
        };
        m.set_device_topk(device_topk);
        Ok(m)
    }

    /// Runs top-k and gathers on the logits tensor where the model computed them (on,
    /// by default, for GPU members: only the packed top-k and the gathered
    /// probabilities cross to the host) or on a host copy of the row (off; the default
    /// on the CPU). On the CPU both give the same numbers bit for bit. Takes effect at
    /// the next forward.
    pub fn set_device_topk(&mut self, on: bool) {
        self.device_topk = on;
        self.candidate_mask = if on {
            (0..self.model.lm.vocab_size() as u32)
                .map(|id| self.vocab.is_candidate(id))
                .collect()
        } else {
            Vec::new()
        };
    }

    /// Whether top-k runs on the logits tensor ([`Member::set_device_topk`]).
    pub fn device_topk(&self) -> bool {
        self.device_topk
    }

    /// The device top-k's mask: `vocab.is_candidate` per logit id.
    pub(crate) fn candidate_mask(&self) -> &[bool] {
        &self.candidate_mask
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn weight(&self) -> f32 {
        self.weight
    }

    pub(crate) fn set_weight(&mut self, w: f32) {
        self.weight = w;
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Prompt plus generated ids, in this member's tokenization.
    pub fn committed(&self) -> &[u32] {
        &self.committed
    }

    /// Number of prompt ids at the start of [`Member::committed`].
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Generated ids (after the prompt).
    pub fn generated(&self) -> &[u32] {
        &self.committed[self.prompt_len..]
    }

    /// Positions held in the KV cache.
    pub fn kv_len(&self) -> usize {
        self.kv_len
    }

    /// Ids committed but not yet fed to the model.
    pub fn pending(&self) -> usize {
        self.committed.len() - self.kv_len
    }

    /// Feedback events that replaced ids already committed.
    pub fn rollbacks(&self) -> usize {
        self.rollbacks
    }

    /// Total ids replaced by rollbacks.
    pub fn rolled_back_tokens(&self) -> usize {
        self.rolled_back_tokens
    }

    /// Starts a new text: empties the cache and commits the prompt ids.
    pub fn start(&mut self, prompt_ids: Vec<u32>) {
        self.model.lm.reset();
        self.prompt_len = prompt_ids.len();
        self.committed = prompt_ids;
        self.kv_len = 0;
        self.logits = None;
        self.logits_tensor = None;
        self.rollbacks = 0;
        self.rolled_back_tokens = 0;
    }

    fn model_err(&self, source: tutti_models::Error) -> EngineError {
        EngineError::Model {
            member: self.name.clone(),
            source,
        }
    }

    /// Feeds every pending id in one forward and returns the next-token logits (the
    /// cached ones when nothing is pending; empty when they stay on the device, see
    /// [`Member::set_device_topk`] and [`Member::logits_tensor`]). Also returns the
    /// forward's duration.
    pub fn forward_pending(&mut self) -> Result<(&[f32], f64)> {
        let t0 = Instant::now();
        let have = self.logits.is_some() || self.logits_tensor.is_some();
        if self.kv_len < self.committed.len() || !have {
            if self.kv_len == self.committed.len() {
                // Logits lost (e.g. after `start` with an empty prompt is impossible, but a
                // truncate to the full length can get here): recompute the last position.
                if self.kv_len == 0 {
                    return Err(self.model_err(tutti_models::Error::EmptyInput));
                }
                self.kv_len -= 1;
                self.model.lm.truncate(self.kv_len);
            }
            let out = self
                .model
                .lm
                .forward(&self.committed[self.kv_len..])
                .map_err(|e| self.model_err(e))?;
            if self.device_topk {
                // Wait for the device so the forward's time is the forward's.
                out.device().synchronize()?;
                self.logits = None;
                self.logits_tensor = Some(out);
            } else {
                let v: Vec<f32> = out.to_vec1()?;
                self.logits = Some(v);
                self.logits_tensor = None;
            }
            self.kv_len = self.committed.len();
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok((self.logits.as_deref().unwrap_or_default(), ms))
    }

    /// The logits of the last forward, when nothing is pending since (and they were
    /// copied to the host: not under [`Member::set_device_topk`]).
    pub fn logits(&self) -> Option<&[f32]> {
        if self.kv_len == self.committed.len() {
            self.logits.as_deref()
        } else {
            None
        }
    }

    /// The logits of the last forward as the model returned them, when nothing is
    /// pending since and [`Member::set_device_topk`] is on.
    pub fn logits_tensor(&self) -> Option<&Tensor> {
        if self.kv_len == self.committed.len() {
            self.logits_tensor.as_ref()
        } else {
            None
        }
    }

    /// This step's distribution over the member's logits, wherever they are; `k` is the
    /// most candidates that will be asked of it (the device top-k runs once, here).
    pub fn step_distribution(
        &self,
        temperature: f32,
        k: usize,
    ) -> Result<Option<super::step::StepDist<'_>>> {
        use super::step::{Distribution, StepDist, TensorDist};
        if let Some(l) = self.logits() {
            return Ok(Some(StepDist::Host(Distribution::new(l, temperature))));
        }
        match self.logits_tensor() {
            Some(t) => Ok(Some(StepDist::Tensor(TensorDist::new(
                t,
                temperature,
                k,
                self.candidate_mask(),
            )?))),
            None => Ok(None),
        }
    }

    /// Appends the chosen `bytes`. `own` is this member's id for exactly these bytes
    /// when the member itself proposed it: then it is appended as is, as a single model
    /// would. Otherwise the last [`TAIL_WINDOW`] generated tokens are re-encoded with
    /// the new bytes; the longest common prefix with the committed ids is kept, the KV
    /// cache is cut back to it and the rest becomes pending.
    pub fn commit(&mut self, bytes: &[u8], own: Option<u32>) -> Result<CommitOutcome> {
        if let Some(id) = own {
            self.committed.push(id);
            return Ok(CommitOutcome {
                replaced: 0,
                appended: 1,
            });
        }
        let gen_len = self.committed.len() - self.prompt_len;
        let tail_start = self.prompt_len + gen_len.saturating_sub(TAIL_WINDOW);
        let old_tail = &self.committed[tail_start..];
        let mut tail_bytes = self.vocab.decode_bytes(old_tail);
        tail_bytes.extend_from_slice(bytes);
        let new_tail = match self.reencode(&tail_bytes) {
            Some(ids) => ids,
            None => {
                // Not valid UTF-8 yet (half a character) or not round-tripping: spell
                // the new bytes with tokens and leave the old ones; a later step re-encodes.
                let mut ids = old_tail.to_vec();
                ids.extend(self.spell(bytes)?);
                ids
            }
        };
        let lcp = old_tail
            .iter()
            .zip(&new_tail)
            .take_while(|(a, b)| a == b)
            .count();
        let replaced = old_tail.len() - lcp;
        let keep = tail_start + lcp;
        let appended = new_tail.len() - lcp;
        self.committed.truncate(keep);
        self.committed.extend_from_slice(&new_tail[lcp..]);
        if replaced > 0 {
            self.rollbacks += 1;
            self.rolled_back_tokens += replaced;
        }
        if self.kv_len > keep {
            self.model.lm.truncate(keep);
            self.kv_len = keep;
        }
        Ok(CommitOutcome { replaced, appended })
    }

    /// This member's own encoding of `bytes`, if it decodes back to exactly them.
    fn reencode(&self, bytes: &[u8]) -> Option<Vec<u32>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let ids = self.model.tokenizer.encode(text, false).ok()?;
        if ids.is_empty() || self.vocab.decode_bytes(&ids) != bytes {
            return None;
        }
        Some(ids)
    }

    /// Greedy longest-prefix spelling of `bytes` with this member's tokens.
    fn spell(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let found = (at + 1..=bytes.len())
                .rev()
                .find_map(|end| self.vocab.id_of(&bytes[at..end]).map(|id| (id, end)));
            match found {
                Some((id, end)) => {
                    ids.push(id);
                    at = end;
                }
                None => {
                    return Err(EngineError::Untokenizable {
                        member: self.name.clone(),
                        bytes: bytes.to_vec(),
                    })
                }
            }
        }
        Ok(ids)
    }

    /// The first token of this member's own encoding of `bytes`: its tokenizer's when
    /// the bytes are valid UTF-8 and that token is a prefix of them, else the longest
    /// token that is a prefix.
    pub fn first_token_of(&self, bytes: &[u8]) -> Option<u32> {
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Ok(ids) = self.model.tokenizer.encode(text, false) {
                if let Some(&first) = ids.first() {
                    if self
                        .vocab
                        .bytes(first)
                        .is_some_and(|s| !s.is_empty() && bytes.starts_with(s))
                        && self.vocab.is_candidate(first)
                    {
                        return Some(first);
                    }
                }
            }
        }
        (1..=bytes.len())
            .rev()
            .find_map(|end| self.vocab.id_of(&bytes[..end]))
    }

    /// Mutable access to the model, for tests and tools that check the KV state.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }
}
