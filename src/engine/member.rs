//! One member of an ensemble: its backend, its byte vocabulary and its decoding state
//! (committed ids, how many of them the backend holds, the last logits).
//!
//! The state invariant: `committed` is everything the member has been told (prompt plus
//! generated ids in its own tokenization); its backend holds `committed[..cached]`; the
//! ids `committed[cached..]` are pending and go into the next forward in one call.
//! Feedback ([`Member::commit`]) appends the chosen bytes in the member's own
//! tokenization and, when re-tokenizing a short tail changes ids the backend already
//! holds, cuts `cached` back to the longest common prefix (a *rollback*; the backend
//! drops the stale positions at its next forward).

use std::time::Instant;

use tutti_models::{ModelInfo, ModelTokenizer};

use super::backend::{Backend, Logits};
use super::dist::MemberDist;
use super::error::{EngineError, Result};
use crate::vocab::Vocab;
use tutti_models::CausalLm;

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

/// A member's score of one id ([`Member::score_ids`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IdScore {
    pub logprob: f64,
    /// The id was the member's most probable candidate.
    pub greedy: bool,
    /// The most probable candidate ids with their log-probabilities.
    pub top: Vec<(u32, f64)>,
}

/// How well a member predicts its own prompt (teacher-forced, from the prefill).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PromptScore {
    /// Negative natural-log likelihood of the scored ids, summed.
    pub nll: f64,
    /// Ids scored: every prompt id after the first.
    pub tokens: usize,
    /// Bytes those ids stand for.
    pub bytes: usize,
}

impl PromptScore {
    /// Nats per byte: comparable across members whose tokenizers cut the prompt
    /// differently (per-token perplexity is not). `None` for a prompt of one id.
    pub fn nats_per_byte(&self) -> Option<f64> {
        (self.bytes > 0 && self.nll.is_finite()).then(|| self.nll / self.bytes as f64)
    }
}

/// A model taking part in the ensemble, with its default weight and decoding state.
pub struct Member {
    backend: Box<dyn Backend>,
    vocab: std::sync::Arc<Vocab>,
    name: String,
    weight: f32,
    /// Divides the member's logits before every softmax (on top of the request's).
    temperature: f32,
    committed: Vec<u32>,
    prompt_len: usize,
    cached: usize,
    /// The distribution after `committed[..cached]`, valid while nothing is pending.
    logits: Option<Logits>,
    /// `vocab.is_candidate(id)` for every logit id: the device top-k's mask (made on
    /// first use).
    candidate_mask: Vec<bool>,
    rollbacks: usize,
    rolled_back_tokens: usize,
    distributions: usize,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("committed", &self.committed.len())
            .field("cached", &self.cached)
            .finish()
    }
}

impl Member {
    /// Wraps a backend; reads its byte vocabulary.
    pub(crate) fn new(backend: Box<dyn Backend>, weight: f32) -> Result<Member> {
        let name = backend.name().to_string();
        let tok = backend.tokenizer();
        let vocab = Vocab::from_tokenizer(tok.inner(), tok.eos_ids(), Some(backend.logit_width()))
            .map_err(|source| EngineError::Align {
                member: name.clone(),
                source: source.into(),
            })?;
        Ok(Member::fresh(
            backend,
            std::sync::Arc::new(vocab),
            name,
            weight,
            1.0,
        ))
    }

    /// A member with nothing decoded yet.
    fn fresh(
        backend: Box<dyn Backend>,
        vocab: std::sync::Arc<Vocab>,
        name: String,
        weight: f32,
        temperature: f32,
    ) -> Member {
        Member {
            backend,
            vocab,
            name,
            weight,
            temperature,
            committed: Vec::new(),
            prompt_len: 0,
            cached: 0,
            logits: None,
            candidate_mask: Vec::new(),
            rollbacks: 0,
            rolled_back_tokens: 0,
            distributions: 0,
        }
    }

    /// Runs top-k and gathers on the logits tensor where the model computed them (the
    /// default for GPU members: only the packed top-k and the gathered probabilities
    /// cross to the host) or on a host copy (the default on the CPU). On the CPU both
    /// give the same numbers bit for bit. Takes effect at the next forward.
    pub(crate) fn set_device_topk(&mut self, on: bool) -> bool {
        self.backend.keep_logits_on_device(on)
    }

    /// A second member over the same weights (its backend's fork), with the same
    /// vocabulary, weight and temperature and a decoding state of its own; `None` when
    /// the backend cannot share its weights.
    pub(crate) fn fork(&self) -> Option<Member> {
        Some(Member::fresh(
            self.backend.fork()?,
            self.vocab.clone(),
            self.name.clone(),
            self.weight,
            self.temperature,
        ))
    }

    /// [`Member::fork`] holding a copy of what this member's backend holds of its first
    /// `len` committed ids (where the backend can copy its cache): a new text that
    /// starts with them skips their prefill.
    pub(crate) fn fork_with_prefix(&self, len: usize) -> Option<Member> {
        let len = len.min(self.cached);
        let (backend, kept) = self.backend.fork_with_prefix(len)?;
        let mut m = Member::fresh(
            backend,
            self.vocab.clone(),
            self.name.clone(),
            self.weight,
            self.temperature,
        );
        let kept = kept.min(len);
        m.committed = self.committed[..kept].to_vec();
        m.cached = kept;
        Some(m)
    }

    /// What a batched forward would feed this member, when its step needs one and its
    /// backend runs a model in this process: the model, its cache already cut back to
    /// what it holds of the committed ids, and the ids after them: the same ids
    /// [`Member::forward_pending`] would feed, or their first `chunk` when there are
    /// more (a prompt prefilled in chunks; [`Member::set_batched`] then leaves the
    /// member still waiting for the rest), and whether they are all of them.
    pub(crate) fn batch_part(
        &mut self,
        chunk: Option<usize>,
    ) -> Option<(&mut (dyn CausalLm + 'static), &[u32], bool)> {
        let needs = self.logits.is_none() || self.pending() > 0;
        if !needs || self.committed.is_empty() {
            return None;
        }
        if self.committed.len() > self.backend.context_length() {
            return None;
        }
        let Member {
            backend,
            committed,
            cached,
            ..
        } = self;
        let lm = backend.local_model()?;
        let mut start = (*cached).min(lm.position()).min(committed.len());
        if start == committed.len() {
            start -= 1;
        }
        lm.truncate(start);
        let end = match chunk {
            Some(c) => committed.len().min(start + c.max(1)),
            None => committed.len(),
        };
        Some((lm, &committed[start..end], end == committed.len()))
    }

    /// Takes the logits of a batched forward of [`Member::batch_part`]'s ids: the
    /// member's distribution when they reached the last committed id, else (a chunk of
    /// a prompt) only the cache's new length.
    /// Returns whether the distribution is there.
    pub(crate) fn set_batched(&mut self, logits: &candle_core::Tensor) -> Result<bool> {
        let position = match self.backend.local_model() {
            Some(lm) => lm.position(),
            None => self.committed.len(),
        };
        if position < self.committed.len() {
            self.cached = position;
            self.logits = None;
            return Ok(false);
        }
        let v: Vec<f32> = logits.to_vec1()?;
        self.logits = Some(Logits::Host(v.into()));
        self.cached = self.committed.len();
        Ok(true)
    }

    /// Bytes of KV cache one more position of this member takes (0 when unknown).
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.backend.kv_bytes_per_token()
    }

    /// How many leading ids of `ids` the member's cache already holds.
    pub(crate) fn cached_prefix(&self, ids: &[u32]) -> usize {
        self.committed[..self.cached]
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parameters of a member that runs in this process (`None` for a served one).
    pub fn parameters(&self) -> Option<u64> {
        self.info().map(|i| i.parameters)
    }

    /// The member's own weight (a request may override it).
    pub fn weight(&self) -> f32 {
        self.weight
    }

    /// The member's own temperature, applied before combining (1: its distribution as
    /// the model gives it).
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// Sets the member's temperature; it must be finite and above 0.
    pub(crate) fn set_temperature(&mut self, t: f32) -> Result<()> {
        check_temperature(&self.name, t)?;
        self.temperature = t;
        Ok(())
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn tokenizer(&self) -> &ModelTokenizer {
        self.backend.tokenizer()
    }

    /// What is known of the weights of a member that runs in this process.
    pub fn info(&self) -> Option<&ModelInfo> {
        self.backend.info()
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

    /// Ids the backend holds (its KV cache, for a local model).
    pub fn cached(&self) -> usize {
        self.cached
    }

    /// Ids committed but not yet fed to the model.
    pub fn pending(&self) -> usize {
        self.committed.len() - self.cached
    }

    /// Feedback events that replaced ids already committed.
    pub fn rollbacks(&self) -> usize {
        self.rollbacks
    }

    /// Total ids replaced by rollbacks.
    pub fn rolled_back_tokens(&self) -> usize {
        self.rolled_back_tokens
    }

    /// Distributions computed since the text started (one per step that consulted
    /// this member).
    pub fn distributions(&self) -> usize {
        self.distributions
    }

    /// Tells a sparse backend how many of the most probable ids to return per step.
    pub(crate) fn set_top_n(&mut self, n: usize) {
        self.backend.set_top_n(n);
    }

    /// Starts a new text with `prompt_ids`; fails when they do not fit the model's
    /// context.
    pub fn start(&mut self, prompt_ids: Vec<u32>) -> Result<()> {
        let max = self.backend.context_length();
        if prompt_ids.len() > max {
            return Err(EngineError::PromptTooLong {
                member: self.name.clone(),
                tokens: prompt_ids.len(),
                max,
            });
        }
        self.prompt_len = prompt_ids.len();
        self.committed = prompt_ids;
        self.cached = 0;
        self.logits = None;
        self.rollbacks = 0;
        self.rolled_back_tokens = 0;
        self.distributions = 0;
        Ok(())
    }

    /// [`Member::start`], keeping what the backend holds of the longest common prefix of
    /// the old and the new ids: a prefix cache for callers that send the whole context
    /// each time (a served member's client). The last id is always forwarded again, so
    /// the logits come from the same one-token step a continuing decode would run.
    pub(crate) fn start_keeping_prefix(&mut self, prompt_ids: Vec<u32>) -> Result<()> {
        let keep = self.committed[..self.cached]
            .iter()
            .zip(&prompt_ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt_ids.len().saturating_sub(1));
        self.start(prompt_ids)?;
        self.cached = keep;
        Ok(())
    }

    /// Whether a new text keeps what the member holds of its common prefix with the last
    /// one: always for a token-id prompt under `prefix_cache` (a served member's client
    /// sends its whole context each step), and for any prompt where the model gives the
    /// same bits however its context was fed.
    pub(crate) fn keeps_prefix(&self, prefix_cache: bool, ids_prompt: bool) -> bool {
        (prefix_cache && ids_prompt) || self.backend.chunk_invariant()
    }

    /// Forgets the text and everything the backend holds of it: the next forward
    /// starts from position 0. For recovery after a failure that may have left the
    /// state half updated.
    pub(crate) fn reset(&mut self) {
        self.prompt_len = 0;
        self.committed.clear();
        self.cached = 0;
        self.logits = None;
    }

    /// Whether one more token still fits the model's context.
    pub(crate) fn has_room(&self) -> bool {
        self.committed.len() < self.backend.context_length()
    }

    /// Feeds every pending id in one forward (nothing when the logits are current) and
    /// returns the forward's duration in milliseconds.
    pub fn forward_pending(&mut self) -> Result<f64> {
        let t0 = Instant::now();
        if self.logits.is_none() || self.pending() > 0 {
            if self.committed.is_empty() {
                return Err(EngineError::EmptyPrompt);
            }
            let max = self.backend.context_length();
            if self.committed.len() > max {
                return Err(EngineError::ContextFull {
                    member: self.name.clone(),
                    max,
                });
            }
            self.logits = Some(self.backend.forward(&self.committed, self.cached)?);
            self.cached = self.committed.len();
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    /// The prefill of a freshly started text, scoring the prompt on the way; returns
    /// the score (`None` when the backend cannot score or the prompt is one id) and the
    /// forward's milliseconds. Nothing to do (`None`, 0) once the member has run.
    ///
    /// A prefix the backend holds from an earlier text ([`Member::start_keeping_prefix`])
    /// is prefilled again: its log-probabilities were not kept, and one forward over
    /// the whole prompt gives the score (and the logits) a fresh run gives, bit for
    /// bit, where a forward over the rest alone would round differently.
    pub(crate) fn score_prompt(&mut self) -> Result<(Option<PromptScore>, f64)> {
        if self.logits.is_some() || self.committed.is_empty() {
            return Ok((None, 0.0));
        }
        self.cached = 0;
        let t0 = Instant::now();
        let (logits, logp) = self.backend.forward_scored(&self.committed, 0)?;
        self.logits = Some(logits);
        self.cached = self.committed.len();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let scored = &self.committed[1..];
        if logp.is_empty() || logp.len() != scored.len() {
            return Ok((None, ms));
        }
        let score = PromptScore {
            nll: -logp.iter().map(|&l| f64::from(l)).sum::<f64>(),
            tokens: scored.len(),
            bytes: self.vocab.decode_bytes(scored).len(),
        };
        Ok((Some(score), ms))
    }

    /// The logits of the last forward, when nothing is pending since.
    pub(crate) fn logits(&self) -> Option<&Logits> {
        if self.pending() == 0 {
            self.logits.as_ref()
        } else {
            None
        }
    }

    /// The logits of the last forward as a host row (copied from a tensor when they
    /// stay on the device), when nothing is pending since.
    pub fn host_logits(&self) -> Result<Option<Vec<f32>>> {
        Ok(match self.logits() {
            Some(Logits::Host(row)) => Some(row.to_vec()),
            Some(Logits::Tensor(t)) => Some(t.to_vec1()?),
            Some(Logits::Sparse(_)) | None => None,
        })
    }

    /// This step's distribution at `temperature` (times the member's own) with the member's `k` most probable
    /// candidates; `None` before a forward.
    pub(crate) fn distribution(
        &mut self,
        temperature: f32,
        k: usize,
    ) -> Result<Option<MemberDist>> {
        let Some(logits) = self.logits().cloned() else {
            return Ok(None);
        };
        self.distributions += 1;
        self.dist_of(&logits, temperature, k).map(Some)
    }

    /// The distribution of `logits` at `temperature` (times the member's own) with its
    /// `k` most probable candidates.
    fn dist_of(&mut self, logits: &Logits, temperature: f32, k: usize) -> Result<MemberDist> {
        if matches!(logits, Logits::Tensor(_)) && self.candidate_mask.is_empty() {
            self.candidate_mask = (0..self.backend.logit_width() as u32)
                .map(|id| self.vocab.is_candidate(id))
                .collect();
        }
        MemberDist::new(
            logits,
            temperature * self.temperature,
            k,
            &self.vocab,
            &self.candidate_mask,
        )
    }

    /// This member's ids for `bytes` appended after what it holds: its own encoding
    /// when that decodes back to exactly them, else a greedy spelling with its tokens.
    pub(crate) fn tokens_for(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        match self.reencode(bytes) {
            Some(ids) => Ok(ids),
            None => self.spell(bytes),
        }
    }

    /// Appends `ids` after the current logits and returns, for each, the natural-log
    /// probability the member gives it after the ids before it (at the member's own
    /// temperature) and whether it was the member's most probable candidate there. The
    /// first comes from the logits already current, the rest from one
    /// [`Backend::forward_rows`] over `ids` but the last (which stays pending).
    pub(crate) fn score_ids(&mut self, ids: &[u32], alternatives: usize) -> Result<Vec<IdScore>> {
        let Some((&last, _)) = ids.split_last() else {
            return Ok(Vec::new());
        };
        self.forward_pending()?;
        let first = self
            .logits()
            .cloned()
            .ok_or_else(|| EngineError::BadRequest("scoring before a forward".into()))?;
        let max = self.backend.context_length();
        if self.committed.len() + ids.len() > max {
            return Err(EngineError::ContextFull {
                member: self.name.clone(),
                max,
            });
        }
        let start = self.committed.len();
        self.committed.extend_from_slice(&ids[..ids.len() - 1]);
        let mut rows = vec![first];
        if ids.len() > 1 {
            match self.backend.forward_rows(&self.committed, self.cached) {
                Ok(more) => rows.extend(more),
                Err(e) => {
                    self.committed.truncate(start);
                    self.logits = None;
                    return Err(e);
                }
            }
            self.cached = self.committed.len();
        }
        self.committed.push(last);
        self.logits = None;
        let mut out = Vec::with_capacity(ids.len());
        for (row, &id) in rows.iter().zip(ids) {
            let d = self.dist_of(row, 1.0, alternatives.max(1))?;
            let greedy = d.top().first().is_some_and(|&(top, _)| top == id);
            let mut top = Vec::with_capacity(alternatives);
            for &(t, _) in d.top().iter().take(alternatives) {
                top.push((t, d.log_prob(&[t])?));
            }
            out.push(IdScore {
                logprob: d.log_prob(&[id])?,
                greedy,
                top,
            });
        }
        Ok(out)
    }

    /// Appends the chosen `bytes`. `own` is this member's id for exactly these bytes
    /// when the member itself proposed it: then it is appended as is, as a single model
    /// would. Otherwise the last `TAIL_WINDOW` (8) generated tokens are re-encoded with
    /// the new bytes; the longest common prefix with the committed ids is kept, the
    /// backend's cached positions are cut back to it and the rest becomes pending.
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
        self.cached = self.cached.min(keep);
        Ok(CommitOutcome { replaced, appended })
    }

    /// This member's own encoding of `bytes`, if it decodes back to exactly them.
    fn reencode(&self, bytes: &[u8]) -> Option<Vec<u32>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let ids = self.tokenizer().encode(text, false).ok()?;
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
}

/// A member temperature must be a finite number above 0.
pub fn check_temperature(member: &str, t: f32) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(EngineError::BadSpec {
            spec: member.to_string(),
            reason: format!("member temperature must be a number above 0 (got {t})"),
        })
    }
}
