//! The 256-value K-quant formats (Q4_K, Q6_K) against Q8_K activations: the drivers of
//! the row kernels (`kdot.rs`) over the thread pool, with the integer sums of the
//! `simd` set. The interleaved prompt kernels are in `interleaved.rs`.

use super::act::{act_block_bytes, ActFormat};
use super::block32::dot_cells;
use super::kdot::Sums;
use super::simd;
use candle_core::quantized::k_quants::QK_K;

/// The build's kernel set's integer sums, for the row kernels of `kdot.rs`.
pub(super) const SUMS: Sums = Sums {
    q6k_lanes: simd::q6k_lanes,
    q4k_pair_sums: simd::q4k_pair_sums,
};

/// [`dot_cells`] for 256-value super-blocks with Q8_K activations; `dot` also gets the
/// activation row's index.
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
    let rows = (k / QK_K * wblock, k / QK_K * ab);
    dot_cells(w, act, m, n, rows, dst, dot);
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
