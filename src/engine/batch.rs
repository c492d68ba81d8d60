//! Several requests decoded together: each request is a [`Sequence`] with members of its
//! own (forks of the ensemble's, over the same weights, with caches of their own), and
//! every step feeds each member slot's pending ids of all sequences through the model in
//! one batched forward (`tutti_models::forward_batch`). Each sequence then takes the
//! usual path: distributions, union, combination, choice, feedback.
//!
//! The batched forward gives every sequence the logits its own forward would
//! (batch-invariant numerics), so each request's answer is the one
//! [`Ensemble::generate`] gives it alone, bit for bit. Members that cannot be batched
//! (served members, GPU models, a slot one sequence alone needs) forward in the step as
//! usual.

use super::ensemble::Ensemble;
use super::error::{EngineError, Result};
use super::events::{Event, Generation};
use super::member::Member;
use super::request::Request;
use super::sequence::Sequence;

impl Ensemble {
    /// Generates for every request at once and returns their generations in order.
    /// Requests leave the batch as they finish; the others go on. Each answer is the one
    /// [`Ensemble::generate`] gives the request alone.
    pub fn generate_batch(&mut self, requests: &[Request]) -> Result<Vec<Generation>> {
        let mut sets = Vec::with_capacity(requests.len());
        for _ in requests {
            let forks: Option<Vec<Member>> = self.members.iter().map(Member::fork).collect();
            match forks {
                Some(f) => sets.push(f),
                None => {
                    // A member that cannot share its weights: one request at a time.
                    return requests.iter().map(|r| self.generate_quiet(r)).collect();
                }
            }
        }
        let mut runs = Vec::with_capacity(requests.len());
        for (request, members) in requests.iter().zip(sets.iter_mut()) {
            runs.push(Some(Sequence::start(members, request, false)?));
        }
        let mut out: Vec<Option<Generation>> = (0..requests.len()).map(|_| None).collect();
        let mut batched = vec![0; requests.len()];
        let mut events: Vec<Event> = Vec::new();
        while runs.iter().any(Option::is_some) {
            forward_together(&mut sets, &mut runs, &mut batched)?;
            for (b, slot) in runs.iter_mut().enumerate() {
                let Some(run) = slot.as_mut() else {
                    continue;
                };
                events.clear();
                if run.step(&mut sets[b], &mut self.lookups, &mut events)? {
                    if let Some(run) = slot.take() {
                        let mut generation = run.finish(&sets[b]).0;
                        generation.batched_forwards = batched[b];
                        out[b] = Some(generation);
                    }
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

/// For every member slot, one batched forward of the pending ids of every running
/// sequence whose member there needs one; each sequence's next step counts the call's
/// time as its member's forward. A slot needed by a single sequence, or whose batched
/// forward fails (a model off the exact CPU path), is left to the step.
fn forward_together(
    sets: &mut [Vec<Member>],
    runs: &mut [Option<Sequence>],
    batched: &mut [usize],
) -> Result<()> {
    let slots = sets.first().map_or(0, Vec::len);
    for slot in 0..slots {
        let mut parts = Vec::new();
        let mut owners = Vec::new();
        for (b, set) in sets.iter_mut().enumerate() {
            let Some(run) = &runs[b] else {
                continue;
            };
            if !run.takes_part(slot) {
                continue;
            }
            if let Some(part) = set[slot].batch_part() {
                parts.push(part);
                owners.push(b);
            }
        }
        if parts.len() < 2 {
            continue;
        }
        let t0 = std::time::Instant::now();
        let Ok(logits) = tutti_models::forward_batch(&mut parts) else {
            continue;
        };
        drop(parts);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        for (b, l) in owners.into_iter().zip(&logits) {
            sets[b][slot].set_batched(l)?;
            batched[b] += 1;
            if let Some(run) = runs[b].as_mut() {
                run.add_batched_ms(slot, ms);
            }
        }
    }
    Ok(())
}
