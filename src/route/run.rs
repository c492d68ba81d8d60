//! Running a route: members answer one after another through the Knowledge Transfer
//! Prompt until the policy stops or `max_steps` is reached; the last answer is the
//! route's answer.
//!
//! [`RouteContext`] holds what every route over one ensemble shares: the decoding
//! settings (a [`Request`] whose prompt and members each step replaces), the state
//! encoder and a memo of answers. Decoding is deterministic under greedy settings, so
//! the same member asked the same prompt answers the same: training and benchmarking
//! revisit many states and ask each member each prompt once.

use std::collections::HashMap;
use std::time::Instant;

use crate::engine::{Ensemble, Prompt, Request, Sampling};

use super::encoder::StateEncoder;
use super::policy::Policy;
use super::prompt::state_text;
use super::question::RouteQuestion;
use super::RouteError;

/// A member's answer to one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    /// Generation wall time when it was generated, ms.
    pub ms: f64,
}

/// One step of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteStep {
    pub member: usize,
    pub name: String,
    pub answer: String,
    /// Generation time of this step's answer, ms.
    pub ms: f64,
    /// The member's parameters (0 when unknown: a served member).
    pub parameters: u64,
    /// The terminator's probability that the previous answer was good enough (learned
    /// policies, after the first step).
    pub stop_prob: Option<f32>,
}

/// A finished route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteOutcome {
    /// The last member's answer (empty when the policy answered nothing).
    pub answer: String,
    pub steps: Vec<RouteStep>,
    /// Parameters invoked: the sum over the steps.
    pub parameters: u64,
    /// Generation time of the steps plus the policy's own time (encoding, heads), ms.
    pub ms: f64,
    /// The policy's own time, ms.
    pub policy_ms: f64,
}

/// Limits of a route.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteSettings {
    /// Longest route (paper: 4).
    pub max_steps: usize,
    /// The terminator stops a learned route when its probability reaches this.
    pub stop_at: f32,
}

impl Default for RouteSettings {
    fn default() -> RouteSettings {
        RouteSettings {
            max_steps: 4,
            stop_at: 0.5,
        }
    }
}

/// Longest route accepted.
pub const MAX_STEPS: usize = 16;

impl RouteSettings {
    pub fn validate(&self) -> Result<(), RouteError> {
        if self.max_steps == 0 || self.max_steps > MAX_STEPS {
            return Err(RouteError::Settings(format!(
                "--max-steps must be between 1 and {MAX_STEPS} (got {})",
                self.max_steps
            )));
        }
        if !(0.0..=1.0).contains(&self.stop_at) {
            return Err(RouteError::Settings(format!(
                "--stop-at is a probability between 0 and 1 (got {})",
                self.stop_at
            )));
        }
        Ok(())
    }
}

/// Routes over one ensemble: settings, encoder, memo.
pub struct RouteContext<'e> {
    ens: &'e mut Ensemble,
    base: Request,
    encoder: Option<StateEncoder>,
    memo: HashMap<(usize, String), Answer>,
    generated: usize,
}

impl<'e> RouteContext<'e> {
    /// Each step decodes with `base`'s settings (token budget, stops, sampling), its
    /// prompt replaced by the step's and its members by the step's member.
    pub fn new(
        ens: &'e mut Ensemble,
        base: Request,
        encoder: Option<StateEncoder>,
    ) -> Result<RouteContext<'e>, RouteError> {
        // Each step brings its own prompt: check the settings alone.
        let mut probe = base.clone();
        probe.prompt = Prompt::Raw("?".into());
        probe.validate()?;
        Ok(RouteContext {
            ens,
            base,
            encoder,
            memo: HashMap::new(),
            generated: 0,
        })
    }

    pub fn ensemble(&self) -> &Ensemble {
        self.ens
    }

    /// Member names in slot order.
    pub fn member_names(&self) -> Vec<String> {
        self.ens
            .members()
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    }

    /// Each member's parameters (0 when unknown).
    pub fn member_parameters(&self) -> Vec<u64> {
        self.ens
            .members()
            .iter()
            .map(|m| m.parameters().unwrap_or(0))
            .collect()
    }

    pub fn encoder(&self) -> Option<&StateEncoder> {
        self.encoder.as_ref()
    }

    /// Answers generated so far (the memo's misses).
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Member `slot`'s answer to `q` after `previous`; asked once per prompt when
    /// decoding is greedy.
    pub fn answer(
        &mut self,
        q: &RouteQuestion,
        previous: Option<&str>,
        slot: usize,
    ) -> Result<Answer, RouteError> {
        let prompt = q.prompt(previous);
        let key = (slot, format!("{prompt:?}"));
        let greedy = self.base.sampling == Sampling::Greedy;
        if greedy {
            if let Some(a) = self.memo.get(&key) {
                return Ok(a.clone());
            }
        }
        let mut request = self.base.clone().solo(slot);
        request.prompt = prompt;
        request.weights = None;
        if let Sampling::Sample { seed, .. } = &mut request.sampling {
            // Each answer its own draw: one seed for all would give every answer the
            // same random numbers. Numbered by answer, the route stays reproducible.
            *seed = crate::engine::derived_seed(*seed, self.generated as u64);
        }
        let out = self.ens.generate_quiet(&request)?;
        self.generated += 1;
        let answer = Answer {
            text: out.text.trim().to_string(),
            ms: out.timing.total_ms,
        };
        if greedy {
            self.memo.insert(key, answer.clone());
        }
        Ok(answer)
    }

    /// Records `answer` as member `slot`'s answer to `q` after `previous` (for instance
    /// from a bench row of that member alone), so that greedy routes do not ask again.
    pub fn remember(
        &mut self,
        q: &RouteQuestion,
        previous: Option<&str>,
        slot: usize,
        answer: Answer,
    ) {
        if self.base.sampling == Sampling::Greedy {
            self.memo
                .insert((slot, format!("{:?}", q.prompt(previous))), answer);
        }
    }

    /// The encoded state `[Q: x, A: previous]`.
    pub fn state(
        &mut self,
        q: &RouteQuestion,
        previous: Option<&str>,
    ) -> Result<Vec<f32>, RouteError> {
        let enc = self.encoder.as_mut().ok_or_else(|| {
            RouteError::Settings("a learned policy needs a state encoder (--encoder)".into())
        })?;
        enc.encode(&state_text(&q.question, previous))
    }

    /// Runs `policy` on `q`; `on_step` sees each step as it ends.
    pub fn run(
        &mut self,
        policy: &mut Policy,
        q: &RouteQuestion,
        settings: &RouteSettings,
        on_step: &mut dyn FnMut(&RouteStep),
    ) -> Result<RouteOutcome, RouteError> {
        settings.validate()?;
        let n = self.ens.members().len();
        let learned = matches!(policy, Policy::Learned(_));
        let mut steps: Vec<RouteStep> = Vec::new();
        let mut policy_ms = 0.0;
        for t in 0..settings.max_steps {
            let t0 = Instant::now();
            let previous = steps.last().map(|s| s.answer.clone());
            let state = if learned {
                Some(self.state(q, previous.as_deref())?)
            } else {
                None
            };
            let decision = policy.next(t, n, state.as_deref(), settings.stop_at)?;
            policy_ms += t0.elapsed().as_secs_f64() * 1e3;
            let Some(slot) = decision.member else {
                break;
            };
            let answer = self.answer(q, previous.as_deref(), slot)?;
            let member = self.ens.member(slot)?;
            let step = RouteStep {
                member: slot,
                name: member.name().to_string(),
                parameters: member.parameters().unwrap_or(0),
                answer: answer.text,
                ms: answer.ms,
                stop_prob: decision.stop_prob,
            };
            on_step(&step);
            steps.push(step);
        }
        Ok(RouteOutcome {
            answer: steps.last().map(|s| s.answer.clone()).unwrap_or_default(),
            parameters: steps.iter().map(|s| s.parameters).sum(),
            ms: steps.iter().map(|s| s.ms).sum::<f64>() + policy_ms,
            policy_ms,
            steps,
        })
    }
}
