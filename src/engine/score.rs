//! Scoring continuations: the log-probability of given texts after a context, for each
//! member alone, for the token-level ensemble, and for the sequence-level baseline
//! ([`Ensemble::score`]).
//!
//! **A member alone** scores the continuation in its own tokenization (its encoding of
//! the continuation's text, appended after its context ids, as generation would commit
//! them): the sum of its log-softmax at each of those ids, from one forward over them
//! ([`crate::engine::Backend::forward_rows`]), bit for bit what step-by-step decoding
//! gives.
//!
//! **The token-level ensemble** is the lockstep loop forced along the continuation's
//! bytes. The bytes are cut into steps by the *primary's* tokenization (the first
//! taking-part member's ids for the continuation): step `i` forces the bytes of its
//! `i`-th id. At each step every member is consulted as in generation (forward, top-k,
//! union); the forced bytes are added to the union when no member proposed them; each
//! member's probability of them is read as in generation (its own id, else its
//! vocabulary lookup); and the step's log-probability is the log of the candidate's
//! pooled probability under the request's rule (`combine::pooled_log_prob`: the
//! [`Combined::mixture`](super::combine::Combined::mixture), before renormalising over
//! the union, so that one member gives its own probability). Then every member commits
//! the forced bytes in its own tokens, exactly as after a generated step: a member whose
//! token boundary does not fall where the primary's does re-encodes its recent tail and
//! rolls back what changed. The primary always appends its own id, so its cut is its
//! tokenization. The continuation's log-probability is the sum over steps; it is the
//! greedy choice when the combined argmax was the forced candidate at every step.
//!
//! **The sequence-level ensemble** is the weighted mean of the members' continuation
//! probabilities, `ln Σ w·exp(lp) − ln Σ w`.
//!
//! Every score is at the members' own temperatures and request temperature 1; gates do
//! not apply (every member is consulted at every step). A context shared by several
//! continuations is prefilled once: members whose numerics do not depend on chunking
//! keep it in their caches between continuations.

use super::combine::{combine, pooled_log_prob, step_weights};
use super::ensemble::Ensemble;
use super::error::{EngineError, Result};
use super::member::Member;
use super::request::{Gate, Prompt, Request, Sampling};
use super::sequence::{Plan, Sequence};
use super::union::CandidateKey;
use crate::align::lookup::TargetLookup;

/// Continuations to score after one context. The request's prompt is the context; its
/// members, weights (or auto weights), rule and top-k apply as in generation.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreRequest {
    pub request: Request,
    pub continuations: Vec<String>,
    /// Also score every taking-part member alone, and the sequence-level ensemble (on
    /// by default; a one-member request is its member alone either way).
    pub members_alone: bool,
    /// The most probable candidates each step also reports ([`ScoredStep::top`]).
    pub alternatives: usize,
    /// The primary's ids for the one continuation, where the caller has them (a
    /// token-id prompt); else the primary's own encoding cuts it.
    pub cut: Option<Vec<u32>>,
}

impl ScoreRequest {
    pub fn new(request: Request, continuations: Vec<String>) -> ScoreRequest {
        ScoreRequest {
            request,
            continuations,
            members_alone: true,
            alternatives: 0,
            cut: None,
        }
    }

    /// Reports the `n` most probable candidates of every step.
    pub fn alternatives(mut self, n: usize) -> ScoreRequest {
        self.alternatives = n;
        self
    }

    /// Scores only the ensemble (token level).
    pub fn ensemble_only(mut self) -> ScoreRequest {
        self.members_alone = false;
        self
    }
}

/// One step of a scored continuation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScoredStep {
    /// The bytes the step forced (a member alone: one of its tokens).
    pub bytes: Vec<u8>,
    pub logprob: f64,
    /// The forced bytes were the most probable candidate.
    pub greedy: bool,
    /// No member had them among its top-k: they were added to the union.
    pub inserted: bool,
    /// The most probable candidates with their log-probabilities (as many as asked),
    /// computed as `logprob` is: the forced bytes among them carry the same value.
    pub top: Vec<(Vec<u8>, f64)>,
}

/// The score of one continuation by one system.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ContinuationScore {
    /// Natural-log probability of the continuation given the context.
    pub logprob: f64,
    /// Steps (tokens for a member alone; 0 for the sequence level).
    pub tokens: usize,
    pub bytes: usize,
    /// Characters of the continuation (OLMES's `acc_per_char` divides by these).
    pub chars: usize,
    /// Whether greedy decoding would have produced it (`None` for the sequence level).
    pub greedy: Option<bool>,
    /// Per step (empty for the sequence level).
    pub steps: Vec<ScoredStep>,
}

/// A member's scores alone.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemberScores {
    pub slot: usize,
    pub name: String,
    /// One per continuation, in order.
    pub scores: Vec<ContinuationScore>,
}

/// What [`Ensemble::score`] returns.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Scores {
    /// The token-level ensemble (a one-member request: the member), per continuation.
    pub ensemble: Vec<ContinuationScore>,
    /// Each taking-part member alone (empty unless asked for, with two or more).
    pub members: Vec<MemberScores>,
    /// The sequence-level ensemble (empty when the members were not scored alone).
    pub sequence: Vec<ContinuationScore>,
    /// The weights the ensemble used (after auto weights), by taking-part member.
    pub weights: Vec<f32>,
}

impl Ensemble {
    /// Scores each continuation after the request's context: see the module docs for
    /// how each level is defined.
    pub fn score(&mut self, req: &ScoreRequest) -> Result<Scores> {
        if req.continuations.is_empty() {
            return Err(EngineError::BadRequest("no continuation to score".into()));
        }
        if let Some(i) = req.continuations.iter().position(String::is_empty) {
            return Err(EngineError::BadRequest(format!(
                "continuation #{i} is empty: there is nothing to score"
            )));
        }
        if req.cut.is_some() && req.continuations.len() != 1 {
            return Err(EngineError::BadRequest(
                "a given cut is for one continuation".into(),
            ));
        }
        let request = scoring_request(&req.request);
        let plan = Plan::new(&self.members, &request)?;
        let alone = plan.slots.len() == 1 || req.members_alone;
        let mut members = Vec::new();
        if alone {
            for (i, &slot) in plan.slots.iter().enumerate() {
                let mut scores = Vec::with_capacity(req.continuations.len());
                for cont in &req.continuations {
                    let m = &mut self.members[slot];
                    m.set_top_n(request.top_k);
                    let prompt = plan.prompts[i].clone();
                    if m.keeps_prefix(self.prefix_cache, matches!(request.prompt, Prompt::Ids(_))) {
                        m.start_keeping_prefix(prompt)?;
                    } else {
                        m.start(prompt)?;
                    }
                    let cut = req.cut.as_deref().filter(|_| i == 0);
                    scores.push(score_alone(m, cont, cut, req.alternatives)?);
                }
                members.push(MemberScores {
                    slot,
                    name: self.members[slot].name().to_string(),
                    scores,
                });
            }
        }
        let (ensemble, weights) = if plan.slots.len() == 1 {
            (members[0].scores.clone(), vec![1.0])
        } else {
            let mut out = Vec::with_capacity(req.continuations.len());
            let mut weights = Vec::new();
            for cont in &req.continuations {
                let mut seq = Sequence::begin(
                    &mut self.members,
                    &request,
                    plan.clone(),
                    self.prefix_cache,
                    std::time::Instant::now(),
                )?;
                weights = seq.weights.clone();
                out.push(seq.score_forced(
                    &mut self.members,
                    &mut self.lookups,
                    cont,
                    req.cut.as_deref(),
                    req.alternatives,
                )?);
            }
            (out, weights)
        };
        let sequence = match members.len() > 1 {
            true => sequence_level(&members, &weights, &req.continuations),
            false => Vec::new(),
        };
        if plan.slots.len() == 1 && !req.members_alone {
            members.clear();
        }
        Ok(Scores {
            ensemble,
            members,
            sequence,
            weights,
        })
    }
}

/// One prompt token as an OpenAI-style `echo` reports it ([`Ensemble::score_prompt`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PromptToken {
    /// The primary member's id.
    pub id: u32,
    pub bytes: Vec<u8>,
    /// `None` for the tokens the scoring starts after.
    pub logprob: Option<f64>,
    pub top: Vec<(Vec<u8>, f64)>,
}

impl Ensemble {
    /// Every prompt token of the request's primary member with its log-probability
    /// given the tokens before it, and the `alternatives` most probable candidates
    /// there. The first token has none; for an ensemble, neither has any token before
    /// the first one with text, which is where every member's context starts (each
    /// member gets that text in its own tokens, so members that add a beginning-of-text
    /// token have it). After it, one member gives its own log-softmax and an ensemble
    /// the token-level score ([`Ensemble::score`]) cut by the primary's tokens.
    pub fn score_prompt(
        &mut self,
        request: &Request,
        alternatives: usize,
    ) -> Result<Vec<PromptToken>> {
        let scoring = scoring_request(request);
        let plan = Plan::new(&self.members, &scoring)?;
        let primary = &self.members[plan.slots[0]];
        let ids = plan.prompts[0].clone();
        let bytes = |id: u32| {
            primary
                .vocab()
                .bytes(id)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        };
        let first = match plan.slots.len() {
            1 => 0,
            _ => ids
                .iter()
                .position(|&id| !bytes(id).is_empty())
                .unwrap_or(ids.len()),
        };
        let mut out: Vec<PromptToken> = ids
            .iter()
            .map(|&id| PromptToken {
                id,
                bytes: bytes(id),
                logprob: None,
                top: Vec::new(),
            })
            .collect();
        if first + 1 >= ids.len() {
            return Ok(out);
        }
        let (context, cut) = ids.split_at(first + 1);
        let cont = String::from_utf8_lossy(&primary.vocab().decode_bytes(cut)).into_owned();
        let mut req = request.clone();
        req.prompt = match plan.slots.len() {
            1 => Prompt::Ids(vec![context.to_vec()]),
            _ => Prompt::Raw(
                String::from_utf8_lossy(&primary.vocab().decode_bytes(context)).into_owned(),
            ),
        };
        let scored = self.score(&ScoreRequest {
            request: req,
            continuations: vec![cont],
            members_alone: false,
            alternatives,
            cut: Some(cut.to_vec()),
        })?;
        let steps = scored
            .ensemble
            .into_iter()
            .next()
            .map(|c| c.steps)
            .unwrap_or_default();
        for (tok, step) in out[first + 1..].iter_mut().zip(steps) {
            tok.logprob = Some(step.logprob);
            tok.top = step.top;
        }
        Ok(out)
    }
}

/// The request as scoring runs it: temperature 1, no gate, no stop strings, no
/// per-step reports.
fn scoring_request(r: &Request) -> Request {
    let mut r = r.clone();
    r.sampling = Sampling::Sample {
        temperature: 1.0,
        top_p: 1.0,
        seed: 0,
    };
    r.gate = Gate::Always;
    r.stop.clear();
    r.alternatives = 0;
    r.explain = false;
    r.max_tokens = usize::MAX;
    r
}

/// A started member's score of `cont` in its own tokenization (or in `cut`).
fn score_alone(
    m: &mut Member,
    cont: &str,
    cut: Option<&[u32]>,
    alternatives: usize,
) -> Result<ContinuationScore> {
    let ids = match cut {
        Some(c) => c.to_vec(),
        None => m.tokens_for(cont.as_bytes())?,
    };
    let scored = m.score_ids(&ids, alternatives)?;
    let bytes = |id: u32| m.vocab().bytes(id).map(<[u8]>::to_vec).unwrap_or_default();
    let steps: Vec<ScoredStep> = ids
        .iter()
        .zip(scored)
        .map(|(&id, s)| ScoredStep {
            bytes: bytes(id),
            logprob: s.logprob,
            greedy: s.greedy,
            inserted: false,
            top: s.top.into_iter().map(|(t, lp)| (bytes(t), lp)).collect(),
        })
        .collect();
    Ok(summed(steps, cont))
}

/// Sums the steps into a continuation's score.
fn summed(steps: Vec<ScoredStep>, cont: &str) -> ContinuationScore {
    ContinuationScore {
        logprob: steps.iter().map(|s| s.logprob).sum(),
        tokens: steps.len(),
        bytes: cont.len(),
        chars: cont.chars().count(),
        greedy: Some(steps.iter().all(|s| s.greedy)),
        steps,
    }
}

/// The sequence-level ensemble's log-probability of a continuation from the members'
/// own (`ln Σ w·exp(lp) − ln Σ w`; a member of weight 0 does not count).
pub fn sequence_log_prob(member_logprobs: &[f64], weights: &[f32]) -> f64 {
    pooled_log_prob(super::request::Combine::Mean, member_logprobs, weights)
}

/// [`sequence_log_prob`] over the members alone, per continuation.
fn sequence_level(
    members: &[MemberScores],
    weights: &[f32],
    conts: &[String],
) -> Vec<ContinuationScore> {
    conts
        .iter()
        .enumerate()
        .map(|(c, cont)| {
            let lps: Vec<f64> = members.iter().map(|m| m.scores[c].logprob).collect();
            ContinuationScore {
                logprob: sequence_log_prob(&lps, weights),
                tokens: 0,
                bytes: cont.len(),
                chars: cont.chars().count(),
                greedy: None,
                steps: Vec::new(),
            }
        })
        .collect()
}

impl Sequence {
    /// The token-level ensemble forced along `cont` (see the module docs).
    fn score_forced(
        &mut self,
        members: &mut [Member],
        lookups: &mut [TargetLookup],
        cont: &str,
        cut: Option<&[u32]>,
        alternatives: usize,
    ) -> Result<ContinuationScore> {
        let primary = self.slots[0];
        let cut = match cut {
            Some(c) => c.to_vec(),
            None => members[primary].tokens_for(cont.as_bytes())?,
        };
        let mut steps = Vec::with_capacity(cut.len());
        for &id in &cut {
            if let Some(member) = self
                .slots
                .iter()
                .map(|&s| &members[s])
                .find(|m| !m.has_room())
            {
                return Err(EngineError::ContextFull {
                    member: member.name().to_string(),
                    max: member.backend().context_length(),
                });
            }
            let bytes = members[primary]
                .vocab()
                .bytes(id)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| EngineError::Untokenizable {
                    member: members[primary].name().to_string(),
                    bytes: cont.as_bytes().to_vec(),
                })?;
            let mut ms = vec![0.0; self.slots.len()];
            let mut proposals = self.propose(members, &mut ms)?;
            let (forced, inserted) = proposals.union.force(&bytes, primary, id);
            let mut weights = Vec::with_capacity(self.slots.len());
            let mut probs = Vec::with_capacity(self.slots.len());
            let mut tops = Vec::with_capacity(self.slots.len());
            let mut consulted = Vec::with_capacity(self.slots.len());
            for (i, &slot) in self.slots.iter().enumerate() {
                let Some(dist) = proposals.dist(slot) else {
                    continue;
                };
                let m = &members[slot];
                let p = proposals
                    .member_probs(slot, m.vocab(), lookups.get_mut(slot))
                    .map_err(|e| e.into_engine(m.name()))?;
                probs.push(p);
                weights.push(self.weights[i]);
                tops.push(dist.top());
                consulted.push(slot);
            }
            let rule = self.request.combine;
            let step_w = step_weights(rule, &weights, &tops);
            // One candidate's log-probability, the same way for the forced one and
            // the reported alternatives.
            let mut log_prob = |c: usize| -> Result<f64> {
                let mut logps = Vec::with_capacity(consulted.len());
                for &slot in &consulted {
                    let m = &members[slot];
                    logps.push(
                        proposals
                            .member_log_prob(slot, c, m.vocab(), lookups.get_mut(slot))
                            .map_err(|e| e.into_engine(m.name()))?,
                    );
                }
                Ok(pooled_log_prob(rule, &logps, &step_w))
            };
            let logprob = log_prob(forced)?;
            let combined = combine(rule, &probs, &weights, &tops);
            let mut order: Vec<usize> = (0..combined.probs.len()).collect();
            order.sort_by(|&a, &b| {
                combined.probs[b]
                    .total_cmp(&combined.probs[a])
                    .then(a.cmp(&b))
            });
            let mut top = Vec::with_capacity(alternatives);
            for &c in order.iter().take(alternatives) {
                let lp = if c == forced { logprob } else { log_prob(c)? };
                let shown = match &proposals.union.candidates[c].key {
                    CandidateKey::Bytes(b) => b.clone(),
                    CandidateKey::Eos => Vec::new(),
                };
                top.push((shown, lp));
            }
            steps.push(ScoredStep {
                bytes,
                logprob,
                greedy: order.first() == Some(&forced),
                inserted,
                top,
            });
            self.commit(&proposals, forced, members)?;
        }
        Ok(summed(steps, cont))
    }
}
