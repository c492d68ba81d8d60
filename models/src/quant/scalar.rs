//! The scalar reference of every SIMD kernel: the same lanes, integer sums and float
//! operations written out one value at a time, so that each function returns the bits of
//! its SIMD twin (same name in every instruction-set file). Where the target has no SIMD
//! file these are the kernels (`simd` in `mod.rs` is this module); everywhere they are
//! what the tests hold the SIMD files to.

use super::act::{act_block_bytes, ActFormat};
use super::blocks::{f16_at, hsum8, Q4kGroup, Q6kGroup, QBlock, Unpack};
use super::kdot::{dot_q4k_repacked, dot_q6k, dot_q6k_tiled, Sums};
use candle_core::quantized::k_quants::QK_K;

/// `ggml_vec_dot_q4_1_q8_1` (x86 AVX2/AVX-512 build) bit for bit: per block the products
/// of 4 consecutive values are summed exactly into 8 lanes and accumulated with
/// `fma(d_w * d_a, lane, acc)`; the `m * s` terms are summed separately in f32; at the end
/// the 8 lanes are reduced pairwise (`hsum_float_8`) and the `m * s` sum is added.
pub(super) fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let d0 = f16_at(wb, 0);
        let m0 = f16_at(wb, 2);
        let d1 = f16_at(ab, 0);
        let s1 = f16_at(ab, 2);
        summs += m0 * s1;
        let d0d1 = d0 * d1;
        let qs = &wb[4..20];
        let qy = &ab[4..36];
        let mut xy = [0i32; 8];
        for (l, x) in xy.iter_mut().enumerate() {
            let mut t = 0i32;
            for e in 4 * l..4 * l + 4 {
                let q4 = if e < 16 {
                    qs[e] & 0x0f
                } else {
                    qs[e - 16] >> 4
                } as i32;
                t += q4 * (qy[e] as i8 as i32);
            }
            *x = t;
        }
        for l in 0..8 {
            acc[l] = d0d1.mul_add(xy[l] as f32, acc[l]);
        }
    }
    hsum8(&acc) + summs
}

/// The 32-value formats with Q8_0 activations (`ggml_vec_dot_q{4,5,8}_0_q8_0` on x86 and
/// tinyBLAS's `tinyBLAS_Q0_AVX`, which agree): per block the products of 4 consecutive
/// values are summed exactly into 8 lanes, accumulated with `fma(d_w * d_a, lane, acc)`,
/// and the lanes reduced by `hsum_float_8`.
#[inline]
pub(super) fn dot_q0(w: &[u8], a: &[u8], wblock: usize, unpack: fn(&[u8], &mut [i8; 32])) -> f32 {
    let mut acc = [0f32; 8];
    let mut q = [0i8; 32];
    for (wb, ab) in w.chunks_exact(wblock).zip(a.chunks_exact(34)) {
        let dd = f16_at(wb, 0) * f16_at(ab, 0);
        unpack(wb, &mut q);
        let qy = &ab[2..34];
        for (l, lane) in acc.iter_mut().enumerate() {
            let mut t = 0i32;
            for e in 4 * l..4 * l + 4 {
                t += q[e] as i32 * (qy[e] as i8 as i32);
            }
            *lane = dd.mul_add(t as f32, *lane);
        }
    }
    hsum8(&acc)
}

/// One weight block's signed values as bytes (offset by 128 for the VNNI kernel).
pub(super) fn unpack_q0(blk: &[u8], _wblock: usize, unpack: Unpack, vnni: bool) -> [u8; 32] {
    let mut q = [0i8; 32];
    unpack(blk, &mut q);
    q.map(|v| if vnni { (v as u8) ^ 0x80 } else { v as u8 })
}

/// [`dot_q4_1`] of every weight row against every activation row (the scalar tile).
pub(super) fn tile_q4_1<const RM: usize, const RN: usize>(
    w: [&[u8]; RM],
    a: [&[u8]; RN],
) -> [[f32; RN]; RM] {
    std::array::from_fn(|i| std::array::from_fn(|j| dot_q4_1(w[i], a[j])))
}

/// `RM` unpacked weight rows (see [`unpack_q0`]) × `RN` activation rows, signed values:
/// per (row, column) the lanes and float operations of [`dot_q0`].
pub(super) fn tile_q0u<const RM: usize, const RN: usize>(
    qw: [&[QBlock]; RM],
    dw: [&[f32]; RM],
    qa: [&[u8]; RN],
    da: [&[f32]; RN],
) -> [[f32; RN]; RM] {
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let mut acc = [0f32; 8];
            for b in 0..dw[i].len() {
                let dd = dw[i][b] * da[j][b];
                let (q, y) = (&qw[i][b].0, &qa[j][b * 34 + 2..b * 34 + 34]);
                for (l, lane) in acc.iter_mut().enumerate() {
                    let t: i32 = (4 * l..4 * l + 4)
                        .map(|e| q[e] as i8 as i32 * y[e] as i8 as i32)
                        .sum();
                    *lane = dd.mul_add(t as f32, *lane);
                }
            }
            hsum8(&acc)
        })
    })
}

/// The 8 exact int32 lanes of one Q6_K super-block against its Q8_K activations, as
/// `ggml_vec_dot_q6_K_q8_K` (AVX2) forms them: lane `l` sums `scale * q * q8` over the
/// values `e` with `(e % 32) / 4 == l` (`q` unsigned, 0..64), minus
/// `32 * Σ scale * bsum` over the 16-value groups `2l` and `2l + 1`.
pub(super) fn q6k_lanes(x: &[u8], y: &[u8]) -> [i32; 8] {
    let ql = &x[0..128];
    let qh = &x[128..192];
    let sc = &x[192..208];
    let q8 = &y[4..4 + QK_K];
    let bs = &y[4 + QK_K..];
    let mut lanes = [0i32; 8];
    for half in 0..2 {
        let ql = &ql[64 * half..];
        let qh = &qh[32 * half..];
        for l in 0..32 {
            let vals = q6k_quads(ql, qh, l);
            for (v, &q) in vals.iter().enumerate() {
                let e = 128 * half + 32 * v + l;
                let scale = sc[e / 16] as i8 as i32;
                lanes[l / 4] += scale * q * (q8[e] as i8 as i32);
            }
        }
    }
    for (l, lane) in lanes.iter_mut().enumerate() {
        let mut sub = 0i32;
        for g in [2 * l, 2 * l + 1] {
            let bsum = i16::from_le_bytes([bs[2 * g], bs[2 * g + 1]]) as i32;
            sub += bsum * (sc[g] as i8 as i32);
        }
        *lane -= sub << 5;
    }
    lanes
}

/// The four unsigned 6-bit Q6_K values (0..64) at position `l` of a 128-value half
/// block: from `ql[l]`, `ql[l + 32]` (low and high nibbles) and the bit pairs of `qh[l]`.
#[inline(always)]
pub(super) fn q6k_quads(ql: &[u8], qh: &[u8], l: usize) -> [i32; 4] {
    let h = qh[l] as i32;
    [
        (ql[l] & 0x0f) as i32 | ((h & 3) << 4),
        (ql[l + 32] & 0x0f) as i32 | (((h >> 2) & 3) << 4),
        (ql[l] >> 4) as i32 | (((h >> 4) & 3) << 4),
        (ql[l + 32] >> 4) as i32 | (((h >> 6) & 3) << 4),
    ]
}

/// The exact sums `Σ scale Σ q4 q8` of one Q4_K super-block per pair of 32-value
/// sub-blocks (`2p`: low nibbles of bytes `32p..32p+32`, `2p + 1`: high nibbles).
pub(super) fn q4k_pair_sums(x: &[u8], y: &[u8], scales: &[i32; 8]) -> [i32; 4] {
    let qs = &x[16..144];
    let q8 = &y[4..4 + QK_K];
    let mut out = [0i32; 4];
    for (pair, o) in out.iter_mut().enumerate() {
        let q = &qs[32 * pair..32 * pair + 32];
        for j in [2 * pair, 2 * pair + 1] {
            let mut t = 0i32;
            for l in 0..32 {
                let v = if j % 2 == 0 { q[l] & 0x0f } else { q[l] >> 4 } as i32;
                t += v * (q8[32 * j + l] as i8 as i32);
            }
            *o += scales[j] * t;
        }
    }
    out
}

/// This set's integer sums, for the row kernels of `kdot.rs`.
const SUMS: Sums = Sums {
    q6k_lanes,
    q4k_pair_sums,
};

/// [`dot_q4k_repacked`] of one weight row against `RN` activation rows.
pub(super) fn tile_q4k<const RN: usize>(w: &[u8], a: [&[u8]; RN], gemm: bool) -> [f32; RN] {
    a.map(|a| dot_q4k_repacked(w, a, gemm, &SUMS))
}

/// [`tile_q4k`] for four activation rows.
pub(super) fn tile_q4k_x4(w: &[u8], a: [&[u8]; 4], gemm: bool) -> [f32; 4] {
    tile_q4k(w, a, gemm)
}

/// [`dot_q6k`] (the one-row kernel) of one weight row against `RN` activation rows.
pub(super) fn rows_q6k<const RN: usize>(w: &[u8], a: [&[u8]; RN]) -> [f32; RN] {
    a.map(|a| dot_q6k(w, a, &SUMS))
}

/// [`dot_q6k_tiled`] of one weight row against `RN` activation rows.
pub(super) fn tile_q6k<const RN: usize>(w: &[u8], a: [&[u8]; RN]) -> [f32; RN] {
    a.map(|a| dot_q6k_tiled(w, a, &SUMS))
}

/// Eight Q4_K super-blocks regrouped: sub-block `j`'s group `t` holds values
/// `4t..4t + 4` of each of the 8 rows.
pub(super) fn regroup_q4k(blocks: [&[u8]; 8], out: &mut [QBlock]) {
    for (c, x) in blocks.iter().enumerate() {
        for j in 0..8 {
            for l in 0..32 {
                let v = x[16 + 32 * (j / 2) + l];
                let val = if j % 2 == 0 { v & 0x0f } else { v >> 4 };
                out[j * 8 + l / 4].0[c * 4 + l % 4] = val;
            }
        }
    }
}

/// One activation row against 8 regrouped Q4_K weight rows.
pub(super) fn q4k_row_x8(g: &Q4kGroup, a: &[u8], gemm: bool) -> [f32; 8] {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = [0f32; 8];
    let mut acc_min = [0f32; 8];
    for (b, y) in a.chunks_exact(ab).enumerate() {
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let bs = &y[4 + QK_K..];
        let bsum = |i: usize| i16::from_le_bytes([bs[2 * i], bs[2 * i + 1]]) as i32;
        for c in 0..8 {
            let mut psum = [0i32; 4];
            let mut pmin = [0i32; 4];
            for j in 0..8 {
                let mut t = 0i32;
                for l in 0..32 {
                    let q = g.q[b * 64 + j * 8 + l / 4].0[c * 4 + l % 4] as i32;
                    t += q * (y[4 + 32 * j + l] as i8 as i32);
                }
                psum[j / 2] += g.scales[b * 8 + j][c] * t;
                pmin[j / 2] += g.mins[b * 8 + j][c] * (bsum(2 * j) + bsum(2 * j + 1));
            }
            let (dd, dm) = (g.d[b][c] * dy, g.dmin[b][c] * dy);
            if gemm {
                for p in 0..4 {
                    acc[c] = (psum[p] as f32).mul_add(dd, acc[c]);
                    acc_min[c] = (pmin[p] as f32).mul_add(dm, acc_min[c]);
                }
            } else {
                let (is, im) = (psum.iter().sum::<i32>(), pmin.iter().sum::<i32>());
                acc[c] = (is as f32).mul_add(dd, acc[c]);
                acc_min[c] = (im as f32).mul_add(dm, acc_min[c]);
            }
        }
    }
    std::array::from_fn(|c| acc[c] - acc_min[c])
}

/// Eight Q6_K super-blocks regrouped: 32-value chunk `v` (values `32v..32v + 32` in
/// [`q6k_lanes`]' order), group `t` holds its values `4t..4t + 4` of each of the 8 rows.
pub(super) fn regroup_q6k(blocks: [&[u8]; 8], out: &mut [QBlock]) {
    for (c, x) in blocks.iter().enumerate() {
        for half in 0..2 {
            for l in 0..32 {
                let vals = q6k_quads(&x[64 * half..128], &x[128 + 32 * half..192], l);
                for (v, &q) in vals.iter().enumerate() {
                    let chunk = 4 * half + v;
                    out[chunk * 8 + l / 4].0[c * 4 + l % 4] = q as u8;
                }
            }
        }
    }
}

/// One activation row against 8 regrouped Q6_K weight rows.
pub(super) fn q6k_row_x8(g: &Q6kGroup, a: &[u8]) -> [f32; 8] {
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut acc = [0f32; 8];
    for (b, y) in a.chunks_exact(ab).enumerate() {
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        for (c, acc) in acc.iter_mut().enumerate() {
            let mut s1 = 0i32;
            for e in 0..QK_K {
                let q = g.q[b * 64 + (e / 32) * 8 + (e % 32) / 4].0[c * 4 + e % 4] as i32;
                s1 += g.scales[b * 16 + e / 16][c] * (q - 32) * (y[4 + e] as i8 as i32);
            }
            let r = s1 as f32 * g.d[b][c];
            *acc = r.mul_add(dy, *acc);
        }
    }
    acc
}
