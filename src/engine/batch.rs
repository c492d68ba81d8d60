//! Several requests decoded together: a [`Batch`] schedules them over the ensemble's
//! weights. Each running request is a [`Sequence`] with a set of members of its own
//! (forks of the ensemble's, sharing their weights, with caches of their own); every
//! round feeds each member slot's pending ids of all running sequences through the model
//! in one batched forward (`tutti_models::forward_batch`), then each sequence takes the
//! usual step: distributions, union, combination, choice, feedback.
//!
//! Requests join at the next round and leave when done; one can be cancelled without
//! touching the others. A long prompt is fed in chunks between the others' decode
//! steps. The caches come from a budget: a request whose positions do not fit waits, and
//! one that could never fit is refused. Member sets stay after their request for the
//! next one, which picks the set whose cache holds the longest common prefix of its
//! prompt (a few-shot header, a chat template, a served member's context).
//!
//! The batched forward gives every sequence the logits its own forward would
//! (batch-invariant numerics), so each request's answer is the one
//! [`Ensemble::generate`] gives it alone, bit for bit, whatever runs beside it. Members
//! that cannot be batched (served members, GPU models) forward in the step as usual;
//! members that cannot be forked at all keep the batch to one request at a time.

use std::collections::VecDeque;
use std::time::Instant;

use super::ensemble::Ensemble;
use super::error::{EngineError, Result};
use super::events::{Event, Flow, Generation};
use super::member::Member;
use super::request::Request;
use super::sequence::{Plan, Sequence};

/// How a [`Batch`] schedules.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The most requests decoding at once (at least 1).
    pub max_batch: usize,
    /// Prompt ids fed per member and round while other requests decode; `None` feeds a
    /// prompt whole.
    pub prefill_chunk: Option<usize>,
    /// Bytes of KV cache the running requests (and the member sets kept for prefix
    /// reuse) may reserve; `None` for no bound.
    pub kv_budget: Option<u64>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 8,
            prefill_chunk: Some(256),
            kv_budget: None,
        }
    }
}

/// A request's name in its [`Batch`], unique for the batch's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(u64);

impl SeqId {
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A request checked against the ensemble and sized, ready for [`Batch::start`].
#[derive(Clone, Debug)]
pub struct Planned {
    request: Request,
    plan: Plan,
    kv_bytes: u64,
}

impl Planned {
    /// Bytes of KV cache the request reserves: every taking-part member's positions
    /// (prompt plus `max_tokens`, at most its context) at its bytes per position.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes
    }

    pub fn request(&self) -> &Request {
        &self.request
    }
}

/// What [`Batch::start`] did with a request.
#[derive(Debug)]
pub enum Admit {
    /// It runs from the next round.
    Started(SeqId),
    /// No room now (the batch is full, or the budget is taken by running requests):
    /// try again after a round.
    Wait(Box<Planned>),
}

/// A request that left the batch: its generation, or the error that ended it.
#[derive(Debug)]
pub struct Finished {
    pub id: SeqId,
    pub result: Result<Generation>,
}

/// What one [`Batch::step`] did.
#[derive(Debug, Default)]
pub struct Round {
    /// Requests that took a decoding step.
    pub stepped: usize,
    /// Requests whose prompt was fed a chunk and has more to come.
    pub prefilling: usize,
    /// Requests that ended in this round.
    pub finished: Vec<Finished>,
    /// Milliseconds in the batched forwards.
    pub forward_ms: f64,
    /// Milliseconds in the requests' steps: forwards the batch could not take, then each
    /// request's distributions, union, combination, choice and feedback.
    pub steps_ms: f64,
}

/// A set of members (one per ensemble slot) a request decodes with.
struct Set {
    members: Vec<Member>,
    busy: bool,
    /// Bytes the set's last request reserved: what its caches may still hold.
    held: u64,
    /// Round at which it last finished (least recently used sets go first).
    used_at: u64,
}

struct Running {
    id: SeqId,
    set: usize,
    seq: Sequence,
    kv_bytes: u64,
    batched_forwards: usize,
    /// A member's prompt was fed only a chunk this round: no step until it is whole.
    prefilling: bool,
}

/// Requests decoding together over one ensemble ([`Ensemble::batch`]). The ensemble's
/// own members are the first member set and go back to it when the batch is dropped.
pub struct Batch<'e> {
    ens: &'e mut Ensemble,
    options: BatchOptions,
    sets: Vec<Set>,
    running: Vec<Running>,
    next_id: u64,
    rounds: u64,
    /// Whether the members can be forked (else one request runs at a time).
    forkable: bool,
}

impl Ensemble {
    /// A scheduler for requests decoded together over this ensemble's weights.
    pub fn batch(&mut self, options: BatchOptions) -> Batch<'_> {
        let members = std::mem::take(&mut self.members);
        Batch {
            ens: self,
            options,
            sets: vec![Set {
                members,
                busy: false,
                held: 0,
                used_at: 0,
            }],
            running: Vec::new(),
            next_id: 0,
            rounds: 0,
            forkable: true,
        }
    }

    /// Generates for every request, decoding them together, and returns their
    /// generations in order. Requests leave the batch as they finish; the others go on.
    /// Each answer is the one [`Ensemble::generate`] gives the request alone.
    pub fn generate_batch(&mut self, requests: &[Request]) -> Result<Vec<Generation>> {
        self.generate_batch_with(
            requests,
            BatchOptions {
                max_batch: requests.len().max(1),
                prefill_chunk: None,
                kv_budget: None,
            },
        )
    }

    /// [`Ensemble::generate_batch`] under `options`: at most `max_batch` requests decode
    /// at once, the next one starting as soon as one finishes (in order).
    pub fn generate_batch_with(
        &mut self,
        requests: &[Request],
        options: BatchOptions,
    ) -> Result<Vec<Generation>> {
        let mut batch = self.batch(options);
        let mut waiting = VecDeque::new();
        for (i, r) in requests.iter().enumerate() {
            waiting.push_back((i, batch.plan(r)?));
        }
        let mut index = Vec::new();
        let mut out: Vec<Option<Generation>> = (0..requests.len()).map(|_| None).collect();
        loop {
            while let Some((i, planned)) = waiting.pop_front() {
                match batch.start(planned)? {
                    Admit::Started(id) => index.push((id, i)),
                    Admit::Wait(p) => {
                        waiting.push_front((i, *p));
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            for f in batch.step(&mut |_, _| Flow::Continue).finished {
                if let Some(&(_, i)) = index.iter().find(|(id, _)| *id == f.id) {
                    out[i] = Some(f.result?);
                }
            }
        }
        out.into_iter()
            .map(|g| {
                g.ok_or_else(|| EngineError::BadSampling("a batched request did not finish".into()))
            })
            .collect()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.sets.is_empty() {
            self.ens.members = std::mem::take(&mut self.sets[0].members);
        }
    }
}

impl Batch<'_> {
    pub fn options(&self) -> &BatchOptions {
        &self.options
    }

    /// Requests decoding now.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The ids of the running requests, in the order they started.
    pub fn running(&self) -> Vec<SeqId> {
        self.running.iter().map(|r| r.id).collect()
    }

    /// Bytes of the budget taken: the running requests' reservations and what the
    /// member sets kept for prefix reuse hold.
    pub fn kv_used(&self) -> u64 {
        let running: u64 = self.running.iter().map(|r| r.kv_bytes).sum();
        running + self.idle_held()
    }

    fn idle_held(&self) -> u64 {
        // The ensemble's own set is there with or without a batch; forks kept idle
        // are what the batch adds.
        self.sets
            .iter()
            .skip(1)
            .filter(|s| !s.busy)
            .map(|s| s.held)
            .sum()
    }

    /// Checks `request` against the ensemble, encodes its prompts and sizes its KV
    /// cache. Fails as [`Ensemble::generate`] would on a bad request, and with
    /// [`EngineError::KvBudget`] when the request alone needs more than the budget.
    pub fn plan(&self, request: &Request) -> Result<Planned> {
        let members = &self.sets[0].members;
        let plan = Plan::new(members, request)?;
        let kv_bytes = plan
            .slots
            .iter()
            .zip(&plan.prompts)
            .map(|(&s, p)| {
                let m = &members[s];
                let positions = (p.len() + request.max_tokens).min(m.backend().context_length());
                positions as u64 * m.kv_bytes_per_token()
            })
            .sum();
        if let Some(budget) = self.options.kv_budget {
            if kv_bytes > budget {
                return Err(EngineError::KvBudget {
                    needs: kv_bytes,
                    budget,
                });
            }
        }
        Ok(Planned {
            request: request.clone(),
            plan,
            kv_bytes,
        })
    }

    /// Starts a planned request when the batch and the budget have room (kept member
    /// sets are let go, least recently used first, to make it); otherwise hands it back
    /// to wait. Fails on what only starting the members finds.
    pub fn start(&mut self, planned: Planned) -> Result<Admit> {
        let full = self.running.len() >= self.options.max_batch.max(1);
        if full || self.prefix_pending(&planned) || !self.make_room(planned.kv_bytes) {
            return Ok(Admit::Wait(Box::new(planned)));
        }
        let Some(set) = self.free_set(&planned) else {
            return Ok(Admit::Wait(Box::new(planned)));
        };
        let Planned {
            request,
            plan,
            kv_bytes,
        } = planned;
        let members = &mut self.sets[set].members;
        let seq = match Sequence::begin(
            members,
            &request,
            plan,
            self.ens.prefix_cache,
            Instant::now(),
        ) {
            Ok(seq) => seq,
            Err(e) => {
                members.iter_mut().for_each(Member::reset);
                return Err(e);
            }
        };
        self.sets[set].busy = true;
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.running.push(Running {
            id,
            set,
            seq,
            kv_bytes,
            batched_forwards: 0,
            prefilling: false,
        });
        Ok(Admit::Started(id))
    }

    /// Ids of `planned`'s prompts that `set` holds in its caches (`cached`), or will
    /// once its pending ids are fed (not `cached`), summed over the members that keep
    /// a prefix.
    fn shared_prefix(&self, set: &Set, planned: &Planned, cached: bool) -> usize {
        let ids_prompt = matches!(planned.request.prompt, super::request::Prompt::Ids(_));
        let plan = &planned.plan;
        plan.slots
            .iter()
            .zip(&plan.prompts)
            .filter(|(&s, _)| set.members[s].keeps_prefix(self.ens.prefix_cache, ids_prompt))
            .map(|(&s, p)| {
                let m = &set.members[s];
                match cached {
                    true => m.cached_prefix(p),
                    false => m
                        .committed()
                        .iter()
                        .zip(p)
                        .take_while(|(a, b)| a == b)
                        .count(),
                }
            })
            .sum()
    }

    /// Whether a running request is about to compute a longer common prefix with
    /// `planned`'s prompts than any member set holds (requests sharing a few-shot
    /// header that arrive together): after its round the new request copies it
    /// instead of computing it again.
    fn prefix_pending(&self, planned: &Planned) -> bool {
        // Fewer shared ids than this are cheaper to compute than a round's wait.
        const WORTH_A_ROUND: usize = 16;
        let held = self
            .sets
            .iter()
            .map(|s| self.shared_prefix(s, planned, true))
            .max()
            .unwrap_or(0);
        self.running
            .iter()
            .any(|r| self.shared_prefix(&self.sets[r.set], planned, false) >= held + WORTH_A_ROUND)
    }

    /// Lets go of kept member sets until `bytes` more fit the budget; whether they do.
    fn make_room(&mut self, bytes: u64) -> bool {
        let Some(budget) = self.options.kv_budget else {
            return true;
        };
        while self.kv_used() + bytes > budget {
            let oldest = self
                .sets
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, s)| !s.busy && s.held > 0)
                .min_by_key(|(_, s)| s.used_at)
                .map(|(i, _)| i);
            let Some(i) = oldest else {
                return false;
            };
            self.drop_set(i);
        }
        true
    }

    /// Removes member set `i` (never the ensemble's own), renumbering the running
    /// requests' sets.
    fn drop_set(&mut self, i: usize) {
        self.sets.remove(i);
        for r in &mut self.running {
            if r.set > i {
                r.set -= 1;
            }
        }
    }

    /// An idle member set for `planned`: the one holding the longest common prefix of
    /// its prompts (where the members keep one), else the ensemble's own or the most
    /// recently used; a new fork while the batch may grow.
    fn free_set(&mut self, planned: &Planned) -> Option<usize> {
        let ids_prompt = matches!(planned.request.prompt, super::request::Prompt::Ids(_));
        let prefix_cache = self.ens.prefix_cache;
        let prefix = |set: &Set| self.shared_prefix(set, planned, true);
        let best = self
            .sets
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .max_by_key(|(i, s)| (prefix(s), *i == 0, s.used_at))
            .map(|(i, _)| i);
        // A kept set that shares nothing with the prompt is kept for another one
        // while the batch may still grow.
        let worth_forking = match best {
            None => true,
            Some(i) => i != 0 && prefix(&self.sets[i]) == 0,
        };
        if best.is_some() && !worth_forking {
            return best;
        }
        if self.forkable && self.sets.len() < self.options.max_batch.max(1) {
            // The new set starts from a copy of the longest common prefix any set holds
            // (a running request's included) instead of prefilling it again.
            let source = (0..self.sets.len())
                .max_by_key(|&i| (prefix(&self.sets[i]), i == 0))
                .unwrap_or(0);
            let plan = &planned.plan;
            let forks: Option<Vec<Member>> = self.sets[source]
                .members
                .iter()
                .enumerate()
                .map(|(slot, m)| {
                    let keep = plan
                        .slots
                        .iter()
                        .position(|&s| s == slot)
                        .filter(|_| m.keeps_prefix(prefix_cache, ids_prompt))
                        .map_or(0, |i| m.cached_prefix(&plan.prompts[i]));
                    match keep {
                        0 => m.fork(),
                        _ => m.fork_with_prefix(keep),
                    }
                })
                .collect();
            match forks {
                Some(members) => {
                    self.sets.push(Set {
                        members,
                        busy: false,
                        held: 0,
                        used_at: 0,
                    });
                    return Some(self.sets.len() - 1);
                }
                None => {
                    tracing::info!(
                        "a member cannot share its weights with a fork: requests decode one at a time"
                    );
                    self.forkable = false;
                }
            }
        }
        best
    }

    /// One round: every member slot's batched forward over the running requests that
    /// need it, then each request's step. Events go to `sink` with the request's id; a
    /// sink answering [`Flow::Stop`] ends that request (it finishes as cancelled).
    /// Requests that ended, with an error or not, are in the round's `finished`; an
    /// error in one request leaves the others running.
    pub fn step(&mut self, sink: &mut dyn FnMut(SeqId, &Event) -> Flow) -> Round {
        self.rounds += 1;
        let mut round = Round::default();
        let t0 = Instant::now();
        self.forward_together();
        let forwarded = Instant::now();
        round.forward_ms = (forwarded - t0).as_secs_f64() * 1e3;
        let mut events = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            if std::mem::take(&mut r.prefilling) {
                round.prefilling += 1;
                i += 1;
                continue;
            }
            round.stepped += 1;
            let members = &mut self.sets[r.set].members;
            events.clear();
            let done = match r.seq.step(members, &mut self.ens.lookups, &mut events) {
                Ok(done) => done,
                Err(e) => {
                    let r = self.running.remove(i);
                    self.sets[r.set].members.iter_mut().for_each(Member::reset);
                    self.release(r.set, 0);
                    round.finished.push(Finished {
                        id: r.id,
                        result: Err(e),
                    });
                    continue;
                }
            };
            let id = r.id;
            // Every event is delivered, even after the sink asked to stop.
            let mut stop = false;
            for e in events.drain(..) {
                stop |= sink(id, &e) == Flow::Stop;
            }
            if !done && stop {
                r.seq.cancel(&mut events);
                for e in events.drain(..) {
                    sink(id, &e);
                }
            }
            if done || stop {
                let r = self.running.remove(i);
                round.finished.push(self.finish(r, sink));
                continue;
            }
            i += 1;
        }
        round.steps_ms = forwarded.elapsed().as_secs_f64() * 1e3;
        round
    }

    /// Ends request `id` now (as cancelled), delivering its last events to `sink`;
    /// the others are not touched. `None` when no such request runs.
    pub fn cancel(
        &mut self,
        id: SeqId,
        sink: &mut dyn FnMut(SeqId, &Event) -> Flow,
    ) -> Option<Finished> {
        let i = self.running.iter().position(|r| r.id == id)?;
        let mut r = self.running.remove(i);
        let mut events = Vec::new();
        r.seq.cancel(&mut events);
        for e in &events {
            sink(id, e);
        }
        Some(self.finish(r, sink))
    }

    /// Ends every running request with no generation, forgetting what their members
    /// hold: after a panic inside a round, nothing they left is trusted. Returns their
    /// ids.
    pub fn abandon_all(&mut self) -> Vec<SeqId> {
        let ids = self.running();
        for r in std::mem::take(&mut self.running) {
            self.sets[r.set].members.iter_mut().for_each(Member::reset);
            self.release(r.set, 0);
        }
        ids
    }

    fn finish(&mut self, r: Running, sink: &mut dyn FnMut(SeqId, &Event) -> Flow) -> Finished {
        let (mut generation, finish) = r.seq.finish(&self.sets[r.set].members);
        generation.batched_forwards = r.batched_forwards;
        sink(r.id, &Event::Finish(finish));
        self.release(r.set, r.kv_bytes);
        Finished {
            id: r.id,
            result: Ok(generation),
        }
    }

    /// [`Ensemble::score_prompt`] on an idle member set, between rounds (the running
    /// requests wait for it); `None` while every set is busy.
    pub fn score_prompt(
        &mut self,
        request: &Request,
        alternatives: usize,
    ) -> Option<Result<Vec<super::score::PromptToken>>> {
        let set = self.sets.iter().position(|s| !s.busy)?;
        std::mem::swap(&mut self.ens.members, &mut self.sets[set].members);
        let out = self.ens.score_prompt(request, alternatives);
        std::mem::swap(&mut self.ens.members, &mut self.sets[set].members);
        let members = &mut self.sets[set].members;
        if out.is_err() {
            members.iter_mut().for_each(Member::reset);
        }
        let held = members
            .iter()
            .map(|m| m.cached() as u64 * m.kv_bytes_per_token())
            .sum();
        self.release(set, held);
        Some(out)
    }

    fn release(&mut self, set: usize, held: u64) {
        let s = &mut self.sets[set];
        s.busy = false;
        s.held = held;
        s.used_at = self.rounds;
    }

    /// For every member slot, one batched forward of the pending ids of every running
    /// request whose member there needs one (a prompt's next chunk at most); each
    /// request's next step counts the call's time as its member's forward. A slot
    /// needed by a single request with nothing to cut, or whose batched forward fails
    /// (a model off the exact CPU path), is left to the step.
    fn forward_together(&mut self) {
        let slots = self.sets.first().map_or(0, |s| s.members.len());
        let chunk = self.options.prefill_chunk;
        for slot in 0..slots {
            let mut parts = Vec::new();
            let mut owners = Vec::new();
            let mut cut = false;
            // Each running request has a set of its own: borrow them one by one.
            let mut sets: Vec<Option<&mut Set>> = self.sets.iter_mut().map(Some).collect();
            for (b, r) in self.running.iter().enumerate() {
                if !r.seq.forwards_first(slot) {
                    continue;
                }
                let Some(set) = sets[r.set].take() else {
                    continue;
                };
                if let Some((lm, ids, whole)) = set.members[slot].batch_part(chunk) {
                    cut |= !whole;
                    parts.push((lm, ids));
                    owners.push(b);
                }
            }
            if parts.len() < 2 && !cut {
                continue;
            }
            let t0 = Instant::now();
            let result = tutti_models::forward_batch(&mut parts);
            drop(parts);
            drop(sets);
            let Ok(logits) = result else {
                continue;
            };
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            for (b, l) in owners.into_iter().zip(&logits) {
                let r = &mut self.running[b];
                match self.sets[r.set].members[slot].set_batched(l) {
                    Ok(true) => {}
                    Ok(false) => r.prefilling = true,
                    // The step forwards the member again and meets the error there.
                    Err(_) => continue,
                }
                r.batched_forwards += 1;
                r.seq.add_batched_ms(slot, ms);
            }
        }
    }
}
