//! The pieces of one decoding step after the forwards, in the order a token takes
//! through them: [`Distribution`] (softmax with temperature) → [`Distribution::top_k`]
//! → [`Union`] of candidates keyed by bytes → [`combine`] (weighted average of every
//! member's probability of every candidate) → [`choose`] (greedy or seeded sampling).

use std::collections::HashMap;

use rand::Rng;

use tutti_kernels::LogNorm;

use crate::vocab::Vocab;

/// What a candidate stands for: end of sequence (matched by role across members) or a
/// byte string (matched by bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CandidateKey {
    Eos,
    Bytes(Vec<u8>),
}

/// One member's next-token distribution at this step, over its logits. A thin view on
/// the hot path in `tutti_kernels` (normaliser, top-k, gather), so the CPU engine and the
/// device kernels share one definition of these numbers.
pub struct Distribution<'a> {
    logits: &'a [f32],
    /// `None` when the logits hold no distribution (empty, NaN or +inf): every
    /// probability is 0 and there are no candidates.
    norm: Option<LogNorm>,
}

impl<'a> Distribution<'a> {
    /// Softmax of `logits / temperature` (temperature 1 for greedy decoding; 0 is the
    /// argmax limit).
    ///
    /// Only the normaliser is computed over the whole vocabulary (one vectorised pass, see
    /// `tutti_kernels::cpu`): the hot path of every step runs over up to 262k logits per
    /// member.
    pub fn new(logits: &'a [f32], temperature: f32) -> Distribution<'a> {
        Distribution {
            logits,
            norm: tutti_kernels::log_norm(logits, temperature).ok(),
        }
    }

    /// Probability of `id` (0 for ids past the logits).
    #[inline]
    pub fn prob(&self, id: u32) -> f32 {
        match (self.logits.get(id as usize), &self.norm) {
            (Some(&l), Some(norm)) => norm.prob(l),
            _ => 0.0,
        }
    }

    /// The `k` most probable candidate ids of `vocab` (non-candidates such as control
    /// tokens and logit padding are skipped), most probable first, ties by lower id.
    pub fn top_k(&self, vocab: &Vocab, k: usize) -> Vec<(u32, f32)> {
        let Some(norm) = &self.norm else {
            return Vec::new();
        };
        // Only k = 0 is refused, and it selects nothing.
        tutti_kernels::select_topk_by(self.logits, norm, k, |id| vocab.is_candidate(id))
            .map(|top| top.iter().collect())
            .unwrap_or_default()
    }
}

/// One member's distribution at a step: over a host copy of its logits, or over the
/// logits tensor on the member's device ([`crate::engine::Member::set_device_topk`]).
pub enum StepDist<'a> {
    Host(Distribution<'a>),
    Tensor(TensorDist),
}

impl StepDist<'_> {
    /// The `k` most probable candidate ids (see [`Distribution::top_k`]).
    pub fn top_k(&self, vocab: &Vocab, k: usize) -> Vec<(u32, f32)> {
        match self {
            StepDist::Host(d) => d.top_k(vocab, k),
            StepDist::Tensor(d) => d.top_k(k),
        }
    }
}

/// A distribution over a logits tensor: the fused softmax + top-k kernel of
/// `tutti_kernels` runs once when it is made (on the tensor's device), and probabilities
/// of other ids are gathered there in one batch ([`TensorDist::probs`]). Ids, order and
/// probabilities are those of [`Distribution`] over the same logits (bit for bit on the
/// CPU; to float rounding of the normaliser on a GPU).
pub struct TensorDist {
    logits: candle_core::Tensor,
    /// `None` when the logits hold no distribution (as [`Distribution`]'s `norm`).
    top: Option<tutti_kernels::TopK>,
}

impl TensorDist {
    /// Softmax of `logits / temperature` and its `k` most probable ids among those
    /// `candidates` marks.
    pub fn new(
        logits: &candle_core::Tensor,
        temperature: f32,
        k: usize,
        candidates: &[bool],
    ) -> std::result::Result<TensorDist, tutti_kernels::KernelError> {
        use tutti_kernels::KernelError;
        let top = match tutti_kernels::softmax_topk_tensor(
            logits,
            temperature,
            k.max(1),
            Some(candidates),
        ) {
            Ok(t) => Some(t),
            Err(KernelError::NonFinite | KernelError::EmptyLogits) => None,
            Err(e) => return Err(e),
        };
        Ok(TensorDist {
            logits: logits.clone(),
            top,
        })
    }

    /// The first `k` of the selected candidates.
    pub fn top_k(&self, k: usize) -> Vec<(u32, f32)> {
        self.top
            .as_ref()
            .map(|t| t.iter().take(k).collect())
            .unwrap_or_default()
    }

    /// Probabilities of `ids` (0 past the logits, and everywhere when there is no
    /// distribution), in one gather on the device.
    pub fn probs(&self, ids: &[u32]) -> std::result::Result<Vec<f32>, tutti_kernels::KernelError> {
        match &self.top {
            Some(t) => tutti_kernels::gather_probs_tensor(&self.logits, &t.norm, ids),
            None => Ok(vec![0.0; ids.len()]),
        }
    }
}

/// `e^x` for `x ≤ 0` (vectorisable, ~3e-7 relative), shared with the kernels crate.
pub use tutti_kernels::exp_nonpositive;

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
    /// `(member slot, id)` for each member that has it in its top-k.
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
/// (members in order, each by rank) so ties break deterministically.
#[derive(Default, Debug)]
pub struct Union {
    pub candidates: Vec<Candidate>,
    index: HashMap<CandidateKey, usize>,
}

impl Union {
    /// Adds member `slot`'s proposals.
    pub fn add(&mut self, slot: usize, vocab: &Vocab, top: &[(u32, f32)]) {
        for &(id, _) in top {
            let Some(key) = key_of(vocab, id) else {
                continue;
            };
            match self.index.get(&key) {
                Some(&i) => {
                    // Two ids of one member with the same surface (EOS variants):
                    // the first, most probable, one represents it.
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

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }
}

/// Weighted average of per-member probabilities of each union candidate, renormalised
/// over the union. `probs[m][c]` is member `m`'s probability of candidate `c`.
pub fn combine(probs: &[Vec<f32>], weights: &[f32]) -> Vec<f32> {
    let n = probs.first().map_or(0, Vec::len);
    let wsum: f32 = weights.iter().sum();
    let mut out = vec![0.0f32; n];
    for (p, &w) in probs.iter().zip(weights) {
        for (o, &x) in out.iter_mut().zip(p) {
            *o += w * x;
        }
    }
    let total: f32 = out.iter().sum();
    let norm = if total > 0.0 {
        total
    } else {
        wsum.max(f32::MIN_POSITIVE)
    };
    for o in &mut out {
        *o /= norm;
    }
    out
}

/// How the next candidate is chosen.
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
    /// The temperature the members' softmax uses.
    pub fn temperature(&self) -> f32 {
        match *self {
            Sampling::Greedy => 1.0,
            Sampling::Sample { temperature, .. } => temperature,
        }
    }
}

/// Picks a candidate index from the combined distribution `p`.
pub fn choose<R: Rng>(p: &[f32], sampling: &Sampling, rng: &mut R) -> usize {
    match *sampling {
        Sampling::Greedy => argmax(p),
        Sampling::Sample { top_p, .. } => {
            let mut order: Vec<usize> = (0..p.len()).collect();
            // Stable sort: equal probabilities keep union order, so a seed fixes the result.
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let mut kept = 0;
            let mut mass = 0.0f32;
            for &i in &order {
                kept += 1;
                mass += p[i];
                if mass >= top_p {
                    break;
                }
            }
            let order = &order[..kept];
            let r: f32 = rng.gen::<f32>() * mass;
            let mut acc = 0.0f32;
            for &i in order {
                acc += p[i];
                if r < acc {
                    return i;
                }
            }
            order[order.len() - 1]
        }
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > p[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn softmax_and_temperature() {
        let l = [1.0f32, 2.0, 3.0];
        let d = Distribution::new(&l, 1.0);
        let s: f32 = (0..3).map(|i| d.prob(i)).sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(d.prob(2) > d.prob(1));
        let cold = Distribution::new(&l, 0.1);
        assert!(cold.prob(2) > 0.99);
        assert_eq!(d.prob(7), 0.0);
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..=20000 {
            let x = -(i as f32) * 0.0043;
            let (a, b) = (exp_nonpositive(x), x.exp());
            assert!(
                (a - b).abs() <= (4e-6 + x.abs() * 2e-7) * b + 1e-30,
                "{x}: {a} vs {b}"
            );
        }
        let floor = (-87.0f32).exp();
        assert!((exp_nonpositive(-200.0) - floor).abs() < 1e-4 * floor);
    }

    #[test]
    fn combine_weights_and_renormalises() {
        let p = vec![vec![0.5, 0.1], vec![0.0, 0.4]];
        let c = combine(&p, &[1.0, 0.0]);
        assert!((c[0] - 0.5 / 0.6).abs() < 1e-6);
        let c = combine(&p, &[1.0, 1.0]);
        assert!((c.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((c[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn greedy_takes_first_max_and_sampling_is_seeded() {
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
        let p = [0.3, 0.3, 0.4];
        let s = Sampling::Sample {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| choose(&p, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // top_p small enough keeps only the most probable candidate.
        let nucleus = Sampling::Sample {
            temperature: 1.0,
            top_p: 0.35,
            seed: 1,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!((0..50).all(|_| choose(&p, &nucleus, &mut rng) == 2));
    }
}
