//! One request's state between steps: which members take part and with what weights,
//! the seeded sampler, the text so far with its stop strings, the steps' times and the
//! members that left. Each taking-part [`Member`] holds its own committed ids and cache
//! position; a [`Sequence`] says which members those are and gives them their prompts
//! ([`Sequence::start`]), and folds the finished run into a [`Generation`]
//! ([`Sequence::finish`]). The step itself is in `step.rs`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tutti_models::ModelTokenizer;

use super::combine::auto_weights;
use super::error::{EngineError, Result};
use super::events::{Event, Finish, Generation, MemberReport, StepTime, StopReason, Timing};
use super::member::Member;
use super::output::TextStream;
use super::request::{validate_weights, Gate, Prompt, Request, Sampling};

/// A request checked against the members, before any member starts on it: the
/// taking-part slots, their weights and their prompt ids.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub(super) slots: Vec<usize>,
    pub(super) weights: Vec<f32>,
    /// By index into `slots`.
    pub(super) prompts: Vec<Vec<u32>>,
}

impl Plan {
    /// Checks `request` (settings, members, weights) and encodes its prompts; fails
    /// on a prompt longer than a member's context.
    pub(super) fn new(members: &[Member], request: &Request) -> Result<Plan> {
        request.validate()?;
        let slots = taking_part(request, members.len())?;
        let weights = request_weights(request, &slots, members)?;
        let prompts = prompts(request, &slots, members)?;
        for (&s, p) in slots.iter().zip(&prompts) {
            let max = members[s].backend().context_length();
            if p.len() > max {
                return Err(EngineError::PromptTooLong {
                    member: members[s].name().to_string(),
                    tokens: p.len(),
                    max,
                });
            }
        }
        Ok(Plan {
            slots,
            weights,
            prompts,
        })
    }
}

/// The state of one generation between steps.
pub(super) struct Sequence {
    pub(super) request: Request,
    /// Taking-part member slots, in request order (the first is the gate's primary).
    pub(super) slots: Vec<usize>,
    pub(super) weights: Vec<f32>,
    /// Per taking-part member, a prefill already run by [`Sequence::start`] (auto
    /// weights), counted in the first step's time.
    pub(super) prefill_ms: Vec<f64>,
    pub(super) rng: StdRng,
    pub(super) text: TextStream,
    pub(super) steps: Vec<StepTime>,
    pub(super) stop: Option<StopReason>,
    started: Instant,
    /// By index into `slots`: why the member left the generation.
    pub(super) dropped: Vec<Option<String>>,
    /// By index into `slots`: the backend's round trips when the generation started.
    trips: Vec<Option<usize>>,
    /// By index into `slots`: batched forwards run for the next step before it started
    /// ([`Sequence::add_batched_ms`]), counted in that step's time.
    pub(super) batched_ms: Vec<f64>,
}

impl Sequence {
    /// Checks `request` against `members` and gives every taking-part member its
    /// prompt, keeping what the member holds of its common prefix with its last context
    /// where that gives the same bits ([`Member::keeps_prefix`]; with `prefix_cache`,
    /// a token-id prompt always does).
    pub(super) fn start(
        members: &mut [Member],
        request: &Request,
        prefix_cache: bool,
    ) -> Result<Sequence> {
        // The clock starts before the prompts: auto weights prefill here.
        let started = Instant::now();
        let plan = Plan::new(members, request)?;
        Sequence::begin(members, request, plan, prefix_cache, started)
    }

    /// [`Sequence::start`] with the request already checked and its prompts encoded.
    pub(super) fn begin(
        members: &mut [Member],
        request: &Request,
        plan: Plan,
        prefix_cache: bool,
        started: Instant,
    ) -> Result<Sequence> {
        let Plan {
            slots,
            weights,
            prompts,
        } = plan;
        let ids_prompt = matches!(request.prompt, Prompt::Ids(_));
        for (&s, ids) in slots.iter().zip(prompts) {
            if members[s].keeps_prefix(prefix_cache, ids_prompt) {
                members[s].start_keeping_prefix(ids)?;
            } else {
                members[s].start(ids)?;
            }
            members[s].set_top_n(request.top_k);
        }
        let mut prefill_ms = vec![0.0; slots.len()];
        let weights = match (request.auto_weights, slots.len() > 1) {
            (Some(tau), true) => scored_weights(members, &slots, &weights, tau, &mut prefill_ms)?,
            _ => weights,
        };
        let trips = slots
            .iter()
            .map(|&s| members[s].backend().round_trips())
            .collect();
        let seed = match request.sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Ok(Sequence {
            text: TextStream::new(&request.stop),
            request: request.clone(),
            dropped: vec![None; slots.len()],
            batched_ms: vec![0.0; slots.len()],
            slots,
            weights,
            prefill_ms,
            rng: StdRng::seed_from_u64(seed),
            steps: Vec::new(),
            stop: None,
            started,
            trips,
        })
    }

    /// Ends with `reason`, releasing the text held back.
    pub(super) fn end(&mut self, reason: StopReason, events: &mut Vec<Event>) -> bool {
        if self.stop.is_none() {
            self.stop = Some(reason);
            if let Some(text) = self.text.take_ready(true) {
                events.push(Event::Text(text));
            }
        }
        true
    }

    /// Counts `ms` of a batched forward that ran the member at `slot` for the next step.
    pub(super) fn add_batched_ms(&mut self, slot: usize, ms: f64) {
        if let Some(i) = self.slots.iter().position(|&s| s == slot) {
            self.batched_ms[i] += ms;
        }
    }

    /// Whether the member at `slot` takes part and has not left the generation.
    pub(super) fn takes_part(&self, slot: usize) -> bool {
        self.stop.is_none()
            && self
                .slots
                .iter()
                .position(|&s| s == slot)
                .is_some_and(|i| self.dropped[i].is_none())
    }

    /// Whether the step forwards the member at `slot` before it knows anything of this
    /// step (so a batched forward may run it first): every live taking-part member,
    /// except under `uncertain:T`, where the others follow the primary only when it is
    /// unsure.
    pub(super) fn forwards_first(&self, slot: usize) -> bool {
        if !self.takes_part(slot) {
            return false;
        }
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.dropped[i].is_none())
            .collect();
        let gated =
            matches!(self.request.gate, Gate::Uncertain(_)) && live.len() > 1 && live[0] == 0;
        !gated || self.slots[0] == slot
    }

    pub(super) fn cancel(&mut self, events: &mut Vec<Event>) {
        self.end(StopReason::Cancelled, events);
    }

    /// The generation's report, and the finish event that closes its stream.
    pub(super) fn finish(self, members: &[Member]) -> (Generation, Finish) {
        let stop_reason = self.stop.unwrap_or(StopReason::Cancelled);
        let member_reports = self.member_reports(members);
        let steps = self.steps;
        let tokens = steps.len() - usize::from(stop_reason == StopReason::Eos && !steps.is_empty());
        let ensembled_steps = steps.iter().filter(|s| s.ensembled).count();
        let generation = Generation {
            text: self.text.text(),
            stop_reason,
            tokens,
            ensembled_steps,
            ensembled_share: if steps.is_empty() {
                0.0
            } else {
                ensembled_steps as f64 / steps.len() as f64
            },
            members: member_reports,
            timing: timing(&steps, self.started),
            steps,
            batched_forwards: 0,
        };
        let finish = Finish {
            reason: stop_reason,
            usage: generation.usage(),
        };
        (generation, finish)
    }

    fn member_reports(&self, members: &[Member]) -> Vec<MemberReport> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, &slot)| {
                let m = &members[slot];
                MemberReport {
                    slot,
                    name: m.name().to_string(),
                    weight: self.weights[i],
                    prompt_tokens: m.prompt_len(),
                    ids: m.generated().to_vec(),
                    rollbacks: m.rollbacks(),
                    rolled_back_tokens: m.rolled_back_tokens(),
                    forward_ms: self.steps.iter().map(|s| s.forward_ms[i]).sum(),
                    round_trips: m
                        .backend()
                        .round_trips()
                        .zip(self.trips[i])
                        .map(|(now, then)| now - then),
                    dropped: self.dropped[i].clone(),
                }
            })
            .collect()
    }
}

/// The run's times: the first step carries the prompt's prefill, the rest are decode.
fn timing(steps: &[StepTime], started: Instant) -> Timing {
    let prefill_ms = steps.first().map_or(0.0, |s| s.total_ms);
    let rest_ms: f64 = steps.iter().skip(1).map(|s| s.total_ms).sum();
    let rest_n = steps.len().saturating_sub(1);
    Timing {
        prefill_ms,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
        tokens_per_s: if rest_ms > 0.0 {
            rest_n as f64 * 1e3 / rest_ms
        } else {
            0.0
        },
        ms_per_token: if rest_n > 0 {
            rest_ms / rest_n as f64
        } else {
            0.0
        },
        align_combine_ms: steps.iter().map(|s| s.align_combine_ms).sum(),
        feedback_ms: steps.iter().map(|s| s.feedback_ms).sum(),
    }
}

/// The taking-part member slots: the request's, each once, or every member.
fn taking_part(request: &Request, n: usize) -> Result<Vec<usize>> {
    let slots: Vec<usize> = request.members.clone().unwrap_or_else(|| (0..n).collect());
    if slots.is_empty() {
        return Err(EngineError::BadRequest("no member takes part".into()));
    }
    for (i, &s) in slots.iter().enumerate() {
        if s >= n {
            return Err(EngineError::NoSuchMember { index: s, len: n });
        }
        if slots[..i].contains(&s) {
            return Err(EngineError::BadRequest(format!(
                "member #{s} is listed twice"
            )));
        }
    }
    Ok(slots)
}

/// The request's weights, one per taking-part member, else the members' own.
fn request_weights(request: &Request, slots: &[usize], members: &[Member]) -> Result<Vec<f32>> {
    let weights = match (&request.weights, slots.len()) {
        (Some(w), k) if w.len() != k => {
            return Err(EngineError::BadWeights {
                weights: w.clone(),
                reason: format!("expected {k} weights, one per taking-part member"),
            })
        }
        (Some(w), _) => w.clone(),
        (None, 1) => vec![1.0],
        (None, _) => slots.iter().map(|&s| members[s].weight()).collect(),
    };
    validate_weights(&weights)?;
    Ok(weights)
}

/// Every taking-part member's prompt ids (checked against its vocabulary when given).
fn prompts(request: &Request, slots: &[usize], members: &[Member]) -> Result<Vec<Vec<u32>>> {
    let Prompt::Ids(ids) = &request.prompt else {
        return slots
            .iter()
            .map(|&s| encode_prompt(members[s].tokenizer(), members[s].name(), &request.prompt))
            .collect();
    };
    if ids.len() != slots.len() {
        return Err(EngineError::BadRequest(format!(
            "{} token-id prompts for {} taking-part members",
            ids.len(),
            slots.len()
        )));
    }
    for (p, &s) in ids.iter().zip(slots) {
        let len = members[s].vocab().len();
        if let Some(&bad) = p.iter().find(|&&id| id as usize >= len) {
            return Err(EngineError::BadRequest(format!(
                "token id {bad} is outside the vocabulary of member `{}` ({len} ids)",
                members[s].name()
            )));
        }
    }
    Ok(ids.clone())
}

/// Auto weights: every member prefills now, scoring the prompt on the way (the first
/// step then finds their logits current); each prefill's time goes into `prefill_ms`.
fn scored_weights(
    members: &mut [Member],
    slots: &[usize],
    prior: &[f32],
    tau: f32,
    prefill_ms: &mut [f64],
) -> Result<Vec<f32>> {
    let mut per_byte = Vec::with_capacity(slots.len());
    for (i, &s) in slots.iter().enumerate() {
        let (score, ms) = members[s].score_prompt()?;
        prefill_ms[i] = ms;
        let x = score.and_then(|sc| sc.nats_per_byte());
        if x.is_none() {
            tracing::warn!(
                "member `{}` cannot score its prompt; auto weights give it 0",
                members[s].name()
            );
        }
        per_byte.push(x.unwrap_or(f64::NAN));
    }
    let weights = auto_weights(prior, &per_byte, tau);
    tracing::debug!("auto weights {weights:?} from {per_byte:?} nats/byte");
    Ok(weights)
}

/// The ids a member with tokenizer `tok` (named `member` in errors) gets for a text or
/// chat prompt: what [`crate::engine::Ensemble::prompt_ids`] computes, for callers that
/// hold a copy of the tokenizer on another thread (a server checks prompt lengths
/// before queueing).
pub fn encode_prompt(tok: &ModelTokenizer, member: &str, prompt: &Prompt) -> Result<Vec<u32>> {
    let err = |source| EngineError::Model {
        member: member.to_string(),
        source,
    };
    let ids = match prompt {
        Prompt::Raw(text) => tok.encode_prompt(text).map_err(err)?,
        Prompt::Chat(messages) if tok.chat_template().is_some() => {
            let pairs: Vec<(String, String)> = messages
                .iter()
                .map(|m| (m.role.as_str().to_string(), m.content.clone()))
                .collect();
            let rendered = tok.apply_chat_template(&pairs).map_err(err)?;
            tok.encode(&rendered, true).map_err(err)?
        }
        Prompt::Chat(messages) => {
            let joined: Vec<&str> = messages
                .iter()
                .map(|m| m.content.as_str())
                .filter(|c| !c.is_empty())
                .collect();
            tok.encode_prompt(&joined.join("\n\n")).map_err(err)?
        }
        Prompt::Ids(_) => {
            return Err(EngineError::BadRequest(
                "token-id prompts are given per member, not encoded".into(),
            ))
        }
    };
    if ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    Ok(ids)
}
