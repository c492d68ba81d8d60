//! CPU kernels that reproduce llama.cpp's (ggml's) arithmetic for GGUF models.
//!
//! A quantized model rounds every matmul input to 8 bits, so a last-bit difference in an
//! activation occasionally flips a rounding, and 20-30 layers amplify such flips into logit
//! differences of 0.1 and more. To follow llama.cpp closely on its own GGUF files, the
//! element-wise parts of the decoder are computed here the way ggml's x86 CPU backend
//! (AVX-512 build) computes them:
//!
//! - `expf` is ggml's vectorised approximation (`ggml_v_expf`), used by SiLU and softmax;
//! - GELU (tanh form) goes through ggml's f16 lookup table (`GGML_GELU_FP16`);
//! - attention runs on an f16 KV cache (llama.cpp's default): q and the probabilities are
//!   rounded to f16 like `ggml_mul_mat` does, dot products accumulate in the lane order of
//!   the kernel llama.cpp picks (tinyBLAS `sgemm` for several query rows, `ggml_vec_dot_f16`
//!   for one), and the softmax sums in f64 with ggml's 16-lane partial sums.

use half::f16;
use std::sync::OnceLock;

/// ggml's AVX-512 `ggml_v_expf` for one lane (ARM optimized-routines polynomial).
#[inline]
pub fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    if n.abs() > 192.0 || n.is_nan() {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    let u = b * b;
    let c5 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
    let c4 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    let c3 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    let c2 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    let c1 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
    let j = c5
        .mul_add(b, c4)
        .mul_add(u, c3.mul_add(b, c2))
        .mul_add(u, c1.mul_add(b, 1.0));
    // _mm512_scalef_ps: j * 2^n with one rounding.
    // 2^n is exact in f64 for |n| <= 192: build it from its exponent bits.
    let two_n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    ((j as f64) * two_n) as f32
}

/// `silu(x) * g` as `ggml_vec_swiglu_f32` (AVX-512) computes it.
pub fn swiglu(x: &mut [f32], g: &[f32]) {
    for (v, &gv) in x.iter_mut().zip(g) {
        let s = *v / (1.0 + v_expf(0.0 - *v));
        *v = s * gv;
    }
}

/// ggml's tanh-approximation GELU in f32 (`ggml_gelu_f32`, with the FMA contraction GCC
/// applies to `1 + a*x*x`).
fn gelu_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// Rotary cos/sin table of ggml (`ggml_rope_cache_init`): the angle of pair `i` at
/// position `p` is `p * theta_scale^i` built by repeated f32 multiplication, with
/// `theta_scale = powf(base, -2 / n_dims)`; returns `[s][half][cos, sin]`.
pub fn rope_table(base: f32, freq_scale: f32, n_dims: usize, pos0: usize, s: usize) -> Vec<f32> {
    let half = n_dims / 2;
    let theta_scale = base.powf(-2.0f32 / n_dims as f32);
    let mut out = Vec::with_capacity(s * half * 2);
    for p in pos0..pos0 + s {
        let mut theta = p as f32;
        for _ in 0..half {
            let t = freq_scale * theta;
            out.push(t.cos());
            out.push(t.sin());
            theta *= theta_scale;
        }
    }
    out
}

/// Applies rotary embeddings in place to `[heads, s, hd]` like ggml's `rotate_pairs`
/// (GCC contracts `x0*c - x1*s` into `fma(x0, c, -(x1*s))`). `interleaved`: pairs
/// `(2i, 2i+1)` (ggml's NORMAL mode), otherwise `(i, i + hd/2)` (NEOX).
pub fn rope(x: &mut [f32], heads: usize, s: usize, hd: usize, table: &[f32], interleaved: bool) {
    let half = hd / 2;
    for h in 0..heads {
        for i in 0..s {
            let row = &mut x[(h * s + i) * hd..(h * s + i + 1) * hd];
            let cs = &table[i * half * 2..(i + 1) * half * 2];
            for p in 0..half {
                let (c, sn) = (cs[2 * p], cs[2 * p + 1]);
                let (a, b) = if interleaved {
                    (2 * p, 2 * p + 1)
                } else {
                    (p, p + half)
                };
                let (x0, x1) = (row[a], row[b]);
                row[a] = x0.mul_add(c, -(x1 * sn));
                row[b] = x0.mul_add(sn, x1 * c);
            }
        }
    }
}

fn gelu_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|i| f16::from_f32(gelu_f32(f16::from_bits(i).to_f32())).to_f32())
            .collect()
    })
}

/// `gelu(x) * g` as `ggml_vec_geglu_f32` computes it with `GGML_GELU_FP16`: the input
/// rounded to f16, looked up in a table of f16 GELU values.
pub fn geglu(x: &mut [f32], g: &[f32]) {
    let t = gelu_table();
    for (v, &gv) in x.iter_mut().zip(g) {
        *v = if *v <= -10.0 {
            0.0
        } else if *v >= 10.0 {
            *v * gv
        } else {
            t[f16::from_f32(*v).to_bits() as usize] * gv
        };
    }
}

/// `_mm512_reduce_add_ps` (GCC's halving order) over 16 lanes.
#[inline]
fn reduce16(v: &[f32; 16]) -> f32 {
    let mut h = [0f32; 8];
    for l in 0..8 {
        h[l] = v[l + 8] + v[l];
    }
    let mut g = [0f32; 4];
    for l in 0..4 {
        g[l] = h[l + 4] + h[l];
    }
    let e0 = g[2] + g[0];
    let e1 = g[3] + g[1];
    e0 + e1
}

/// Dot product of two f16-valued f32 rows in the order of tinyBLAS (`llamafile_sgemm`,
/// AVX-512): one 16-lane FMA accumulator along k, then a lane reduction.
#[inline]
fn dot_tinyblas(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let n = a.len();
    let full = n / 16 * 16;
    for c in (0..full).step_by(16) {
        for l in 0..16 {
            acc[l] = a[c + l].mul_add(b[c + l], acc[l]);
        }
    }
    // Zero padding past the end (the cache is padded to 256 cells) adds nothing.
    for l in 0..n - full {
        acc[l] = a[full + l].mul_add(b[full + l], acc[l]);
    }
    reduce16(&acc)
}

/// `ggml_vec_dot_f16` (AVX-512: four 16-lane accumulators over 64-element steps).
#[inline]
fn dot_vec_f16(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if a.len().min(b.len()).is_multiple_of(64) {
        return avx2::dot_vec_f16_whole(a, b);
    }
    let mut acc = [[0f32; 16]; 4];
    let n = a.len().min(b.len());
    let full = n / 64 * 64;
    for (ca, cb) in a[..full].chunks_exact(64).zip(b[..full].chunks_exact(64)) {
        for (j, accj) in acc.iter_mut().enumerate() {
            for (l, lane) in accj.iter_mut().enumerate() {
                *lane = ca[16 * j + l].mul_add(cb[16 * j + l], *lane);
            }
        }
    }
    // The tail past the last 64-element step is summed in f64 by ggml; with a padded
    // cache there is none, and the zero padding is exact here as well.
    for e in full..n {
        let (j, l) = ((e / 16) % 4, e % 16);
        acc[j][l] = a[e].mul_add(b[e], acc[j][l]);
    }
    reduce_vec_f16(&acc)
}

/// AVX2 forms of the kernels above with the same per-lane operations (same results).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::dot_vec_f16`] for lengths that are whole 64-element steps: the 16-lane
    /// accumulator `j` is the register pair `acc[2j]`, `acc[2j + 1]`.
    pub fn dot_vec_f16_whole(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len()) / 64 * 64;
        // SAFETY: AVX2/FMA are enabled at compile time; loads stay below `n`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            for c in (0..n).step_by(64) {
                for (q, r) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(c + 8 * q));
                    let y = _mm256_loadu_ps(pb.add(c + 8 * q));
                    *r = _mm256_fmadd_ps(x, y, *r);
                }
            }
            // s = (acc0 + acc2) + (acc1 + acc3) per lane, lanes 0..8 and 8..16.
            let s_lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
            let s_hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
            // reduce16: h[l] = s[l + 8] + s[l], g[l] = h[l + 4] + h[l],
            // (g2 + g0) + (g3 + g1).
            let h = _mm256_add_ps(s_hi, s_lo);
            let g = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
            let e = _mm_add_ps(_mm_movehl_ps(g, g), g);
            _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)))
        }
    }

    /// `reduce16` of the 16 lanes `lo` (0..8), `hi` (8..16).
    #[inline(always)]
    unsafe fn reduce16(lo: __m256, hi: __m256) -> f32 {
        let h = _mm256_add_ps(hi, lo);
        let g = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
        let e = _mm_add_ps(_mm_movehl_ps(g, g), g);
        _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)))
    }

    /// [`super::dot_tinyblas`] of four rows against one: `[dot(a[i], b)]`, each with
    /// its own 16-lane accumulator (four independent chains run side by side).
    pub fn dot_tinyblas4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
        let n = b.len();
        assert!(a.iter().all(|r| r.len() >= n));
        let full = n / 16 * 16;
        // SAFETY: AVX2/FMA are enabled at compile time; loads stay below `full <= n`.
        unsafe {
            let mut lo = [_mm256_setzero_ps(); 4];
            let mut hi = [_mm256_setzero_ps(); 4];
            let pb = b.as_ptr();
            for c in (0..full).step_by(16) {
                let (b0, b1) = (_mm256_loadu_ps(pb.add(c)), _mm256_loadu_ps(pb.add(c + 8)));
                for i in 0..4 {
                    let pa = a[i].as_ptr();
                    lo[i] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(c)), b0, lo[i]);
                    hi[i] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(c + 8)), b1, hi[i]);
                }
            }
            let mut out = [0f32; 4];
            for i in 0..4 {
                if full < n {
                    let mut lanes = [0f32; 16];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), lo[i]);
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi[i]);
                    for (l, lane) in lanes.iter_mut().enumerate().take(n - full) {
                        *lane = a[i][full + l].mul_add(b[full + l], *lane);
                    }
                    lo[i] = _mm256_loadu_ps(lanes.as_ptr());
                    hi[i] = _mm256_loadu_ps(lanes.as_ptr().add(8));
                }
                out[i] = reduce16(lo[i], hi[i]);
            }
            out
        }
    }
}

/// [`dot_tinyblas`] of four rows against one.
#[inline]
fn dot_tinyblas4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        avx2::dot_tinyblas4(a, b)
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        a.map(|r| dot_tinyblas(&r[..b.len()], b))
    }
}

/// The final reduction of `ggml_vec_dot_f16`'s four 16-lane accumulators.
#[inline]
fn reduce_vec_f16(acc: &[[f32; 16]; 4]) -> f32 {
    let mut s = [0f32; 16];
    for l in 0..16 {
        let a02 = acc[0][l] + acc[2][l];
        let a13 = acc[1][l] + acc[3][l];
        s[l] = a02 + a13;
    }
    reduce16(&s)
}

/// `out[d] = dot_vec_f16(column d of v, w)` for every `d < hd`, where `v` is `[t, hd]`
/// row-major: the same per-lane sums, accumulated row by row (`acc[j % 64][d]`) so that
/// `v` is read in order instead of one strided column at a time, then reduced lane by
/// lane for all `d` at once.
fn weighted_rows_vec_f16(v: &[f32], w: &[f32], hd: usize, acc: &mut Vec<f32>, out: &mut [f32]) {
    acc.clear();
    acc.resize(64 * hd, 0.0);
    for (j, (row, &wj)) in v.chunks_exact(hd).zip(w).enumerate() {
        let a = &mut acc[(j % 64) * hd..(j % 64 + 1) * hd];
        for (x, &vd) in a.iter_mut().zip(row) {
            *x = vd.mul_add(wj, *x);
        }
    }
    // Lane l of 16-lane accumulator j is row 16j + l. s[l] = (acc0 + acc2) + (acc1 + acc3)
    // goes to row l; then reduce16 over rows 0..16.
    for l in 0..16 {
        let (head, rest) = acc.split_at_mut(16 * hd);
        let s = &mut head[l * hd..(l + 1) * hd];
        let a1 = &rest[l * hd..(l + 1) * hd];
        let a2 = &rest[(16 + l) * hd..(17 + l) * hd];
        let a3 = &rest[(32 + l) * hd..(33 + l) * hd];
        for d in 0..hd {
            s[d] = (s[d] + a2[d]) + (a1[d] + a3[d]);
        }
    }
    let fold = |acc: &mut [f32], rows: usize| {
        let (lo, hi) = acc.split_at_mut(rows * hd);
        for (x, &y) in lo.iter_mut().zip(&hi[..rows * hd]) {
            *x += y;
        }
    };
    fold(acc, 8);
    fold(acc, 4);
    let r = |i: usize| i * hd;
    for (d, o) in out.iter_mut().enumerate().take(hd) {
        let e0 = acc[r(2) + d] + acc[r(0) + d];
        let e1 = acc[r(3) + d] + acc[r(1) + d];
        *o = e0 + e1;
    }
}

/// Softmax of one row in place (`ggml_compute_forward_soft_max_f32` with a 0/-inf mask
/// already added): max, `v_expf(x - max)` with 16-lane partial sums added in f64, then
/// the row scaled by `(float)(1 / sum)`.
fn softmax_row(w: &mut [f32]) {
    let max = w.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    for chunk in w.chunks_mut(16) {
        let mut lanes = [0f32; 16];
        for (l, v) in chunk.iter_mut().enumerate() {
            *v = v_expf(*v - max);
            lanes[l] = *v;
        }
        sum += reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in w.iter_mut() {
        *v *= inv;
    }
}

/// The cached keys and values of one layer, `[kv head][position][head dim]` with
/// `stride` positions reserved per head; attention reads `t` positions from `first`.
#[derive(Clone, Copy)]
pub struct KvRows<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub stride: usize,
    pub first: usize,
    pub t: usize,
}

impl<'a> KvRows<'a> {
    fn head(&self, data: &'a [f32], kvh: usize, hd: usize) -> &'a [f32] {
        let start = (kvh * self.stride + self.first) * hd;
        &data[start..start + self.t * hd]
    }
}

thread_local! {
    /// Per-thread rows of the attention (scores, lane sums, visible keys).
    static ATT_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<usize>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Attention for one sequence on f16-valued data, like llama.cpp's non-flash CPU path.
///
/// `q`: `[nh, s, hd]` (already rounded to f16), `kv`: f16 values, `visible(i, j)`:
/// whether query `i` sees key `j` (counted from `kv.first`). Writes `out`, `[s, nh * hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    kv: KvRows<'_>,
    nh: usize,
    nkv: usize,
    s: usize,
    hd: usize,
    scale: f32,
    visible: impl Fn(usize, usize) -> bool + Sync,
    out: &mut [f32],
) {
    let n_rep = nh / nkv;
    let several = s >= 2;
    let t = kv.t;
    let out = &mut out[..s * nh * hd];
    // Several queries read every value column once per query: transpose each kv head's
    // values once (`[kv head][head dim][position]`) instead of gathering the columns.
    let vt_all: Vec<f32> = if several {
        let mut vt = vec![0f32; nkv * hd * t];
        for kvh in 0..nkv {
            let vh = kv.head(kv.v, kvh, hd);
            let dst = &mut vt[kvh * hd * t..(kvh + 1) * hd * t];
            for (j, row) in vh.chunks_exact(hd).enumerate() {
                for (dd, &x) in row.iter().enumerate() {
                    dst[dd * t + j] = x;
                }
            }
        }
        vt
    } else {
        Vec::new()
    };
    let out_ptr = out.as_mut_ptr() as usize;
    // Every (query, head) pair is independent: spread them over the cores. Each pair
    // still sums in ggml's order, so the result does not depend on the thread count.
    crate::pool::for_ranges(s * nh, 1, &|pairs| {
        ATT_SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let (w, acc, seen) = &mut *scratch;
            w.resize(t, 0.0);
            for c in pairs {
                // SAFETY: pair `c` owns `out[c * hd..(c + 1) * hd]`; no other pair writes it.
                let o = unsafe {
                    std::slice::from_raw_parts_mut((out_ptr as *mut f32).add(c * hd), hd)
                };
                let (i, h) = (c / nh, c % nh);
                let kvh = h / n_rep;
                let kh = kv.head(kv.k, kvh, hd);
                let vh = kv.head(kv.v, kvh, hd);
                let qi = &q[(h * s + i) * hd..(h * s + i + 1) * hd];
                let key = |j: usize| &kh[j * hd..(j + 1) * hd];
                // A masked key's score is not needed (its weight is exactly 0).
                seen.clear();
                for (j, wj) in w.iter_mut().enumerate() {
                    if visible(i, j) {
                        seen.push(j);
                    } else {
                        *wj = f32::NEG_INFINITY;
                    }
                }
                if several {
                    let mut quads = seen.chunks_exact(4);
                    for js in quads.by_ref() {
                        let d = dot_tinyblas4([key(js[0]), key(js[1]), key(js[2]), key(js[3])], qi);
                        for (&j, d) in js.iter().zip(d) {
                            w[j] = d * scale;
                        }
                    }
                    for &j in quads.remainder() {
                        w[j] = dot_tinyblas(key(j), qi) * scale;
                    }
                } else {
                    for &j in seen.iter() {
                        w[j] = dot_vec_f16(key(j), qi) * scale;
                    }
                }
                softmax_row(w);
                for p in w.iter_mut() {
                    *p = f16::from_f32(*p).to_f32();
                }
                if !several {
                    weighted_rows_vec_f16(vh, w, hd, acc, o);
                    continue;
                }
                // Keys past the last visible one have weight +0: leaving them out
                // leaves every lane's sum as it is.
                let end = seen.last().map_or(0, |&j| j + 1);
                let vth = &vt_all[kvh * hd * t..(kvh + 1) * hd * t];
                let col = |dd: usize| &vth[dd * t..dd * t + end];
                let mut dd = 0;
                while dd + 4 <= hd {
                    let d =
                        dot_tinyblas4([col(dd), col(dd + 1), col(dd + 2), col(dd + 3)], &w[..end]);
                    o[dd..dd + 4].copy_from_slice(&d);
                    dd += 4;
                }
                for (k, od) in o.iter_mut().enumerate().skip(dd) {
                    *od = dot_tinyblas(col(k), &w[..end]);
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                f16::from_f32((x >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0).to_f32()
            })
            .collect()
    }

    /// `ggml_vec_dot_f16`'s lanes written element by element: lane `(e / 16) % 4`, `e % 16`.
    fn dot_by_element(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [[0f32; 16]; 4];
        for (e, (&x, &y)) in a.iter().zip(b).enumerate() {
            acc[(e / 16) % 4][e % 16] = x.mul_add(y, acc[(e / 16) % 4][e % 16]);
        }
        reduce_vec_f16(&acc)
    }

    #[test]
    fn chunked_dot_is_the_element_order_dot() {
        for n in [1, 15, 64, 100, 128, 256, 1000] {
            let (a, b) = (values(n, 1), values(n, 2));
            assert_eq!(
                dot_vec_f16(&a, &b).to_bits(),
                dot_by_element(&a, &b).to_bits()
            );
        }
    }

    #[test]
    fn four_tinyblas_dots_at_once_are_four_dots() {
        for n in [0, 5, 16, 64, 100, 513] {
            let rows: Vec<Vec<f32>> = (0..4).map(|i| values(n + 3, 10 + i)).collect();
            let b = values(n, 20);
            let got = dot_tinyblas4([&rows[0], &rows[1], &rows[2], &rows[3]], &b);
            for (r, g) in rows.iter().zip(got) {
                assert_eq!(g.to_bits(), dot_tinyblas(&r[..n], &b).to_bits(), "n {n}");
            }
        }
    }

    #[test]
    fn a_zero_weight_tail_changes_no_tinyblas_dot() {
        let (a, mut w) = (values(300, 7), values(300, 8));
        for x in w[211..].iter_mut() {
            *x = 0.0;
        }
        assert_eq!(
            dot_tinyblas(&a, &w).to_bits(),
            dot_tinyblas(&a[..211], &w[..211]).to_bits()
        );
    }

    #[test]
    fn weighted_rows_are_the_column_dots() {
        for (t, hd) in [(1, 64), (7, 64), (65, 64), (300, 256), (129, 80)] {
            let v = values(t * hd, 3);
            let w = values(t, 4);
            let mut out = vec![0f32; hd];
            weighted_rows_vec_f16(&v, &w, hd, &mut Vec::new(), &mut out);
            for (d, &o) in out.iter().enumerate() {
                let col: Vec<f32> = (0..t).map(|j| v[j * hd + d]).collect();
                assert_eq!(
                    o.to_bits(),
                    dot_by_element(&col, &w).to_bits(),
                    "t {t} d {d}"
                );
            }
        }
    }
}
