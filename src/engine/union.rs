//! The candidates of one step: every consulted member's top-k gathered into one
//! [`Union`] keyed by exact bytes (end of sequence matched by role), and each member's
//! probability of every candidate ([`Proposals::member_probs`]: its own id, else the ids
//! its vocabulary [`TargetLookup`] finds for the candidate's bytes).
//!
//! Members are always named by their slot in the ensemble, whichever subset of them
//! takes part in a request and in whatever order.

use std::collections::HashMap;

use super::dist::MemberDist;
use super::error::EngineError;
use crate::align::lookup::TargetLookup;
use crate::align::AlignError;
use crate::vocab::Vocab;

/// What a candidate stands for: end of sequence (matched by role across members) or a
/// byte string (matched by bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CandidateKey {
    Eos,
    Bytes(Vec<u8>),
}

/// The key of `id` in `vocab`.
pub fn key_of(vocab: &Vocab, id: u32) -> Option<CandidateKey> {
    if vocab.is_eos(id) {
        Some(CandidateKey::Eos)
    } else {
        vocab.bytes(id).map(|b| CandidateKey::Bytes(b.to_vec()))
    }
}

/// A candidate of the union: its key and, per member that proposed it, that member's id.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub key: CandidateKey,
    /// `(member slot, id)` for each member that has it in its top-k, in proposal order.
    pub proposers: Vec<(usize, u32)>,
}

impl Candidate {
    /// The id member `slot` proposed for this candidate, if it did.
    pub fn proposed_by(&self, slot: usize) -> Option<u32> {
        self.proposers
            .iter()
            .find(|&&(s, _)| s == slot)
            .map(|&(_, id)| id)
    }
}

/// The union of the members' top-k candidates, keyed by bytes, in first-seen order
/// (members in request order, each by rank) so ties break deterministically.
#[derive(Default, Debug)]
pub struct Union {
    pub candidates: Vec<Candidate>,
    index: HashMap<CandidateKey, usize>,
}

impl Union {
    /// Adds the proposals of the member in `slot`.
    pub fn add(&mut self, slot: usize, vocab: &Vocab, top: &[(u32, f32)]) {
        for &(id, _) in top {
            let Some(key) = key_of(vocab, id) else {
                continue;
            };
            match self.index.get(&key) {
                Some(&i) => {
                    // Two ids of one member with the same surface (EOS variants): the
                    // first, most probable, one represents it.
                    if self.candidates[i].proposed_by(slot).is_none() {
                        self.candidates[i].proposers.push((slot, id));
                    }
                }
                None => {
                    self.index.insert(key.clone(), self.candidates.len());
                    self.candidates.push(Candidate {
                        key,
                        proposers: vec![(slot, id)],
                    });
                }
            }
        }
    }

    /// The candidate for `bytes`, added when no member proposed it; `slot`'s `id` for
    /// them is recorded as that member's own. Returns its index and whether it was added.
    pub fn force(&mut self, bytes: &[u8], slot: usize, id: u32) -> (usize, bool) {
        let key = CandidateKey::Bytes(bytes.to_vec());
        if let Some(&i) = self.index.get(&key) {
            if self.candidates[i].proposed_by(slot).is_none() {
                self.candidates[i].proposers.push((slot, id));
            }
            return (i, false);
        }
        self.index.insert(key.clone(), self.candidates.len());
        self.candidates.push(Candidate {
            key,
            proposers: vec![(slot, id)],
        });
        (self.candidates.len() - 1, true)
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }
}

/// The distributions of the consulted members and the union of their candidates.
#[derive(Default)]
pub struct Proposals {
    /// `(slot, distribution)` per consulted member, in request order.
    pub dists: Vec<(usize, MemberDist)>,
    pub union: Union,
}

impl Proposals {
    /// Adds a consulted member's distribution and its candidates.
    pub fn add(&mut self, slot: usize, vocab: &Vocab, dist: MemberDist) {
        self.union.add(slot, vocab, dist.top());
        self.dists.push((slot, dist));
    }

    /// The union index of the candidate every consulted member ranks first, when they
    /// all do (`None` when they differ or nobody was consulted).
    pub fn agreed(&self) -> Option<usize> {
        let mut common = None;
        for (slot, dist) in &self.dists {
            let &(id, _) = dist.top().first()?;
            let c = self
                .union
                .candidates
                .iter()
                .position(|c| c.proposed_by(*slot) == Some(id))?;
            if common.is_some_and(|x| x != c) {
                return None;
            }
            common = Some(c);
        }
        common
    }

    pub fn dist(&self, slot: usize) -> Option<&MemberDist> {
        self.dists.iter().find(|(s, _)| *s == slot).map(|(_, d)| d)
    }

    /// Member `slot`'s probability of every union candidate. A candidate it did not
    /// propose counts the probabilities of the ids standing for it: its EOS ids for the
    /// EOS candidate, else the ids `lookup` finds for the bytes (none without a lookup:
    /// a single member, or identical vocabularies).
    pub fn member_probs(
        &self,
        slot: usize,
        vocab: &Vocab,
        mut lookup: Option<&mut TargetLookup>,
    ) -> std::result::Result<Vec<f32>, MemberProbsError> {
        let dist = self
            .dist(slot)
            .ok_or(MemberProbsError::NotConsulted(slot))?;
        let mut ids = Vec::new();
        let mut spans = Vec::with_capacity(self.union.len());
        for cand in &self.union.candidates {
            let start = ids.len();
            match (cand.proposed_by(slot), &cand.key) {
                (Some(id), _) => ids.push(id),
                (None, CandidateKey::Eos) => ids.extend_from_slice(vocab.eos_ids()),
                (None, CandidateKey::Bytes(bytes)) => {
                    if let Some(l) = lookup.as_deref_mut() {
                        ids.extend(l.find(vocab, bytes, &cand.proposers)?);
                    }
                }
            }
            spans.push(start..ids.len());
        }
        // One batched lookup (one gather on the device for tensor logits).
        let p = dist.probs(&ids).map_err(MemberProbsError::Engine)?;
        Ok(spans.into_iter().map(|r| p[r].iter().sum()).collect())
    }
}

impl Proposals {
    /// Member `slot`'s natural-log probability of candidate `c`, from the same ids
    /// [`Proposals::member_probs`] counts for it.
    pub fn member_log_prob(
        &self,
        slot: usize,
        c: usize,
        vocab: &Vocab,
        lookup: Option<&mut TargetLookup>,
    ) -> std::result::Result<f64, MemberProbsError> {
        let dist = self
            .dist(slot)
            .ok_or(MemberProbsError::NotConsulted(slot))?;
        let cand = &self.union.candidates[c];
        let ids = match (cand.proposed_by(slot), &cand.key) {
            (Some(id), _) => vec![id],
            (None, CandidateKey::Eos) => vocab.eos_ids().to_vec(),
            (None, CandidateKey::Bytes(bytes)) => match lookup {
                Some(l) => l.find(vocab, bytes, &cand.proposers)?.into_iter().collect(),
                None => Vec::new(),
            },
        };
        dist.log_prob(&ids).map_err(MemberProbsError::Engine)
    }
}

/// Why a member's probabilities of the candidates could not be read.
#[derive(Debug)]
pub enum MemberProbsError {
    /// The member was not consulted this step.
    NotConsulted(usize),
    /// Its vocabulary lookup failed.
    Align(AlignError),
    Engine(EngineError),
}

impl From<AlignError> for MemberProbsError {
    fn from(e: AlignError) -> Self {
        MemberProbsError::Align(e)
    }
}

impl MemberProbsError {
    /// As an engine error, naming the member.
    pub fn into_engine(self, member: &str) -> EngineError {
        match self {
            MemberProbsError::NotConsulted(slot) => {
                EngineError::BadRequest(format!("member #{slot} was not consulted this step"))
            }
            MemberProbsError::Align(source) => EngineError::Align {
                member: member.to_string(),
                source,
            },
            MemberProbsError::Engine(e) => e,
        }
    }
}
