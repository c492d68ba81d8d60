//! [`EnsembleBuilder`]: from member specs (or loaded models, or any backend) to a
//! ready [`Ensemble`]: bad weights and devices are refused before anything loads, the
//! members load (a model given twice shares its weights), and every member gets its
//! vocabulary lookup from the others (`crate::align::lookup::prepare_lookups`).

use std::time::Instant;

use tutti_models::Model;

use super::backend::Backend;
use super::ensemble::Ensemble;
use super::error::{EngineError, Result};
use super::member::{check_temperature, Member};
use super::request::validate_weights;
use super::spec::MemberSpec;
use crate::align::cache::MapCache;
use crate::align::lookup::{prepare_lookups, MapEvent, MapSide, Preparation, RelRepSettings};
use crate::align::{AlignError, AlignMethod};
use crate::backends::{LoadKey, LocalModel};

/// What building an ensemble reports while it works (for progress displays; the
/// decisions themselves are also logged through `tracing`).
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildEvent<'a> {
    /// A member starts loading.
    Loading { slot: usize, spec: &'a str },
    /// The vocabulary maps between the members are being prepared.
    Map(MapEvent<'a>),
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
        self.check()?;
        let t0 = Instant::now();
        let progress = |e: &BuildEvent| {
            if let Some(f) = &self.progress {
                f(e)
            }
        };
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
                    let backend = load_or_share(&spec, slot, &members, &mut loaded)?;
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
        let on_map = |e: &MapEvent| progress(&BuildEvent::Map(*e));
        let preparation = Preparation {
            method: self.align,
            relrep: &self.relrep,
            cache: cache.as_ref(),
            full_maps: self.full_maps,
            progress: &on_map,
        };
        let lookups = lookups(&members, &preparation)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Ensemble::new(members, lookups, self.align, load_ms))
    }

    /// Refuses bad weights, temperatures and devices before anything loads.
    fn check(&self) -> Result<()> {
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
        Ok(())
    }
}

impl Ensemble {
    pub fn builder() -> EnsembleBuilder {
        EnsembleBuilder::default()
    }
}

/// Loads the member of `spec` into `slot`, or shares the weights of an earlier member
/// loaded with the same settings.
fn load_or_share(
    spec: &MemberSpec,
    slot: usize,
    members: &[Member],
    loaded: &mut Vec<(LoadKey, usize)>,
) -> Result<Box<dyn Backend>> {
    let key = spec.load_key();
    let twin = key.as_ref().and_then(|k| {
        let (_, first) = loaded.iter().find(|(l, _)| l == k)?;
        let backend = members[*first].backend().fork()?;
        tracing::info!("member {slot}: shares the weights of member {first}");
        Some(backend)
    });
    if let Some(b) = twin {
        return Ok(b);
    }
    if let Some(k) = key {
        loaded.push((k, slot));
    }
    spec.load()
}

/// Every member's lookup of the others' candidates.
fn lookups(
    members: &[Member],
    preparation: &Preparation,
) -> Result<Vec<crate::align::lookup::TargetLookup>> {
    let weights: Vec<String> = members
        .iter()
        .map(|m| {
            m.info()
                .map(|i| i.weights_fingerprint.clone())
                .unwrap_or_default()
        })
        .collect();
    let tables: Vec<_> = members.iter().map(|m| move || embeddings(m)).collect();
    let sides: Vec<MapSide> = members
        .iter()
        .zip(&weights)
        .zip(&tables)
        .map(|((m, w), table)| MapSide {
            name: m.name(),
            vocab: m.vocab(),
            weights: w,
            embeddings: table,
        })
        .collect();
    prepare_lookups(&sides, preparation).map_err(|e| EngineError::Align {
        member: e.member,
        source: e.source,
    })
}

/// A member's input embedding table, for relrep.
fn embeddings(m: &Member) -> std::result::Result<candle_core::Tensor, AlignError> {
    let started = Instant::now();
    match m.backend().input_embeddings() {
        Some(Ok(t)) => {
            tracing::debug!(
                "{}: embedding table {:?} read in {:.2} s",
                m.name(),
                t.dims(),
                started.elapsed().as_secs_f64()
            );
            Ok(t)
        }
        Some(Err(e)) => Err(AlignError::BadEmbeddings(e.to_string())),
        None => Err(AlignError::BadEmbeddings(format!(
            "member `{}` cannot provide its embedding table; align with min-ed or exact",
            m.name()
        ))),
    }
}
