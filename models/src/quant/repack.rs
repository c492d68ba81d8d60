//! Weights regrouped once, at load, for the 16-row kernels of the AVX-512 sets (decode
//! steps and prompts).
//!
//! A Q4_K matrix is kept a second time as groups of 16 weight rows: per super-block, the
//! 4-byte runs of packed values of the 16 rows lie side by side, so that one 512-bit load
//! holds 8 values (4 of a sub-block in the low nibbles, 4 of the next in the high ones)
//! of 16 rows, and each 32-bit lane is one row: the integer dot products need no
//! horizontal sums and the float work covers 16 rows per instruction. This is the layout
//! of llama.cpp's repacked `q4_K_8x8` (8 rows, 256 bits) made twice as wide, with the
//! 6-bit scales and mins decoded to bytes. Each row keeps the integers and the float
//! operations of the one-row kernel llama.cpp runs over its repacked layout (`tile_q4k`),
//! so the results are the same bits.

use super::act::{act_block_bytes, with_quantized, ActFormat};
use super::blocks::q4k_scales;
use super::isa::{kernel_set, KernelSet};
use candle_core::quantized::k_quants::QK_K;
use candle_core::quantized::{GgmlDType, QTensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Weight rows per group.
pub(super) const ROWS: usize = 16;
/// Bytes of one super-block of a group: the values (4 pairs of sub-blocks × 8 runs ×
/// 16 rows × 4 bytes), the scales and mins (8 sub-blocks × 16 rows each), `d` and `dmin`
/// (16 f16 each).
pub(super) const GROUP_BLOCK: usize = 2048 + 2 * 128 + 2 * 32;
/// Offsets inside a group's super-block.
pub(super) const SCALES: usize = 2048;
pub(super) const MINS: usize = SCALES + 128;
pub(super) const D: usize = MINS + 128;
pub(super) const DMIN: usize = D + 32;
/// Bytes of one Q4_K super-block as stored.
const WBLOCK: usize = 144;

/// A Q4_K matrix regrouped for the 16-row decode kernels.
#[derive(Debug)]
pub(crate) struct RepackedQ4k {
    data: Vec<u8>,
    /// Super-blocks per row.
    nb: usize,
    n: usize,
}

impl RepackedQ4k {
    /// Whether a `[n, k]` Q4_K matrix can be regrouped (whole groups of rows).
    pub(super) fn fits(n: usize, k: usize) -> bool {
        n.is_multiple_of(ROWS) && k.is_multiple_of(QK_K) && n > 0
    }

    /// Regroups the `n` rows of `w` (Q4_K super-blocks, `k` values per row), the groups
    /// in parallel on the thread pool.
    pub(super) fn new(w: &[u8], n: usize, k: usize) -> Self {
        let nb = k / QK_K;
        assert!(Self::fits(n, k) && w.len() == n * nb * WBLOCK);
        let groups = n / ROWS;
        let mut data = vec![0u8; groups * nb * GROUP_BLOCK];
        let out = data.as_mut_ptr() as usize;
        crate::pool::for_ranges(groups, 1, &|range| {
            for g in range {
                // SAFETY: each group's bytes are written by exactly one work item.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out as *mut u8).add(g * nb * GROUP_BLOCK),
                        nb * GROUP_BLOCK,
                    )
                };
                for b in 0..nb {
                    let blk = &mut dst[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
                    for r in 0..ROWS {
                        let row = g * ROWS + r;
                        let x = &w[(row * nb + b) * WBLOCK..(row * nb + b + 1) * WBLOCK];
                        blk[D + 2 * r..D + 2 * r + 2].copy_from_slice(&x[0..2]);
                        blk[DMIN + 2 * r..DMIN + 2 * r + 2].copy_from_slice(&x[2..4]);
                        let (scales, mins) = q4k_scales(&x[4..16]);
                        for j in 0..8 {
                            blk[SCALES + j * ROWS + r] = scales[j] as u8;
                            blk[MINS + j * ROWS + r] = mins[j] as u8;
                        }
                        // Pair p holds sub-blocks 2p (low nibbles) and 2p + 1 (high) in
                        // the 32 bytes `16 + 32p..`; run t is their values 4t..4t + 4.
                        for p in 0..4 {
                            for t in 0..8 {
                                let src = 16 + 32 * p + 4 * t;
                                let at = ((p * 8 + t) * ROWS + r) * 4;
                                blk[at..at + 4].copy_from_slice(&x[src..src + 4]);
                            }
                        }
                    }
                }
            }
        });
        RepackedQ4k { data, nb, n }
    }

    /// The bytes this copy takes.
    pub(super) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The regrouped super-blocks of group `g` (rows `16g..16g + 16`).
    pub(super) fn group(&self, g: usize) -> &[u8] {
        &self.data[g * self.nb * GROUP_BLOCK..(g + 1) * self.nb * GROUP_BLOCK]
    }

    pub(super) fn groups(&self) -> usize {
        self.n / ROWS
    }

    /// The scalar reference of the 16-row kernels over the regrouped bytes of one group:
    /// per row the integers and float operations of `scalar::tile_q4k`.
    #[cfg(test)]
    pub(super) fn reference(group: &[u8], a: &[u8], gemm: bool) -> [f32; ROWS] {
        use half::f16;
        let ab = 4 + QK_K + QK_K / 16 * 2;
        let nb = a.len() / ab;
        let mut acc = [0f32; ROWS];
        let mut acc_min = [0f32; ROWS];
        for b in 0..nb {
            let blk = &group[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
            let y = &a[b * ab..(b + 1) * ab];
            let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
            for r in 0..ROWS {
                let mut ps = [0i32; 4];
                let mut pm = [0i32; 4];
                for j in 0..8 {
                    let (p, shift) = (j / 2, 4 * (j % 2));
                    let mut sum = 0i32;
                    for t in 0..8 {
                        let at = ((p * 8 + t) * ROWS + r) * 4;
                        for e in 0..4 {
                            let q = ((blk[at + e] >> shift) & 0x0f) as i32;
                            sum += q * y[4 + 32 * j + 4 * t + e] as i8 as i32;
                        }
                    }
                    let bsum = i16::from_le_bytes([y[260 + 4 * j], y[261 + 4 * j]]) as i32
                        + i16::from_le_bytes([y[262 + 4 * j], y[263 + 4 * j]]) as i32;
                    ps[p] += sum * blk[SCALES + j * ROWS + r] as i32;
                    pm[p] += blk[MINS + j * ROWS + r] as i32 * bsum;
                }
                let half = |off: usize| {
                    f16::from_bits(u16::from_le_bytes([blk[off + 2 * r], blk[off + 2 * r + 1]]))
                        .to_f32()
                };
                let dd = half(D) * dy;
                let dm = half(DMIN) * dy;
                if gemm {
                    for p in 0..4 {
                        acc[r] = (ps[p] as f32).mul_add(dd, acc[r]);
                        acc_min[r] = (pm[p] as f32).mul_add(dm, acc_min[r]);
                    }
                } else {
                    let is = (ps[0] + ps[1]) + (ps[2] + ps[3]);
                    let im = (pm[0] + pm[1]) + (pm[2] + pm[3]);
                    acc[r] = (is as f32).mul_add(dd, acc[r]);
                    acc_min[r] = (im as f32).mul_add(dm, acc_min[r]);
                }
            }
        }
        std::array::from_fn(|r| acc[r] - acc_min[r])
    }
}

/// What regrouping has cost this process so far: bytes written and time taken.
static REPACKED_BYTES: AtomicU64 = AtomicU64::new(0);
static REPACK_NANOS: AtomicU64 = AtomicU64::new(0);

/// The bytes of regrouped weights made so far in this process, and the time it took.
pub fn repack_totals() -> (u64, std::time::Duration) {
    (
        REPACKED_BYTES.load(Ordering::Relaxed),
        std::time::Duration::from_nanos(REPACK_NANOS.load(Ordering::Relaxed)),
    )
}

/// The regrouped copy of a Q4_K matrix where the kernel set has the 16-row kernels and
/// the shape allows; `None` otherwise (the matrix keeps the kernels of `dot_kquant`).
pub(super) fn regroup(w: &QTensor, n: usize, k: usize) -> Option<Arc<RepackedQ4k>> {
    if w.dtype() != GgmlDType::Q4K || !RepackedQ4k::fits(n, k) || kernel_set() < KernelSet::Avx512 {
        return None;
    }
    let start = std::time::Instant::now();
    let data = w.data().ok()?;
    let rp = RepackedQ4k::new(&data, n, k);
    REPACKED_BYTES.fetch_add(rp.bytes() as u64, Ordering::Relaxed);
    REPACK_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Some(Arc::new(rp))
}

/// `y = x W^T` for `m` activation rows over a regrouped Q4_K matrix: the activations are
/// quantized as for the one-row kernels, and rows below `gemm_rows` take llama.cpp's
/// gemm arithmetic (as in `dot_kquant`).
pub(super) fn forward(
    rp: &RepackedQ4k,
    xs: &[f32],
    m: usize,
    k: usize,
    gemm_rows: usize,
    dst: &mut [f32],
) {
    let arow = k / QK_K * act_block_bytes(ActFormat::Q8K);
    let n = rp.n;
    let vnni = kernel_set() >= KernelSet::Avx512Vnni;
    with_quantized(ActFormat::Q8K, xs, m, k, arow, |act| {
        let dst_ptr = dst.as_mut_ptr() as usize;
        crate::pool::for_ranges(rp.groups(), 1, &|range| {
            for g in range {
                let group = rp.group(g);
                for r in 0..m {
                    let a = &act[r * arow..(r + 1) * arow];
                    let out = kernel(group, a, r < gemm_rows, vnni);
                    for (i, v) in out.into_iter().enumerate() {
                        // SAFETY: each (r, c) is written by exactly one work item.
                        unsafe { *(dst_ptr as *mut f32).add(r * n + g * ROWS + i) = v };
                    }
                }
            }
        });
    });
}

/// The 16-row kernel of the kernel set.
fn kernel(group: &[u8], a: &[u8], gemm: bool, vnni: bool) -> [f32; ROWS] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the regrouped copy exists only where the kernel set is an AVX-512 one
        // (`regroup`), and `vnni` only where it has VNNI.
        unsafe {
            if vnni {
                super::avx512::q4k_x16_vnni(group, a, gemm)
            } else {
                super::avx512::q4k_x16(group, a, gemm)
            }
        }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        let _ = (group, a, gemm, vnni);
        unreachable!("regrouped weights exist only on the AVX-512 kernel sets")
    }
}
