//! The 256-value K-quant formats (Q4_K, Q6_K) against Q8_K activations: the row kernels
//! that reproduce each of llama.cpp's x86 paths bit for bit (the one-row dot product, the
//! tiled matmul, the repacked gemv/gemm), built on the integer sums of the `simd` set, and
//! their drivers over the thread pool. The interleaved prompt kernels are in
//! `interleaved.rs`.

use super::act::{act_block_bytes, ActFormat};
use super::blocks::{f16_at, hsum8, q4k_scales};
use super::simd;
use candle_core::quantized::k_quants::QK_K;

/// `ggml_vec_dot_q6_K_q8_K` (x86 AVX2) bit for bit. Per super-block the integer dot
/// product is split into 8 int32 lanes (lane `l` holds the values `e` with
/// `(e % 32) / 4 == l`, minus its share `32 * Σ scale * bsum` of the two 16-value groups
/// `2l`, `2l+1`), each lane accumulated with `fma(d_a * d_w, lane, acc)`; `hsum_float_8`
/// at the end.
pub(super) fn dot_q6k(w: &[u8], a: &[u8]) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = [0f32; 8];
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(ab)) {
        let dx = f16_at(x, 208);
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let d = dy * dx;
        let lanes = simd::q6k_lanes(x, y);
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
pub(super) fn dot_q4k_repacked(w: &[u8], a: &[u8], gemm: bool) -> f32 {
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
        let psums = simd::q4k_pair_sums(x, y, &scales);
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
pub(super) fn dot_q6k_tiled(w: &[u8], a: &[u8]) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = 0f32;
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(ab)) {
        let dx = f16_at(x, 208);
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        // Σ scale (q - 32) q8 = Σ scale q q8 - 32 Σ scale bsum: the lanes' total.
        let s1: i32 = simd::q6k_lanes(x, y).iter().sum();
        let r = s1 as f32 * dx;
        acc = r.mul_add(dy, acc);
    }
    acc
}

pub(super) fn dot_q4k_tiled(w: &[u8], a: &[u8]) -> f32 {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = 0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(ab)) {
        let d = f16_at(x, 0);
        let dmin = f16_at(x, 2);
        let (scales, mins) = q4k_scales(&x[4..16]);
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let bs = &y[4 + QK_K..];
        let bsum = |g: usize| i16::from_le_bytes([bs[2 * g], bs[2 * g + 1]]) as i32;
        let s1: i32 = simd::q4k_pair_sums(x, y, &scales).iter().sum();
        let s2: i32 = (0..8)
            .map(|j| mins[j] * (bsum(2 * j) + bsum(2 * j + 1)))
            .sum();
        let r = (-dmin).mul_add(s2 as f32, s1 as f32 * d);
        acc = r.mul_add(dy, acc);
    }
    acc
}

/// `dot_all_rows` for 256-value super-blocks with Q8_K activations.
// The matmul's shape and buffers, spelled out like ggml's kernels take them.
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_all_rows_k(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    wblock: usize,
    dst: &mut [f32],
    dot: impl Fn(&[u8], &[u8], usize) -> f32 + Sync,
) {
    let ab = act_block_bytes(ActFormat::Q8K);
    let wrow = k / QK_K * wblock;
    let arow = k / QK_K * ab;
    let dst_ptr = dst.as_mut_ptr() as usize;
    const COLS: usize = 8;
    // Tiles of 8 weight rows × 16 activation rows: the weight rows stay in the cache
    // while every activation row of the tile passes them.
    const ROWS: usize = 16;
    let groups = n.div_ceil(COLS);
    let tiles = m.div_ceil(ROWS);
    crate::pool::for_ranges(groups * tiles, 1, &|range| {
        for it in range {
            let (g, tile) = (it / tiles, it % tiles);
            let c0 = g * COLS;
            for r in tile * ROWS..m.min(tile * ROWS + ROWS) {
                let a = &act[r * arow..(r + 1) * arow];
                for c in c0..n.min(c0 + COLS) {
                    let v = dot(&w[c * wrow..(c + 1) * wrow], a, r);
                    // SAFETY: each (r, c) is written by exactly one work item.
                    unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
                }
            }
        }
    });
}

/// A tile kernel of [`dot_tiles_k`]: one weight row, the activation rows of a work item
/// as `(row index, row)`, and where to write `(row index, value)`.
pub(super) type KTile<'a> = dyn Fn(&[u8], &[(usize, &[u8])], &dyn Fn(usize, f32)) + Sync + 'a;

/// [`dot_all_rows_k`] for kernels that take several activation rows per weight row (the
/// weight super-blocks are decoded once for all of them).
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_tiles_k(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    wblock: usize,
    dst: &mut [f32],
    tile: &KTile,
) {
    let ab = act_block_bytes(ActFormat::Q8K);
    let wrow = k / QK_K * wblock;
    let arow = k / QK_K * ab;
    let dst_ptr = dst.as_mut_ptr() as usize;
    const COLS: usize = 8;
    const ROWS: usize = 16;
    let groups = n.div_ceil(COLS);
    let tiles = m.div_ceil(ROWS);
    crate::pool::for_ranges(groups * tiles, 1, &|range| {
        for it in range {
            let (g, tile_i) = (it / tiles, it % tiles);
            let rows: Vec<(usize, &[u8])> = (tile_i * ROWS..m.min(tile_i * ROWS + ROWS))
                .map(|r| (r, &act[r * arow..(r + 1) * arow]))
                .collect();
            for c in g * COLS..n.min(g * COLS + COLS) {
                // SAFETY: each (r, c) is written by exactly one work item.
                let write = |r: usize, v: f32| unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
                tile(&w[c * wrow..(c + 1) * wrow], &rows, &write);
            }
        }
    });
}
