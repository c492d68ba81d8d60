//! [`Ensemble`]: members, settings and the one generation loop (a single model is a
//! one-member ensemble and goes through the same loop).

use std::str::FromStr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tutti_models::{LoadOptions, Model};

use super::error::{EngineError, Result};
use super::mapper::Mapper;
use super::member::Member;
use super::output::TextStream;
use super::step::{choose, combine, CandidateKey, Sampling, StepDist, Union};
use crate::align::AlignMethod;

/// When the other members are consulted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Gate {
    /// Every step combines every member.
    Always,
    /// When the primary (first) member's top candidate has probability ≥ T, its choice
    /// is taken without running the others; they catch up in one forward later.
    Uncertain(f32),
}

impl FromStr for Gate {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Gate> {
        let s = s.trim();
        if s == "always" {
            return Ok(Gate::Always);
        }
        let t = s
            .strip_prefix("uncertain:")
            .and_then(|t| t.parse::<f32>().ok())
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| EngineError::BadGate(s.to_string()))?;
        Ok(Gate::Uncertain(t))
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gate::Always => f.write_str("always"),
            Gate::Uncertain(t) => write!(f, "uncertain:{t}"),
        }
    }
}

/// Whether prompts go through each member's chat template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptMode {
    /// The member's chat template when it has one, else the raw text (with a note).
    Chat,
    /// The text as is, with the member's BOS rule.
    Raw,
}

/// When generation ends (besides a winning EOS candidate, which always ends it).
#[derive(Clone, Debug, PartialEq)]
pub struct StopRules {
    pub max_tokens: usize,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
}

impl Default for StopRules {
    fn default() -> Self {
        StopRules {
            max_tokens: 256,
            stop_strings: Vec::new(),
        }
    }
}

/// How to load one member.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberSpec {
    /// Folder, `.gguf` file or `hf:ORG/NAME[@REV][/FILE.gguf]`.
    pub model: String,
    pub weight: f32,
    /// `auto`, `cpu`, `cuda:N`, `metal`.
    pub device: String,
    /// `auto`, `f32`, `f16`, `bf16`.
    pub dtype: String,
    /// Architecture override.
    pub arch: Option<String>,
}

impl MemberSpec {
    /// A member with weight 1 on the automatically chosen device.
    pub fn new(model: impl Into<String>) -> MemberSpec {
        MemberSpec {
            model: model.into(),
            weight: 1.0,
            device: "auto".into(),
            dtype: "auto".into(),
            arch: None,
        }
    }

    /// Parses `MODEL[:w=WEIGHT]`.
    pub fn parse(spec: &str) -> Result<MemberSpec> {
        match spec.rsplit_once(":w=") {
            Some((model, w)) => {
                let weight = w.parse::<f32>().map_err(|_| EngineError::BadSpec {
                    spec: spec.to_string(),
                    reason: format!("`{w}` is not a number (expected MODEL:w=WEIGHT)"),
                })?;
                if model.is_empty() {
                    return Err(EngineError::BadSpec {
                        spec: spec.to_string(),
                        reason: "no model before `:w=`".into(),
                    });
                }
                Ok(MemberSpec::new(model).weight(weight))
            }
            None => Ok(MemberSpec::new(spec)),
        }
    }

    pub fn weight(mut self, w: f32) -> MemberSpec {
        self.weight = w;
        self
    }

    pub fn device(mut self, d: impl Into<String>) -> MemberSpec {
        self.device = d.into();
        self
    }

    pub fn dtype(mut self, d: impl Into<String>) -> MemberSpec {
        self.dtype = d.into();
        self
    }

    pub fn arch(mut self, a: Option<String>) -> MemberSpec {
        self.arch = a;
        self
    }

    fn load(&self) -> Result<Model> {
        let err = |source| EngineError::Model {
            member: self.model.clone(),
            source,
        };
        let device = tutti_models::parse_device(&self.device).map_err(err)?;
        let dtype = tutti_models::parse_dtype(&self.dtype).map_err(err)?;
        let arch = self
            .arch
            .as_deref()
            .map(tutti_models::Architecture::parse)
            .transpose()
            .map_err(err)?;
        Model::load(
            &self.model,
            &LoadOptions {
                device,
                dtype,
                arch,
            },
        )
        .map_err(err)
    }
}

/// How the consulted members' distributions are averaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Combine {
    /// Weighted by the members' weights.
    #[default]
    Mean,
    /// Each member's weight is multiplied, at every step, by its own top probability:
    /// a member that is unsure at this step counts less than one that is sure.
    Confidence,
}

impl FromStr for Combine {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Combine> {
        match s.trim() {
            "mean" => Ok(Combine::Mean),
            "confidence" => Ok(Combine::Confidence),
            other => Err(EngineError::BadCombine(other.to_string())),
        }
    }
}

impl std::fmt::Display for Combine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Combine::Mean => "mean",
            Combine::Confidence => "confidence",
        })
    }
}

/// Decoding settings shared by all members.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub align: AlignMethod,
    pub top_k: usize,
    pub gate: Gate,
    pub combine: Combine,
    pub sampling: Sampling,
    pub stop: StopRules,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            align: AlignMethod::MinEd,
            top_k: 10,
            gate: Gate::Always,
            combine: Combine::Mean,
            sampling: Sampling::Greedy,
            stop: StopRules::default(),
        }
    }
}

impl Settings {
    /// Checks ranges; called by the builder and before each generation.
    pub fn validate(&self) -> Result<()> {
        if self.top_k == 0 {
            return Err(EngineError::BadTopK(0));
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
        Ok(())
    }
}

/// Checks a weight vector: finite, non-negative, not all zero.
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
    if weights.iter().all(|&w| w == 0.0) {
        return Err(bad("at least one weight must be positive"));
    }
    Ok(())
}

enum Source {
    Spec(MemberSpec),
    Loaded(Box<Model>, f32),
}

/// Builds an [`Ensemble`]: members (specs to load, or loaded models) and settings.
#[derive(Default)]
pub struct EnsembleBuilder {
    sources: Vec<Source>,
    settings: Settings,
}

impl EnsembleBuilder {
    /// Adds a member to be loaded by [`EnsembleBuilder::build`].
    pub fn member(mut self, spec: MemberSpec) -> Self {
        self.sources.push(Source::Spec(spec));
        self
    }

    /// Adds an already loaded model.
    pub fn model(mut self, model: Model, weight: f32) -> Self {
        self.sources.push(Source::Loaded(Box::new(model), weight));
        self
    }

    pub fn align(mut self, method: AlignMethod) -> Self {
        self.settings.align = method;
        self
    }

    pub fn top_k(mut self, k: usize) -> Self {
        self.settings.top_k = k;
        self
    }

    pub fn gate(mut self, gate: Gate) -> Self {
        self.settings.gate = gate;
        self
    }

    pub fn combine(mut self, combine: Combine) -> Self {
        self.settings.combine = combine;
        self
    }

    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.settings.sampling = sampling;
        self
    }

    pub fn max_tokens(mut self, n: usize) -> Self {
        self.settings.stop.max_tokens = n;
        self
    }

    pub fn stop_string(mut self, s: impl Into<String>) -> Self {
        self.settings.stop.stop_strings.push(s.into());
        self
    }

    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Validates the settings and weights (before any loading, so bad input fails
    /// fast), loads the members and prepares the alignment.
    pub fn build(self) -> Result<Ensemble> {
        self.build_with_progress(&mut |_| {})
    }

    /// Like [`EnsembleBuilder::build`], reporting each member as it starts loading.
    pub fn build_with_progress(self, progress: &mut dyn FnMut(&str)) -> Result<Ensemble> {
        if self.sources.is_empty() {
            return Err(EngineError::NoMembers);
        }
        self.settings.validate()?;
        let weights: Vec<f32> = self
            .sources
            .iter()
            .map(|s| match s {
                Source::Spec(spec) => spec.weight,
                Source::Loaded(_, w) => *w,
            })
            .collect();
        validate_weights(&weights)?;
        // Open every device before loading any weights: a bad device is a quick error.
        for s in &self.sources {
            if let Source::Spec(spec) = s {
                tutti_models::parse_device(&spec.device).map_err(|source| EngineError::Model {
                    member: spec.model.clone(),
                    source,
                })?;
            }
        }
        let t0 = Instant::now();
        let mut members = Vec::with_capacity(self.sources.len());
        for s in self.sources {
            let (model, w) = match s {
                Source::Spec(spec) => {
                    progress(&spec.model);
                    (spec.load()?, spec.weight)
                }
                Source::Loaded(m, w) => (*m, w),
            };
            members.push(Member::new(model, w)?);
        }
        let mut ens = Ensemble {
            members,
            mappers: Vec::new(),
            settings: self.settings,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        ens.prepare_mappers()?;
        ens.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(ens)
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence candidate won.
    Eos,
    /// A stop string appeared in the text.
    StopString,
    /// The token budget was used up.
    MaxTokens,
}

/// Time split of one step, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct StepTime {
    /// Forward time per member (0 when the member was not run this step).
    pub forward_ms: Vec<f64>,
    /// Softmax, top-k, union, cross-member lookups, combination and the choice.
    pub align_combine_ms: f64,
    /// Commit of the chosen bytes into every member (re-encoding, rollback).
    pub feedback_ms: f64,
    /// Wall time of the whole step.
    pub total_ms: f64,
    /// Whether more than one member was consulted.
    pub ensembled: bool,
}

/// One member's part of a [`Generation`].
#[derive(Clone, Debug, Serialize)]
pub struct MemberReport {
    pub name: String,
    pub weight: f32,
    pub prompt_tokens: usize,
    /// Generated ids in the member's own tokenization.
    pub ids: Vec<u32>,
    pub rollbacks: usize,
    pub rolled_back_tokens: usize,
    /// Total forward time of this member.
    pub forward_ms: f64,
}

/// Aggregate timings of a [`Generation`], in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    pub load_ms: f64,
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
}

impl Generation {
    /// Total rollbacks over all members.
    pub fn rollbacks(&self) -> usize {
        self.members.iter().map(|m| m.rollbacks).sum()
    }
}

/// Members decoding one text in lockstep.
pub struct Ensemble {
    members: Vec<Member>,
    mappers: Vec<Mapper>,
    settings: Settings,
    load_ms: f64,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("members", &self.members)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Ensemble {
    pub fn builder() -> EnsembleBuilder {
        EnsembleBuilder::default()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Mutable members, e.g. to check a member's KV state against a fresh prefill.
    pub fn members_mut(&mut self) -> &mut [Member] {
        &mut self.members
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes settings between generations (a different alignment rebuilds the
    /// lookups).
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        settings.validate()?;
        let realign = settings.align != self.settings.align;
        self.settings = settings;
        if realign {
            self.prepare_mappers()?;
        }
        Ok(())
    }

    /// Changes the members' weights.
    pub fn set_weights(&mut self, weights: &[f32]) -> Result<()> {
        validate_weights(weights)?;
        if weights.len() != self.members.len() {
            return Err(EngineError::BadWeights {
                weights: weights.to_vec(),
                reason: format!("expected {} weights, one per member", self.members.len()),
            });
        }
        for (m, &w) in self.members.iter_mut().zip(weights) {
            m.set_weight(w);
        }
        Ok(())
    }

    /// Milliseconds spent loading the members.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    fn prepare_mappers(&mut self) -> Result<()> {
        self.mappers = Vec::new();
        if self.members.len() > 1 {
            for slot in 0..self.members.len() {
                self.mappers
                    .push(Mapper::new(self.settings.align, &self.members, slot)?);
            }
        }
        Ok(())
    }

    /// Notes about how `mode` applies to each member (e.g. a member without a chat
    /// template gets the raw prompt), for the caller to show.
    pub fn prompt_notes(&self, mode: PromptMode) -> Vec<String> {
        if mode == PromptMode::Raw {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|m| m.model().tokenizer.chat_template().is_none())
            .map(|m| {
                format!(
                    "{} has no chat template; using the raw prompt (pass --raw to silence this)",
                    m.name()
                )
            })
            .collect()
    }

    /// Prompt ids of member `slot` for `text`.
    pub fn prompt_ids(&self, slot: usize, text: &str, mode: PromptMode) -> Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let m = self.member(slot)?;
        let tok = &m.model().tokenizer;
        let err = |source| EngineError::Model {
            member: m.name().to_string(),
            source,
        };
        let ids = match (mode, tok.chat_template().is_some()) {
            (PromptMode::Chat, true) => {
                let rendered = tok
                    .apply_chat_template(&[("user".to_string(), text.to_string())])
                    .map_err(err)?;
                tok.encode(&rendered, true).map_err(err)?
            }
            _ => tok.encode_prompt(text).map_err(err)?,
        };
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        Ok(ids)
    }

    fn member(&self, slot: usize) -> Result<&Member> {
        self.members.get(slot).ok_or(EngineError::NoSuchMember {
            index: slot,
            len: self.members.len(),
        })
    }

    /// Generates from `prompt` with every member; `on_text` receives text as soon as
    /// it is complete UTF-8 (and cannot be part of a stop string).
    pub fn generate(
        &mut self,
        prompt: &str,
        mode: PromptMode,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let active: Vec<usize> = (0..self.members.len()).collect();
        self.generate_with(&active, prompt, mode, on_text)
    }

    /// Generates with member `slot` alone (weight 1), through the same loop.
    pub fn generate_solo(
        &mut self,
        slot: usize,
        prompt: &str,
        mode: PromptMode,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.member(slot)?;
        self.generate_with(&[slot], prompt, mode, on_text)
    }

    fn generate_with(
        &mut self,
        active: &[usize],
        prompt: &str,
        mode: PromptMode,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let mut prompts = Vec::with_capacity(active.len());
        for &slot in active {
            prompts.push(self.prompt_ids(slot, prompt, mode)?);
        }
        self.generate_from_ids(active, prompts, on_text)
    }

    /// Generates from per-member prompt ids (`prompts[i]` for member `active[i]`).
    pub fn generate_from_ids(
        &mut self,
        active: &[usize],
        prompts: Vec<Vec<u32>>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.settings.validate()?;
        if active.is_empty() {
            return Err(EngineError::NoMembers);
        }
        for &slot in active {
            self.member(slot)?;
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(EngineError::EmptyPrompt);
        }
        let solo = active.len() == 1;
        let weights: Vec<f32> = if solo {
            vec![1.0]
        } else {
            active.iter().map(|&s| self.members[s].weight()).collect()
        };
        validate_weights(&weights)?;
        for (&slot, ids) in active.iter().zip(prompts) {
            self.members[slot].start(ids);
        }

        let settings = self.settings.clone();
        let mut rng = match settings.sampling {
            Sampling::Sample { seed, .. } => StdRng::seed_from_u64(seed),
            Sampling::Greedy => StdRng::seed_from_u64(0),
        };
        let mut stream = TextStream::new(&settings.stop.stop_strings);
        let mut steps: Vec<StepTime> = Vec::new();
        let mut stop_reason = StopReason::MaxTokens;
        let t_start = Instant::now();

        while steps.len() < settings.stop.max_tokens {
            let t_step = Instant::now();
            // 1. Forward: the members to consult run their pending ids, in parallel.
            let (consulted, forward_ms) = self.forward_step(active, &weights, &settings)?;
            let t_fwd = Instant::now();
            // 2–5. Top-k per member → union → combine → choose.
            let pick = self.pick(active, &consulted, &weights, &settings, &mut rng)?;
            let t_pick = Instant::now();
            let ensembled = consulted.iter().filter(|&&c| c).count() > 1;
            // 6. Feedback: every member commits the chosen bytes in its own tokens.
            let done = match &pick.key {
                CandidateKey::Eos => {
                    stop_reason = StopReason::Eos;
                    true
                }
                CandidateKey::Bytes(bytes) => {
                    for (i, &slot) in active.iter().enumerate() {
                        let own = if consulted[i] { pick.own[i] } else { None };
                        self.members[slot].commit(bytes, own)?;
                    }
                    let hit = stream.push(bytes);
                    if hit {
                        stop_reason = StopReason::StopString;
                    }
                    hit
                }
            };
            let t_end = Instant::now();
            steps.push(StepTime {
                forward_ms,
                align_combine_ms: (t_pick - t_fwd).as_secs_f64() * 1e3,
                feedback_ms: (t_end - t_pick).as_secs_f64() * 1e3,
                total_ms: (t_end - t_step).as_secs_f64() * 1e3,
                ensembled,
            });
            if let Some(text) = stream.take_ready(done) {
                on_text(&text);
            }
            if done {
                break;
            }
        }
        if let Some(text) = stream.take_ready(true) {
            on_text(&text);
        }
        let total_ms = t_start.elapsed().as_secs_f64() * 1e3;
        Ok(self.report(
            active,
            &weights,
            stream.text(),
            stop_reason,
            steps,
            total_ms,
        ))
    }

    /// Runs the forwards of one step and says which members are consulted. Under
    /// [`Gate::Uncertain`] the primary runs first and the others only when it is unsure.
    fn forward_step(
        &mut self,
        active: &[usize],
        weights: &[f32],
        settings: &Settings,
    ) -> Result<(Vec<bool>, Vec<f64>)> {
        let mut forward_ms = vec![0.0; active.len()];
        let all = vec![true; active.len()];
        let threshold = match settings.gate {
            Gate::Uncertain(t) if active.len() > 1 => t,
            _ => {
                forward_parallel(&mut self.members, active, &all, &mut forward_ms)?;
                return Ok((all, forward_ms));
            }
        };
        let mut first = vec![false; active.len()];
        first[0] = true;
        forward_parallel(&mut self.members, active, &first, &mut forward_ms)?;
        let primary = &self.members[active[0]];
        let top = primary
            .step_distribution(settings.sampling.temperature(), 1)?
            .map(|d| d.top_k(primary.vocab(), 1))
            .unwrap_or_default();
        let confident = top.first().is_some_and(|&(_, p)| p >= threshold);
        // A zero-weight primary must not decide alone.
        if confident && weights[0] > 0.0 {
            return Ok((first, forward_ms));
        }
        let rest: Vec<bool> = (0..active.len()).map(|i| i > 0).collect();
        forward_parallel(&mut self.members, active, &rest, &mut forward_ms)?;
        Ok((all, forward_ms))
    }

    /// Top-k per consulted member → union by bytes → each member's probability of each
    /// candidate → weighted average → choice.
    fn pick(
        &mut self,
        active: &[usize],
        consulted: &[bool],
        weights: &[f32],
        settings: &Settings,
        rng: &mut StdRng,
    ) -> Result<Pick> {
        let temperature = settings.sampling.temperature();
        let members = &self.members;
        let mut dists: Vec<Option<StepDist>> = Vec::with_capacity(active.len());
        for (&slot, &c) in active.iter().zip(consulted) {
            dists.push(if c {
                members[slot].step_distribution(temperature, settings.top_k)?
            } else {
                None
            });
        }
        let mut union = Union::default();
        // Each member's top candidate probability (its confidence at this step).
        let mut top_prob = vec![0.0f32; active.len()];
        for (i, d) in dists.iter().enumerate() {
            if let Some(d) = d {
                let m = &members[active[i]];
                let top = d.top_k(m.vocab(), settings.top_k);
                top_prob[i] = top.first().map_or(0.0, |&(_, p)| p);
                union.add(i, m.vocab(), &top);
            }
        }
        if union.is_empty() {
            return Err(EngineError::BadSampling(
                "no member proposed a candidate token".into(),
            ));
        }
        let mut probs: Vec<Vec<f32>> = Vec::with_capacity(active.len());
        let mut used_weights = Vec::with_capacity(active.len());
        for (i, d) in dists.iter().enumerate() {
            let Some(d) = d else { continue };
            let m = &members[active[i]];
            // Which of the member's ids stand for each candidate: its own proposal, its
            // EOS ids, or the aligned token; their probabilities are summed.
            let mut ids = Vec::new();
            let mut spans = Vec::with_capacity(union.len());
            for cand in &union.candidates {
                let start = ids.len();
                match (&cand.key, cand.proposed_by(i)) {
                    (_, Some(id)) => ids.push(id),
                    (CandidateKey::Eos, None) => ids.extend_from_slice(m.vocab().eos_ids()),
                    (CandidateKey::Bytes(_), None) => {
                        if let Some(mapper) = self.mappers.get_mut(active[i]) {
                            ids.extend(mapper.lookup(m, cand)?);
                        }
                    }
                }
                spans.push(start..ids.len());
            }
            let p: Vec<f32> = match d {
                StepDist::Host(d) => ids.iter().map(|&id| d.prob(id)).collect(),
                // One batched gather on the device instead of a lookup per id.
                StepDist::Tensor(d) => d.probs(&ids)?,
            };
            probs.push(spans.into_iter().map(|r| p[r].iter().sum()).collect());
            used_weights.push(match settings.combine {
                Combine::Mean => weights[i],
                Combine::Confidence => weights[i] * top_prob[i],
            });
        }
        if used_weights.iter().all(|&w| w == 0.0) {
            used_weights.iter_mut().for_each(|w| *w = 1.0);
        }
        let combined = combine(&probs, &used_weights);
        let chosen = choose(&combined, &settings.sampling, rng);
        let cand = &union.candidates[chosen];
        Ok(Pick {
            key: cand.key.clone(),
            own: (0..active.len()).map(|i| cand.proposed_by(i)).collect(),
        })
    }

    fn report(
        &self,
        active: &[usize],
        weights: &[f32],
        text: String,
        stop_reason: StopReason,
        steps: Vec<StepTime>,
        total_ms: f64,
    ) -> Generation {
        let tokens = steps.len() - usize::from(stop_reason == StopReason::Eos);
        let ensembled_steps = steps.iter().filter(|s| s.ensembled).count();
        let members = active
            .iter()
            .enumerate()
            .map(|(i, &slot)| {
                let m = &self.members[slot];
                MemberReport {
                    name: m.name().to_string(),
                    weight: weights[i],
                    prompt_tokens: m.prompt_len(),
                    ids: m.generated().to_vec(),
                    rollbacks: m.rollbacks(),
                    rolled_back_tokens: m.rolled_back_tokens(),
                    forward_ms: steps.iter().map(|s| s.forward_ms[i]).sum(),
                }
            })
            .collect();
        let prefill_ms = steps.first().map_or(0.0, |s| s.total_ms);
        let rest_ms: f64 = steps.iter().skip(1).map(|s| s.total_ms).sum();
        let rest_n = steps.len().saturating_sub(1);
        Generation {
            text,
            stop_reason,
            tokens,
            ensembled_steps,
            ensembled_share: if steps.is_empty() {
                0.0
            } else {
                ensembled_steps as f64 / steps.len() as f64
            },
            members,
            timing: Timing {
                load_ms: self.load_ms,
                prefill_ms,
                total_ms,
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
            },
            steps,
        }
    }
}

/// The chosen candidate and, per active member, the id it proposed for it.
struct Pick {
    key: CandidateKey,
    own: Vec<Option<u32>>,
}

/// Forwards the members `active[i]` with `run[i]`, one thread each when several run.
///
/// Members that all sit on the CPU run one after the other instead: each forward
/// already uses every core through candle's thread pool, and two concurrent forwards
/// fight over the same cores (measured on 2 cores: 58 ms/token in threads against
/// 40 ms/token in sequence for the demo pair).
fn forward_parallel(
    members: &mut [Member],
    active: &[usize],
    run: &[bool],
    ms: &mut [f64],
) -> Result<()> {
    let mut selected: Vec<(usize, &mut Member)> = members
        .iter_mut()
        .enumerate()
        .filter_map(|(slot, m)| {
            let i = active.iter().position(|&s| s == slot)?;
            run[i].then_some((i, m))
        })
        .collect();
    let all_cpu = selected.iter().all(|(_, m)| m.model().lm.device().is_cpu());
    if selected.len() <= 1 || all_cpu {
        for (i, m) in selected {
            ms[i] = m.forward_pending()?.1;
        }
        return Ok(());
    }
    let results: Vec<(usize, Result<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = selected
            .iter_mut()
            .map(|(i, m)| {
                let i = *i;
                (i, s.spawn(move || m.forward_pending().map(|(_, t)| t)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(i, h)| match h.join() {
                Ok(r) => (i, r),
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    for (i, r) in results {
        ms[i] = r?;
    }
    Ok(())
}
