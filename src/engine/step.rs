//! One decoding step after the forwards, in the order a token takes through it:
//! each consulted member's distribution and top-k ([`MemberDist`], computed once per
//! step) → the [`Union`] of their candidates, keyed by bytes → every consulted member's
//! probability of every candidate ([`Step::member_probs`]: its own id, else the vocabulary
//! alignment's) → [`combine`] → [`choose`].
//!
//! Members are always named by their slot in the ensemble, whichever subset of them
//! takes part in a request and in whatever order.

use std::collections::HashMap;

use rand::Rng;
use tutti_kernels::LogNorm;

use super::backend::{Logits, SparseLogits};
use super::error::{EngineError, Result};
use super::request::{Combine, Sampling};
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

/// A softmax over a host row of logits: only the normaliser is computed over the whole
/// vocabulary (one vectorised pass in `tutti_kernels::cpu`), probabilities of single ids
/// on demand.
pub struct Distribution<'a> {
    logits: &'a [f32],
    /// `None` when the logits hold no distribution (empty, NaN or +inf): every
    /// probability is 0 and there are no candidates.
    norm: Option<LogNorm>,
}

impl<'a> Distribution<'a> {
    /// Softmax of `logits / temperature` (0 is the argmax limit).
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

    /// The `k` most probable candidate ids of `vocab` (control tokens and logit
    /// padding are skipped), most probable first, ties by lower id.
    pub fn top_k(&self, vocab: &Vocab, k: usize) -> Vec<(u32, f32)> {
        let Some(norm) = &self.norm else {
            return Vec::new();
        };
        tutti_kernels::select_topk_by(self.logits, norm, k, |id| vocab.is_candidate(id))
            .map(|top| top.iter().collect())
            .unwrap_or_default()
    }
}

/// A distribution known by its head only ([`Logits::Sparse`]). At a temperature `T`
/// every probability becomes `p^(1/T)`, renormalised; what the ids outside the head
/// weigh then depends on how the remaining mass is spread among them, which the head
/// does not say. It is modelled as continuing the head's own decay (see
/// [`tail_mass`]): spreading it evenly over the whole vocabulary instead overstates it
/// above `T = 1` many times (the head of a served member then all but vanishes from
/// the ensemble), and keeping it as one token understates it. Each id outside the head
/// gets an even share of the tempered tail, capped at the head's smallest probability
/// (an id the server did not list cannot be likelier than one it did).
pub struct SparseDist {
    probs: HashMap<u32, f32>,
    rest_each: f32,
}

impl SparseDist {
    pub fn new(s: &SparseLogits, width: usize, temperature: f32) -> SparseDist {
        let t = f64::from(temperature.max(1e-6));
        let n_rest = width.saturating_sub(s.top.len()).max(1);
        let head: Vec<f64> = s.top.iter().map(|&(_, lp)| f64::from(lp).exp()).collect();
        let rest = f64::from(s.rest.max(0.0));
        let floor = head.iter().copied().fold(f64::INFINITY, f64::min);
        let q = |p: f64| if p > 0.0 { (p.ln() / t).exp() } else { 0.0 };
        let (tail, each) = if t == 1.0 {
            let each = (rest / n_rest as f64).min(floor);
            (n_rest as f64 * each, each)
        } else {
            let tail = tail_mass(&head, rest, n_rest, 1.0 / t);
            (tail, (tail / n_rest as f64).min(q(floor)))
        };
        let head: Vec<(u32, f64)> = s
            .top
            .iter()
            .zip(&head)
            .map(|(&(id, _), &p)| (id, q(p)))
            .collect();
        let z = head.iter().map(|&(_, x)| x).sum::<f64>() + tail;
        let z = if z > 0.0 { z } else { 1.0 };
        SparseDist {
            probs: head
                .into_iter()
                .map(|(id, x)| (id, (x / z) as f32))
                .collect(),
            rest_each: (each / z) as f32,
        }
    }

    pub fn prob(&self, id: u32) -> f32 {
        self.probs.get(&id).copied().unwrap_or(self.rest_each)
    }
}

/// `Σ p^a` over the ids outside a head (`head`: its probabilities, most probable
/// first) that share the mass `rest`, `n_rest` of them: the tempered weight of the tail
/// at `T = 1/a`. The tail is modelled as continuing the head's decay: a power law
/// `p_k ∝ k^−α` in the rank `k`, its exponent fitted (least squares of log-probability
/// on log-rank) on the head's ranks past the first quarter, where a language model's
/// distribution is already close to one (`α = 1`, Zipf's, when the head is too short
/// to fit), scaled so that ranks `len(head) + 1 ..= len(head) + n_rest` hold `rest`;
/// sums over ranks are the power law's integrals. Measured on SmolLM2 over six prompts
/// against the exact tempered distribution (top-20 heads): the top probabilities
/// within 25% at `T = 1.5` and within a factor of 2 at `T = 2`, where an even spread
/// of the tail gave a half to a fifth of them.
pub fn tail_mass(head: &[f64], rest: f64, n_rest: usize, a: f64) -> f64 {
    if rest <= 0.0 || n_rest == 0 {
        return 0.0;
    }
    let n = head.len();
    let ranks: Vec<(f64, f64)> = (n / 4 + 1..=n)
        .filter(|&k| head[k - 1] > 0.0)
        .map(|k| ((k as f64).ln(), head[k - 1].ln()))
        .collect();
    let alpha = if ranks.len() >= 3 {
        let m = ranks.len() as f64;
        let (mx, my) = (
            ranks.iter().map(|r| r.0).sum::<f64>() / m,
            ranks.iter().map(|r| r.1).sum::<f64>() / m,
        );
        let sxy: f64 = ranks.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = ranks.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        if sxx > 0.0 {
            (-sxy / sxx).clamp(0.0, 16.0)
        } else {
            1.0
        }
    } else {
        1.0
    };
    let lo = n as f64 + 0.5;
    let hi = lo + n_rest as f64;
    let integral = |b: f64| {
        if (b - 1.0).abs() < 1e-9 {
            (hi / lo).ln()
        } else {
            (hi.powf(1.0 - b) - lo.powf(1.0 - b)) / (1.0 - b)
        }
    };
    let scale = rest / integral(alpha);
    let tail = scale.powf(a) * integral(alpha * a);
    if tail.is_finite() {
        tail
    } else {
        0.0
    }
}

/// A distribution over a logits tensor: the fused softmax + top-k kernel of
/// `tutti_kernels` runs once when it is made (on the tensor's device), and probabilities
/// of other ids are gathered there in one batch. Ids, order and probabilities are those
/// of [`Distribution`] over the same logits (bit for bit on the CPU; to float rounding
/// of the normaliser on a GPU).
pub struct TensorDist {
    logits: candle_core::Tensor,
    /// `None` when the logits hold no distribution.
    top: Option<tutti_kernels::TopK>,
}

impl TensorDist {
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

    /// Probabilities of `ids` in one gather on the device.
    pub fn probs(&self, ids: &[u32]) -> std::result::Result<Vec<f32>, tutti_kernels::KernelError> {
        match &self.top {
            Some(t) => tutti_kernels::gather_probs_tensor(&self.logits, &t.norm, ids),
            None => Ok(vec![0.0; ids.len()]),
        }
    }
}

enum DistKind {
    Host {
        logits: std::sync::Arc<[f32]>,
        norm: Option<LogNorm>,
    },
    Tensor(TensorDist),
    Sparse(SparseDist),
}

/// One consulted member's distribution at this step, at the request's temperature,
/// with its `k` most probable candidates. Made once per member and step.
pub struct MemberDist {
    kind: DistKind,
    top: Vec<(u32, f32)>,
}

impl MemberDist {
    /// `candidates` is the member's `vocab.is_candidate` per logit id, needed (and only
    /// read) for tensor logits.
    pub fn new(
        logits: &Logits,
        temperature: f32,
        k: usize,
        vocab: &Vocab,
        candidates: &[bool],
    ) -> Result<MemberDist> {
        Ok(match logits {
            Logits::Host(row) => {
                let d = Distribution::new(row, temperature);
                let top = d.top_k(vocab, k);
                MemberDist {
                    kind: DistKind::Host {
                        logits: row.clone(),
                        norm: d.norm,
                    },
                    top,
                }
            }
            Logits::Tensor(t) => {
                let d = TensorDist::new(t, temperature, k, candidates)?;
                MemberDist {
                    top: d.top_k(k),
                    kind: DistKind::Tensor(d),
                }
            }
            Logits::Sparse(s) => {
                let d = SparseDist::new(s, vocab.logit_width(), temperature);
                let mut top: Vec<(u32, f32)> = s
                    .top
                    .iter()
                    .filter(|&&(id, _)| vocab.is_candidate(id))
                    .map(|&(id, _)| (id, d.prob(id)))
                    .collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                top.truncate(k);
                MemberDist {
                    kind: DistKind::Sparse(d),
                    top,
                }
            }
        })
    }

    /// The member's most probable candidates, most probable first.
    pub fn top(&self) -> &[(u32, f32)] {
        &self.top
    }

    /// Probability of the member's most probable candidate (its confidence).
    pub fn top_prob(&self) -> f32 {
        self.top.first().map_or(0.0, |&(_, p)| p)
    }

    /// Probabilities of `ids` (0 for ids without a logit).
    pub fn probs(&self, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(match &self.kind {
            DistKind::Host { logits, norm } => ids
                .iter()
                .map(|&id| match (logits.get(id as usize), norm) {
                    (Some(&l), Some(n)) => n.prob(l),
                    _ => 0.0,
                })
                .collect(),
            DistKind::Tensor(d) => d.probs(ids)?,
            DistKind::Sparse(d) => ids.iter().map(|&id| d.prob(id)).collect(),
        })
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

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }
}

/// The distributions of the consulted members and the union of their candidates.
#[derive(Default)]
pub struct Step {
    /// `(slot, distribution)` per consulted member, in request order.
    pub dists: Vec<(usize, MemberDist)>,
    pub union: Union,
}

impl Step {
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

    /// Member `slot`'s probability of every union candidate. `ids_for` names the
    /// member's ids standing for a candidate it did not propose (its EOS ids for the
    /// EOS candidate, else what the alignment gives); their probabilities are summed.
    pub fn member_probs(
        &self,
        slot: usize,
        mut ids_for: impl FnMut(&Candidate, &mut Vec<u32>) -> Result<()>,
    ) -> Result<Vec<f32>> {
        let dist = self.dist(slot).ok_or_else(|| {
            EngineError::BadRequest(format!("member #{slot} was not consulted this step"))
        })?;
        let mut ids = Vec::new();
        let mut spans = Vec::with_capacity(self.union.len());
        for cand in &self.union.candidates {
            let start = ids.len();
            match cand.proposed_by(slot) {
                Some(id) => ids.push(id),
                None => ids_for(cand, &mut ids)?,
            }
            spans.push(start..ids.len());
        }
        // One batched lookup (one gather on the device for tensor logits).
        let p = dist.probs(&ids)?;
        Ok(spans.into_iter().map(|r| p[r].iter().sum()).collect())
    }
}

/// The combined distribution over the union.
#[derive(Clone, Debug, PartialEq)]
pub struct Combined {
    /// Renormalised over the union: what the choice draws from.
    pub probs: Vec<f32>,
    /// Each candidate's pooled probability before renormalising over the union: for
    /// the linear rules the weighted mixture of the members' full distributions, for
    /// `product` the weighted geometric mean, for `max` the largest weighted member
    /// probability (for one member, its own probability under every rule).
    pub mixture: Vec<f32>,
}

/// The probability a member's zero (or tinier) probability counts as under
/// [`Combine::Product`]: `ln 1e-6 ≈ −13.8`, so a candidate one member of two (equal
/// weights) rules out keeps at most `√(1e-6) = 0.001` of its pooled mass, while the
/// arithmetic stays finite (no `0 · ln 0`) and a zero-weight member has no effect.
pub const PRODUCT_FLOOR: f32 = 1e-6;

/// Normalised entropy of a member's top-k, in [0, 1]: the entropy of its top
/// probabilities renormalised among themselves, over `ln k`. 0 for a top of one
/// candidate (or none), 1 for a flat top.
pub fn top_entropy(top: &[(u32, f32)]) -> f32 {
    let total: f32 = top.iter().map(|&(_, p)| p.max(0.0)).sum();
    if top.len() < 2 || total <= 0.0 {
        return 0.0;
    }
    let h: f32 = top
        .iter()
        .map(|&(_, p)| p.max(0.0) / total)
        .filter(|&q| q > 0.0)
        .map(|q| -q * q.ln())
        .sum();
    (h / (top.len() as f32).ln()).clamp(0.0, 1.0)
}

/// The weights a rule gives the consulted members at this step, from their request
/// weights and their top-k (`tops[m]`, most probable first). When the rule's factors
/// leave every weight at zero (all tops flat under `entropy`, say), the request weights
/// stand; a member the request gave zero keeps zero. Weights above
/// [`MAX_WEIGHT`](super::request::MAX_WEIGHT) (which validation refuses; a library
/// caller may still pass them) are scaled down by their largest, so that sums and
/// products stay finite.
pub fn step_weights(rule: Combine, weights: &[f32], tops: &[&[(u32, f32)]]) -> Vec<f32> {
    let largest = weights.iter().copied().fold(0.0f32, f32::max);
    let base: Vec<f32> = if largest > super::request::MAX_WEIGHT && largest.is_finite() {
        weights.iter().map(|w| w / largest).collect()
    } else {
        weights.to_vec()
    };
    let top_prob = |m: usize| tops.get(m).and_then(|t| t.first()).map_or(0.0, |&(_, p)| p);
    let w: Vec<f32> = match rule {
        Combine::Mean | Combine::Product | Combine::Max => return base,
        Combine::Confidence => base
            .iter()
            .enumerate()
            .map(|(m, w)| w * top_prob(m))
            .collect(),
        Combine::Entropy => base
            .iter()
            .enumerate()
            .map(|(m, w)| w * (1.0 - tops.get(m).map_or(1.0, |t| top_entropy(t))))
            .collect(),
    };
    if w.iter().all(|&x| x == 0.0) {
        base
    } else {
        w
    }
}

/// Combines the consulted members' probabilities of each union candidate (`probs[m][c]`
/// is member `m`'s probability of candidate `c`) under `rule`, with their request
/// `weights` and top-k `tops` (for the rules whose weights change per step).
pub fn combine(
    rule: Combine,
    probs: &[Vec<f32>],
    weights: &[f32],
    tops: &[&[(u32, f32)]],
) -> Combined {
    let w = step_weights(rule, weights, tops);
    match rule {
        Combine::Mean | Combine::Confidence | Combine::Entropy => linear_pool(probs, &w),
        Combine::Product => log_linear_pool(probs, &w),
        Combine::Max => max_pool(probs, &w),
    }
}

/// `pooled` renormalised over the union (`fallback` divides when it sums to 0).
fn renormalise(pooled: Vec<f32>, fallback: f32) -> Combined {
    let total: f32 = pooled.iter().sum();
    let norm = if total > 0.0 { total } else { fallback };
    Combined {
        probs: pooled.iter().map(|o| o / norm).collect(),
        mixture: pooled,
    }
}

/// Weighted arithmetic mean of the members' probabilities (`mean`, `confidence`,
/// `entropy`), renormalised over the union.
pub fn linear_pool(probs: &[Vec<f32>], weights: &[f32]) -> Combined {
    let n = probs.first().map_or(0, Vec::len);
    let wsum: f32 = weights.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let mut out = vec![0.0f32; n];
    for (p, &w) in probs.iter().zip(weights) {
        for (o, &x) in out.iter_mut().zip(p) {
            *o += w * x;
        }
    }
    out.iter_mut().for_each(|o| *o /= wsum);
    renormalise(out, 1.0)
}

/// Weighted geometric mean of the members' probabilities, each floored at
/// [`PRODUCT_FLOOR`], renormalised over the union (`product`).
pub fn log_linear_pool(probs: &[Vec<f32>], weights: &[f32]) -> Combined {
    let n = probs.first().map_or(0, Vec::len);
    let wsum: f32 = weights.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let mut log = vec![0.0f32; n];
    for (p, &w) in probs.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        for (l, &x) in log.iter_mut().zip(p) {
            *l += w * x.max(PRODUCT_FLOOR).ln();
        }
    }
    renormalise(log.into_iter().map(|l| (l / wsum).exp()).collect(), 1.0)
}

/// Each candidate's largest member probability, each member's scaled by its weight
/// over the largest weight, renormalised over the union (`max`).
pub fn max_pool(probs: &[Vec<f32>], weights: &[f32]) -> Combined {
    let n = probs.first().map_or(0, Vec::len);
    let wmax = weights
        .iter()
        .copied()
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    let mut out = vec![0.0f32; n];
    for (p, &w) in probs.iter().zip(weights) {
        for (o, &x) in out.iter_mut().zip(p) {
            *o = o.max(w / wmax * x);
        }
    }
    renormalise(out, 1.0)
}

/// Weights from the members' perplexity on the prompt (PackLLM-style, closed form
/// rather than a greedy search): member `m` with prior weight `w_m` and `x_m` nats per
/// prompt byte gets `w_m · exp(−(x_m − x_best) / tau)`, `x_best` the lowest `x` among
/// members of positive weight; the result sums to 1. Per byte, not per token, because
/// the members' tokenizers cut the same prompt into different numbers of tokens.
pub fn auto_weights(prior: &[f32], nats_per_byte: &[f64], tau: f32) -> Vec<f32> {
    let best = prior
        .iter()
        .zip(nats_per_byte)
        .filter(|(&w, x)| w > 0.0 && x.is_finite())
        .map(|(_, &x)| x)
        .fold(f64::INFINITY, f64::min);
    if !best.is_finite() {
        return prior.to_vec();
    }
    // In log space: a zero-prior member that fits the prompt far better than `best`
    // would otherwise meet `0 · e^(>709) = 0 · ∞`, and huge priors would overflow the sum.
    let log: Vec<f64> = prior
        .iter()
        .zip(nats_per_byte)
        .map(|(&w, &x)| {
            if w > 0.0 && x.is_finite() {
                f64::from(w).ln() - (x - best) / f64::from(tau)
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let top = log.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let raw: Vec<f64> = log.iter().map(|&l| (l - top).exp()).collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|&r| (r / total) as f32).collect()
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

/// `e^x` for `x ≤ 0` (vectorisable, ~3e-7 relative), shared with the kernels crate.
pub use tutti_kernels::exp_nonpositive;

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

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    /// Two members over a union of three candidates: A gives C zero, B gives it 0.2.
    fn pair() -> Vec<Vec<f32>> {
        vec![vec![0.6, 0.3, 0.0], vec![0.2, 0.4, 0.2]]
    }

    const TOP_A: [(u32, f32); 2] = [(0, 0.6), (1, 0.3)];
    const TOP_B: [(u32, f32); 3] = [(1, 0.4), (0, 0.2), (2, 0.2)];

    fn run(rule: Combine, probs: &[Vec<f32>], w: &[f32]) -> Combined {
        let tops: [&[(u32, f32)]; 2] = [&TOP_A, &TOP_B];
        combine(rule, probs, w, &tops[..probs.len()])
    }

    #[test]
    fn mean_by_hand() {
        // (0.6 + 0.2) / 2, (0.3 + 0.4) / 2, (0 + 0.2) / 2 = 0.4, 0.35, 0.1; sum 0.85.
        let c = run(Combine::Mean, &pair(), &[1.0, 1.0]);
        assert!(close(&c.mixture, &[0.4, 0.35, 0.1]));
        assert!(close(&c.probs, &[0.4 / 0.85, 0.35 / 0.85, 0.1 / 0.85]));
        // Weights 3:1: 0.5, 0.325, 0.05.
        let c = run(Combine::Mean, &pair(), &[3.0, 1.0]);
        assert!(close(&c.mixture, &[0.5, 0.325, 0.05]));
    }

    #[test]
    fn confidence_by_hand() {
        // Step weights 0.6 and 0.4: 0.6·0.6 + 0.4·0.2 = 0.44, 0.6·0.3 + 0.4·0.4 = 0.34,
        // 0.4·0.2 = 0.08, over 1.0.
        let c = run(Combine::Confidence, &pair(), &[1.0, 1.0]);
        assert!(close(&c.mixture, &[0.44, 0.34, 0.08]));
        assert!(close(&c.probs, &[0.44 / 0.86, 0.34 / 0.86, 0.08 / 0.86]));
    }

    #[test]
    fn product_by_hand_and_the_floor_vetoes() {
        // √(0.6·0.2), √(0.3·0.4), √(1e-6·0.2).
        let g = [0.12f32.sqrt(), 0.12f32.sqrt(), (1e-6f32 * 0.2).sqrt()];
        let c = run(Combine::Product, &pair(), &[1.0, 1.0]);
        assert!(close(&c.mixture, &g));
        let z: f32 = g.iter().sum();
        assert!(close(&c.probs, &[g[0] / z, g[1] / z, g[2] / z]));
        // C, which A rules out, keeps under 0.2% while the mean gives it 12%.
        assert!(c.probs[2] < 0.002);
        // Weights 3:1: (0.6³·0.2)^(1/4) and (0.3³·0.4)^(1/4).
        let c = run(Combine::Product, &pair(), &[3.0, 1.0]);
        assert!((c.mixture[0] - (0.6f32.powi(3) * 0.2).powf(0.25)).abs() < 1e-5);
        assert!((c.mixture[1] - (0.3f32.powi(3) * 0.4).powf(0.25)).abs() < 1e-5);
    }

    #[test]
    fn max_by_hand() {
        // max(0.6, 0.2), max(0.3, 0.4), max(0, 0.2); sum 1.2.
        let c = run(Combine::Max, &pair(), &[1.0, 1.0]);
        assert!(close(&c.mixture, &[0.6, 0.4, 0.2]));
        assert!(close(&c.probs, &[0.5, 0.4 / 1.2, 0.2 / 1.2]));
        // B at half weight: max(0.6, 0.1), max(0.3, 0.2), max(0, 0.1).
        let c = run(Combine::Max, &pair(), &[1.0, 0.5]);
        assert!(close(&c.mixture, &[0.6, 0.3, 0.1]));
    }

    #[test]
    fn entropy_by_hand() {
        // A's top (0.6, 0.3) renormalised: (2/3, 1/3), entropy over ln 2 = 0.918296.
        // B's top (0.4, 0.2, 0.2) renormalised: (1/2, 1/4, 1/4), 1.5 ln 2 over ln 3 = 0.946395.
        let ha =
            -(2.0f32 / 3.0 * (2.0f32 / 3.0).ln() + 1.0 / 3.0 * (1.0f32 / 3.0).ln()) / 2f32.ln();
        let hb = 1.5 * 2f32.ln() / 3f32.ln();
        assert!((top_entropy(&TOP_A) - ha).abs() < 1e-6);
        assert!((top_entropy(&TOP_B) - hb).abs() < 1e-6);
        assert!((top_entropy(&TOP_A) - 0.918296).abs() < 1e-5);
        assert_eq!(top_entropy(&[(3, 0.9)]), 0.0);
        assert!((top_entropy(&[(0, 0.25), (1, 0.25)]) - 1.0).abs() < 1e-6);
        let (wa, wb) = (1.0 - ha, 1.0 - hb);
        let w = step_weights(Combine::Entropy, &[1.0, 1.0], &[&TOP_A, &TOP_B]);
        assert!(close(&w, &[wa, wb]));
        let c = run(Combine::Entropy, &pair(), &[1.0, 1.0]);
        let m = |a: f32, b: f32| (wa * a + wb * b) / (wa + wb);
        assert!(close(&c.mixture, &[m(0.6, 0.2), m(0.3, 0.4), m(0.0, 0.2)]));
    }

    #[test]
    fn a_zero_weight_member_changes_nothing() {
        for rule in Combine::ALL {
            let alone = run(rule, &pair()[..1], &[1.0]);
            let with_zero = run(rule, &pair(), &[1.0, 0.0]);
            assert!(close(&alone.probs, &with_zero.probs), "{rule}");
            // A alone gives C zero under every rule (the floor under product).
            let zero = if rule == Combine::Product {
                PRODUCT_FLOOR / 0.9
            } else {
                0.0
            };
            assert!((with_zero.probs[2] - zero).abs() < 1e-9, "{rule}");
        }
    }

    #[test]
    fn a_member_giving_zero_keeps_the_others_mass_except_under_product() {
        for rule in Combine::ALL {
            let c = run(rule, &pair(), &[1.0, 1.0]);
            assert!((c.probs.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{rule}");
            if rule == Combine::Product {
                assert!(c.probs[2] < 0.002, "{rule}: {:?}", c.probs);
            } else {
                assert!(c.probs[2] > 0.05, "{rule}: {:?}", c.probs);
            }
        }
    }

    #[test]
    fn identical_members_are_that_member() {
        let p = vec![0.5f32, 0.3, 0.1];
        let top: [(u32, f32); 3] = [(0, 0.5), (1, 0.3), (2, 0.1)];
        let alone: Vec<f32> = p.iter().map(|x| x / 0.9).collect();
        for rule in Combine::ALL {
            let c = combine(rule, &[p.clone(), p.clone()], &[1.0, 2.5], &[&top, &top]);
            assert!(close(&c.probs, &alone), "{rule}: {:?}", c.probs);
            assert!(close(&c.mixture, &p), "{rule}: {:?}", c.mixture);
        }
    }

    #[test]
    fn auto_weights_by_hand() {
        // 0.1 nat/byte worse at τ = 0.1: e^−1 of the best member's weight.
        let w = auto_weights(&[1.0, 1.0], &[0.5, 0.6], 0.1);
        let e = (-1.0f32).exp();
        assert!(close(&w, &[1.0 / (1.0 + e), e / (1.0 + e)]));
        // Equal perplexity keeps the prior's proportions; a zero prior stays zero, even
        // for the member that fits the prompt best.
        assert!(close(
            &auto_weights(&[3.0, 1.0], &[0.4, 0.4], 0.1),
            &[0.75, 0.25]
        ));
        assert!(close(
            &auto_weights(&[1.0, 0.0], &[0.9, 0.1], 0.1),
            &[1.0, 0.0]
        ));
        // A member far worse (random weights: ~3 nats/byte) gets nothing that counts.
        let w = auto_weights(&[1.0, 1.0], &[0.7, 3.0], 0.1);
        assert!(w[1] < 1e-9 && (w[0] - 1.0).abs() < 1e-6);
        // An unscored member (NaN) gets zero; none scored keeps the prior.
        assert!(close(
            &auto_weights(&[1.0, 1.0], &[0.7, f64::NAN], 0.1),
            &[1.0, 0.0]
        ));
        assert_eq!(
            auto_weights(&[1.0, 2.0], &[f64::NAN, f64::NAN], 0.1),
            [1.0, 2.0]
        );
    }

    #[test]
    fn step_weights_by_rule() {
        let tops: [&[(u32, f32)]; 2] = [&[(0, 0.5)], &[(0, 0.25)]];
        assert_eq!(step_weights(Combine::Mean, &[1.0, 2.0], &tops), [1.0, 2.0]);
        assert_eq!(
            step_weights(Combine::Confidence, &[1.0, 2.0], &tops),
            [0.5, 0.5]
        );
        // A flat top gives entropy 1, weight 0; all-zero step weights fall back to the
        // request's.
        let flat: [(u32, f32); 2] = [(0, 0.5), (1, 0.5)];
        assert_eq!(step_weights(Combine::Entropy, &[1.0], &[&flat]), [1.0]);
    }

    #[test]
    fn a_zero_weight_is_never_revived() {
        // A flat first member (entropy weight 0) next to a member the request gave 0.
        let flat: [(u32, f32); 2] = [(0, 0.5), (1, 0.5)];
        let sure: [(u32, f32); 1] = [(1, 0.9)];
        let tops: [&[(u32, f32)]; 2] = [&flat, &sure];
        assert_eq!(
            step_weights(Combine::Entropy, &[1.0, 0.0], &tops),
            [1.0, 0.0]
        );
        let empty: [(u32, f32); 0] = [];
        let tops: [&[(u32, f32)]; 2] = [&empty, &sure];
        assert_eq!(
            step_weights(Combine::Confidence, &[2.0, 0.0], &tops),
            [2.0, 0.0]
        );
        // Only zero-weight members consulted: nothing is revived.
        assert_eq!(step_weights(Combine::Mean, &[0.0], &tops[..1]), [0.0]);
    }

    #[test]
    fn huge_weights_combine_like_their_ratios() {
        for rule in Combine::ALL {
            let huge = run(rule, &pair(), &[f32::MAX, f32::MAX]);
            let unit = run(rule, &pair(), &[1.0, 1.0]);
            assert!(huge.probs.iter().all(|p| p.is_finite()), "{rule}: {huge:?}");
            assert!(close(&huge.probs, &unit.probs), "{rule}: {huge:?}");
            let lopsided = run(rule, &pair(), &[f32::MAX, f32::MAX / 3.0]);
            let ratio = run(rule, &pair(), &[3.0, 1.0]);
            assert!(close(&lopsided.probs, &ratio.probs), "{rule}: {lopsided:?}");
        }
    }

    #[test]
    fn auto_weights_stay_finite_for_a_far_better_zero_weight_member() {
        // The zero-weight member fits the prompt 9.9 nats/byte better: at τ = 0.01 the
        // factor e^990 overflows, and 0 · ∞ must not become NaN.
        let w = auto_weights(&[1.0, 0.0], &[10.0, 0.1], 0.01);
        assert_eq!(w, [1.0, 0.0]);
        let w = auto_weights(&[1.0, 0.0, 2.0], &[10.0, 0.1, 10.5], 0.01);
        assert!(w.iter().all(|x| x.is_finite()), "{w:?}");
        assert_eq!(w[1], 0.0);
        assert!((w[0] + w[2] - 1.0).abs() < 1e-6, "{w:?}");
        // Huge priors keep their proportions.
        assert!(close(
            &auto_weights(&[f32::MAX, f32::MAX / 3.0], &[0.4, 0.4], 0.1),
            &[0.75, 0.25]
        ));
    }

    #[test]
    fn sparse_distribution_fills_the_tail() {
        let s = SparseLogits {
            top: vec![(3, 0.5f32.ln()), (1, 0.3f32.ln())],
            rest: 0.2,
        };
        let d = SparseDist::new(&s, 12, 1.0);
        assert!((d.prob(3) - 0.5).abs() < 1e-6);
        assert!((d.prob(1) - 0.3).abs() < 1e-6);
        assert!((d.prob(7) - 0.02).abs() < 1e-6, "0.2 over 10 ids");
        // The tail share never exceeds the smallest listed probability.
        let thin = SparseLogits {
            top: vec![(0, 0.05f32.ln())],
            rest: 0.95,
        };
        let d = SparseDist::new(&thin, 3, 1.0);
        assert!(d.prob(2) <= d.prob(0) + 1e-7);
        // A lower temperature sharpens the head.
        let cold = SparseDist::new(&s, 12, 0.5);
        assert!(cold.prob(3) > 0.5 && cold.prob(7) < 0.02);
    }

    #[test]
    fn a_tempered_head_keeps_its_share_of_a_power_law() {
        // 1,000 ids with p_k ∝ k^−1.5, known by their top 20: at T = 1.5 the head's
        // probabilities are those of the whole distribution, to the tail model's
        // integral approximation; an even spread of the tail gave about half.
        let raw: Vec<f64> = (1..=1000).map(|k| (k as f64).powf(-1.5)).collect();
        let z: f64 = raw.iter().sum();
        let p: Vec<f64> = raw.iter().map(|x| x / z).collect();
        let s = SparseLogits {
            top: (0..20).map(|i| (i as u32, p[i].ln() as f32)).collect(),
            rest: p[20..].iter().sum::<f64>() as f32,
        };
        for t in [0.7f64, 1.5, 2.0] {
            let zt: f64 = p.iter().map(|x| x.powf(1.0 / t)).sum();
            let d = SparseDist::new(&s, 1000, t as f32);
            for (i, &x) in p.iter().enumerate().take(5) {
                let exact = x.powf(1.0 / t) / zt;
                let got = f64::from(d.prob(i as u32));
                assert!(
                    (got - exact).abs() < 0.02 * exact,
                    "T={t} #{i}: {got} vs {exact}"
                );
            }
        }
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
