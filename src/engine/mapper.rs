//! A member's probability of a candidate it did not propose.
//!
//! When the candidate's bytes are one token of the member's vocabulary, that token's
//! probability is used. Otherwise the selected alignment decides which of the member's
//! tokens stands for the candidate:
//!
//! * `exact`: the first token of the member's own encoding of the bytes;
//! * `min-ed`: the member token nearest in byte edit distance (the same search as the
//!   full [`crate::align::min_ed::min_ed_map`], run lazily per candidate);
//! * `relrep`: the proposer's token mapped through relative representations
//!   ([`crate::align::relrep::RelRep::lookup`]).
//!
//! Lookups are memoised: the same surfaces come back step after step.

use std::collections::HashMap;

use crate::align::min_ed::{MinEdIndex, Scratch};
use crate::align::relrep::{RelRep, RelRepConfig};
use crate::align::AlignMethod;

use super::error::{EngineError, Result};
use super::member::Member;
use super::step::{Candidate, CandidateKey};

/// Per target member: how foreign candidates find one of its tokens.
pub struct Mapper {
    method: AlignMethod,
    /// Memo of bytes → member id, for exact and min-ed.
    memo: HashMap<Vec<u8>, Option<u32>>,
    min_ed: Option<MinEdIndex>,
    scratch: Scratch,
    /// For relrep: one alignment from each other member (by slot) to this one.
    relrep: Vec<Option<RelRep>>,
}

impl Mapper {
    /// Prepares the mapper of `members[target]`.
    pub fn new(method: AlignMethod, members: &[Member], target: usize) -> Result<Mapper> {
        let min_ed =
            (method == AlignMethod::MinEd).then(|| MinEdIndex::new(members[target].vocab()));
        let mut relrep = Vec::new();
        if method == AlignMethod::RelRep {
            let tm = &members[target];
            let align_err = |source| EngineError::Align {
                member: tm.name().to_string(),
                source,
            };
            let eb = tm.model().lm.input_embeddings()?;
            for (slot, src) in members.iter().enumerate() {
                if slot == target || src.vocab().fingerprint() == tm.vocab().fingerprint() {
                    relrep.push(None);
                    continue;
                }
                let ea = src.model().lm.input_embeddings()?;
                let rr = RelRep::new(src.vocab(), &ea, tm.vocab(), &eb, &RelRepConfig::default())
                    .map_err(align_err)?;
                relrep.push(Some(rr));
            }
        }
        Ok(Mapper {
            method,
            memo: HashMap::new(),
            min_ed,
            scratch: Scratch::default(),
            relrep,
        })
    }

    /// The member's token standing for `cand` (None: the member gives it probability 0).
    /// EOS is handled by the caller.
    pub fn lookup(&mut self, member: &Member, cand: &Candidate) -> Result<Option<u32>> {
        let CandidateKey::Bytes(bytes) = &cand.key else {
            return Ok(None);
        };
        if let Some(id) = member.vocab().id_of(bytes) {
            return Ok(Some(id));
        }
        match self.method {
            AlignMethod::Exact => {
                if let Some(&hit) = self.memo.get(bytes) {
                    return Ok(hit);
                }
                let id = member.first_token_of(bytes);
                self.memo.insert(bytes.clone(), id);
                Ok(id)
            }
            AlignMethod::MinEd => {
                if let Some(&hit) = self.memo.get(bytes) {
                    return Ok(hit);
                }
                let id = self
                    .min_ed
                    .as_ref()
                    .and_then(|ix| ix.nearest(bytes, &mut self.scratch))
                    .map(|(_, _, id)| id);
                self.memo.insert(bytes.clone(), id);
                Ok(id)
            }
            AlignMethod::RelRep => {
                for &(slot, id) in &cand.proposers {
                    if let Some(Some(rr)) = self.relrep.get(slot) {
                        return rr.lookup(id).map_err(|source| EngineError::Align {
                            member: member.name().to_string(),
                            source,
                        });
                    }
                }
                Ok(None)
            }
        }
    }
}
