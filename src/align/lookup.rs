//! The one path from an alignment method to "which of member B's tokens stands for this
//! candidate", shared by the engine and `tutti align`.
//!
//! * [`map_key`] names a full map A → B (method, parameters, vocabularies and, for
//!   relrep, the weights whose embeddings it compares);
//! * [`load_or_build`] takes that map from the disk cache ([`MapCache`]) or builds and
//!   stores it;
//! * [`TargetLookup`] answers per candidate during generation: the token with identical
//!   bytes when B has one (every method), else the method's choice: nothing for
//!   `exact`, the nearest surface for `min-ed`, the proposer's token mapped through
//!   relative representations for `relrep`. A full map is used when one is at hand (from
//!   the cache or built); otherwise min-ed searches and relrep maps each candidate as it
//!   first appears and memoises it, with the same answers as the full map;
//! * [`prepare_lookups`] gives every member of an ensemble its [`TargetLookup`] from
//!   the others, reusing what the cache holds and what pairs share.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use super::cache::{Lookup, MapCache, MapKey, Source};
use super::min_ed::{self, MinEdIndex, Scratch};
use super::relrep::{RelRep, RelRepConfig};
use super::{exact_map, AlignError, AlignMethod, TokenMap};
use crate::vocab::Vocab;

/// Which embedding table relrep compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmbeddingTable {
    /// The input embedding table.
    #[default]
    Input,
    /// The output projection where it is untied (else the input table).
    Output,
}

/// One side of a map, as building it needs.
pub struct MapSide<'a> {
    /// Display name for logs.
    pub name: &'a str,
    pub vocab: &'a Vocab,
    /// Identifies the weights whose embeddings relrep compares (part of relrep keys).
    pub weights: &'a str,
    /// The embedding table relrep compares; asked for only when a map is built.
    pub embeddings: &'a dyn Fn() -> Result<Tensor, AlignError>,
}

/// How relrep maps are built (ignored by the other methods).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelRepSettings {
    pub config: RelRepConfig,
    pub table: EmbeddingTable,
}

/// The cache key of the map A → B.
pub fn map_key(method: AlignMethod, a: &MapSide, b: &MapSide, relrep: &RelRepSettings) -> MapKey {
    let extra: Vec<String> = match method {
        AlignMethod::Exact => vec![],
        // Bump when the algorithm's output changes.
        AlignMethod::MinEd => vec!["min-ed-v1".into()],
        AlignMethod::RelRep => vec![
            relrep.config.key_string(),
            format!("embeddings={:?}", relrep.table),
            a.weights.to_string(),
            b.weights.to_string(),
        ],
    };
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    MapKey::new(method, a.vocab, b.vocab, &refs)
}

/// Builds the full map A → B. `progress` receives increments over A's candidates.
pub fn build_map(
    method: AlignMethod,
    a: &MapSide,
    b: &MapSide,
    relrep: &RelRepSettings,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<TokenMap, AlignError> {
    match method {
        AlignMethod::Exact => Ok(exact_map(a.vocab, b.vocab)),
        AlignMethod::MinEd => Ok(min_ed::min_ed_map(a.vocab, b.vocab, progress)),
        AlignMethod::RelRep => {
            let (ea, eb) = ((a.embeddings)()?, (b.embeddings)()?);
            RelRep::new(a.vocab, &ea, b.vocab, &eb, &relrep.config)?.full_map(progress)
        }
    }
}

/// The map A → B from `cache` when it holds a valid one, else built (and stored when
/// there is a cache). `force` rebuilds even when a valid map is cached.
pub fn load_or_build(
    method: AlignMethod,
    a: &MapSide,
    b: &MapSide,
    relrep: &RelRepSettings,
    cache: Option<&MapCache>,
    force: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(TokenMap, Source), AlignError> {
    match cache {
        Some(cache) => cache.get_or_build(&map_key(method, a, b, relrep), force, || {
            build_map(method, a, b, relrep, progress)
        }),
        None => Ok((build_map(method, a, b, relrep, progress)?, Source::Built)),
    }
}

/// How candidates proposed by the other members find a token of one member (B).
pub struct TargetLookup {
    method: AlignMethod,
    /// Full maps A → B by A's member slot.
    maps: Vec<Option<TokenMap>>,
    /// relrep without a full map: A → B relative representations by A's slot, mapping
    /// candidates as they appear (memoised inside).
    relrep: Vec<Option<Arc<RelRep>>>,
    /// min-ed without a full map: the same search, per candidate, memoised.
    lazy: Option<LazyMinEd>,
    /// By A's slot: where a relrep alignment's preparation is cached, and how many
    /// mapped candidates the cached file holds.
    kept: Vec<Option<Kept>>,
}

/// A relrep preparation in the cache.
struct Kept {
    cache: MapCache,
    key: MapKey,
    mapped: usize,
}

struct LazyMinEd {
    index: MinEdIndex,
    scratch: Scratch,
    memo: HashMap<Vec<u8>, Option<u32>>,
}

impl TargetLookup {
    /// A lookup for target `b` with no full maps yet (add them with
    /// [`TargetLookup::set_map`]); min-ed searches per candidate until a map is set.
    pub fn new(method: AlignMethod, b: &Vocab, slots: usize) -> TargetLookup {
        TargetLookup {
            method,
            maps: (0..slots).map(|_| None).collect(),
            relrep: (0..slots).map(|_| None).collect(),
            kept: (0..slots).map(|_| None).collect(),
            lazy: (method == AlignMethod::MinEd).then(|| LazyMinEd {
                index: MinEdIndex::new(b),
                scratch: Scratch::default(),
                memo: HashMap::new(),
            }),
        }
    }

    /// Uses the full map from member `slot` to B.
    pub fn set_map(&mut self, slot: usize, map: TokenMap) {
        if let Some(m) = self.maps.get_mut(slot) {
            *m = Some(map);
        }
    }

    /// Maps candidates from member `slot` through `relrep` as they appear (when there
    /// is no full map from that member).
    pub fn set_relrep(&mut self, slot: usize, relrep: Arc<RelRep>) {
        if let Some(r) = self.relrep.get_mut(slot) {
            *r = Some(relrep);
        }
    }

    /// [`TargetLookup::set_relrep`] for an alignment whose preparation is cached under
    /// `key`: [`TargetLookup::save`] adds the candidates mapped since to that file.
    pub fn set_relrep_kept(
        &mut self,
        slot: usize,
        relrep: Arc<RelRep>,
        cache: &MapCache,
        key: MapKey,
    ) {
        let mapped = relrep.mapped_count();
        self.set_relrep(slot, relrep);
        if let Some(k) = self.kept.get_mut(slot) {
            *k = Some(Kept {
                cache: cache.clone(),
                key,
                mapped,
            });
        }
    }

    /// Writes the relrep candidates mapped since the preparations were cached into
    /// their cache files, so that a later ensemble of these members maps them without
    /// projecting any vocabulary. Returns how many candidates were added.
    pub fn save(&mut self) -> Result<usize, AlignError> {
        let mut added = 0;
        for (rr, kept) in self.relrep.iter().zip(&mut self.kept) {
            let (Some(rr), Some(kept)) = (rr, kept) else {
                continue;
            };
            let now = rr.mapped_count();
            if now <= kept.mapped {
                continue;
            }
            let path = kept.cache.store_prepared(&kept.key, &rr.prepared()?)?;
            tracing::info!(
                "relrep: {} more mapped candidates kept in {}",
                now - kept.mapped,
                path.display()
            );
            added += now - kept.mapped;
            kept.mapped = now;
        }
        Ok(added)
    }

    pub fn method(&self) -> AlignMethod {
        self.method
    }

    /// B's token standing for a candidate with `bytes` proposed by `proposers`
    /// (`(slot, id)` pairs), or `None` (B gives it probability 0).
    pub fn find(
        &mut self,
        b: &Vocab,
        bytes: &[u8],
        proposers: &[(usize, u32)],
    ) -> Result<Option<u32>, AlignError> {
        if let Some(id) = b.id_of(bytes) {
            return Ok(Some(id));
        }
        // The first proposer with a full map decides.
        let mapped = proposers.iter().find_map(|&(slot, id)| {
            self.maps
                .get(slot)
                .and_then(Option::as_ref)
                .map(|m| m.map(id))
        });
        if let Some(hit) = mapped {
            return Ok(hit);
        }
        match self.method {
            AlignMethod::Exact => Ok(None),
            AlignMethod::RelRep => {
                for &(slot, id) in proposers {
                    if let Some(Some(rr)) = self.relrep.get(slot) {
                        return rr.lookup(id);
                    }
                }
                Ok(None)
            }
            AlignMethod::MinEd => {
                let Some(lazy) = self.lazy.as_mut() else {
                    return Ok(None);
                };
                if let Some(&hit) = lazy.memo.get(bytes) {
                    return Ok(hit);
                }
                let id = lazy
                    .index
                    .nearest(bytes, &mut lazy.scratch)
                    .map(|(_, _, id)| id);
                lazy.memo.insert(bytes.to_vec(), id);
                Ok(id)
            }
        }
    }
}

/// What preparing the maps reports while it works (for progress displays; the
/// decisions themselves are also logged through `tracing`).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum MapEvent<'a> {
    /// A full map starts being built over `total` candidates of `from`.
    Building {
        from: &'a str,
        to: &'a str,
        method: AlignMethod,
        total: u64,
    },
    /// That map advanced by this many candidates (called from worker threads).
    Progress(u64),
    /// A full map is ready.
    Ready {
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

/// How [`prepare_lookups`] aligns the members.
pub struct Preparation<'a> {
    pub method: AlignMethod,
    pub relrep: &'a RelRepSettings,
    /// Where full maps and relrep preparations are kept between runs.
    pub cache: Option<&'a MapCache>,
    /// Build (and cache) the full maps that are not cached yet.
    pub full_maps: bool,
    pub progress: &'a (dyn Fn(&MapEvent) + Sync),
}

/// A map that could not be prepared, and the member it was for.
#[derive(Debug)]
pub struct PrepareError {
    /// The target member's name.
    pub member: String,
    pub source: AlignError,
}

/// One [`TargetLookup`] per member (none for a single member). A full map from the
/// cache is used when there is one; `full_maps` builds (and caches) the missing ones;
/// otherwise min-ed searches per candidate and relrep prepares the relative
/// representations and maps candidates as they appear.
pub fn prepare_lookups(
    members: &[MapSide],
    p: &Preparation,
) -> Result<Vec<TargetLookup>, PrepareError> {
    if members.len() < 2 {
        return Ok(Vec::new());
    }
    let mut shared = Shared::default();
    let mut lookups = Vec::with_capacity(members.len());
    for (bs, b) in members.iter().enumerate() {
        let mut lookup = TargetLookup::new(p.method, b.vocab, members.len());
        for (a_slot, a) in members.iter().enumerate() {
            if a_slot != bs {
                let pair = Pair { a_slot, a, bs, b };
                prepare_pair(p, &mut shared, &pair, &mut lookup).map_err(|source| {
                    PrepareError {
                        member: b.name.to_string(),
                        source,
                    }
                })?;
            }
        }
        lookups.push(lookup);
    }
    Ok(lookups)
}

/// What pairs share while the maps are prepared.
#[derive(Default)]
struct Shared {
    /// Relative representations shared by pairs with the same vocabularies and weights.
    relreps: HashMap<[u8; 32], Arc<RelRep>>,
    /// Each member's embedding table, read once for both directions of its pairs.
    tables: HashMap<usize, Tensor>,
}

impl Shared {
    fn table(&mut self, slot: usize, side: &MapSide) -> Result<Tensor, AlignError> {
        if let Some(t) = self.tables.get(&slot) {
            return Ok(t.clone());
        }
        let t = (side.embeddings)()?;
        self.tables.insert(slot, t.clone());
        Ok(t)
    }
}

/// The map from member `a` (slot `a_slot`) to member `b` (slot `bs`).
struct Pair<'s, 'a> {
    a_slot: usize,
    a: &'s MapSide<'a>,
    bs: usize,
    b: &'s MapSide<'a>,
}

impl Pair<'_, '_> {
    fn name(&self) -> String {
        format!("alignment {} → {}", self.a.name, self.b.name)
    }
}

/// Gives `lookup` what it needs to find `b`'s tokens for `a`'s candidates.
fn prepare_pair(
    p: &Preparation,
    shared: &mut Shared,
    pair: &Pair,
    lookup: &mut TargetLookup,
) -> Result<(), AlignError> {
    let (a, b, name) = (pair.a, pair.b, pair.name());
    if a.vocab.fingerprint() == b.vocab.fingerprint() {
        tracing::info!("{name}: identical vocabularies, candidates match by bytes");
        return Ok(());
    }
    if p.method == AlignMethod::Exact {
        tracing::info!("{name}: exact, a candidate without an identical token scores 0");
        return Ok(());
    }
    let key = map_key(p.method, a, b, p.relrep);
    let started = std::time::Instant::now();
    if let Some((map, source)) = full_map(p, a, b, &key)? {
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            "{name}: {}, full map {} in {seconds:.1} s",
            p.method,
            match &source {
                Source::Cached => "loaded from the cache",
                _ => "built and cached",
            }
        );
        (p.progress)(&MapEvent::Ready {
            from: a.name,
            to: b.name,
            method: p.method,
            source: &source,
            seconds,
        });
        lookup.set_map(pair.a_slot, map);
        return Ok(());
    }
    if p.method == AlignMethod::MinEd {
        tracing::info!(
            "{name}: min-ed, nearest surface searched per candidate (no cached full map)"
        );
        return Ok(());
    }
    let rr = match shared.relreps.get(&key.0) {
        Some(rr) => rr.clone(),
        None => {
            let ea = shared.table(pair.a_slot, a)?;
            let eb = shared.table(pair.bs, b)?;
            let (rr, source) = relrep_for(a, &ea, b, &eb, p, &key)?;
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                "{name}: relrep {} in {seconds:.1} s; candidates are mapped as they appear \
                 (no cached full map: building the full maps caches one)",
                match source {
                    Source::Cached => "preparation loaded from the cache",
                    _ if p.cache.is_some() => "prepared and its preparation cached",
                    _ => "prepared (no cache)",
                }
            );
            (p.progress)(&MapEvent::RelRepReady {
                from: a.name,
                to: b.name,
                source: &source,
                seconds,
            });
            let rr = Arc::new(rr);
            shared.relreps.insert(key.0, rr.clone());
            rr
        }
    };
    match p.cache {
        Some(cache) => lookup.set_relrep_kept(pair.a_slot, rr, cache, key),
        None => lookup.set_relrep(pair.a_slot, rr),
    }
    Ok(())
}

/// The full map `a → b` from the cache, or built now (and cached) under `full_maps`.
fn full_map(
    p: &Preparation,
    a: &MapSide,
    b: &MapSide,
    key: &MapKey,
) -> Result<Option<(TokenMap, Source)>, AlignError> {
    if let Some(Lookup::Hit(map)) = p.cache.map(|c| c.load(key)) {
        return Ok(Some((map, Source::Cached)));
    }
    if !p.full_maps {
        return Ok(None);
    }
    (p.progress)(&MapEvent::Building {
        from: a.name,
        to: b.name,
        method: p.method,
        total: a.vocab.candidates().count() as u64,
    });
    let tick = |n: u64| (p.progress)(&MapEvent::Progress(n));
    load_or_build(p.method, a, b, p.relrep, p.cache, true, &tick).map(Some)
}

/// The relrep alignment `a → b` from its cached preparation, or prepared now (and its
/// preparation cached). A cache that cannot be read or written costs the time of a
/// preparation, never the run: it is logged and passed over.
fn relrep_for(
    a: &MapSide,
    ea: &Tensor,
    b: &MapSide,
    eb: &Tensor,
    p: &Preparation,
    key: &MapKey,
) -> Result<(RelRep, Source), AlignError> {
    let cfg = &p.relrep.config;
    let name = format!("alignment {} → {}", a.name, b.name);
    let mut source = Source::Built;
    if let Some(c) = p.cache {
        match c.load_prepared(key) {
            Ok(Some(prep)) => match RelRep::from_prepared(a.vocab, ea, b.vocab, eb, cfg, &prep) {
                Ok(rr) => {
                    let t = rr.setup_times();
                    tracing::debug!(
                        "{name}: relrep from its cached preparation: selection {:.2} s, \
                         projection {:.2} s",
                        t.select.as_secs_f64(),
                        t.project.as_secs_f64()
                    );
                    return Ok((rr, Source::Cached));
                }
                Err(e) => source = Source::Rebuilt(e.to_string()),
            },
            Ok(None) => {}
            Err(reason) => source = Source::Rebuilt(reason),
        }
        if let Source::Rebuilt(reason) = &source {
            tracing::warn!(
                "{name}: the cached relrep preparation {} is not usable ({reason}); preparing again",
                c.prepared_path(key).display()
            );
        }
    }
    let rr = RelRep::new(a.vocab, ea, b.vocab, eb, cfg)?;
    if let Some(c) = p.cache {
        match rr.prepared().and_then(|prep| c.store_prepared(key, &prep)) {
            Ok(path) => tracing::debug!("{name}: relrep preparation cached in {}", path.display()),
            Err(e) => tracing::warn!("{name}: the relrep preparation is not cached: {e}"),
        }
    }
    Ok((rr, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::tests::vocab_from;

    fn no_embeddings() -> Result<Tensor, AlignError> {
        Err(AlignError::BadEmbeddings("not needed".into()))
    }

    #[test]
    fn exact_is_identical_bytes_or_nothing() {
        let b = vocab_from(&["F", "Ġa", "a", "q"], &[0]);
        let mut t = TargetLookup::new(AlignMethod::Exact, &b, 2);
        assert_eq!(t.find(&b, b" a", &[(1, 7)]).unwrap(), Some(1));
        assert_eq!(t.find(&b, b"ab", &[(1, 7)]).unwrap(), None);
    }

    #[test]
    fn lazy_min_ed_equals_the_full_map() {
        let a = vocab_from(&["ab", "qz", "Ġaa", "abc", "E"], &[4]);
        let b = vocab_from(&["F", "Ġa", "a", "q", "abd"], &[0]);
        let full = min_ed::min_ed_map(&a, &b, &|_| {});
        let mut lazy = TargetLookup::new(AlignMethod::MinEd, &b, 2);
        for id in a.candidates().filter(|&id| !a.is_eos(id)) {
            let bytes = a.bytes(id).unwrap();
            assert_eq!(
                lazy.find(&b, bytes, &[(0, id)]).unwrap(),
                full.map(id),
                "{id}"
            );
        }
        // A cached full map is used as is.
        let side = |v| MapSide {
            name: "x",
            vocab: v,
            weights: "",
            embeddings: &no_embeddings,
        };
        let (map, src) = load_or_build(
            AlignMethod::MinEd,
            &side(&a),
            &side(&b),
            &RelRepSettings::default(),
            None,
            false,
            &|_| {},
        )
        .unwrap();
        assert_eq!(src, Source::Built);
        let mut with_map = TargetLookup::new(AlignMethod::MinEd, &b, 2);
        with_map.set_map(0, map);
        assert_eq!(with_map.find(&b, b"qz", &[(0, 1)]).unwrap(), full.map(1));
    }

    #[test]
    fn relrep_maps_through_the_proposer() {
        let a = vocab_from(&["x", "y"], &[]);
        let b = vocab_from(&["u", "v", "w"], &[]);
        let map = TokenMap::from_parts(AlignMethod::RelRep, b.len(), vec![2, 0], vec![1.0, 1.0]);
        let mut t = TargetLookup::new(AlignMethod::RelRep, &b, 3);
        t.set_map(2, map);
        // Slot 2 proposed A's "y" (id 1) → B's "u"; slot 1 has no map.
        assert_eq!(t.find(&b, b"y", &[(1, 9), (2, 1)]).unwrap(), Some(0));
        assert_eq!(t.find(&b, b"y", &[(1, 1)]).unwrap(), None);
        assert_eq!(
            t.find(&a, b"x", &[]).unwrap(),
            Some(0),
            "identical bytes first"
        );
    }
}
