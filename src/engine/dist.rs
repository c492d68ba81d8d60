//! A member's next-token distribution at one step, whatever form its logits came in:
//! a host row ([`Distribution`]), a device tensor ([`TensorDist`]: fused softmax and
//! top-k on the device) or a served member's head of top log-probabilities
//! ([`SparseDist`], its tail modelled by [`tail_mass`]). [`MemberDist`] is the one the
//! step uses: made once per consulted member and step, with its top-k.

use std::collections::HashMap;

use tutti_kernels::LogNorm;

use super::backend::{Logits, SparseLogits};
use super::error::Result;
use crate::vocab::Vocab;

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
    #[cfg(test)]
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
    /// The natural log of the probability `ids` share (−∞ for none). For a host row it
    /// is computed from the logits in f64 without leaving log space, so that one id's
    /// value is the model's own log-softmax at that id, whatever path asked for it
    /// (scoring a member alone or inside an ensemble gives the same bits).
    pub fn log_prob(&self, ids: &[u32]) -> Result<f64> {
        if let DistKind::Host { logits, norm } = &self.kind {
            let Some(n) = norm else {
                return Ok(f64::NEG_INFINITY);
            };
            let ls: Vec<f64> = ids
                .iter()
                .filter_map(|&id| logits.get(id as usize))
                .map(|&l| {
                    (f64::from(l) - f64::from(n.max_logit)) / f64::from(n.temperature)
                        - f64::from(n.log_z)
                })
                .collect();
            return Ok(log_sum_exp(&ls));
        }
        let p: f64 = self.probs(ids)?.iter().map(|&p| f64::from(p)).sum();
        Ok(p.ln())
    }

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

/// `ln Σ exp(x)`, exact for one value (it is returned as is); −∞ for none.
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    match xs {
        [] => f64::NEG_INFINITY,
        [x] => *x,
        _ => {
            let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                return m;
            }
            m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
