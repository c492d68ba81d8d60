//! The interleaved prompt kernels of Q4_K and Q6_K (llama.cpp's 8x8 repacked layout):
//! eight weight rows are regrouped once per work item so that each 32-bit lane of a
//! vector is one weight row, and every activation row then gives 8 outputs without a
//! horizontal reduction. The regrouping and the row kernels are the `simd` set's.

use super::act::{act_block_bytes, ActFormat};
use super::blocks::{f16_at, q4k_scales, Q4kGroup, Q6kGroup, QBlock};
use super::simd;
use candle_core::quantized::k_quants::QK_K;

thread_local! {
    static Q4K_GROUP: std::cell::RefCell<Q4kGroup> = std::cell::RefCell::new(Q4kGroup::default());
}

thread_local! {
    static Q6K_GROUP: std::cell::RefCell<Q6kGroup> = std::cell::RefCell::new(Q6kGroup::default());
}

/// Eight weight rows of a K-quant regrouped so that one 32-bit lane is one row.
trait Regrouped: Default + 'static {
    /// Bytes of one weight super-block.
    const WBLOCK: usize;
    /// Makes room for `nb` super-blocks per row.
    fn resize(&mut self, nb: usize);
    /// Regroups super-block `b` of the 8 rows.
    fn regroup(&mut self, b: usize, blocks: [&[u8]; 8]);
}

impl Regrouped for Q4kGroup {
    const WBLOCK: usize = 144;
    fn resize(&mut self, nb: usize) {
        self.q.resize(nb * 64, QBlock([0; 32]));
        self.scales.resize(nb * 8, [0; 8]);
        self.mins.resize(nb * 8, [0; 8]);
        self.d.resize(nb, [0.0; 8]);
        self.dmin.resize(nb, [0.0; 8]);
    }
    fn regroup(&mut self, b: usize, blocks: [&[u8]; 8]) {
        for (c, x) in blocks.iter().enumerate() {
            self.d[b][c] = f16_at(x, 0);
            self.dmin[b][c] = f16_at(x, 2);
            let (scales, mins) = q4k_scales(&x[4..16]);
            for j in 0..8 {
                self.scales[b * 8 + j][c] = scales[j];
                self.mins[b * 8 + j][c] = mins[j];
            }
        }
        simd::regroup_q4k(blocks, &mut self.q[b * 64..(b + 1) * 64]);
    }
}

impl Regrouped for Q6kGroup {
    const WBLOCK: usize = 210;
    fn resize(&mut self, nb: usize) {
        self.q.resize(nb * 64, QBlock([0; 32]));
        self.scales.resize(nb * 16, [0; 8]);
        self.d.resize(nb, [0.0; 8]);
    }
    fn regroup(&mut self, b: usize, blocks: [&[u8]; 8]) {
        for (c, x) in blocks.iter().enumerate() {
            self.d[b][c] = f16_at(x, 208);
            for j in 0..16 {
                self.scales[b * 16 + j][c] = x[192 + j] as i8 as i32;
            }
        }
        simd::regroup_q6k(blocks, &mut self.q[b * 64..(b + 1) * 64]);
    }
}

/// One activation row (and its index) against a regrouped group: the 8 outputs.
type RowX8<'a, G> = dyn Fn(&G, &[u8], usize) -> [f32; 8] + Sync + 'a;

/// The driver of the interleaved kernels: each work item regroups 8 weight rows into the
/// thread's `G` once, then `row(group, activation row, row index)` gives the 8 outputs of
/// every activation row.
#[allow(clippy::too_many_arguments)]
fn dot_interleaved<G: Regrouped>(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
    scratch: &'static std::thread::LocalKey<std::cell::RefCell<G>>,
    row: &RowX8<'_, G>,
) {
    let nb = k / QK_K;
    let ab = act_block_bytes(ActFormat::Q8K);
    let (wrow, arow) = (nb * G::WBLOCK, nb * ab);
    let dst_ptr = dst.as_mut_ptr() as usize;
    crate::pool::for_ranges(n / 8, 1, &|groups| {
        scratch.with(|cell| {
            let g = &mut *cell.borrow_mut();
            g.resize(nb);
            for grp in groups {
                let c0 = grp * 8;
                for b in 0..nb {
                    let blocks: [&[u8]; 8] = std::array::from_fn(|c| {
                        let start = (c0 + c) * wrow + b * G::WBLOCK;
                        &w[start..start + G::WBLOCK]
                    });
                    g.regroup(b, blocks);
                }
                for r in 0..m {
                    let out = row(g, &act[r * arow..(r + 1) * arow], r);
                    // SAFETY: columns c0..c0 + 8 of every row belong to this group alone.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            out.as_ptr(),
                            (dst_ptr as *mut f32).add(r * n + c0),
                            8,
                        )
                    };
                }
            }
        })
    });
}

/// Q4_K for a prompt (`ggml_gemm_q4_K_8x8_q8_K`'s arrangement): 8 weight rows at a time
/// are regrouped so that each lane of a vector is one weight row; an activation row's
/// 4 values are broadcast against them, so the per-(row, column) sums need no horizontal
/// reduction and the float work is done for 8 columns per instruction. Per (row, column)
/// the integers and float operations are those of `dot_q4k_repacked` (gemm for the rows
/// in whole groups of 4, gemv for the rest), so the results are the same bits.
pub(super) fn dot_q4k_interleaved(
    w: &[u8],
    act: &[u8],
    (m, k, n): (usize, usize, usize),
    gemm_rows: usize,
    dst: &mut [f32],
    vnni: bool,
) {
    dot_interleaved(w, act, m, k, n, dst, &Q4K_GROUP, &|g: &Q4kGroup, a, r| {
        q4k_row(g, a, r < gemm_rows, vnni)
    });
}

/// The build's Q4_K row kernel, or its AVX-512 VNNI twin where `vnni`.
#[inline]
fn q4k_row(g: &Q4kGroup, a: &[u8], gemm: bool, vnni: bool) -> [f32; 8] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if vnni {
        // SAFETY: `vnni` is set only where the CPU has the features.
        return unsafe { super::avx512_vnni::q4k_row_x8(g, a, gemm) };
    }
    let _ = vnni;
    simd::q4k_row_x8(g, a, gemm)
}

/// The build's Q6_K row kernel, or its AVX-512 VNNI twin where `vnni`.
#[inline]
fn q6k_row(g: &Q6kGroup, a: &[u8], vnni: bool) -> [f32; 8] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if vnni {
        // SAFETY: `vnni` is set only where the CPU has the features.
        return unsafe { super::avx512_vnni::q6k_row_x8(g, a) };
    }
    let _ = vnni;
    simd::q6k_row_x8(g, a)
}

/// Q6_K for a prompt, arranged like [`dot_q4k_interleaved`]; per (row, column) the
/// integer total and the float operations of `dot_q6k_tiled`, so the same bits.
pub(super) fn dot_q6k_interleaved(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
    vnni: bool,
) {
    dot_interleaved(w, act, m, k, n, dst, &Q6K_GROUP, &|g: &Q6kGroup, a, _| {
        q6k_row(g, a, vnni)
    });
}
