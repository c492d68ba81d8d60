//! [`Ensemble`]: members and their vocabulary maps, built by [`EnsembleBuilder`], and
//! the one generation loop every request goes through (a single model is a one-member
//! ensemble). One step of the loop, top to bottom: the members forward their pending ids
//! ([`Member::forward_pending`], through their [`Backend`]) → each consulted member's
//! distribution and top-k ([`Member::distribution`]) → the union of candidates and every
//! member's probability of each ([`Step`], with [`TargetLookup`] for candidates a member
//! did not propose) → [`combine`] → [`choose`] → feedback ([`Member::commit`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tutti_models::{Architecture, DTypeSpec, DeviceSpec, LoadOptions, Model, ModelTokenizer};

use super::backend::{Backend, LocalModel};
use super::error::{EngineError, Result};
use super::events::{
    Choice, Discard, Event, Finish, Flow, Generation, MemberReport, MemberStep, Sink, StepEvent,
    StepTime, StopReason, Timing,
};
use super::member::{check_temperature, Member};
use super::output::TextStream;
use super::remote::RemoteSpec;
use super::request::{validate_weights, Gate, OnMemberFailure, Prompt, Request};
use super::step::{auto_weights, choose, combine, CandidateKey, Step};
use crate::align::cache::{Lookup, MapCache, Source};
use crate::align::lookup::{load_or_build, map_key, MapSide, RelRepSettings, TargetLookup};
use crate::align::relrep::RelRep;
use crate::align::{AlignError, AlignMethod};

/// How to load one member.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MemberSpec {
    /// Folder, `.gguf` file or `hf:ORG/NAME[@REV][/FILE.gguf]`; or a server:
    /// `openai+http://HOST:PORT/v1#MODEL` or `llamacpp+http://HOST:PORT`.
    pub model: String,
    pub weight: f32,
    /// The member's own softmax temperature, applied before combining (1 = as is).
    pub temperature: f32,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Architecture override.
    pub arch: Option<Architecture>,
    /// A served member's tokenizer (folder, tokenizer.json, GGUF or `hf:` spec).
    pub tokenizer: Option<String>,
    /// Environment variable holding a served member's bearer key.
    pub api_key_env: Option<String>,
    /// Greedy tokens a served member returns beyond the one asked for, per request
    /// (with `lookahead_auto`: the most, asked for only when measured to pay).
    pub lookahead: usize,
    /// Choose per request between no lookahead and `lookahead` (`:lookahead=auto`).
    pub lookahead_auto: bool,
    /// A served member's request timeout (default [`RemoteSpec::DEFAULT_TIMEOUT`]).
    pub timeout: Option<std::time::Duration>,
}

impl MemberSpec {
    /// A member with weight 1 on the automatically chosen device.
    pub fn new(model: impl Into<String>) -> MemberSpec {
        MemberSpec {
            model: model.into(),
            weight: 1.0,
            temperature: 1.0,
            device: DeviceSpec::Auto,
            dtype: DTypeSpec::Auto,
            arch: None,
            tokenizer: None,
            api_key_env: None,
            lookahead: 0,
            lookahead_auto: false,
            timeout: None,
        }
    }

    /// Parses `MODEL[:w=WEIGHT][:t=TEMPERATURE]` and, for a served member,
    /// `[:tok=TOKENIZER]`, `[:key=ENV_VAR]`, `[:lookahead=L]` and `[:timeout=SECONDS]`, in
    /// any order. Only these `:NAME=` suffixes are split off, so the colons of URLs
    /// (`http://h:8000`) and of `hf:` specs stay part of the model or tokenizer.
    pub fn parse(spec: &str) -> Result<MemberSpec> {
        const KEYS: [&str; 6] = [":w=", ":t=", ":tok=", ":key=", ":lookahead=", ":timeout="];
        let bad = |reason: String| EngineError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut rest = spec;
        let mut found: Vec<(&str, &str)> = Vec::new();
        while let Some((at, key)) = KEYS
            .iter()
            .filter_map(|k| rest.rfind(k).map(|at| (at, *k)))
            .max_by_key(|&(at, _)| at)
        {
            if found.iter().any(|(k, _)| *k == key) {
                return Err(bad(format!("`{key}` is given twice")));
            }
            found.push((key, &rest[at + key.len()..]));
            rest = &rest[..at];
        }
        if rest.is_empty() {
            return Err(bad("no model before the `:NAME=` settings".into()));
        }
        let mut out = MemberSpec::new(rest);
        let remote = RemoteSpec::is_remote(rest);
        for (key, value) in found {
            if key != ":w=" && key != ":t=" && !remote {
                return Err(bad(format!(
                    "`{key}` applies to served members (openai+http://… or llamacpp+http://…) only"
                )));
            }
            match key {
                ":w=" => {
                    out.weight = value.parse::<f32>().map_err(|_| {
                        bad(format!(
                            "`{value}` is not a number (expected MODEL:w=WEIGHT)"
                        ))
                    })?
                }
                ":t=" => {
                    let t = value
                        .parse::<f32>()
                        .ok()
                        .filter(|t| t.is_finite() && *t > 0.0)
                        .ok_or_else(|| {
                            bad(format!(
                                "the temperature must be a number above 0 (got `{value}`)"
                            ))
                        })?;
                    out.temperature = t;
                }
                ":tok=" => out.tokenizer = Some(value.to_string()),
                ":key=" => out.api_key_env = Some(value.to_string()),
                ":lookahead=" if value == "auto" => {
                    out.lookahead = RemoteSpec::AUTO_LOOKAHEAD;
                    out.lookahead_auto = true;
                }
                ":lookahead=" => {
                    out.lookahead = value.parse().map_err(|_| {
                        bad(format!(
                            "`{value}` is not a token count (expected :lookahead=L or \
                             :lookahead=auto)"
                        ))
                    })?
                }
                _ => {
                    let timeout = value
                        .parse()
                        .ok()
                        .and_then(timeout_of)
                        .ok_or_else(|| {
                            bad(format!(
                                "`{value}` is not a number of seconds above 0 and at most {MAX_TIMEOUT_S}"
                            ))
                        })?;
                    out.timeout = Some(timeout);
                }
            }
        }
        Ok(out)
    }

    /// The server settings of a served member (`None` for a model in this process).
    pub fn remote(&self) -> Option<Result<RemoteSpec>> {
        if !RemoteSpec::is_remote(&self.model) {
            return None;
        }
        Some(
            RemoteSpec::parse(&self.model, self.tokenizer.as_deref()).map(|mut r| {
                r.api_key_env = self.api_key_env.clone();
                r.lookahead = self.lookahead;
                r.lookahead_auto = self.lookahead_auto;
                if let Some(t) = self.timeout {
                    r.timeout = t;
                }
                r
            }),
        )
    }

    /// The member's own softmax temperature.
    pub fn temperature(mut self, t: f32) -> MemberSpec {
        self.temperature = t;
        self
    }

    pub fn tokenizer(mut self, t: impl Into<String>) -> MemberSpec {
        self.tokenizer = Some(t.into());
        self
    }

    pub fn api_key_env(mut self, var: impl Into<String>) -> MemberSpec {
        self.api_key_env = Some(var.into());
        self
    }

    pub fn lookahead(mut self, l: usize) -> MemberSpec {
        self.lookahead = l;
        self.lookahead_auto = false;
        self
    }

    /// Lookahead of up to `max` tokens, asked for only while measured round-trip and
    /// decode times say it saves time.
    pub fn lookahead_auto(mut self, max: usize) -> MemberSpec {
        self.lookahead = max;
        self.lookahead_auto = true;
        self
    }

    pub fn timeout(mut self, t: std::time::Duration) -> MemberSpec {
        self.timeout = Some(t);
        self
    }

    pub fn weight(mut self, w: f32) -> MemberSpec {
        self.weight = w;
        self
    }

    pub fn device(mut self, d: DeviceSpec) -> MemberSpec {
        self.device = d;
        self
    }

    pub fn dtype(mut self, d: DTypeSpec) -> MemberSpec {
        self.dtype = d;
        self
    }

    pub fn arch(mut self, a: Option<Architecture>) -> MemberSpec {
        self.arch = a;
        self
    }

    /// Errors name the member by its file or folder name (the model error that follows
    /// gives the full path).
    fn err(&self, source: tutti_models::Error) -> EngineError {
        let name = std::path::Path::new(&self.model)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.model.clone());
        EngineError::Model {
            member: name,
            source,
        }
    }

    /// What makes two local members the same loaded model (`None` for a served one).
    fn load_key(&self) -> Option<LoadKey> {
        if RemoteSpec::is_remote(&self.model) {
            return None;
        }
        Some(LoadKey {
            model: self.model.clone(),
            device: self.device,
            dtype: self.dtype,
            arch: self.arch,
        })
    }

    /// Loads the member's backend (connects to a served member's server).
    pub fn load(&self) -> Result<Box<dyn Backend>> {
        if let Some(remote) = self.remote() {
            return Ok(Box::new(remote?.connect()?));
        }
        let device = self.device.open().map_err(|e| self.err(e))?;
        let opts = LoadOptions {
            device,
            dtype: self.dtype.dtype(),
            arch: self.arch,
        };
        let model = Model::load(&self.model, &opts).map_err(|e| self.err(e))?;
        Ok(Box::new(LocalModel::new(model)))
    }
}

/// The load settings of a local member: members with equal keys share one set of weights.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoadKey {
    model: String,
    device: DeviceSpec,
    dtype: DTypeSpec,
    arch: Option<Architecture>,
}

/// What building an ensemble reports while it works (for progress displays; the
/// decisions themselves are also logged through `tracing`).
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildEvent<'a> {
    /// A member starts loading.
    Loading { slot: usize, spec: &'a str },
    /// A vocabulary map starts being built over `total` candidates of `from`.
    MapBuilding {
        from: &'a str,
        to: &'a str,
        method: AlignMethod,
        total: u64,
    },
    /// That map advanced by this many candidates (called from worker threads).
    MapProgress(u64),
    /// A map is ready.
    MapReady {
        from: &'a str,
        to: &'a str,
        method: AlignMethod,
        source: &'a Source,
        seconds: f64,
    },
    /// relrep without a full map is ready to map candidates as they appear: its
    /// preparation was made now ([`Source::Built`], and cached) or loaded from the cache.
    RelRepReady {
        from: &'a str,
        to: &'a str,
        source: &'a Source,
        seconds: f64,
    },
}

type Progress = Box<dyn Fn(&BuildEvent) + Send + Sync>;

enum MemberSource {
    Spec(MemberSpec),
    Backend(Box<dyn Backend>, f32, f32),
}

/// Where full vocabulary maps are kept between runs.
enum CacheChoice {
    /// `MapCache::from_env()` (`TUTTI_CACHE`, `XDG_CACHE_HOME`, `~/.cache`).
    Default,
    Dir(MapCache),
    None,
}

/// Builds an [`Ensemble`]: members (specs to load, or loaded models) and how their
/// vocabularies are aligned.
pub struct EnsembleBuilder {
    sources: Vec<MemberSource>,
    align: AlignMethod,
    relrep: RelRepSettings,
    cache: CacheChoice,
    full_maps: bool,
    progress: Option<Progress>,
}

impl Default for EnsembleBuilder {
    fn default() -> Self {
        EnsembleBuilder {
            sources: Vec::new(),
            align: AlignMethod::MinEd,
            relrep: RelRepSettings::default(),
            cache: CacheChoice::Default,
            full_maps: false,
            progress: None,
        }
    }
}

impl EnsembleBuilder {
    /// Adds a member to be loaded by [`EnsembleBuilder::build`].
    pub fn member(mut self, spec: MemberSpec) -> Self {
        self.sources.push(MemberSource::Spec(spec));
        self
    }

    /// Adds an already loaded model.
    pub fn model(self, model: Model, weight: f32) -> Self {
        self.backend(Box::new(LocalModel::new(model)), weight)
    }

    /// Adds a member behind any backend.
    pub fn backend(self, backend: Box<dyn Backend>, weight: f32) -> Self {
        self.backend_at(backend, weight, 1.0)
    }

    /// Adds a member behind any backend, with its own softmax temperature.
    pub fn backend_at(mut self, backend: Box<dyn Backend>, weight: f32, temperature: f32) -> Self {
        self.sources
            .push(MemberSource::Backend(backend, weight, temperature));
        self
    }

    /// How a member scores candidates it did not propose (default `min-ed`).
    pub fn align(mut self, method: AlignMethod) -> Self {
        self.align = method;
        self
    }

    /// Parameters of relrep maps.
    pub fn relrep(mut self, settings: RelRepSettings) -> Self {
        self.relrep = settings;
        self
    }

    /// Keeps full vocabulary maps in `cache` (default: the user cache directory).
    pub fn map_cache(mut self, cache: MapCache) -> Self {
        self.cache = CacheChoice::Dir(cache);
        self
    }

    /// Neither reads nor writes cached maps.
    pub fn no_map_cache(mut self) -> Self {
        self.cache = CacheChoice::None;
        self
    }

    /// Builds the full vocabulary maps that are not cached yet (and caches them), so
    /// that later ensembles of these members start without preparing any alignment.
    /// Minutes on a small CPU for relrep; off by default (candidates are then mapped as
    /// they appear, with the same results).
    pub fn full_maps(mut self, on: bool) -> Self {
        self.full_maps = on;
        self
    }

    /// Calls `f` as members load and maps are built.
    pub fn on_progress(mut self, f: impl Fn(&BuildEvent) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Checks the weights and devices (before any loading, so bad input fails fast),
    /// loads the members and prepares the alignment.
    pub fn build(self) -> Result<Ensemble> {
        if self.sources.is_empty() {
            return Err(EngineError::NoMembers);
        }
        let weights: Vec<f32> = self
            .sources
            .iter()
            .map(|s| match s {
                MemberSource::Spec(spec) => spec.weight,
                MemberSource::Backend(_, w, _) => *w,
            })
            .collect();
        validate_weights(&weights)?;
        for s in &self.sources {
            match s {
                MemberSource::Spec(spec) => {
                    check_temperature(&spec.model, spec.temperature)?;
                    spec.device.open().map_err(|e| spec.err(e))?;
                }
                MemberSource::Backend(b, _, t) => check_temperature(b.name(), *t)?,
            }
        }
        let progress = |e: &BuildEvent| {
            if let Some(f) = &self.progress {
                f(e)
            }
        };
        let t0 = Instant::now();
        let mut members: Vec<Member> = Vec::with_capacity(self.sources.len());
        // Which slot loaded each local model: the same model again shares its weights.
        let mut loaded: Vec<(LoadKey, usize)> = Vec::new();
        for (slot, s) in self.sources.into_iter().enumerate() {
            let (backend, w, t) = match s {
                MemberSource::Spec(spec) => {
                    progress(&BuildEvent::Loading {
                        slot,
                        spec: &spec.model,
                    });
                    let key = spec.load_key();
                    let twin = key.as_ref().and_then(|k| {
                        let (_, first) = loaded.iter().find(|(l, _)| l == k)?;
                        let model = members[*first].backend().local()?.fork()?;
                        tracing::info!("member {slot}: shares the weights of member {first}");
                        Some(Box::new(LocalModel::new(model)) as Box<dyn Backend>)
                    });
                    let backend = match twin {
                        Some(b) => b,
                        None => {
                            if let Some(k) = key {
                                loaded.push((k, slot));
                            }
                            spec.load()?
                        }
                    };
                    (backend, spec.weight, spec.temperature)
                }
                MemberSource::Backend(b, w, t) => (b, w, t),
            };
            let mut member = Member::new(backend, w)?;
            member.set_temperature(t)?;
            tracing::info!(
                "member {slot}: {} on {}, {} ids ({}), weight {w}, temperature {t}",
                member.name(),
                member.backend().device_name(),
                member.vocab().len(),
                member.vocab().scheme().name(),
            );
            members.push(member);
        }
        let cache = match self.cache {
            CacheChoice::Default => match MapCache::from_env() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("vocabulary maps will not be cached: {e}");
                    None
                }
            },
            CacheChoice::Dir(c) => Some(c),
            CacheChoice::None => None,
        };
        let lookups = prepare_lookups(
            &members,
            self.align,
            &self.relrep,
            cache.as_ref(),
            self.full_maps,
            &progress,
        )?;
        Ok(Ensemble {
            members,
            lookups,
            align: self.align,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            prefix_cache: false,
        })
    }
}

/// One [`TargetLookup`] per member (none for a single member). A full map from the
/// cache is used when there is one; `full_maps` builds (and caches) the missing ones;
/// otherwise min-ed searches per candidate and relrep prepares the relative
/// representations and maps candidates as they appear.
fn prepare_lookups(
    members: &[Member],
    method: AlignMethod,
    relrep: &RelRepSettings,
    cache: Option<&MapCache>,
    full_maps: bool,
    progress: &(dyn Fn(&BuildEvent) + Sync),
) -> Result<Vec<TargetLookup>> {
    if members.len() < 2 {
        return Ok(Vec::new());
    }
    // Relative representations shared by pairs with the same vocabularies and weights.
    let mut models: HashMap<[u8; 32], Arc<RelRep>> = HashMap::new();
    // Each member's embedding table, read once for both directions of its pairs.
    let mut tables: HashMap<usize, candle_core::Tensor> = HashMap::new();
    let mut lookups = Vec::with_capacity(members.len());
    for (bs, b) in members.iter().enumerate() {
        let mut lookup = TargetLookup::new(method, b.vocab(), members.len());
        for (a_slot, a) in members.iter().enumerate() {
            if a_slot == bs {
                continue;
            }
            let pair = format!("alignment {} → {}", a.name(), b.name());
            if a.vocab().fingerprint() == b.vocab().fingerprint() {
                tracing::info!("{pair}: identical vocabularies, candidates match by bytes");
                continue;
            }
            if method == AlignMethod::Exact {
                tracing::info!("{pair}: exact, a candidate without an identical token scores 0");
                continue;
            }
            let align_err = |source: AlignError| EngineError::Align {
                member: b.name().to_string(),
                source,
            };
            let (wa, wb) = (weights_id(a), weights_id(b));
            let (ea, eb) = (|| embeddings(a), || embeddings(b));
            let side_a = MapSide {
                name: a.name(),
                vocab: a.vocab(),
                weights: &wa,
                embeddings: &ea,
            };
            let side_b = MapSide {
                name: b.name(),
                vocab: b.vocab(),
                weights: &wb,
                embeddings: &eb,
            };
            let key = map_key(method, &side_a, &side_b, relrep);
            let started = Instant::now();
            let cached = match cache.map(|c| c.load(&key)) {
                Some(Lookup::Hit(map)) => Some((map, Source::Cached)),
                _ => None,
            };
            let full = match cached {
                Some(hit) => Some(hit),
                None if full_maps => {
                    progress(&BuildEvent::MapBuilding {
                        from: a.name(),
                        to: b.name(),
                        method,
                        total: a.vocab().candidates().count() as u64,
                    });
                    let tick = |n: u64| progress(&BuildEvent::MapProgress(n));
                    Some(
                        load_or_build(method, &side_a, &side_b, relrep, cache, true, &tick)
                            .map_err(align_err)?,
                    )
                }
                None => None,
            };
            let seconds = started.elapsed().as_secs_f64();
            if let Some((map, source)) = full {
                tracing::info!(
                    "{pair}: {method}, full map {} in {seconds:.1} s",
                    match &source {
                        Source::Cached => "loaded from the cache",
                        _ => "built and cached",
                    }
                );
                progress(&BuildEvent::MapReady {
                    from: a.name(),
                    to: b.name(),
                    method,
                    source: &source,
                    seconds,
                });
                lookup.set_map(a_slot, map);
                continue;
            }
            match method {
                AlignMethod::MinEd => tracing::info!(
                    "{pair}: min-ed, nearest surface searched per candidate (no cached full map)"
                ),
                _ => {
                    let rr = match models.get(&key.0) {
                        Some(rr) => rr.clone(),
                        None => {
                            let mut table = |slot: usize, m: &Member| match tables.get(&slot) {
                                Some(t) => Ok(t.clone()),
                                None => {
                                    let t = embeddings(m)?;
                                    tables.insert(slot, t.clone());
                                    Ok(t)
                                }
                            };
                            let ea = table(a_slot, a).map_err(align_err)?;
                            let eb = table(bs, b).map_err(align_err)?;
                            let (rr, source) =
                                relrep_for(a, &ea, b, &eb, relrep, &key, cache, &pair)
                                    .map_err(align_err)?;
                            let seconds = started.elapsed().as_secs_f64();
                            tracing::info!(
                                "{pair}: relrep {} in {seconds:.1} s; candidates are mapped as \
                                 they appear (no cached full map: `tutti align --align relrep` \
                                 or --build-maps caches one)",
                                match source {
                                    Source::Cached => "preparation loaded from the cache",
                                    _ if cache.is_some() => "prepared and its preparation cached",
                                    _ => "prepared (no cache)",
                                }
                            );
                            progress(&BuildEvent::RelRepReady {
                                from: a.name(),
                                to: b.name(),
                                source: &source,
                                seconds,
                            });
                            let rr = Arc::new(rr);
                            models.insert(key.0, rr.clone());
                            rr
                        }
                    };
                    lookup.set_relrep(a_slot, rr);
                }
            }
        }
        lookups.push(lookup);
    }
    Ok(lookups)
}

/// The relrep alignment `a → b` from its cached preparation, or prepared now (and its
/// preparation cached). A cache that cannot be read or written costs the time of a
/// preparation, never the run: it is logged and passed over.
#[allow(clippy::too_many_arguments)]
fn relrep_for(
    a: &Member,
    ea: &candle_core::Tensor,
    b: &Member,
    eb: &candle_core::Tensor,
    relrep: &RelRepSettings,
    key: &crate::align::cache::MapKey,
    cache: Option<&MapCache>,
    pair: &str,
) -> std::result::Result<(RelRep, Source), AlignError> {
    let cfg = &relrep.config;
    let mut source = Source::Built;
    if let Some(c) = cache {
        match c.load_prepared(key) {
            Ok(Some(p)) => match RelRep::from_prepared(a.vocab(), ea, b.vocab(), eb, cfg, &p) {
                Ok(rr) => return Ok((rr, Source::Cached)),
                Err(e) => source = Source::Rebuilt(e.to_string()),
            },
            Ok(None) => {}
            Err(reason) => source = Source::Rebuilt(reason),
        }
        if let Source::Rebuilt(reason) = &source {
            tracing::warn!(
                "{pair}: the cached relrep preparation {} is not usable ({reason}); preparing again",
                c.prepared_path(key).display()
            );
        }
    }
    let rr = RelRep::new(a.vocab(), ea, b.vocab(), eb, cfg)?;
    if let Some(c) = cache {
        match rr.prepared().and_then(|p| c.store_prepared(key, &p)) {
            Ok(path) => tracing::debug!("{pair}: relrep preparation cached in {}", path.display()),
            Err(e) => tracing::warn!("{pair}: the relrep preparation is not cached: {e}"),
        }
    }
    Ok((rr, source))
}

/// Identifies a member's weights in relrep cache keys.
fn weights_id(m: &Member) -> String {
    m.model()
        .map(|x| x.info.weights_fingerprint.clone())
        .unwrap_or_default()
}

/// A member's input embedding table, for relrep.
fn embeddings(m: &Member) -> std::result::Result<candle_core::Tensor, AlignError> {
    match m.backend().input_embeddings() {
        Some(Ok(t)) => Ok(t),
        Some(Err(e)) => Err(AlignError::BadEmbeddings(e.to_string())),
        None => Err(AlignError::BadEmbeddings(format!(
            "member `{}` cannot provide its embedding table; use --align min-ed or exact",
            m.name()
        ))),
    }
}

/// Members decoding one text in lockstep, with the vocabulary maps between them.
pub struct Ensemble {
    members: Vec<Member>,
    /// By target slot: how the others' candidates find that member's tokens.
    lookups: Vec<TargetLookup>,
    align: AlignMethod,
    load_ms: f64,
    /// Token-id prompts reuse what members hold of their common prefix.
    prefix_cache: bool,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("members", &self.members)
            .field("align", &self.align)
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

    pub fn member(&self, slot: usize) -> Result<&Member> {
        self.members.get(slot).ok_or(EngineError::NoSuchMember {
            index: slot,
            len: self.members.len(),
        })
    }

    /// The alignment method the maps were prepared for.
    pub fn align(&self) -> AlignMethod {
        self.align
    }

    /// Lets a token-id prompt ([`Request::ids`]) reuse what each member already holds of
    /// its longest common prefix with the member's last context (off by default). A
    /// client that sends the whole context every step, as a served member's does, then
    /// costs one new token's forward per step, with the logits a continuing decode gives.
    pub fn set_prefix_cache(&mut self, on: bool) {
        self.prefix_cache = on;
    }

    /// Milliseconds spent loading the members and preparing the maps.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Notes about how `prompt` applies to each member (a member without a chat
    /// template gets the messages as raw text), for the caller to show.
    pub fn prompt_notes(&self, prompt: &Prompt) -> Vec<String> {
        if !matches!(prompt, Prompt::Chat(_)) {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|m| m.tokenizer().chat_template().is_none())
            .map(|m| {
                format!(
                    "{} has no chat template; it gets the raw text (--raw silences this)",
                    m.name()
                )
            })
            .collect()
    }

    /// Prompt ids of member `slot` for a text or chat prompt.
    pub fn prompt_ids(&self, slot: usize, prompt: &Prompt) -> Result<Vec<u32>> {
        let m = self.member(slot)?;
        encode_prompt(m.tokenizer(), m.name(), prompt)
    }

    /// Generates for `request`, delivering [`Event`]s to `sink` as they happen (the sink
    /// can end generation early). Returns the whole [`Generation`].
    pub fn generate(&mut self, request: &Request, sink: &mut dyn Sink) -> Result<Generation> {
        let mut run = Run::start(self, request)?;
        let mut events = Vec::new();
        loop {
            let done = run.step(self, &mut events)?;
            // Every event is delivered, even after the sink asked to stop.
            let mut stop = false;
            for e in events.drain(..) {
                stop |= sink.event(&e) == Flow::Stop;
            }
            if done {
                break;
            }
            if stop {
                run.cancel(&mut events);
                for e in events.drain(..) {
                    sink.event(&e);
                }
                break;
            }
        }
        let (generation, finish) = run.finish(self);
        sink.event(&Event::Finish(finish));
        Ok(generation)
    }

    /// [`Ensemble::generate`] without events.
    pub fn generate_quiet(&mut self, request: &Request) -> Result<Generation> {
        self.generate(request, &mut Discard)
    }

    /// The events of a generation as an iterator: each `next` runs at most one step.
    /// Dropping the iterator abandons the generation.
    pub fn stream(&mut self, request: &Request) -> Result<Stream<'_>> {
        let run = Run::start(self, request)?;
        Ok(Stream {
            ens: self,
            run: Some(run),
            queue: VecDeque::new(),
            generation: None,
        })
    }
}

/// The ids a member with tokenizer `tok` (named `member` in errors) gets for a text or
/// chat prompt: what [`Ensemble::prompt_ids`] computes, for callers that hold a copy of
/// the tokenizer on another thread (a server checks prompt lengths before queueing).
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

/// Iterator form of a generation ([`Ensemble::stream`]).
pub struct Stream<'e> {
    ens: &'e mut Ensemble,
    run: Option<Run>,
    queue: VecDeque<Event>,
    generation: Option<Generation>,
}

impl Stream<'_> {
    /// The whole generation, once the iterator has yielded [`Event::Finish`].
    pub fn generation(&self) -> Option<&Generation> {
        self.generation.as_ref()
    }

    /// Ends the generation now ([`StopReason::Cancelled`]); the remaining events (held
    /// text, the finish) are still yielded.
    pub fn cancel(&mut self) {
        if let Some(mut run) = self.run.take() {
            let mut events = Vec::new();
            run.cancel(&mut events);
            self.queue.extend(events);
            let (generation, finish) = run.finish(self.ens);
            self.queue.push_back(Event::Finish(finish));
            self.generation = Some(generation);
        }
    }
}

impl Iterator for Stream<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(Ok(e));
            }
            let run = self.run.as_mut()?;
            let mut events = Vec::new();
            match run.step(self.ens, &mut events) {
                Ok(done) => {
                    self.queue.extend(events);
                    if done {
                        if let Some(run) = self.run.take() {
                            let (generation, finish) = run.finish(self.ens);
                            self.queue.push_back(Event::Finish(finish));
                            self.generation = Some(generation);
                        }
                    }
                }
                Err(e) => {
                    self.run = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The state of one generation between steps.
struct Run {
    request: Request,
    /// Taking-part member slots, in request order (the first is the gate's primary).
    slots: Vec<usize>,
    weights: Vec<f32>,
    /// Per taking-part member, a prefill already run by [`Run::start`] (auto weights),
    /// counted in the first step's time.
    prefill_ms: Vec<f64>,
    rng: StdRng,
    text: TextStream,
    steps: Vec<StepTime>,
    stop: Option<StopReason>,
    started: Instant,
    /// By index into `slots`: why the member left the generation.
    dropped: Vec<Option<String>>,
    /// By index into `slots`: the backend's round trips when the generation started.
    trips: Vec<Option<usize>>,
}

impl Run {
    /// Checks the request against the ensemble and gives every taking-part member its
    /// prompt.
    fn start(ens: &mut Ensemble, request: &Request) -> Result<Run> {
        // The clock starts before the prompts: auto weights prefill here.
        let started = Instant::now();
        request.validate()?;
        let n = ens.members.len();
        let slots: Vec<usize> = request.members.clone().unwrap_or_else(|| (0..n).collect());
        let n_slots = slots.len();
        if slots.is_empty() {
            return Err(EngineError::BadRequest("no member takes part".into()));
        }
        for (i, &s) in slots.iter().enumerate() {
            ens.member(s)?;
            if slots[..i].contains(&s) {
                return Err(EngineError::BadRequest(format!(
                    "member #{s} is listed twice"
                )));
            }
        }
        let weights = match (&request.weights, slots.len()) {
            (Some(w), k) if w.len() != k => {
                return Err(EngineError::BadWeights {
                    weights: w.clone(),
                    reason: format!("expected {k} weights, one per taking-part member"),
                })
            }
            (Some(w), _) => w.clone(),
            (None, 1) => vec![1.0],
            (None, _) => slots.iter().map(|&s| ens.members[s].weight()).collect(),
        };
        validate_weights(&weights)?;
        let prompts: Vec<Vec<u32>> = match &request.prompt {
            Prompt::Ids(ids) => {
                if ids.len() != slots.len() {
                    return Err(EngineError::BadRequest(format!(
                        "{} token-id prompts for {} taking-part members",
                        ids.len(),
                        slots.len()
                    )));
                }
                for (p, &s) in ids.iter().zip(&slots) {
                    let len = ens.members[s].vocab().len();
                    if let Some(&bad) = p.iter().find(|&&id| id as usize >= len) {
                        return Err(EngineError::BadRequest(format!(
                            "token id {bad} is outside the vocabulary of member `{}` ({len} ids)",
                            ens.members[s].name()
                        )));
                    }
                }
                ids.clone()
            }
            prompt => slots
                .iter()
                .map(|&s| ens.prompt_ids(s, prompt))
                .collect::<Result<_>>()?,
        };
        let keep_prefix = ens.prefix_cache && matches!(request.prompt, Prompt::Ids(_));
        for (&s, ids) in slots.iter().zip(prompts) {
            if keep_prefix {
                ens.members[s].start_keeping_prefix(ids)?;
            } else {
                ens.members[s].start(ids)?;
            }
            ens.members[s].set_top_n(request.top_k);
        }
        let mut weights = weights;
        let mut prefill_ms = vec![0.0; slots.len()];
        if let (Some(tau), true) = (request.auto_weights, slots.len() > 1) {
            // Every member prefills now, scoring the prompt on the way; the first step
            // then finds their logits current.
            let mut per_byte = Vec::with_capacity(slots.len());
            for (i, &s) in slots.iter().enumerate() {
                let (score, ms) = ens.members[s].score_prompt()?;
                prefill_ms[i] = ms;
                let x = score.and_then(|sc| sc.nats_per_byte());
                if x.is_none() {
                    tracing::warn!(
                        "member `{}` cannot score its prompt; auto weights give it 0",
                        ens.members[s].name()
                    );
                }
                per_byte.push(x.unwrap_or(f64::NAN));
            }
            weights = auto_weights(&weights, &per_byte, tau);
            tracing::debug!("auto weights {weights:?} from {per_byte:?} nats/byte");
        }
        let trips = slots
            .iter()
            .map(|&s| ens.members[s].backend().round_trips())
            .collect();
        let seed = match request.sampling {
            super::request::Sampling::Sample { seed, .. } => seed,
            super::request::Sampling::Greedy => 0,
        };
        Ok(Run {
            text: TextStream::new(&request.stop),
            request: request.clone(),
            slots,
            weights,
            prefill_ms,
            rng: StdRng::seed_from_u64(seed),
            steps: Vec::new(),
            stop: None,
            started,
            dropped: vec![None; n_slots],
            trips,
        })
    }

    /// Runs one step and appends its events; returns whether generation has ended.
    fn step(&mut self, ens: &mut Ensemble, events: &mut Vec<Event>) -> Result<bool> {
        if self.stop.is_some() {
            return Ok(true);
        }
        if self.steps.len() >= self.request.max_tokens {
            return Ok(self.end(StopReason::MaxTokens, events));
        }
        if self
            .slots
            .iter()
            .enumerate()
            .any(|(i, &s)| self.dropped[i].is_none() && !ens.members[s].has_room())
        {
            return Ok(self.end(StopReason::ContextLength, events));
        }
        let t_step = Instant::now();
        let req = &self.request;
        let temperature = req.sampling.temperature();
        let n = self.slots.len();
        let mut forward_ms = vec![0.0; n];
        let earlier_ms = if self.steps.is_empty() {
            forward_ms.clone_from(&self.prefill_ms);
            self.prefill_ms.iter().sum()
        } else {
            0.0
        };

        // 1. Forward, and 2. each consulted member's distribution and top-k, once. Under
        // `uncertain:T` the primary goes first and the others only when it is unsure.
        let mut step = Step::default();
        let live: Vec<usize> = (0..n).filter(|&i| self.dropped[i].is_none()).collect();
        let gated = match req.gate {
            Gate::Uncertain(t) if live.len() > 1 && live[0] == 0 => Some(t),
            _ => None,
        };
        let first: Vec<usize> = match gated {
            Some(_) => vec![0],
            None => live.clone(),
        };
        let mut ms = vec![0.0; n];
        let results = forward(&mut ens.members, &self.slots, &first, &mut ms);
        let first = survivors(
            &mut self.dropped,
            &self.slots,
            req.on_member_failure,
            ens,
            results,
        )?;
        for &i in &first {
            add_dist(
                &mut step,
                &mut ens.members[self.slots[i]],
                self.slots[i],
                temperature,
                req.top_k,
            )?;
        }
        if let Some(t) = gated {
            let sure = step.dists.first().is_some_and(|(_, d)| d.top_prob() >= t);
            // A zero-weight primary must not decide alone.
            if !(sure && self.weights[0] > 0.0) {
                let rest: Vec<usize> = live.iter().copied().filter(|&i| i != 0).collect();
                let results = forward(&mut ens.members, &self.slots, &rest, &mut ms);
                let rest = survivors(
                    &mut self.dropped,
                    &self.slots,
                    req.on_member_failure,
                    ens,
                    results,
                )?;
                for i in rest {
                    add_dist(
                        &mut step,
                        &mut ens.members[self.slots[i]],
                        self.slots[i],
                        temperature,
                        req.top_k,
                    )?;
                }
            }
        }
        forward_ms.iter_mut().zip(&ms).for_each(|(f, m)| *f += m);
        let t_fwd = Instant::now();
        if step.union.is_empty() {
            return Err(EngineError::BadSampling(
                "no member proposed a candidate token (non-finite logits?)".into(),
            ));
        }

        // 3–4. Every consulted member's probability of every candidate of the union.
        let mut probs = Vec::with_capacity(step.dists.len());
        let mut weights = Vec::with_capacity(step.dists.len());
        let mut tops: Vec<&[(u32, f32)]> = Vec::with_capacity(step.dists.len());
        for (i, &slot) in self.slots.iter().enumerate() {
            let Some(dist) = step.dist(slot) else {
                continue;
            };
            let (members, lookups) = (&ens.members, &mut ens.lookups);
            let vocab = members[slot].vocab();
            let p = step.member_probs(slot, |cand, ids| {
                match &cand.key {
                    CandidateKey::Eos => ids.extend_from_slice(vocab.eos_ids()),
                    CandidateKey::Bytes(bytes) => {
                        if let Some(l) = lookups.get_mut(slot) {
                            let found =
                                l.find(vocab, bytes, &cand.proposers).map_err(|source| {
                                    EngineError::Align {
                                        member: members[slot].name().to_string(),
                                        source,
                                    }
                                })?;
                            ids.extend(found);
                        }
                    }
                }
                Ok(())
            })?;
            probs.push(p);
            weights.push(self.weights[i]);
            tops.push(dist.top());
        }

        // 5. Combine, and 6. choose. A zero weight is never revived: when every member
        // left has one (the others were dropped), there is nothing to decide with.
        if weights.iter().all(|&w| w == 0.0) {
            return Err(EngineError::BadWeights {
                weights: self.weights.clone(),
                reason: "every member with a weight above 0 has left the generation".into(),
            });
        }
        let combined = combine(req.combine, &probs, &weights, &tops);
        // Under `disagree`, members that agree on their top candidate decide without
        // the combination (it still gives the reported probabilities).
        let agreed = match req.gate {
            Gate::Disagree => step.agreed(),
            _ => None,
        };
        let ensembled = step.dists.len() > 1 && agreed.is_none();
        let chosen = match agreed {
            Some(c) => c,
            None => choose(&combined.probs, &req.sampling, &mut self.rng),
        };
        let cand = &step.union.candidates[chosen];
        let t_pick = Instant::now();
        let rolled_before: Vec<usize> = match req.explain {
            true => self
                .slots
                .iter()
                .map(|&s| ens.members[s].rolled_back_tokens())
                .collect(),
            false => Vec::new(),
        };

        // 7. Feedback: every taking-part member commits the chosen bytes in its own
        // tokens (a member the gate skipped re-encodes them).
        let ended = match &cand.key {
            CandidateKey::Eos => Some(StopReason::Eos),
            CandidateKey::Bytes(bytes) => {
                for (i, &slot) in self.slots.iter().enumerate() {
                    if self.dropped[i].is_some() {
                        continue;
                    }
                    let own = step.dist(slot).and(cand.proposed_by(slot));
                    ens.members[slot].commit(bytes, own)?;
                }
                self.text.push(bytes).then_some(StopReason::StopString)
            }
        };
        let t_end = Instant::now();
        let explain = req.explain.then(|| {
            let rolled: Vec<usize> = self
                .slots
                .iter()
                .zip(&rolled_before)
                .map(|(&s, &b)| ens.members[s].rolled_back_tokens().saturating_sub(b))
                .collect();
            Box::new(super::explain::from_step(
                self.steps.len(),
                &step,
                &self.slots,
                &probs,
                &weights,
                &tops,
                req.combine,
                &combined.probs,
                chosen,
                &rolled,
            ))
        });
        // The record's making counts in the step's time: its cost shows in ms/token.
        let t_explain = Instant::now();

        let time = StepTime {
            forward_ms,
            align_combine_ms: (t_pick - t_fwd).as_secs_f64() * 1e3,
            feedback_ms: (t_end - t_pick).as_secs_f64() * 1e3,
            explain_ms: match req.explain {
                true => (t_explain - t_end).as_secs_f64() * 1e3,
                false => 0.0,
            },
            total_ms: (t_explain - t_step).as_secs_f64() * 1e3 + earlier_ms,
            ensembled,
        };
        let choice = |c: usize| {
            let key = &step.union.candidates[c].key;
            Choice {
                bytes: match key {
                    CandidateKey::Bytes(b) => b.clone(),
                    CandidateKey::Eos => Vec::new(),
                },
                eos: *key == CandidateKey::Eos,
                prob: combined.mixture[c],
                proposers: step.union.candidates[c].proposers.clone(),
            }
        };
        let mut order: Vec<usize> = (0..combined.probs.len()).collect();
        order.sort_by(|&a, &b| combined.probs[b].total_cmp(&combined.probs[a]));
        let mut consulted = 0;
        let members = self
            .slots
            .iter()
            .map(|&slot| {
                let p = step.dist(slot).map(|_| {
                    consulted += 1;
                    probs[consulted - 1][chosen]
                });
                MemberStep {
                    slot,
                    consulted: p.is_some(),
                    id: p.and(cand.proposed_by(slot)),
                    prob: p,
                }
            })
            .collect();
        events.push(Event::Step(StepEvent {
            index: self.steps.len(),
            chosen: choice(chosen),
            alternatives: order
                .iter()
                .take(req.alternatives)
                .map(|&c| choice(c))
                .collect(),
            union_size: step.union.len(),
            members,
            time: time.clone(),
            explain,
        }));
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

    /// Ends with `reason`, releasing the text held back.
    fn end(&mut self, reason: StopReason, events: &mut Vec<Event>) -> bool {
        if self.stop.is_none() {
            self.stop = Some(reason);
            if let Some(text) = self.text.take_ready(true) {
                events.push(Event::Text(text));
            }
        }
        true
    }

    fn cancel(&mut self, events: &mut Vec<Event>) {
        self.end(StopReason::Cancelled, events);
    }

    fn finish(self, ens: &Ensemble) -> (Generation, Finish) {
        let stop_reason = self.stop.unwrap_or(StopReason::Cancelled);
        let steps = self.steps;
        let tokens = steps.len() - usize::from(stop_reason == StopReason::Eos && !steps.is_empty());
        let ensembled_steps = steps.iter().filter(|s| s.ensembled).count();
        let members: Vec<MemberReport> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, &slot)| {
                let m = &ens.members[slot];
                MemberReport {
                    slot,
                    name: m.name().to_string(),
                    weight: self.weights[i],
                    prompt_tokens: m.prompt_len(),
                    ids: m.generated().to_vec(),
                    rollbacks: m.rollbacks(),
                    rolled_back_tokens: m.rolled_back_tokens(),
                    forward_ms: steps.iter().map(|s| s.forward_ms[i]).sum(),
                    round_trips: m
                        .backend()
                        .round_trips()
                        .zip(self.trips[i])
                        .map(|(now, then)| now - then),
                    dropped: self.dropped[i].clone(),
                }
            })
            .collect();
        let prefill_ms = steps.first().map_or(0.0, |s| s.total_ms);
        let rest_ms: f64 = steps.iter().skip(1).map(|s| s.total_ms).sum();
        let rest_n = steps.len().saturating_sub(1);
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
            members,
            timing: Timing {
                prefill_ms,
                total_ms: self.started.elapsed().as_secs_f64() * 1e3,
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
        };
        let finish = Finish {
            reason: stop_reason,
            usage: generation.usage(),
        };
        (generation, finish)
    }
}

/// The members (indices into `slots`) whose forward succeeded. A failed member is
/// dropped from the generation (its reason kept in `dropped`) under
/// [`OnMemberFailure::Drop`] while another member is left; otherwise its error ends the
/// generation.
fn survivors(
    dropped: &mut [Option<String>],
    slots: &[usize],
    policy: OnMemberFailure,
    ens: &Ensemble,
    results: Vec<(usize, Result<f64>)>,
) -> Result<Vec<usize>> {
    let mut ok = Vec::with_capacity(results.len());
    for (i, r) in results {
        match r {
            Ok(_) => ok.push(i),
            Err(e) => {
                let others = (0..slots.len())
                    .filter(|&j| j != i && dropped[j].is_none())
                    .count();
                if policy == OnMemberFailure::Fail || others == 0 {
                    return Err(e);
                }
                tracing::warn!(
                    "member `{}` dropped from this generation: {e}",
                    ens.members[slots[i]].name()
                );
                dropped[i] = Some(e.to_string());
            }
        }
    }
    Ok(ok)
}

/// Member `slot`'s distribution into the step.
fn add_dist(
    step: &mut Step,
    member: &mut Member,
    slot: usize,
    temperature: f32,
    k: usize,
) -> Result<()> {
    if let Some(d) = member.distribution(temperature, k)? {
        let vocab = member.vocab();
        step.add(slot, vocab, d);
    }
    Ok(())
}

/// Forwards the taking-part members at positions `run` (indices into `slots`): members
/// off the host CPU (GPUs, servers) each in a thread of their own, while the host-CPU
/// members run one after the other on this thread.
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
    if away.is_empty() {
        let done = local
            .into_iter()
            .map(|(i, m)| (i, m.forward_pending()))
            .collect();
        return record(done, ms);
    }
    let mut results: Vec<(usize, Result<f64>)> = std::thread::scope(|s| {
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
    results.sort_by_key(|(i, _)| *i);
    record(results, ms)
}

/// Stores each successful forward's milliseconds in `ms`.
fn record(results: Vec<(usize, Result<f64>)>, ms: &mut [f64]) -> Vec<(usize, Result<f64>)> {
    for (i, r) in &results {
        if let Ok(t) = r {
            ms[*i] = *t;
        }
    }
    results
}

/// Longest per-request deadline a served member may be given (a week): longer ones
/// would overflow the clock's arithmetic.
pub const MAX_TIMEOUT_S: f64 = 7.0 * 24.0 * 3600.0;

/// A served member's deadline from seconds, if above 0 and at most [`MAX_TIMEOUT_S`].
pub fn timeout_of(seconds: f64) -> Option<std::time::Duration> {
    (seconds > 0.0 && seconds <= MAX_TIMEOUT_S)
        .then(|| std::time::Duration::try_from_secs_f64(seconds).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_specs_keep_url_and_hf_colons() {
        let s = MemberSpec::parse(
            "openai+http://127.0.0.1:8000/v1#m:tok=hf:Org/Name:w=0.5:key=K:lookahead=2:timeout=1.5",
        )
        .unwrap();
        assert_eq!(s.model, "openai+http://127.0.0.1:8000/v1#m");
        assert_eq!(s.weight, 0.5);
        assert_eq!(s.tokenizer.as_deref(), Some("hf:Org/Name"));
        assert_eq!((s.api_key_env.as_deref(), s.lookahead), (Some("K"), 2));
        let r = s.remote().unwrap().unwrap();
        assert_eq!(r.base, "http://127.0.0.1:8000/v1");
        assert_eq!(r.timeout, std::time::Duration::from_millis(1500));
        let s = MemberSpec::parse("hf:Org/Name/f.gguf:w=2").unwrap();
        assert_eq!((s.model.as_str(), s.weight), ("hf:Org/Name/f.gguf", 2.0));
        assert!(s.remote().is_none());
        for (bad, says) in [
            ("a.gguf:tok=t", "served members"),
            (":w=1", "no model"),
            ("llamacpp+http://h:1:tok=t:lookahead=x", "token count"),
            ("llamacpp+http://h:1:tok=t:timeout=0", "seconds"),
            ("llamacpp+http://h:1:tok=t:timeout=1e30", "at most"),
            ("llamacpp+http://h:1:w=1:w=2", "twice"),
        ] {
            let e = MemberSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = MemberSpec::parse("llamacpp+http://h:1")
            .unwrap()
            .remote()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains(":tok="), "{e}");
        let s = MemberSpec::parse("llamacpp+http://h:1:lookahead=auto:tok=a").unwrap();
        assert_eq!(
            (s.lookahead, s.lookahead_auto),
            (RemoteSpec::AUTO_LOOKAHEAD, true)
        );
        let s = MemberSpec::parse("llamacpp+http://h:1:t=0.5:tok=a:b").unwrap();
        assert_eq!((s.temperature, s.tokenizer.as_deref()), (0.5, Some("a:b")));
    }

    #[test]
    fn member_spec_suffixes() {
        let s = MemberSpec::parse("a.gguf:w=0.5:t=2").unwrap();
        assert_eq!(
            (s.model.as_str(), s.weight, s.temperature),
            ("a.gguf", 0.5, 2.0)
        );
        let s = MemberSpec::parse("a.gguf:t=0.7:w=3").unwrap();
        assert_eq!(
            (s.model.as_str(), s.weight, s.temperature),
            ("a.gguf", 3.0, 0.7)
        );
        let s = MemberSpec::parse("hf:org/name:t=1.5").unwrap();
        assert_eq!((s.model.as_str(), s.temperature), ("hf:org/name", 1.5));
        let s = MemberSpec::parse("hf:org/name").unwrap();
        assert_eq!(
            (s.model.as_str(), s.weight, s.temperature),
            ("hf:org/name", 1.0, 1.0)
        );
        for bad in ["a:t=0", "a:t=-1", "a:t=hot", "a:w=1:w=2", ":t=1", "a:w=x"] {
            let err = MemberSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
