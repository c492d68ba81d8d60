//! The K-quant row kernels (Q4_K, Q6_K against Q8_K activations) that reproduce each of
//! llama.cpp's x86 paths bit for bit: the one-row dot product, the tiled matmul, the
//! repacked gemv/gemm. Each is llama.cpp's order of float operations over exact integer
//! sums, which a kernel set supplies ([`Sums`]): the build's SIMD set for the drivers in
//! `kquant.rs`, the scalar set for its own reference tiles.

use super::act::{act_block_bytes, ActFormat};
use super::blocks::{f16_at, hsum8, q4k_scales};
use candle_core::quantized::k_quants::QK_K;

/// Q6_K: the 8 lanes of `Σ scale (q - 32) q8` of a weight and an activation
/// super-block (see [`dot_q6k`]).
pub(super) type Q6kLanes = fn(&[u8], &[u8]) -> [i32; 8];
/// Q4_K: `Σ scale Σ q4 q8` per 64-value pair of sub-blocks, given the 8 scales.
pub(super) type Q4kPairSums = fn(&[u8], &[u8], &[i32; 8]) -> [i32; 4];

/// The integer sums of one super-block that a kernel set computes.
pub(super) struct Sums {
    pub(super) q6k_lanes: Q6kLanes,
    pub(super) q4k_pair_sums: Q4kPairSums,
}

/// `ggml_vec_dot_q6_K_q8_K` (x86 AVX2) bit for bit. Per super-block the integer dot
/// product is split into 8 int32 lanes (lane `l` holds the values `e` with
/// `(e % 32) / 4 == l`, minus its share `32 * Σ scale * bsum` of the two 16-value groups
/// `2l`, `2l+1`), each lane accumulated with `fma(d_a * d_w, lane, acc)`; `hsum_float_8`
/// at the end.
pub(super) fn dot_q6k(w: &[u8], a: &[u8], sums: &Sums) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = [0f32; 8];
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(ab)) {
        let dx = f16_at(x, 208);
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let d = dy * dx;
        let lanes = (sums.q6k_lanes)(x, y);
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}

/// Q4_K as llama.cpp's repacked x86 kernels compute it. Per super-block and 64-value pair
/// of sub-blocks the exact integer sums `Σ scale Σ q4 q8` and `Σ min bsum` are formed;
/// `ggml_gemv_q4_K_8x8_q8_K` (rows past the last group of 4) accumulates them per
/// super-block with `fma(sum, d_w * d_a, acc)`, `ggml_gemm_q4_K_8x8_q8_K` (rows in groups
/// of 4) per sub-block pair; the result is `acc - acc_min`.
pub(super) fn dot_q4k_repacked(w: &[u8], a: &[u8], gemm: bool, sums: &Sums) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = 0f32;
    let mut acc_min = 0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(ab)) {
        let d = f16_at(x, 0);
        let dmin = f16_at(x, 2);
        let (scales, mins) = q4k_scales(&x[4..16]);
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let bs = &y[4 + QK_K..];
        let bsum = |g: usize| i16::from_le_bytes([bs[2 * g], bs[2 * g + 1]]) as i32;
        let (dd, dm) = (d * dy, dmin * dy);
        let psums = (sums.q4k_pair_sums)(x, y, &scales);
        let pmin = |pair: usize| {
            [2 * pair, 2 * pair + 1]
                .iter()
                .map(|&j| mins[j] * (bsum(2 * j) + bsum(2 * j + 1)))
                .sum::<i32>()
        };
        if gemm {
            for (pair, &psum) in psums.iter().enumerate() {
                acc = (psum as f32).mul_add(dd, acc);
                acc_min = (pmin(pair) as f32).mul_add(dm, acc_min);
            }
        } else {
            let isum: i32 = psums.iter().sum();
            let imin: i32 = (0..4).map(pmin).sum();
            acc = (isum as f32).mul_add(dd, acc);
            acc_min = (imin as f32).mul_add(dm, acc_min);
        }
    }
    acc - acc_min
}

/// `ggml_vec_dot_q4_K_q8_K` (x86 AVX2) bit for bit.
pub(super) fn dot_q4k(w: &[u8], a: &[u8]) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(ab)) {
        let dx = f16_at(x, 0);
        let dminx = f16_at(x, 2);
        let sc = &x[4..16];
        let qs = &x[16..144];
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let q8 = &y[4..4 + QK_K];
        let bs = &y[4 + QK_K..];
        let bsum = |g: usize| i16::from_le_bytes([bs[2 * g], bs[2 * g + 1]]) as i32;
        let d = dy * dx;
        let dmin = -dy * dminx;
        let (scales, mins) = q4k_scales(sc);
        for i in 0..4 {
            let prod = mins[2 * i] * (bsum(4 * i) + bsum(4 * i + 1))
                + mins[2 * i + 1] * (bsum(4 * i + 2) + bsum(4 * i + 3));
            acc_m[i] = dmin.mul_add(prod as f32, acc_m[i]);
        }
        let mut lanes = [0i32; 8];
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            for b in 0..32 {
                let lo = (q[b] & 0x0f) as i32 * (q8[64 * j + b] as i8 as i32);
                let hi = (q[b] >> 4) as i32 * (q8[64 * j + 32 + b] as i8 as i32);
                lanes[b / 4] += scales[2 * j] * lo + scales[2 * j + 1] * hi;
            }
        }
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    let m = (acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]);
    hsum8(&acc) + m
}

/// Q4_K / Q6_K through ggml's tiled K-quant matmul (`ggml-cpu/tiled`, AVX-512 VNNI
/// micro-kernel), which llama.cpp uses for batches of at least 8 rows when the weight is
/// not repacked: per super-block the exact integer sums `s1 = Σ scale Σ q q8` (and
/// `s2 = Σ min bsum`) give `r = s1 * d_w` (`r = fnmadd(dmin_w, s2, r)` with mins), and
/// `acc += r * d_a`.
pub(super) fn dot_q6k_tiled(w: &[u8], a: &[u8], sums: &Sums) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = 0f32;
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(ab)) {
        let dx = f16_at(x, 208);
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        // Σ scale (q - 32) q8 = Σ scale q q8 - 32 Σ scale bsum: the lanes' total.
        let s1: i32 = (sums.q6k_lanes)(x, y).iter().sum();
        let r = s1 as f32 * dx;
        acc = r.mul_add(dy, acc);
    }
    acc
}

pub(super) fn dot_q4k_tiled(w: &[u8], a: &[u8], sums: &Sums) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = 0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(ab)) {
        let d = f16_at(x, 0);
        let dmin = f16_at(x, 2);
        let (scales, mins) = q4k_scales(&x[4..16]);
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let bs = &y[4 + QK_K..];
        let bsum = |g: usize| i16::from_le_bytes([bs[2 * g], bs[2 * g + 1]]) as i32;
        let s1: i32 = (sums.q4k_pair_sums)(x, y, &scales).iter().sum();
        let s2: i32 = (0..8)
            .map(|j| mins[j] * (bsum(2 * j) + bsum(2 * j + 1)))
            .sum();
        let r = (-dmin).mul_add(s2 as f32, s1 as f32 * d);
        acc = r.mul_add(dy, acc);
    }
    acc
}
