//! One decoding step, in the order a token takes through it:
//!
//! 1. **forward**: the taking-part members run their pending ids through their
//!    backends ([`forward`]; under `uncertain:T` the primary first, the others only
//!    when it is unsure);
//! 2. **distributions**: each consulted member's softmax and top-k, once
//!    ([`Member::distribution`], `dist.rs`);
//! 3. **union**: their candidates keyed by bytes ([`Proposals`], `union.rs`);
//! 4. **member probabilities**: each consulted member's probability of every candidate,
//!    through its vocabulary lookup for candidates it did not propose
//!    ([`Proposals::member_probs`], `crate::align::lookup`);
//! 5. **combine** and 6. **choose** (`combine.rs`);
//! 7. **commit**: every taking-part member appends the chosen bytes in its own tokens
//!    ([`Member::commit`]).
//!
//! The step then reports itself as an [`Event::Step`]. Members are always named by their
//! slot in the ensemble, whichever subset of them takes part and in whatever order.

use std::time::Instant;

use super::combine::{choose, combine, Combined};
use super::error::{EngineError, Result};
use super::events::{Choice, Event, MemberStep, StepEvent, StepTime, StopReason};
use super::explain::{self, StepRecord};
use super::member::Member;
use super::request::{Gate, OnMemberFailure};
use super::sequence::Sequence;
use super::union::{CandidateKey, Proposals};
use crate::align::lookup::TargetLookup;

/// Each consulted member's probability of every candidate (phase 4), in request order,
/// with its weight and its own top-k.
struct Scored<'p> {
    probs: Vec<Vec<f32>>,
    weights: Vec<f32>,
    tops: Vec<&'p [(u32, f32)]>,
}

/// What phases 5 and 6 decided.
struct Decision {
    combined: Combined,
    chosen: usize,
    /// More than one member was consulted and the gate did not let agreement decide.
    ensembled: bool,
}

/// When each phase ended, for the step's [`StepTime`].
struct Clock {
    start: Instant,
    forwarded: Instant,
    chosen: Instant,
    committed: Instant,
    explained: Instant,
}

impl Sequence {
    /// Runs one step over `members` (with `lookups`, by target slot) and appends its
    /// events; returns whether generation has ended.
    pub(super) fn step(
        &mut self,
        members: &mut [Member],
        lookups: &mut [TargetLookup],
        events: &mut Vec<Event>,
    ) -> Result<bool> {
        if let Some(reason) = self.limit_reached(members) {
            return Ok(self.end(reason, events));
        }
        let start = Instant::now();
        let mut forward_ms = vec![0.0; self.slots.len()];
        let proposals = self.propose(members, &mut forward_ms)?;
        // Forwards batched with other sequences ran before this step's clock started.
        let batched: f64 = self.batched_ms.iter().sum();
        for (f, b) in forward_ms.iter_mut().zip(self.batched_ms.iter_mut()) {
            *f += std::mem::take(b);
        }
        let forwarded = Instant::now();
        let scored = self.member_probs(&proposals, members, lookups)?;
        let decision = self.combine_and_choose(&proposals, &scored)?;
        let chosen = Instant::now();
        let rolled_before = self.rolled_back(members);
        let ended = self.commit(&proposals, decision.chosen, members)?;
        let committed = Instant::now();
        let explain = self.request.explain.then(|| {
            let rolled_after = self.rolled_back(members);
            let rolled: Vec<usize> = rolled_after
                .iter()
                .zip(&rolled_before)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            Box::new(explain::from_step(&StepRecord {
                index: self.steps.len(),
                proposals: &proposals,
                slots: &self.slots,
                probs: &scored.probs,
                weights: &scored.weights,
                tops: &scored.tops,
                rule: self.request.combine,
                combined: &decision.combined.probs,
                chosen: decision.chosen,
                rolled_back: &rolled,
            }))
        });
        // The record's making counts in the step's time: its cost shows in ms/token.
        let clock = Clock {
            start,
            forwarded,
            chosen,
            committed,
            explained: Instant::now(),
        };
        let mut time = self.step_time(forward_ms, &clock, decision.ensembled);
        time.total_ms += batched;
        let event = self.step_event(&proposals, &scored, &decision, time.clone(), explain);
        events.push(Event::Step(event));
        self.steps.push(time);
        match ended {
            Some(reason) => Ok(self.end(reason, events)),
            None => {
                if let Some(text) = self.text.take_ready(false) {
                    events.push(Event::Text(text));
                }
                Ok(false)
            }
        }
    }

    /// Why no step can run: the request's token limit, or a member's full context.
    fn limit_reached(&self, members: &[Member]) -> Option<StopReason> {
        if self.stop.is_some() {
            return self.stop;
        }
        if self.steps.len() >= self.request.max_tokens {
            return Some(StopReason::MaxTokens);
        }
        let full = self
            .slots
            .iter()
            .enumerate()
            .any(|(i, &s)| self.dropped[i].is_none() && !members[s].has_room());
        full.then_some(StopReason::ContextLength)
    }

    /// Phases 1–3: forward, each consulted member's distribution and the union. Under
    /// `uncertain:T` the primary goes first and the others only when it is unsure.
    pub(super) fn propose(
        &mut self,
        members: &mut [Member],
        forward_ms: &mut [f64],
    ) -> Result<Proposals> {
        if self.steps.is_empty() {
            forward_ms.clone_from_slice(&self.prefill_ms);
        }
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.dropped[i].is_none())
            .collect();
        let gated = match self.request.gate {
            Gate::Uncertain(t) if live.len() > 1 && live[0] == 0 => Some(t),
            _ => None,
        };
        let mut proposals = Proposals::default();
        let mut ms = vec![0.0; self.slots.len()];
        let first = match gated {
            Some(_) => vec![0],
            None => live.clone(),
        };
        self.consult(members, &first, &mut ms, &mut proposals)?;
        if let Some(t) = gated {
            let sure = proposals
                .dists
                .first()
                .is_some_and(|(_, d)| d.top_prob() >= t);
            // A zero-weight primary must not decide alone.
            if !(sure && self.weights[0] > 0.0) {
                let rest: Vec<usize> = live.iter().copied().filter(|&i| i != 0).collect();
                self.consult(members, &rest, &mut ms, &mut proposals)?;
            }
        }
        forward_ms.iter_mut().zip(&ms).for_each(|(f, m)| *f += m);
        if proposals.union.is_empty() {
            return Err(EngineError::BadSampling(
                "no member proposed a candidate token (non-finite logits?)".into(),
            ));
        }
        Ok(proposals)
    }

    /// Forwards the members at `run` (indices into `slots`), drops the failed ones the
    /// request lets go, and adds the others' distributions.
    fn consult(
        &mut self,
        members: &mut [Member],
        run: &[usize],
        ms: &mut [f64],
        proposals: &mut Proposals,
    ) -> Result<()> {
        let results = forward(members, &self.slots, run, ms);
        let (temperature, k) = (self.request.sampling.temperature(), self.request.top_k);
        for i in self.survivors(members, results)? {
            let slot = self.slots[i];
            let member = &mut members[slot];
            if let Some(d) = member.distribution(temperature, k)? {
                proposals.add(slot, member.vocab(), d);
            }
        }
        Ok(())
    }

    /// The members (indices into `slots`) whose forward succeeded. A failed member is
    /// dropped from the generation (its reason kept in `dropped`) under
    /// [`OnMemberFailure::Drop`] while another member is left; otherwise its error ends
    /// the generation.
    fn survivors(
        &mut self,
        members: &[Member],
        results: Vec<(usize, Result<f64>)>,
    ) -> Result<Vec<usize>> {
        let mut ok = Vec::with_capacity(results.len());
        for (i, r) in results {
            let e = match r {
                Ok(_) => {
                    ok.push(i);
                    continue;
                }
                Err(e) => e,
            };
            let others = (0..self.slots.len())
                .filter(|&j| j != i && self.dropped[j].is_none())
                .count();
            if self.request.on_member_failure == OnMemberFailure::Fail || others == 0 {
                return Err(e);
            }
            tracing::warn!(
                "member `{}` dropped from this generation: {e}",
                members[self.slots[i]].name()
            );
            self.dropped[i] = Some(e.to_string());
        }
        Ok(ok)
    }

    /// Phase 4: every consulted member's probability of every candidate of the union.
    fn member_probs<'p>(
        &self,
        proposals: &'p Proposals,
        members: &[Member],
        lookups: &mut [TargetLookup],
    ) -> Result<Scored<'p>> {
        let n = proposals.dists.len();
        let mut scored = Scored {
            probs: Vec::with_capacity(n),
            weights: Vec::with_capacity(n),
            tops: Vec::with_capacity(n),
        };
        for (i, &slot) in self.slots.iter().enumerate() {
            let Some(dist) = proposals.dist(slot) else {
                continue;
            };
            let member = &members[slot];
            let p = proposals
                .member_probs(slot, member.vocab(), lookups.get_mut(slot))
                .map_err(|e| e.into_engine(member.name()))?;
            scored.probs.push(p);
            scored.weights.push(self.weights[i]);
            scored.tops.push(dist.top());
        }
        Ok(scored)
    }

    /// Phases 5 and 6. A zero weight is never revived: when every member left has one
    /// (the others were dropped), there is nothing to decide with. Under `disagree`,
    /// members that agree on their top candidate decide without the combination (it
    /// still gives the reported probabilities).
    fn combine_and_choose(&mut self, proposals: &Proposals, scored: &Scored) -> Result<Decision> {
        if scored.weights.iter().all(|&w| w == 0.0) {
            return Err(EngineError::BadWeights {
                weights: self.weights.clone(),
                reason: "every member with a weight above 0 has left the generation".into(),
            });
        }
        let req = &self.request;
        let combined = combine(req.combine, &scored.probs, &scored.weights, &scored.tops);
        let agreed = match req.gate {
            Gate::Disagree => proposals.agreed(),
            _ => None,
        };
        let chosen = match agreed {
            Some(c) => c,
            None => choose(&combined.probs, &req.sampling, &mut self.rng),
        };
        Ok(Decision {
            ensembled: proposals.dists.len() > 1 && agreed.is_none(),
            combined,
            chosen,
        })
    }

    /// Phase 7: every taking-part member commits the chosen bytes in its own tokens (a
    /// member the gate skipped re-encodes them). Returns why generation ends here, if
    /// it does.
    pub(super) fn commit(
        &mut self,
        proposals: &Proposals,
        chosen: usize,
        members: &mut [Member],
    ) -> Result<Option<StopReason>> {
        let cand = &proposals.union.candidates[chosen];
        let CandidateKey::Bytes(bytes) = &cand.key else {
            return Ok(Some(StopReason::Eos));
        };
        for (i, &slot) in self.slots.iter().enumerate() {
            if self.dropped[i].is_some() {
                continue;
            }
            let own = proposals.dist(slot).and(cand.proposed_by(slot));
            members[slot].commit(bytes, own)?;
        }
        Ok(self.text.push(bytes).then_some(StopReason::StopString))
    }

    /// Tokens each taking-part member has rolled back so far (only for explained
    /// requests, whose records count each step's rollbacks).
    fn rolled_back(&self, members: &[Member]) -> Vec<usize> {
        match self.request.explain {
            true => self
                .slots
                .iter()
                .map(|&s| members[s].rolled_back_tokens())
                .collect(),
            false => Vec::new(),
        }
    }

    fn step_time(&self, forward_ms: Vec<f64>, clock: &Clock, ensembled: bool) -> StepTime {
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        // The first step also carries the prefills auto weights ran before it.
        let earlier_ms: f64 = match self.steps.is_empty() {
            true => self.prefill_ms.iter().sum(),
            false => 0.0,
        };
        StepTime {
            forward_ms,
            align_combine_ms: ms(clock.forwarded, clock.chosen),
            feedback_ms: ms(clock.chosen, clock.committed),
            explain_ms: match self.request.explain {
                true => ms(clock.committed, clock.explained),
                false => 0.0,
            },
            total_ms: ms(clock.start, clock.explained) + earlier_ms,
            ensembled,
        }
    }

    /// The step as its callers see it: the choice, the alternatives, each member's part.
    fn step_event(
        &self,
        proposals: &Proposals,
        scored: &Scored,
        decision: &Decision,
        time: StepTime,
        explain: Option<Box<explain::StepExplain>>,
    ) -> StepEvent {
        let (combined, chosen) = (&decision.combined, decision.chosen);
        let choice = |c: usize| {
            let cand = &proposals.union.candidates[c];
            Choice {
                bytes: match &cand.key {
                    CandidateKey::Bytes(b) => b.clone(),
                    CandidateKey::Eos => Vec::new(),
                },
                eos: cand.key == CandidateKey::Eos,
                prob: combined.mixture[c],
                proposers: cand.proposers.clone(),
            }
        };
        let mut order: Vec<usize> = (0..combined.probs.len()).collect();
        order.sort_by(|&a, &b| combined.probs[b].total_cmp(&combined.probs[a]));
        let cand = &proposals.union.candidates[chosen];
        let mut consulted = 0;
        let members = self
            .slots
            .iter()
            .map(|&slot| {
                let p = proposals.dist(slot).map(|_| {
                    consulted += 1;
                    scored.probs[consulted - 1][chosen]
                });
                MemberStep {
                    slot,
                    consulted: p.is_some(),
                    id: p.and(cand.proposed_by(slot)),
                    prob: p,
                }
            })
            .collect();
        StepEvent {
            index: self.steps.len(),
            chosen: choice(chosen),
            alternatives: order
                .iter()
                .take(self.request.alternatives)
                .map(|&c| choice(c))
                .collect(),
            union_size: proposals.union.len(),
            members,
            time,
            explain,
        }
    }
}

/// Forwards the taking-part members at positions `run` (indices into `slots`): members
/// off the host CPU (GPUs, servers) each in a thread of their own, while the host-CPU
/// members run one after the other on this thread. Each successful forward's
/// milliseconds go into `ms`.
///
/// Host-CPU members do not run concurrently: each forward already uses every core
/// through candle's thread pool, and two concurrent forwards fight over the same cores
/// (measured on 2 cores: 58 ms/token in threads against 40 ms/token in sequence for the
/// demo pair).
fn forward(
    members: &mut [Member],
    slots: &[usize],
    run: &[usize],
    ms: &mut [f64],
) -> Vec<(usize, Result<f64>)> {
    let selected: Vec<(usize, &mut Member)> = members
        .iter_mut()
        .enumerate()
        .filter_map(|(slot, m)| {
            let i = slots.iter().position(|&s| s == slot)?;
            run.contains(&i).then_some((i, m))
        })
        .collect();
    let (local, away): (Vec<_>, Vec<_>) = selected
        .into_iter()
        .partition(|(_, m)| m.backend().uses_host_cpu());
    let mut results: Vec<(usize, Result<f64>)> = if away.is_empty() {
        local
            .into_iter()
            .map(|(i, m)| (i, m.forward_pending()))
            .collect()
    } else {
        let mut done = std::thread::scope(|s| {
            let handles: Vec<_> = away
                .into_iter()
                .map(|(i, m)| (i, s.spawn(move || m.forward_pending())))
                .collect();
            let mut done: Vec<(usize, Result<f64>)> = local
                .into_iter()
                .map(|(i, m)| (i, m.forward_pending()))
                .collect();
            for (i, h) in handles {
                match h.join() {
                    Ok(r) => done.push((i, r)),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            done
        });
        done.sort_by_key(|(i, _)| *i);
        done
    };
    for (i, r) in &mut results {
        if let Ok(t) = r {
            ms[*i] = *t;
        }
    }
    results
}
