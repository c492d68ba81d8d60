//! What a generation tells its caller while it runs ([`Event`], delivered to a [`Sink`]
//! or yielded by [`crate::engine::Stream`]) and what it returns when it ends
//! ([`Generation`]).

use serde::Serialize;

/// Something that happened during a generation, in order: per step a [`Event::Step`],
/// then [`Event::Text`] whenever text became safe to show, and one [`Event::Finish`].
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Step(StepEvent),
    /// Text released: complete UTF-8 that can no longer turn into a stop string. The
    /// concatenation of all text events is [`Generation::text`].
    Text(String),
    Finish(Finish),
}

/// Whether generation goes on after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End the generation after this event ([`StopReason::Cancelled`]).
    Stop,
}

/// Receives the events of a generation. Closures `FnMut(&Event) -> Flow` are sinks.
pub trait Sink {
    fn event(&mut self, event: &Event) -> Flow;
}

impl<F: FnMut(&Event) -> Flow> Sink for F {
    fn event(&mut self, event: &Event) -> Flow {
        self(event)
    }
}

/// A sink that ignores every event (the caller wants only the [`Generation`]).
pub struct Discard;

impl Sink for Discard {
    fn event(&mut self, _: &Event) -> Flow {
        Flow::Continue
    }
}

/// A candidate of the combined distribution.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    /// The candidate's exact bytes (empty for end of sequence).
    pub bytes: Vec<u8>,
    /// End of sequence (matched by role across members, whatever its bytes).
    pub eos: bool,
    /// Its probability under the combined distribution (for one member: the member's
    /// own probability at the request's temperature).
    pub prob: f32,
    /// `(member slot, that member's own id)` for each member that proposed it (for one
    /// member: the token id).
    pub proposers: Vec<(usize, u32)>,
}

impl Choice {
    /// Natural log of [`Choice::prob`] (−∞ for 0).
    pub fn logprob(&self) -> f32 {
        self.prob.ln()
    }

    /// The bytes as text (lossy for a partial UTF-8 sequence).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// One member's part in a step.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberStep {
    /// The member's slot in the ensemble.
    pub slot: usize,
    /// Whether its distribution entered this step (the gate may skip it).
    pub consulted: bool,
    /// Its own id for the chosen candidate, when it proposed it.
    pub id: Option<u32>,
    /// Its probability of the chosen candidate (when consulted).
    pub prob: Option<f32>,
}

/// One decoding step.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepEvent {
    /// 0 for the first step (which also processed the prompt).
    pub index: usize,
    pub chosen: Choice,
    /// The most probable candidates of the combined distribution, most probable first
    /// (as many as [`crate::engine::Request::alternatives`] asked).
    pub alternatives: Vec<Choice>,
    /// Candidates in the union this step.
    pub union_size: usize,
    /// One entry per taking-part member, in request order.
    pub members: Vec<MemberStep>,
    pub time: StepTime,
    /// The step's attribution record, when the request asked for it
    /// ([`crate::engine::Request::explain`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Box<crate::engine::explain::StepExplain>>,
}

/// Time split of one step, in milliseconds.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepTime {
    /// Forward time per taking-part member (0 when the member was not run this step).
    pub forward_ms: Vec<f64>,
    /// Top-k, union, cross-member lookups, combination and the choice.
    pub align_combine_ms: f64,
    /// Commit of the chosen bytes into every member (re-encoding, rollback).
    pub feedback_ms: f64,
    /// Making the step's attribution record (0 unless the request asked for one).
    pub explain_ms: f64,
    /// Wall time of the whole step.
    pub total_ms: f64,
    /// Whether more than one member was consulted.
    pub ensembled: bool,
}

/// Why generation ended.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence candidate won.
    Eos,
    /// A stop string appeared in the text.
    StopString,
    /// The token budget was used up.
    MaxTokens,
    /// A member's context is full.
    ContextLength,
    /// The sink asked to stop.
    Cancelled,
}

/// Token counts of a generation.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens of the first taking-part member (each member counts its own in
    /// [`MemberReport::prompt_tokens`]).
    pub prompt_tokens: usize,
    /// Chosen candidates that produced text (a winning EOS is not counted).
    pub completion_tokens: usize,
}

/// The last event.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finish {
    pub reason: StopReason,
    pub usage: Usage,
}

/// One member's part of a [`Generation`].
#[non_exhaustive]
#[derive(Clone, Debug, Serialize)]
pub struct MemberReport {
    pub slot: usize,
    pub name: String,
    pub weight: f32,
    pub prompt_tokens: usize,
    /// Generated ids in the member's own tokenization.
    pub ids: Vec<u32>,
    pub rollbacks: usize,
    pub rolled_back_tokens: usize,
    /// Total forward time of this member.
    pub forward_ms: f64,
    /// Requests sent to the member's server during this generation (`None` for a
    /// member in this process).
    pub round_trips: Option<usize>,
    /// Why the member left the generation ([`super::OnMemberFailure::Drop`]), if it did.
    pub dropped: Option<String>,
}

/// Aggregate timings of a [`Generation`], in milliseconds.
#[non_exhaustive]
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    /// The first step (prompt processing and the first token).
    pub prefill_ms: f64,
    pub total_ms: f64,
    /// Generated tokens per second, the first token excluded.
    pub tokens_per_s: f64,
    /// Milliseconds per generated token, the first token excluded.
    pub ms_per_token: f64,
    pub align_combine_ms: f64,
    pub feedback_ms: f64,
}

/// The result of one generation.
#[non_exhaustive]
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub text: String,
    pub stop_reason: StopReason,
    /// Chosen tokens (steps that produced text; a winning EOS is not counted).
    pub tokens: usize,
    /// Steps where more than one member was consulted.
    pub ensembled_steps: usize,
    /// `ensembled_steps` / steps.
    pub ensembled_share: f64,
    pub members: Vec<MemberReport>,
    pub timing: Timing,
    pub steps: Vec<StepTime>,
    /// Member forwards that ran in one batched forward with other requests' (under
    /// [`Ensemble::generate_batch`](crate::engine::Ensemble::generate_batch)); 0 alone.
    pub batched_forwards: usize,
}

impl Generation {
    /// Total rollbacks over all members.
    pub fn rollbacks(&self) -> usize {
        self.members.iter().map(|m| m.rollbacks).sum()
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.members.first().map_or(0, |m| m.prompt_tokens),
            completion_tokens: self.tokens,
        }
    }
}
