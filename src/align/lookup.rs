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
//!   first appears and memoises it, with the same answers as the full map.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use super::cache::{MapCache, MapKey, Source};
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
