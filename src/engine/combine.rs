//! How the members' probabilities of the union's candidates become one distribution
//! ([`combine`]: mean, confidence, product, max, entropy; weights fixed or
//! [`auto_weights`]) and how one candidate is taken from it ([`choose`]: greedy or
//! seeded sampling).

use rand::Rng;

use super::request::{Combine, Sampling};

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

/// The natural log of one candidate's pooled probability ([`Combined::mixture`]) under
/// `rule`, from each consulted member's log-probability of it (`logps[m]`) and the
/// step's weights ([`step_weights`]), computed in log space in f64. A member alone, or
/// members that all give the same log-probability with equal weights, pool to exactly
/// that value (no exp/ln round trip), which is what makes a one-member score, and an
/// ensemble of a model with itself, equal the model's own log-likelihood bit for bit.
pub fn pooled_log_prob(rule: Combine, logps: &[f64], weights: &[f32]) -> f64 {
    let pairs: Vec<(f64, f64)> = logps
        .iter()
        .zip(weights)
        .filter(|(_, &w)| w > 0.0)
        .map(|(&l, &w)| (l, f64::from(w)))
        .collect();
    if pairs.is_empty() {
        return f64::NEG_INFINITY;
    }
    let wsum: f64 = pairs.iter().map(|p| p.1).sum();
    match rule {
        Combine::Mean | Combine::Confidence | Combine::Entropy => {
            let m = pairs.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                return m;
            }
            let s: f64 = pairs.iter().map(|&(l, w)| w * (l - m).exp()).sum();
            m + (s.ln() - wsum.ln())
        }
        Combine::Product => {
            let floor = f64::from(PRODUCT_FLOOR).ln();
            let s: f64 = pairs.iter().map(|&(l, w)| w * l.max(floor)).sum();
            s / wsum
        }
        Combine::Max => {
            let wmax = pairs.iter().map(|p| p.1).fold(0.0, f64::max);
            pairs
                .iter()
                .map(|&(l, w)| l + (w.ln() - wmax.ln()))
                .fold(f64::NEG_INFINITY, f64::max)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tutti_kernels::exp_nonpositive;

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

    /// The log-space pooled probability is the log of the pooled one under every rule,
    /// and one member (or one member twice) pools to its own value exactly.
    #[test]
    fn pooled_log_prob_is_the_log_of_the_mixture() {
        let probs = vec![vec![0.5f32, 0.3, 0.2], vec![0.1, 0.6, 0.3]];
        let weights = [1.0f32, 0.5];
        let tops: Vec<Vec<(u32, f32)>> = probs
            .iter()
            .map(|p| p.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect())
            .collect();
        let tops: Vec<&[(u32, f32)]> = tops.iter().map(Vec::as_slice).collect();
        for rule in [
            Combine::Mean,
            Combine::Product,
            Combine::Max,
            Combine::Confidence,
        ] {
            let w = step_weights(rule, &weights, &tops);
            let c = combine(rule, &probs, &weights, &tops);
            for k in 0..3 {
                let lps: Vec<f64> = probs.iter().map(|p| f64::from(p[k]).ln()).collect();
                let got = pooled_log_prob(rule, &lps, &w).exp();
                assert!((got - f64::from(c.mixture[k])).abs() < 1e-6, "{rule:?} {k}");
            }
        }
        let l = -2.345_678_9_f64;
        for rule in [Combine::Mean, Combine::Product, Combine::Max] {
            let w = if rule == Combine::Product { 1.0 } else { 0.7 };
            assert_eq!(pooled_log_prob(rule, &[l], &[w]), l, "{rule:?}");
            assert_eq!(pooled_log_prob(rule, &[l, l], &[1.0, 1.0]), l, "{rule:?}");
        }
        assert_eq!(pooled_log_prob(Combine::Mean, &[l, 0.0], &[1.0, 0.0]), l);
    }
}
