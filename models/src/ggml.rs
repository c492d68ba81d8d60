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

/// [`rope`] for `[s, heads, hd]` (the rows as a projection writes them): row `(i, h)`
/// takes the angles of position `i` of `table`.
pub fn rope_rows(x: &mut [f32], heads: usize, hd: usize, table: &[f32], interleaved: bool) {
    let half = hd / 2;
    for (i, pos) in x.chunks_exact_mut(heads * hd).enumerate() {
        let cs = &table[i * half * 2..(i + 1) * half * 2];
        for row in pos.chunks_exact_mut(hd) {
            rope(row, 1, 1, hd, cs, interleaved);
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

    /// [`super::dot_tinyblas_4xq`] with AVX-512: pair `(q, r)`'s 16 lanes are one
    /// register, the same lanes as `dot_tinyblas`'s accumulator.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_tinyblas_4xq_avx512<const Q: usize>(
        a: [&[f32]; 4],
        b: [&[f32]; Q],
        n: usize,
    ) -> [[f32; 4]; Q] {
        assert!(a.iter().all(|r| r.len() >= n) && b.iter().all(|r| r.len() >= n));
        let full = n / 16 * 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; Q];
        let pa = [a[0].as_ptr(), a[1].as_ptr(), a[2].as_ptr(), a[3].as_ptr()];
        let mut c = 0;
        // SAFETY (loads): every row holds at least `n >= full` values.
        while c < full {
            let av = [
                _mm512_loadu_ps(pa[0].add(c)),
                _mm512_loadu_ps(pa[1].add(c)),
                _mm512_loadu_ps(pa[2].add(c)),
                _mm512_loadu_ps(pa[3].add(c)),
            ];
            for q in 0..Q {
                let bv = _mm512_loadu_ps(b[q].as_ptr().add(c));
                for r in 0..4 {
                    acc[q][r] = _mm512_fmadd_ps(av[r], bv, acc[q][r]);
                }
            }
            c += 16;
        }
        let mut out = [[0f32; 4]; Q];
        for q in 0..Q {
            for r in 0..4 {
                let mut lanes = [0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[q][r]);
                for l in 0..n - full {
                    lanes[l] = a[r][full + l].mul_add(b[q][full + l], lanes[l]);
                }
                out[q][r] = super::reduce16(&lanes);
            }
        }
        out
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

/// `out[q][r] = dot_tinyblas(a[r][..n], b[q][..n])`: four rows against `Q` others. With
/// AVX-512 each pair's 16-lane accumulator is one register and every row loaded serves
/// all its pairs; the lanes and their reduction are those of [`dot_tinyblas`].
#[inline]
fn dot_tinyblas_4xq<const Q: usize>(a: [&[f32]; 4], b: [&[f32]; Q], n: usize) -> [[f32; 4]; Q] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F (checked).
        return unsafe { avx2::dot_tinyblas_4xq_avx512(a, b, n) };
    }
    std::array::from_fn(|q| dot_tinyblas4(a, &b[q][..n]))
}

/// Whether the CPU has AVX-512F (checked once; `TUTTI_NO_AVX512` turns its use off, for
/// comparing the two kernels).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
fn has_avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && std::env::var_os("TUTTI_NO_AVX512").is_none()
    })
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
/// `q`: `[s, nh, hd]` as the projection writes it (already rounded to f16), `kv`: f16
/// values, `visible(i, j)`: whether query `i` sees key `j` (counted from `kv.first`).
/// Writes `out`, `[s, nh * hd]`. With `by_shape`, several rows take llama.cpp's prompt
/// path (tinyBLAS); otherwise every row takes its one-row path, which makes a row's
/// result independent of the rows beside it (see [`crate::Numerics`]).
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
    by_shape: bool,
    out: &mut [f32],
) {
    let n_rep = nh / nkv;
    let t = kv.t;
    let out = &mut out[..s * nh * hd];
    let out_ptr = out.as_mut_ptr() as usize;
    let q_row = |i: usize, h: usize| &q[(i * nh + h) * hd..(i * nh + h + 1) * hd];
    if s == 1 || !by_shape {
        // llama.cpp's one-row path (`ggml_vec_dot_f16`), one (row, head) per work item,
        // each row over the span of keys it sees, counted from its first: the lanes a
        // key's score and value fall in are then the same as in the row's own decode step.
        let spans: Vec<Option<(usize, usize)>> = (0..s)
            .map(|i| {
                let first = (0..t).find(|&j| visible(i, j))?;
                let last = (first..t).rev().find(|&j| visible(i, j))?;
                Some((first, last + 1))
            })
            .collect();
        crate::pool::for_ranges(s * nh, 1, &|items| {
            ATT_SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let (w, acc, _) = &mut *scratch;
                for it in items {
                    let (i, h) = (it / nh, it % nh);
                    // SAFETY: item (i, h) owns `out[(i * nh + h) * hd..][..hd]`; no other
                    // item writes it.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut((out_ptr as *mut f32).add(it * hd), hd)
                    };
                    let Some((first, end)) = spans[i] else {
                        o.fill(0.0);
                        continue;
                    };
                    let kh = &kv.head(kv.k, h / n_rep, hd)[first * hd..end * hd];
                    let vh = &kv.head(kv.v, h / n_rep, hd)[first * hd..end * hd];
                    let qi = q_row(i, h);
                    w.clear();
                    w.resize(end - first, f32::NEG_INFINITY);
                    for j in first..end {
                        if visible(i, j) {
                            w[j - first] = dot_vec_f16(&kh[(j - first) * hd..][..hd], qi) * scale;
                        }
                    }
                    softmax_row(w);
                    for p in w.iter_mut() {
                        *p = f16::from_f32(*p).to_f32();
                    }
                    weighted_rows_vec_f16(vh, w, hd, acc, o);
                }
            })
        });
        return;
    }
    // Several query rows (tinyBLAS): every query reads every value column once, so each
    // kv head's values are transposed once (`[kv head][head dim][position]`).
    let mut vt_all = vec![0f32; nkv * hd * t];
    for kvh in 0..nkv {
        let vh = kv.head(kv.v, kvh, hd);
        let dst = &mut vt_all[kvh * hd * t..(kvh + 1) * hd * t];
        for (j, row) in vh.chunks_exact(hd).enumerate() {
            for (dd, &x) in row.iter().enumerate() {
                dst[dd * t + j] = x;
            }
        }
    }
    // The query heads of one position that share a kv head see the same keys: they are
    // scored together, up to four per pass, so that each key and value row loaded serves
    // all of them. Every (query, key) pair still sums in ggml's order, so the result
    // depends neither on the grouping nor on the thread count.
    crate::pool::for_ranges(s * nkv, 1, &|groups| {
        ATT_SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let (w, _, seen) = &mut *scratch;
            w.resize(4 * t, 0.0);
            for g in groups {
                let (i, kvh) = (g / nkv, g % nkv);
                visible_keys(t, |j| visible(i, j), seen);
                let at = AttendAt {
                    keys: kv.head(kv.k, kvh, hd),
                    vt: &vt_all[kvh * hd * t..(kvh + 1) * hd * t],
                    t,
                    hd,
                    scale,
                    seen,
                };
                let mut h0 = kvh * n_rep;
                while h0 < (kvh + 1) * n_rep {
                    let nq = ((kvh + 1) * n_rep - h0).min(4);
                    // SAFETY: heads `h0..h0 + nq` of position `i` own these `nq * hd`
                    // values of `out`; no other item writes them.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(
                            (out_ptr as *mut f32).add((i * nh + h0) * hd),
                            nq * hd,
                        )
                    };
                    let qs = |k: usize| q_row(i, h0 + k.min(nq - 1));
                    match nq {
                        4 => at.heads::<4>([qs(0), qs(1), qs(2), qs(3)], w, o),
                        3 => at.heads::<3>([qs(0), qs(1), qs(2)], w, o),
                        2 => at.heads::<2>([qs(0), qs(1)], w, o),
                        _ => at.heads::<1>([qs(0)], w, o),
                    }
                    h0 += nq;
                }
            }
        })
    });
}

/// The keys `j < t` for which `visible(j)`, in order, into `seen`.
fn visible_keys(t: usize, visible: impl Fn(usize) -> bool, seen: &mut Vec<usize>) {
    seen.clear();
    seen.extend((0..t).filter(|&j| visible(j)));
}

/// One position's view of one kv head in the several-query attention.
struct AttendAt<'a> {
    /// `[t][hd]` keys.
    keys: &'a [f32],
    /// `[hd][t]` values, transposed.
    vt: &'a [f32],
    t: usize,
    hd: usize,
    scale: f32,
    /// The keys this position sees.
    seen: &'a [usize],
}

impl AttendAt<'_> {
    /// Attention of the `Q` query rows `qs` (heads sharing this kv head) into `out`
    /// (`[Q][hd]`); `w` holds `Q` rows of `t` scores.
    fn heads<const Q: usize>(&self, qs: [&[f32]; Q], w: &mut [f32], out: &mut [f32]) {
        let (t, hd) = (self.t, self.hd);
        let key = |j: usize| &self.keys[j * hd..(j + 1) * hd];
        let w = &mut w[..Q * t];
        w.fill(f32::NEG_INFINITY);
        let mut quads = self.seen.chunks_exact(4);
        for js in quads.by_ref() {
            let d = dot_tinyblas_4xq([key(js[0]), key(js[1]), key(js[2]), key(js[3])], qs, hd);
            for (qi, dq) in d.iter().enumerate() {
                for (&j, &v) in js.iter().zip(dq) {
                    w[qi * t + j] = v * self.scale;
                }
            }
        }
        for &j in quads.remainder() {
            for (qi, qr) in qs.iter().enumerate() {
                w[qi * t + j] = dot_tinyblas(key(j), qr) * self.scale;
            }
        }
        for row in w.chunks_exact_mut(t) {
            softmax_row(row);
            for p in row.iter_mut() {
                *p = f16::from_f32(*p).to_f32();
            }
        }
        // Keys past the last visible one have weight +0: leaving them out leaves every
        // lane's sum as it is.
        let end = self.seen.last().map_or(0, |&j| j + 1);
        let ws: [&[f32]; Q] = std::array::from_fn(|qi| &w[qi * t..qi * t + end]);
        let col = |dd: usize| &self.vt[dd * t..dd * t + end];
        let mut dd = 0;
        while dd + 4 <= hd {
            let d = dot_tinyblas_4xq([col(dd), col(dd + 1), col(dd + 2), col(dd + 3)], ws, end);
            for (qi, dq) in d.iter().enumerate() {
                out[qi * hd + dd..qi * hd + dd + 4].copy_from_slice(dq);
            }
            dd += 4;
        }
        for k in dd..hd {
            for (qi, wq) in ws.iter().enumerate() {
                out[qi * hd + k] = dot_tinyblas(col(k), wq);
            }
        }
    }
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
    fn four_by_q_dots_are_the_single_dots() {
        for n in [0, 7, 16, 64, 100, 256, 513] {
            let a: Vec<Vec<f32>> = (0..4).map(|i| values(n + 1, 30 + i)).collect();
            let b: Vec<Vec<f32>> = (0..4).map(|i| values(n, 40 + i)).collect();
            let ar = [&a[0][..], &a[1][..], &a[2][..], &a[3][..]];
            let check = |got: &[[f32; 4]]| {
                for (q, row) in got.iter().enumerate() {
                    for (r, g) in row.iter().enumerate() {
                        let want = dot_tinyblas(&a[r][..n], &b[q]);
                        assert_eq!(g.to_bits(), want.to_bits(), "n {n} q {q} r {r}");
                    }
                }
            };
            check(&dot_tinyblas_4xq(ar, [&b[0][..], &b[1], &b[2], &b[3]], n));
            check(&dot_tinyblas_4xq(ar, [&b[0][..], &b[1], &b[2]], n));
            check(&dot_tinyblas_4xq(ar, [&b[0][..]], n));
        }
    }

    /// The several-query attention written pair by pair, in `[s, nh, hd]` rows.
    #[allow(clippy::too_many_arguments)]
    fn attention_by_pairs(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        nh: usize,
        nkv: usize,
        s: usize,
        t: usize,
        hd: usize,
        visible: impl Fn(usize, usize) -> bool,
    ) -> Vec<f32> {
        let mut out = vec![0f32; s * nh * hd];
        for i in 0..s {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let qi = &q[(i * nh + h) * hd..(i * nh + h + 1) * hd];
                let key = |j: usize| &k[(kvh * t + j) * hd..(kvh * t + j + 1) * hd];
                let mut w: Vec<f32> = (0..t)
                    .map(|j| {
                        if visible(i, j) {
                            dot_tinyblas(key(j), qi) * 0.125
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                softmax_row(&mut w);
                let w: Vec<f32> = w.iter().map(|&p| f16::from_f32(p).to_f32()).collect();
                let end = (0..t).rev().find(|&j| visible(i, j)).map_or(0, |j| j + 1);
                for d in 0..hd {
                    let col: Vec<f32> = (0..end).map(|j| v[(kvh * t + j) * hd + d]).collect();
                    out[(i * nh + h) * hd + d] = dot_tinyblas(&col, &w[..end]);
                }
            }
        }
        out
    }

    #[test]
    fn grouped_attention_is_the_pairwise_attention() {
        // Heads per kv head: 4 (one group), 3, 5 (a group of 4 and one of 1), 1.
        for (nh, nkv, s, hd, window) in [
            (8, 2, 9, 64, None),
            (6, 2, 7, 40, Some(4)),
            (5, 1, 13, 36, None),
            (3, 3, 6, 64, Some(3)),
        ] {
            let t = s + 2; // two cached positions before the queries
            let q = values(s * nh * hd, 1);
            let k = values(nkv * t * hd, 2);
            let v = values(nkv * t * hd, 3);
            let visible = |i: usize, j: usize| {
                let qp = i + 2;
                j <= qp && window.is_none_or(|w: usize| qp - j < w)
            };
            let kv = KvRows {
                k: &k,
                v: &v,
                stride: t,
                first: 0,
                t,
            };
            let mut out = vec![0f32; s * nh * hd];
            attention(&q, kv, nh, nkv, s, hd, 0.125, visible, true, &mut out);
            let want = attention_by_pairs(&q, &k, &v, nh, nkv, s, t, hd, visible);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "nh {nh} nkv {nkv} s {s}");
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
