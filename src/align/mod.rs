//! Vocabulary alignment: which token of member B stands for a token of member A.
//!
//! A [`TokenMap`] is directional (A → B) and total over A's ids: every A id maps to
//! one B id or to nothing. Three methods build it:
//!
//! * [`AlignMethod::Exact`]: the B token with the identical byte surface.
//! * [`AlignMethod::MinEd`]: the B token with the minimum byte-level edit distance
//!   (Levenshtein; ties: shorter surface, then lower id), see [`min_ed`].
//! * [`AlignMethod::RelRep`]: relative representations over shared anchor tokens, see
//!   [`relrep`].
//!
//! Rules shared by all methods: only A *candidates* are mapped (see
//! [`Vocab::is_candidate`]), only B candidates are targets, and an A end-of-sequence
//! token maps to B's first EOS id, whatever its bytes. Maps are cached on disk by
//! [`cache::MapCache`].

pub mod cache;
pub mod lookup;
pub mod min_ed;
pub mod relrep;

use std::fmt;
use std::str::FromStr;

use crate::vocab::{Vocab, VocabError};

/// Errors of map building and the map cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlignError {
    /// A vocabulary could not be read.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// Unknown method name.
    #[error("unknown alignment method {0:?} (expected exact, min-ed or relrep)")]
    UnknownMethod(String),
    /// Relative representations need both members' embeddings on one device.
    #[error("relrep needs both members on the same device, got {a} and {b}")]
    DeviceMismatch { a: String, b: String },
    /// Embedding matrices that do not fit their vocabularies.
    #[error("bad embeddings: {0}")]
    BadEmbeddings(String),
    /// Too few tokens shared by both vocabularies to anchor relative representations.
    #[error("only {found} anchor tokens are shared by both vocabularies; relrep needs at least {needed}")]
    TooFewAnchors { found: usize, needed: usize },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Cache I/O failed.
    #[error("map cache I/O on {path}: {source}")]
    CacheIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// No cache directory could be determined.
    #[error("no cache directory: set TUTTI_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
}

/// How a [`TokenMap`] was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlignMethod {
    /// Identical byte surfaces.
    Exact,
    /// Minimum byte edit distance.
    MinEd,
    /// Relative representations over shared anchors.
    RelRep,
}

impl AlignMethod {
    /// The CLI name: `exact`, `min-ed`, `relrep`.
    pub fn name(self) -> &'static str {
        match self {
            AlignMethod::Exact => "exact",
            AlignMethod::MinEd => "min-ed",
            AlignMethod::RelRep => "relrep",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            AlignMethod::Exact => 1,
            AlignMethod::MinEd => 2,
            AlignMethod::RelRep => 3,
        }
    }

    pub(crate) fn from_tag(t: u8) -> Option<AlignMethod> {
        match t {
            1 => Some(AlignMethod::Exact),
            2 => Some(AlignMethod::MinEd),
            3 => Some(AlignMethod::RelRep),
            _ => None,
        }
    }
}

impl fmt::Display for AlignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AlignMethod {
    type Err = AlignError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(AlignMethod::Exact),
            "min-ed" | "mined" | "min_ed" => Ok(AlignMethod::MinEd),
            "relrep" | "rel-rep" => Ok(AlignMethod::RelRep),
            other => Err(AlignError::UnknownMethod(other.to_string())),
        }
    }
}

/// Marker for "no target" in [`TokenMap`] storage.
pub(crate) const NONE: u32 = u32::MAX;

/// A map from every id of vocabulary A to at most one id of vocabulary B.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenMap {
    method: AlignMethod,
    b_len: usize,
    targets: Vec<u32>,
    scores: Vec<f32>,
}

impl TokenMap {
    /// Assembles a map from raw parts; `targets[a]` is B's id or `None`, `scores[a]`
    /// the method's score (see [`TokenMap::score`]).
    pub(crate) fn from_parts(
        method: AlignMethod,
        b_len: usize,
        targets: Vec<u32>,
        scores: Vec<f32>,
    ) -> TokenMap {
        debug_assert_eq!(targets.len(), scores.len());
        TokenMap {
            method,
            b_len,
            targets,
            scores,
        }
    }

    pub(crate) fn raw_targets(&self) -> &[u32] {
        &self.targets
    }

    pub(crate) fn raw_scores(&self) -> &[f32] {
        &self.scores
    }

    /// The method that built this map.
    pub fn method(&self) -> AlignMethod {
        self.method
    }

    /// Number of A ids covered (A's [`Vocab::len`]).
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True for a map over an empty vocabulary.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Number of B ids (B's [`Vocab::len`]).
    pub fn target_len(&self) -> usize {
        self.b_len
    }

    /// The B token standing for A's `a`, if any.
    #[inline]
    pub fn map(&self, a: u32) -> Option<u32> {
        match self.targets.get(a as usize) {
            Some(&t) if t != NONE => Some(t),
            _ => None,
        }
    }

    /// The method's score for `a`'s mapping: 0 for exact, the edit distance for
    /// min-ed (0 = identical surface), the cosine of the relative vectors for relrep.
    pub fn score(&self, a: u32) -> Option<f32> {
        self.map(a).map(|_| self.scores[a as usize])
    }

    /// Number of A ids with a target.
    pub fn mapped(&self) -> usize {
        self.targets.iter().filter(|&&t| t != NONE).count()
    }
}

/// Summary numbers of a map, for reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapStats {
    pub method: String,
    pub a_ids: usize,
    pub b_ids: usize,
    pub a_candidates: usize,
    pub b_candidates: usize,
    /// A candidates (EOS excluded) whose surface also exists in B.
    pub exact_overlap: usize,
    /// A candidates with a target.
    pub mapped: usize,
    /// `mapped / a_candidates`.
    pub mapped_share: f64,
    /// Mapped A candidates whose target has the same surface.
    pub mapped_identical: usize,
    /// Mean score over mapped candidates.
    pub mean_score: f64,
}

impl MapStats {
    /// Computes the stats of `map` between `a` and `b`.
    pub fn compute(map: &TokenMap, a: &Vocab, b: &Vocab) -> MapStats {
        let mut a_candidates = 0;
        let mut exact_overlap = 0;
        let mut mapped = 0;
        let mut identical = 0;
        let mut score_sum = 0.0f64;
        for id in a.candidates() {
            a_candidates += 1;
            let bytes = a.bytes(id).unwrap_or_default();
            if !a.is_eos(id) && b.id_of(bytes).is_some() {
                exact_overlap += 1;
            }
            if let Some(t) = map.map(id) {
                mapped += 1;
                score_sum += f64::from(map.scores[id as usize]);
                if b.bytes(t) == Some(bytes) {
                    identical += 1;
                }
            }
        }
        MapStats {
            method: map.method.name().to_string(),
            a_ids: a.len(),
            b_ids: b.len(),
            a_candidates,
            b_candidates: b.candidates().count(),
            exact_overlap,
            mapped,
            mapped_share: if a_candidates == 0 {
                0.0
            } else {
                mapped as f64 / a_candidates as f64
            },
            mapped_identical: identical,
            mean_score: if mapped == 0 {
                0.0
            } else {
                score_sum / mapped as f64
            },
        }
    }
}

/// B's target for A's EOS tokens: its first EOS id that is a candidate.
pub(crate) fn eos_target(b: &Vocab) -> Option<u32> {
    b.eos_ids().iter().copied().find(|&e| b.is_candidate(e))
}

/// The exact map: each A candidate maps to B's canonical token with the same bytes.
pub fn exact_map(a: &Vocab, b: &Vocab) -> TokenMap {
    let eos_b = eos_target(b);
    let mut targets = vec![NONE; a.len()];
    for id in a.candidates() {
        let t = if a.is_eos(id) {
            eos_b
        } else {
            a.bytes(id).and_then(|s| b.id_of(s))
        };
        targets[id as usize] = t.unwrap_or(NONE);
    }
    let scores = vec![0.0; a.len()];
    TokenMap::from_parts(AlignMethod::Exact, b.len(), targets, scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::Tokenizer;

    pub(crate) fn vocab_from(pieces: &[&str], eos: &[u32]) -> Vocab {
        let vocab: serde_json::Map<String, serde_json::Value> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), serde_json::json!(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": []}
        });
        let tok = Tokenizer::from_bytes(json.to_string().as_bytes()).expect("tokenizer");
        Vocab::from_tokenizer(&tok, eos, None).expect("vocab")
    }

    #[test]
    fn exact_map_and_stats() {
        let a = vocab_from(&["a", "b", "Ġa", "xyz", "E"], &[4]);
        let b = vocab_from(&["F", "Ġa", "a", "q"], &[0]);
        let m = exact_map(&a, &b);
        assert_eq!(m.map(0), Some(2));
        assert_eq!(m.map(1), None);
        assert_eq!(m.map(2), Some(1));
        assert_eq!(m.map(4), Some(0), "EOS maps to EOS");
        assert_eq!(m.map(99), None);
        let s = MapStats::compute(&m, &a, &b);
        assert_eq!(s.a_candidates, 5);
        assert_eq!(s.exact_overlap, 2);
        assert_eq!(s.mapped, 3);
        assert_eq!(s.mapped_identical, 2);
    }

    #[test]
    fn method_names_round_trip() {
        for m in [AlignMethod::Exact, AlignMethod::MinEd, AlignMethod::RelRep] {
            assert_eq!(m.name().parse::<AlignMethod>().unwrap(), m);
            assert_eq!(AlignMethod::from_tag(m.tag()), Some(m));
        }
        assert!(matches!(
            "cosine".parse::<AlignMethod>(),
            Err(AlignError::UnknownMethod(_))
        ));
    }
}
