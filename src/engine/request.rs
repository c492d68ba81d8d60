//! One generation call and every setting it carries: the prompt, the token budget, the
//! sampling rule, stop strings, and the ensemble knobs (weights, top-k, gate, combine
//! rule). The [`crate::Ensemble`] holds members and vocabulary maps only; two requests
//! with different settings can follow each other on one ensemble.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result, MAX_TOP_K};

/// What the members continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// The text as is, with each member's own BOS rule (no chat template).
    Raw(String),
    /// A conversation rendered through each member's chat template; a member without a
    /// template gets the message contents joined by blank lines.
    Chat(Vec<Message>),
    /// Token ids for each taking-part member (in the order of [`Request::members`]), in
    /// that member's own vocabulary.
    Ids(Vec<Vec<u32>>),
}

/// Who speaks a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name chat templates expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl FromStr for Role {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "system" | "developer" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(EngineError::BadRequest(format!(
                "unknown chat role `{other}`: expected system, user or assistant"
            ))),
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new(Role::Assistant, content)
    }
}

/// How the next candidate is chosen from the combined distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most probable candidate (ties: first in union order).
    Greedy,
    /// Members' softmax at `temperature`, then nucleus sampling with `top_p` over the
    /// combined distribution, from a generator seeded with `seed`.
    Sample {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

impl Sampling {
    /// The temperature of the members' softmax (1 under greedy decoding).
    pub fn temperature(&self) -> f32 {
        match *self {
            Sampling::Greedy => 1.0,
            Sampling::Sample { temperature, .. } => temperature,
        }
    }
}

/// The `n`-th seed derived from `base` (splitmix64 of `base` stepped n + 1 times):
/// neighbouring `n` give unrelated seeds. For callers that sample many generations from
/// one configured seed (a server's requests, a route's answers), so that each draws its
/// own numbers and the sequence still repeats for the same `base`.
pub fn derived_seed(base: u64, n: u64) -> u64 {
    let mut z = base.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Display for Sampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampling::Greedy => f.write_str("greedy"),
            Sampling::Sample {
                temperature,
                top_p,
                seed,
            } => write!(f, "temperature {temperature}, top-p {top_p}, seed {seed}"),
        }
    }
}

/// When the other members are consulted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Gate {
    /// Every step combines every member.
    Always,
    /// When the primary (first taking-part) member's top candidate has probability
    /// ≥ T, its choice is taken without running the others; they catch up in one
    /// forward when next consulted.
    Uncertain(f32),
    /// Every member runs, but the step combines only when the members' top candidates
    /// differ; when they all agree, that candidate is taken as it is.
    Disagree,
}

impl FromStr for Gate {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Gate> {
        let s = s.trim();
        match s {
            "always" => return Ok(Gate::Always),
            "disagree" => return Ok(Gate::Disagree),
            _ => {}
        }
        let t = s
            .strip_prefix("uncertain:")
            .and_then(|t| t.parse::<f32>().ok())
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| EngineError::BadGate(s.to_string()))?;
        Ok(Gate::Uncertain(t))
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Always => f.write_str("always"),
            Gate::Uncertain(t) => write!(f, "uncertain:{t}"),
            Gate::Disagree => f.write_str("disagree"),
        }
    }
}

/// How the consulted members' distributions over the union are combined at a step.
/// Every rule ends renormalised over the union; `docs/combination.md` in the repository
/// has the formulas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Combine {
    /// Weighted mean of the members' probabilities (linear pool).
    #[default]
    Mean,
    /// Linear pool where each member's weight is multiplied, at every step, by its own
    /// top probability: a member that is unsure at this step counts less.
    Confidence,
    /// Weighted geometric mean (log-linear pool): a candidate one member gives (almost)
    /// zero is vetoed. Probabilities are floored at `PRODUCT_FLOOR` (1e-6).
    Product,
    /// Each candidate's largest weighted member probability.
    Max,
    /// Linear pool where each member's weight is multiplied, at every step, by one minus
    /// the normalised entropy of its top-k: a flat member counts less than a sharp one.
    Entropy,
}

impl Combine {
    /// Every rule, in documentation order.
    pub const ALL: [Combine; 5] = [
        Combine::Mean,
        Combine::Confidence,
        Combine::Product,
        Combine::Max,
        Combine::Entropy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Combine::Mean => "mean",
            Combine::Confidence => "confidence",
            Combine::Product => "product",
            Combine::Max => "max",
            Combine::Entropy => "entropy",
        }
    }
}

impl FromStr for Combine {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Combine> {
        let s = s.trim();
        Combine::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| EngineError::BadCombine(s.to_string()))
    }
}

impl fmt::Display for Combine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Temperature of `--weights auto`, in nats per byte of prompt: a member whose
/// perplexity on the prompt is 0.1 nat/byte worse than the best member's gets
/// `e^(−0.1/τ)` of its weight.
pub const DEFAULT_AUTO_TAU: f32 = 0.1;

/// How weights are given on the command line and in files: `auto`, `auto:TAU`.
pub fn parse_auto_weights(s: &str) -> Result<f32> {
    let s = s.trim();
    let bad = || {
        EngineError::BadWeights {
        weights: Vec::new(),
        reason: format!(
            "`{s}`: expected `auto` or `auto:TAU` with TAU above 0 (fixed weights go in the member spec, MODEL:w=W)"
        ),
    }
    };
    match s {
        "auto" => Ok(DEFAULT_AUTO_TAU),
        _ => s
            .strip_prefix("auto:")
            .and_then(|t| t.parse::<f32>().ok())
            .filter(|t| t.is_finite() && *t > 0.0)
            .ok_or_else(bad),
    }
}

/// What a generation does when a member fails (a server that disappears, times out or
/// answers garbage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnMemberFailure {
    /// The generation fails with the member's error.
    #[default]
    Fail,
    /// The member leaves this generation and the others go on; the
    /// [`crate::engine::Generation`] reports it ([`crate::engine::MemberReport::dropped`]).
    /// The generation still fails when no member is left.
    Drop,
}

impl FromStr for OnMemberFailure {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<OnMemberFailure> {
        match s.trim() {
            "fail" => Ok(OnMemberFailure::Fail),
            "drop" => Ok(OnMemberFailure::Drop),
            other => Err(EngineError::BadRequest(format!(
                "on-member-failure must be `fail` or `drop` (got `{other}`)"
            ))),
        }
    }
}

impl fmt::Display for OnMemberFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnMemberFailure::Fail => "fail",
            OnMemberFailure::Drop => "drop",
        })
    }
}

/// The most top alternatives a step can report (as the OpenAI API's `top_logprobs`).
pub const MAX_ALTERNATIVES: usize = 20;

/// One generation call. Build it with [`Request::raw`], [`Request::chat`] or
/// [`Request::ids`] and the setters; every field has a sane default.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Request {
    pub prompt: Prompt,
    /// Most tokens to generate (default 256).
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Member slots taking part, in order (the first is the gate's primary). `None`:
    /// every member, in the ensemble's order.
    pub members: Option<Vec<usize>>,
    /// One weight per taking-part member. `None`: each member's own weight (a member
    /// running alone always has weight 1).
    pub weights: Option<Vec<f32>>,
    /// `Some(τ)`: weights from the prompt, once per request. Each member's perplexity
    /// on the prompt (nats per byte, from its prefill) sets its weight to
    /// `w · exp(−(x − x_best) / τ)`, `w` the weight above; see `auto_weights` in `combine.rs`.
    pub auto_weights: Option<f32>,
    /// Candidates each member proposes per step (default 10).
    pub top_k: usize,
    pub gate: Gate,
    pub combine: Combine,
    /// How many of the combined distribution's most probable candidates each step
    /// reports ([`crate::engine::StepEvent::alternatives`]); at most [`MAX_ALTERNATIVES`].
    pub alternatives: usize,
    /// What happens when a member fails during the generation (default: fail).
    pub on_member_failure: OnMemberFailure,
    /// Attach a per-token attribution record to every step
    /// ([`crate::engine::StepEvent::explain`]); the generated text is the same.
    pub explain: bool,
}

impl Request {
    fn with_prompt(prompt: Prompt) -> Request {
        Request {
            prompt,
            max_tokens: 256,
            sampling: Sampling::Greedy,
            stop: Vec::new(),
            members: None,
            weights: None,
            auto_weights: None,
            top_k: 10,
            gate: Gate::Always,
            combine: Combine::Mean,
            alternatives: 0,
            on_member_failure: OnMemberFailure::Fail,
            explain: false,
        }
    }

    /// Continue `text` as is (no chat template).
    pub fn raw(text: impl Into<String>) -> Request {
        Request::with_prompt(Prompt::Raw(text.into()))
    }

    /// Answer a conversation, through each member's chat template.
    pub fn chat(messages: Vec<Message>) -> Request {
        Request::with_prompt(Prompt::Chat(messages))
    }

    /// Continue token ids given per taking-part member.
    pub fn ids(ids: Vec<Vec<u32>>) -> Request {
        Request::with_prompt(Prompt::Ids(ids))
    }

    pub fn max_tokens(mut self, n: usize) -> Request {
        self.max_tokens = n;
        self
    }

    pub fn sampling(mut self, sampling: Sampling) -> Request {
        self.sampling = sampling;
        self
    }

    /// Seeded nucleus sampling at `temperature`.
    pub fn sample(self, temperature: f32, top_p: f32, seed: u64) -> Request {
        self.sampling(Sampling::Sample {
            temperature,
            top_p,
            seed,
        })
    }

    pub fn stop(mut self, s: impl Into<String>) -> Request {
        self.stop.push(s.into());
        self
    }

    /// Only these members take part, in this order.
    pub fn members(mut self, slots: Vec<usize>) -> Request {
        self.members = Some(slots);
        self
    }

    /// Member `slot` alone.
    pub fn solo(self, slot: usize) -> Request {
        self.members(vec![slot])
    }

    pub fn weights(mut self, weights: Vec<f32>) -> Request {
        self.weights = Some(weights);
        self
    }

    /// Weights from the members' perplexity on the prompt, with temperature `tau`
    /// (nats per byte; [`DEFAULT_AUTO_TAU`] is the command line's `--weights auto`).
    pub fn auto_weights(mut self, tau: f32) -> Request {
        self.auto_weights = Some(tau);
        self
    }

    pub fn top_k(mut self, k: usize) -> Request {
        self.top_k = k;
        self
    }

    pub fn gate(mut self, gate: Gate) -> Request {
        self.gate = gate;
        self
    }

    pub fn combine(mut self, combine: Combine) -> Request {
        self.combine = combine;
        self
    }

    pub fn alternatives(mut self, n: usize) -> Request {
        self.alternatives = n;
        self
    }

    /// Per-token attribution records on the step events ([`Request::explain`]).
    pub fn explain(mut self, on: bool) -> Request {
        self.explain = on;
        self
    }

    pub fn on_member_failure(mut self, policy: OnMemberFailure) -> Request {
        self.on_member_failure = policy;
        self
    }

    /// Checks every setting that does not depend on the ensemble (ranges, the prompt
    /// not being empty). [`crate::Ensemble::generate`] calls it too.
    pub fn validate(&self) -> Result<()> {
        if self.top_k == 0 || self.top_k > MAX_TOP_K {
            return Err(EngineError::BadTopK(self.top_k));
        }
        if let Gate::Uncertain(t) = self.gate {
            if !(0.0..=1.0).contains(&t) {
                return Err(EngineError::BadGate(self.gate.to_string()));
            }
        }
        if let Sampling::Sample {
            temperature, top_p, ..
        } = self.sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(EngineError::BadSampling(format!(
                    "temperature must be > 0 (got {temperature}); use greedy decoding for 0"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(EngineError::BadSampling(format!(
                    "top-p must be in (0, 1] (got {top_p})"
                )));
            }
        }
        if self.alternatives > MAX_ALTERNATIVES {
            return Err(EngineError::BadRequest(format!(
                "at most {MAX_ALTERNATIVES} alternatives per step can be reported (asked {})",
                self.alternatives
            )));
        }
        if let Some(w) = &self.weights {
            validate_weights(w)?;
        }
        if let Some(tau) = self.auto_weights {
            if !(tau.is_finite() && tau > 0.0) {
                return Err(EngineError::BadWeights {
                    weights: Vec::new(),
                    reason: format!("the auto-weight temperature must be above 0 (got {tau})"),
                });
            }
        }
        match &self.prompt {
            Prompt::Raw(t) if t.trim().is_empty() => return Err(EngineError::EmptyPrompt),
            Prompt::Chat(m) if m.iter().all(|m| m.content.trim().is_empty()) => {
                return Err(EngineError::EmptyPrompt)
            }
            Prompt::Ids(ids) if ids.is_empty() || ids.iter().any(Vec::is_empty) => {
                return Err(EngineError::EmptyPrompt)
            }
            _ => {}
        }
        Ok(())
    }
}

/// The largest weight accepted: weights are relative, and a cap far below `f32::MAX`
/// keeps their sums and products finite.
pub const MAX_WEIGHT: f32 = 1e6;

/// Checks a weight vector: finite, non-negative, at most [`MAX_WEIGHT`], not all zero.
pub fn validate_weights(weights: &[f32]) -> Result<()> {
    let bad = |reason: &str| EngineError::BadWeights {
        weights: weights.to_vec(),
        reason: reason.to_string(),
    };
    if weights.iter().any(|w| !w.is_finite()) {
        return Err(bad("weights must be finite numbers"));
    }
    if weights.iter().any(|&w| w < 0.0) {
        return Err(bad("weights must not be negative"));
    }
    if weights.iter().any(|&w| w > MAX_WEIGHT) {
        return Err(bad(&format!(
            "weights must be at most {MAX_WEIGHT} (only their ratios count)"
        )));
    }
    if !weights.is_empty() && weights.iter().all(|&w| w == 0.0) {
        return Err(bad("at least one weight must be positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let r = Request::raw("hi");
        assert_eq!((r.max_tokens, r.top_k, r.gate), (256, 10, Gate::Always));
        assert!(r.validate().is_ok());
        assert!(matches!(
            Request::raw("hi").top_k(0).validate(),
            Err(EngineError::BadTopK(0))
        ));
        assert!(Request::raw("  ").validate().is_err());
        // Weights whose sum overflows an f32 are refused with the reason.
        let huge = validate_weights(&[f32::MAX, f32::MAX])
            .unwrap_err()
            .to_string();
        assert!(huge.contains("at most"), "{huge}");
        assert!(validate_weights(&[MAX_WEIGHT, 1.0]).is_ok());
        assert!(Request::raw("a").sample(0.0, 1.0, 1).validate().is_err());
        assert!(Request::raw("a").sample(0.7, 1.5, 1).validate().is_err());
        assert!(Request::raw("a")
            .weights(vec![0.0, 0.0])
            .validate()
            .is_err());
        assert!(Request::raw("a")
            .weights(vec![1.0, -1.0])
            .validate()
            .is_err());
        assert!(Request::raw("a").alternatives(21).validate().is_err());
        assert!(Request::ids(vec![vec![]]).validate().is_err());
        assert!(Request::chat(vec![Message::system(""), Message::user("x")])
            .validate()
            .is_ok());
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            "uncertain:0.5".parse::<Gate>().unwrap(),
            Gate::Uncertain(0.5)
        );
        assert!("uncertain:1.5".parse::<Gate>().is_err());
        assert_eq!(
            "confidence".parse::<Combine>().unwrap(),
            Combine::Confidence
        );
        assert_eq!(parse_auto_weights("auto").unwrap(), DEFAULT_AUTO_TAU);
        assert_eq!(parse_auto_weights("auto:0.5").unwrap(), 0.5);
        assert!(parse_auto_weights("auto:0").is_err());
        assert!(parse_auto_weights("1,2").is_err());
        assert!(Request::raw("a").auto_weights(-1.0).validate().is_err());
        assert!("median".parse::<Combine>().is_err());
        for c in Combine::ALL {
            assert_eq!(c.to_string().parse::<Combine>().unwrap(), c);
        }
        assert_eq!("disagree".parse::<Gate>().unwrap(), Gate::Disagree);
        assert_eq!(Gate::Disagree.to_string(), "disagree");
        assert_eq!("developer".parse::<Role>().unwrap(), Role::System);
        assert!("robot".parse::<Role>().is_err());
    }
}
