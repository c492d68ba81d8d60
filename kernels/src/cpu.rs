//! CPU implementation of the fused softmax + top-k + gather, and the reference the
//! GPU kernels are checked against.
//!
//! # Numerics
//!
//! The normaliser is kept as `max` (largest logit) and `log_z = ln Σ exp((l - max) / T)`,
//! so the log-sum-exp of `logits / T` is `max / T + log_z` ([`LogNorm::lse`]) and nothing
//! overflows. It is computed in one pass over blocks of [`BLOCK`] logits ("online
//! softmax"): each block's sum of exponentials is taken relative to the running maximum
//! in 16 independent `f32` lanes (at most 64 additions per lane, so the lane sums are
//! accurate to ~4e-6 relative in the worst case) with a vectorisable exponential
//! ([`exp_nonpositive`], ~2e-7 relative); block sums are accumulated in `f64`, and the
//! running total is rescaled (exact `f64` `exp`) whenever the maximum grows. The
//! probabilities that are handed out (top-k and gathered) are evaluated in `f64` with the
//! exact `exp` from the stored normaliser, by one function ([`LogNorm::prob`]), so
//! [`softmax_topk`] and [`gather_probs`] agree bit for bit.
//!
//! # Temperature
//!
//! `T > 0`: softmax of `logits / T`. `T = 0` (or so small that `1 / T` overflows) is the
//! limit `T → 0+`: all mass on the ids holding the maximum logit, shared evenly when
//! several do (one-hot when the maximum is unique); `log_z = ln(#maxima)` and
//! [`LogNorm::lse`] is infinite. The top-k order is the same for every temperature (by
//! logit), so greedy decoding is "take entry 0". Negative or non-finite `T` is an error.
//!
//! # Selection
//!
//! Top-k is over the ids the mask allows (all when there is none); the normaliser always
//! covers the whole vocabulary, so masked ids keep their share of the mass. Order: higher
//! logit (= higher probability) first, equal logits by lower id. A block whose maximum
//! cannot beat the current k-th best is skipped after its max, so on real logits almost
//! every block costs one vectorised max and one vectorised sum. Insertion into the sorted
//! buffer is O(k), meant for k up to a few hundred.

use crate::{KernelError, Result};

/// Logits per block of the fused pass: 4 KiB, so a block stays in L1 between its max,
/// its selection and its sum. A GPU thread block takes the same unit.
pub const BLOCK: usize = 1024;

/// Independent accumulators per reduction, so the compiler can vectorise the loops.
const LANES: usize = 16;

/// The normaliser of one softmax: `p(id) = exp((logit - max_logit) / temperature - log_z)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogNorm {
    /// The temperature in effect; 0 means the greedy limit (see the module docs).
    pub temperature: f32,
    /// Largest logit over the whole vocabulary.
    pub max_logit: f32,
    /// `ln Σ exp((l - max_logit) / temperature)` over the whole vocabulary
    /// (`ln` of the number of maxima at temperature 0).
    pub log_z: f32,
}

impl LogNorm {
    /// Whether this is the temperature-0 (argmax) limit.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The log-sum-exp of `logits / temperature` (+inf in the greedy limit).
    pub fn lse(&self) -> f64 {
        if self.is_greedy() {
            f64::INFINITY
        } else {
            self.max_logit as f64 / self.temperature as f64 + self.log_z as f64
        }
    }

    /// Probability of a token with this `logit`. The single formula used for every
    /// probability this crate hands out, so top-k and gathered values agree exactly.
    #[inline]
    pub fn prob(&self, logit: f32) -> f32 {
        if self.is_greedy() {
            if logit == self.max_logit {
                (-(self.log_z as f64)).exp() as f32
            } else {
                0.0
            }
        } else {
            let x = (logit as f64 - self.max_logit as f64) / self.temperature as f64;
            (x - self.log_z as f64).exp() as f32
        }
    }
}

/// The packed result of [`softmax_topk`]: at most `k` entries, most probable first.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// Selected ids; fewer than `k` when the mask allows fewer ids.
    pub ids: Vec<u32>,
    /// `probs[i]` is the probability of `ids[i]`.
    pub probs: Vec<f32>,
    /// The normaliser, for [`gather_probs`] on the same logits.
    pub norm: LogNorm,
}

impl TopK {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// `(id, probability)` pairs, most probable first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.ids.iter().copied().zip(self.probs.iter().copied())
    }
}

/// Softmax of `logits / temperature` over the whole vocabulary and its `k` most probable
/// ids among those `allowed` marks (ids past the mask's end are not allowed; `None`
/// allows all), in one fused pass.
pub fn softmax_topk(
    logits: &[f32],
    temperature: f32,
    k: usize,
    allowed: Option<&[bool]>,
) -> Result<TopK> {
    softmax_topk_by(logits, temperature, k, mask_predicate(allowed))
}

/// A boolean mask as a predicate: `None` allows every id, ids past the mask's end are
/// not allowed.
fn mask_predicate(mask: Option<&[bool]>) -> impl FnMut(u32) -> bool + '_ {
    move |id| mask.is_none_or(|m| m.get(id as usize).copied().unwrap_or(false))
}

/// [`softmax_topk`] with the mask as a predicate on ids. It is only asked about ids that
/// would enter the current top-k, so an expensive predicate costs little.
pub fn softmax_topk_by(
    logits: &[f32],
    temperature: f32,
    k: usize,
    allowed: impl FnMut(u32) -> bool,
) -> Result<TopK> {
    if k == 0 {
        return Err(KernelError::ZeroK);
    }
    let mut sel = Selector::new(k, allowed);
    let norm = pass(logits, temperature, Some(&mut sel))?;
    Ok(sel.finish(norm))
}

/// The normaliser alone (the same pass as [`softmax_topk`] without selection, so it is
/// bit-identical to the `norm` that [`softmax_topk`] returns).
pub fn log_norm(logits: &[f32], temperature: f32) -> Result<LogNorm> {
    pass::<fn(u32) -> bool>(logits, temperature, None)
}

/// Top-k selection under a normaliser computed before ([`log_norm`]); the same result
/// as [`softmax_topk`] when `norm` comes from the same logits and temperature.
pub fn select_topk(
    logits: &[f32],
    norm: &LogNorm,
    k: usize,
    allowed: Option<&[bool]>,
) -> Result<TopK> {
    select_topk_by(logits, norm, k, mask_predicate(allowed))
}

/// [`select_topk`] with the mask as a predicate on ids.
pub fn select_topk_by(
    logits: &[f32],
    norm: &LogNorm,
    k: usize,
    allowed: impl FnMut(u32) -> bool,
) -> Result<TopK> {
    if k == 0 {
        return Err(KernelError::ZeroK);
    }
    let mut sel = Selector::new(k, allowed);
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        sel.offer(b * BLOCK, block, block_max(block));
    }
    Ok(sel.finish(*norm))
}

/// Probabilities of `ids` under `norm` (from [`softmax_topk`] or [`log_norm`] on the same
/// logits); 0 for ids past the end of the logits.
pub fn gather_probs(logits: &[f32], norm: &LogNorm, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .map(|&id| logits.get(id as usize).map_or(0.0, |&l| norm.prob(l)))
        .collect()
}

/// Checks the temperature; 0 stands for the greedy limit.
pub(crate) fn effective_temperature(t: f32) -> Result<f32> {
    if !t.is_finite() || t < 0.0 {
        return Err(KernelError::BadTemperature(t));
    }
    // Below ~3e-39 `1 / t` overflows: nothing distinguishes that from the limit.
    Ok(if t == 0.0 || !(1.0 / t).is_finite() {
        0.0
    } else {
        t
    })
}

/// The fused pass: per block, max → selection (if any) → rescaled partial sum.
fn pass<F: FnMut(u32) -> bool>(
    logits: &[f32],
    temperature: f32,
    mut sel: Option<&mut Selector<F>>,
) -> Result<LogNorm> {
    let temperature = effective_temperature(temperature)?;
    if logits.is_empty() {
        return Err(KernelError::EmptyLogits);
    }
    let greedy = temperature == 0.0;
    let inv_t = if greedy { 0.0 } else { 1.0 / temperature };
    let inv_t64 = if greedy {
        0.0
    } else {
        1.0 / temperature as f64
    };
    let mut run_max = f32::NEG_INFINITY;
    let mut total = 0.0f64;
    let mut nan = false;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let bm = block_max(block);
        if let Some(sel) = sel.as_deref_mut() {
            sel.offer(b * BLOCK, block, bm);
        }
        if greedy {
            // Count the ids holding the maximum; the count restarts when it grows.
            if bm > run_max {
                run_max = bm;
                total = 0.0;
            }
            if bm == run_max {
                total += block.iter().filter(|&&l| l == bm).count() as f64;
            }
            nan |= block_has_nan(block);
            continue;
        }
        if bm > run_max {
            if total != 0.0 {
                total *= ((run_max as f64 - bm as f64) * inv_t64).exp();
            }
            run_max = bm;
        }
        if run_max == f32::NEG_INFINITY {
            // Every logit so far is -inf (or NaN): nothing to add, and `l - max` is NaN.
            nan |= block_has_nan(block);
            continue;
        }
        // NaN logits (and +inf ones, via inf - inf) make the block sum NaN.
        total += block_sum_exp(block, run_max, inv_t) as f64;
    }
    if nan || !run_max.is_finite() || !total.is_finite() || total <= 0.0 {
        return Err(KernelError::NonFinite);
    }
    Ok(LogNorm {
        temperature,
        max_logit: run_max,
        log_z: total.ln() as f32,
    })
}

/// Maximum of a block (NaN ignored), in independent lanes.
#[inline]
fn block_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] = acc[j].max(c[j]);
        }
    }
    rest.iter()
        .chain(acc.iter())
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Whether a block holds a NaN (only needed where the sum cannot tell).
fn block_has_nan(v: &[f32]) -> bool {
    v.iter().fold(false, |a, l| a | l.is_nan())
}

/// `Σ exp((v - max) * inv_t)` over a block, in independent `f32` lanes.
#[inline]
fn block_sum_exp(v: &[f32], max: f32, inv_t: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += exp_nonpositive((c[j] - max) * inv_t);
        }
    }
    let tail: f32 = rest
        .iter()
        .map(|&x| exp_nonpositive((x - max) * inv_t))
        .sum();
    // Pairwise over the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] += acc[j + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// `e^x` for `x ≤ 0`, relative error below ~3e-7 (inputs below -87 give `e^-87`, the
/// smallest value kept normal; NaN stays NaN). Branch-free so the block loops vectorise:
/// `x = n·ln2 + y` with `n = round(x / ln2)` and a two-part `ln2` (Cody–Waite, exact
/// `n·LN2_HI`), then a degree-7 polynomial for `e^y`, `|y| ≤ ln2 / 2`, times `2^n`.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: 9 significant bits, so n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 0.0);
    // Truncating a non-positive value rounds up: n = ceil(t - 1/2), so t - n ∈ (-1/2, 1/2].
    // `trunc` rather than `as i32`, whose saturation keeps the loop from vectorising.
    let nf = (x * std::f32::consts::LOG2_E - 0.5).trunc();
    let y = (x - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0
        + y * (1.0
            + y * (0.5
                + y * (1.0 / 6.0
                    + y * (1.0 / 24.0
                        + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
    // n ∈ [-126, 0]: a normal power of two. Its biased exponent n + 127 is read from the
    // bits of 2^23 + n + 127 (exact), again so that the loop vectorises; a NaN input
    // gives garbage bits here and NaN through `p`.
    let biased = (nf + (127.0 + 8_388_608.0))
        .to_bits()
        .wrapping_sub(0x4B00_0000);
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// The `k` best (logit, id) pairs seen so far, sorted: higher logit first, then lower id.
struct Selector<F> {
    k: usize,
    best: Vec<(f32, u32)>,
    /// The k-th best logit once `best` is full; a logit must beat it strictly (equal
    /// logits come later in id order, so they lose the tie).
    floor: f32,
    allowed: F,
}

impl<F: FnMut(u32) -> bool> Selector<F> {
    fn new(k: usize, allowed: F) -> Self {
        Selector {
            k,
            best: Vec::with_capacity(k.min(4096) + 1),
            floor: f32::NEG_INFINITY,
            allowed,
        }
    }

    /// Offers the block starting at id `base` whose maximum is `block_max`.
    #[inline]
    fn offer(&mut self, base: usize, block: &[f32], block_max: f32) {
        // `block_max` is never NaN: `f32::max` skips NaN.
        if self.best.len() == self.k && block_max <= self.floor {
            return;
        }
        for (j, &l) in block.iter().enumerate() {
            if l.is_nan() || (self.best.len() == self.k && l <= self.floor) {
                continue;
            }
            let id = (base + j) as u32;
            if !(self.allowed)(id) {
                continue;
            }
            let at = self.best.partition_point(|&(bl, _)| bl >= l);
            self.best.insert(at, (l, id));
            if self.best.len() > self.k {
                self.best.pop();
            }
            if self.best.len() == self.k {
                self.floor = self.best[self.k - 1].0;
            }
        }
    }

    fn finish(self, norm: LogNorm) -> TopK {
        let probs = self.best.iter().map(|&(l, _)| norm.prob(l)).collect();
        let ids = self.best.iter().map(|&(_, id)| id).collect();
        TopK { ids, probs, norm }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_nonpositive` with the exponent taken through integers (`as i32`), the plain
    /// form of the bit manipulation the kernel does in floats.
    fn exp_via_integers(x: f32) -> f32 {
        let x = x.clamp(-87.0, 0.0);
        let n = (x * std::f32::consts::LOG2_E - 0.5) as i32;
        let nf = n as f32;
        let y = (x - nf * 0.693_359_4) - nf * -2.121_944_4e-4;
        let p = 1.0
            + y * (1.0
                + y * (0.5
                    + y * (1.0 / 6.0
                        + y * (1.0 / 24.0
                            + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
        p * f32::from_bits(((n + 127) as u32) << 23)
    }

    #[test]
    fn float_exponent_is_the_integer_exponent() {
        let mut x = 0.0f32;
        while x > -100.0 {
            assert_eq!(
                exp_nonpositive(x).to_bits(),
                exp_via_integers(x).to_bits(),
                "{x}"
            );
            x = x * 1.000_1 - 1e-4;
        }
        for x in [f32::NEG_INFINITY, -87.0, -86.999, -0.5, -0.0, f32::MIN] {
            assert_eq!(
                exp_nonpositive(x).to_bits(),
                exp_via_integers(x).to_bits(),
                "{x}"
            );
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..=200_000 {
            let x = -(i as f32) * 0.000_43;
            let (a, b) = (exp_nonpositive(x), (x as f64).exp());
            let rel = (a as f64 - b).abs() / b;
            assert!(rel < 3e-7, "{x}: {a} vs {b} ({rel})");
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        let floor = (-87.0f32).exp();
        assert!((exp_nonpositive(-200.0) - floor).abs() < 1e-6 * floor);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn block_reductions() {
        let v: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(block_max(&v), m);
        let s = block_sum_exp(&v, m, 0.5) as f64;
        let r: f64 = v.iter().map(|&l| ((l as f64 - m as f64) * 0.5).exp()).sum();
        assert!((s - r).abs() < 2e-6 * r, "{s} vs {r}");
    }

    #[test]
    fn small_softmax_and_order() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let t = softmax_topk(&l, 1.0, 3, None).unwrap();
        assert_eq!(t.ids, vec![1, 3, 2]);
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for (id, p) in t.iter() {
            let r = (l[id as usize] as f64).exp() / z;
            assert!((p as f64 - r).abs() < 1e-7, "{id}: {p} vs {r}");
        }
        assert!((t.norm.lse() - z.ln()).abs() < 1e-6);
        let all = gather_probs(&l, &t.norm, &[0, 1, 2, 3, 9]);
        assert!((all.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(all[4], 0.0);
        assert_eq!(&all[1..3], &[t.probs[0], t.probs[2]]);
    }

    #[test]
    fn greedy_limit() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let t = softmax_topk(&l, 0.0, 3, None).unwrap();
        assert!(t.norm.is_greedy());
        assert_eq!(t.ids, vec![1, 3, 2]);
        assert_eq!(t.probs, vec![0.5, 0.5, 0.0]);
        assert_eq!(t.norm.lse(), f64::INFINITY);
        let one = softmax_topk(&[0.0, 5.0, 1.0], 0.0, 2, None).unwrap();
        assert_eq!(one.probs, vec![1.0, 0.0]);
        // A temperature whose inverse overflows is the same limit.
        let tiny = softmax_topk(&l, 1e-40, 3, None).unwrap();
        assert_eq!(tiny, t);
    }

    #[test]
    fn mask_and_short_results() {
        let l = [5.0f32, 4.0, 3.0, 2.0, 1.0];
        let mask = [false, true, false, true];
        let t = softmax_topk(&l, 1.0, 3, Some(&mask)).unwrap();
        // Id 4 lies past the mask: not allowed. The normaliser still covers id 0.
        assert_eq!(t.ids, vec![1, 3]);
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((t.probs[0] as f64 - 4f64.exp() / z).abs() < 1e-7);
        let none = softmax_topk(&l, 1.0, 3, Some(&[])).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn errors_and_infinities() {
        assert_eq!(softmax_topk(&[1.0], 1.0, 0, None), Err(KernelError::ZeroK));
        assert_eq!(
            softmax_topk(&[], 1.0, 1, None),
            Err(KernelError::EmptyLogits)
        );
        for t in [-1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                softmax_topk(&[1.0], t, 1, None),
                Err(KernelError::BadTemperature(_))
            ));
        }
        for bad in [f32::NAN, f32::INFINITY] {
            let mut l = vec![0.0f32; 3000];
            l[2500] = bad;
            assert_eq!(softmax_topk(&l, 1.0, 4, None), Err(KernelError::NonFinite));
            assert_eq!(log_norm(&l, 0.0), Err(KernelError::NonFinite));
        }
        let ninf = vec![f32::NEG_INFINITY; 5];
        assert_eq!(log_norm(&ninf, 1.0), Err(KernelError::NonFinite));
        // -inf logits are fine and get probability 0; a leading all -inf block too.
        let mut l = vec![f32::NEG_INFINITY; 2 * BLOCK + 7];
        l[2 * BLOCK + 3] = 0.5;
        let t = softmax_topk(&l, 1.0, 2, None).unwrap();
        assert_eq!(t.ids[0], (2 * BLOCK + 3) as u32);
        assert!((t.probs[0] - 1.0).abs() < 1e-6);
        assert_eq!(t.probs[1], 0.0);
    }

    #[test]
    fn split_path_matches_fused() {
        let l: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let fused = softmax_topk(&l, 0.7, 10, None).unwrap();
        let norm = log_norm(&l, 0.7).unwrap();
        assert_eq!(norm, fused.norm);
        assert_eq!(select_topk(&l, &norm, 10, None).unwrap(), fused);
    }
}
