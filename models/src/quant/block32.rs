//! The 32-value block formats (Q4_0, Q4_1, Q5_0, Q8_0): the drivers that run a kernel
//! over every (row, column) of a matmul on the thread pool, one row pair at a time for a
//! decode step and in register tiles for a prompt. The kernels are the `simd` set's (see
//! `mod.rs`), with AVX-512 VNNI tiles where the CPU has them.

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use super::avx512_vnni;
use super::blocks::{f16_at, QBlock, Unpack};
use super::simd;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use super::{avx512, isa::kernel_set, isa::KernelSet};

/// Runs `dot(weight row, activation row)` for every (row, column) on the thread pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_all_rows(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    wblock: usize,
    ablock: usize,
    dst: &mut [f32],
    dot: impl Fn(&[u8], &[u8]) -> f32 + Sync,
) {
    let rows = (k / 32 * wblock, k / 32 * ablock);
    dot_cells(w, act, m, n, rows, dst, |w, a, _| dot(w, a));
}

/// A decode step (or a few activation rows) of a 32-value format: the one-row kernel per
/// (row, column), two weight rows per call where the kernel set has 512-bit vectors.
/// `wblock` 20 is Q4_1 (against Q8_1 activations); 18, 22 and 34 are Q4_0, Q5_0 and
/// Q8_0, whose values `unpack` gives.
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_rows_32(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    wblock: usize,
    unpack: Unpack,
    dst: &mut [f32],
) {
    let ablock = if wblock == 20 { 36 } else { 34 };
    let one = |w: &[u8], a: &[u8]| match wblock {
        20 => simd::dot_q4_1(w, a),
        _ => simd::dot_q0(w, a, wblock, unpack),
    };
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        let set = kernel_set();
        if set >= KernelSet::Avx512 {
            let vnni = set >= KernelSet::Avx512Vnni;
            // SAFETY: the kernel set says the CPU has the features of the kernel called.
            let pair = |w0: &[u8], w1: &[u8], a: &[u8]| unsafe {
                match (wblock, vnni) {
                    (20, true) => avx512::dot2_q4_1_vnni(w0, w1, a),
                    (20, false) => avx512::dot2_q4_1(w0, w1, a),
                    (_, true) => avx512::dot2_q0_vnni(w0, w1, a, wblock),
                    (_, false) => avx512::dot2_q0(w0, w1, a, wblock),
                }
            };
            return dot_row_pairs(
                w,
                act,
                m,
                n,
                (k / 32 * wblock, k / 32 * ablock),
                dst,
                pair,
                one,
            );
        }
    }
    dot_all_rows(w, act, m, k, n, wblock, ablock, dst, one);
}

/// [`dot_cells`] with a kernel that takes two weight rows at once (`one` for an odd last
/// row).
#[cfg_attr(
    not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )),
    allow(dead_code)
)]
#[allow(clippy::too_many_arguments)]
fn dot_row_pairs(
    w: &[u8],
    act: &[u8],
    m: usize,
    n: usize,
    (wrow, arow): (usize, usize),
    dst: &mut [f32],
    pair: impl Fn(&[u8], &[u8], &[u8]) -> [f32; 2] + Sync,
    one: impl Fn(&[u8], &[u8]) -> f32 + Sync,
) {
    let wr = |c: usize| &w[c * wrow..(c + 1) * wrow];
    by_tiles(m, n, dst, |r, cols, write| {
        let a = &act[r * arow..(r + 1) * arow];
        let mut c = cols.start;
        while c + 2 <= cols.end {
            let [v0, v1] = pair(wr(c), wr(c + 1), a);
            write(c, v0);
            write(c + 1, v1);
            c += 2;
        }
        if c < cols.end {
            write(c, one(wr(c), a));
        }
    });
}

/// Runs `dot(weight row, activation row, activation row index)` for every (row,
/// column) of an `m × n` result on the thread pool; `rows` are the bytes of one weight
/// and one activation row.
pub(super) fn dot_cells(
    w: &[u8],
    act: &[u8],
    m: usize,
    n: usize,
    (wrow, arow): (usize, usize),
    dst: &mut [f32],
    dot: impl Fn(&[u8], &[u8], usize) -> f32 + Sync,
) {
    by_tiles(m, n, dst, |r, cols, write| {
        let a = &act[r * arow..(r + 1) * arow];
        for c in cols {
            write(c, dot(&w[c * wrow..(c + 1) * wrow], a, r));
        }
    });
}

/// Runs `row(r, cols, write)` (activation row `r` against the weight rows `cols`;
/// `write(column, value)` stores `dst[r][column]`) over an `m × n` result on the thread
/// pool, in tiles of 8 weight rows × 16 activation rows: the weight rows stay in the
/// cache while every activation row of the tile passes them.
fn by_tiles(
    m: usize,
    n: usize,
    dst: &mut [f32],
    row: impl Fn(usize, std::ops::Range<usize>, &dyn Fn(usize, f32)) + Sync,
) {
    assert!(dst.len() >= m * n);
    let dst_ptr = dst.as_mut_ptr() as usize;
    const COLS: usize = 8;
    const ROWS: usize = 16;
    let groups = n.div_ceil(COLS);
    let tiles = m.div_ceil(ROWS);
    crate::pool::for_ranges(groups * tiles, 1, &|range| {
        for it in range {
            let (g, tile) = (it / tiles, it % tiles);
            let cols = g * COLS..n.min(g * COLS + COLS);
            for r in tile * ROWS..m.min(tile * ROWS + ROWS) {
                // SAFETY: each (r, c) is written by exactly one work item, inside `dst`
                // (checked above; `c < n`).
                let write = |c: usize, v: f32| unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
                row(r, cols.clone(), &write);
            }
        }
    });
}

/// Weight rows × activation rows of one register tile (tinyBLAS's AVX2 tile for the
/// 32-value formats).
const TILE_W: usize = 4;
const TILE_A: usize = 3;

thread_local! {
    /// The unpacked weight rows of the work item a thread is running, and their scales.
    static W_UNPACKED: std::cell::RefCell<(Vec<QBlock>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Q4_0, Q5_0 and Q8_0 for several activation rows (prefill). A work item (8 weight rows
/// × up to 512 activation rows) first unpacks its weight rows into bytes and f32 scales, once;
/// register tiles of [`TILE_W`] weight rows × [`TILE_A`] activation rows then only load.
/// Every (row, column) keeps the lanes and float operations of `dot_q0`, so the results
/// are the same bits.
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_tiles_q0(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    wblock: usize,
    unpack: Unpack,
    vnni: bool,
    dst: &mut [f32],
) {
    let kb = k / 32;
    let (wrow, arow) = (kb * wblock, kb * 34);
    let da: Vec<f32> = (0..m * kb)
        .map(|i| f16_at(act, (i / kb) * arow + (i % kb) * 34))
        .collect();
    let dst_ptr = dst.as_mut_ptr() as usize;
    // SAFETY (raw writes): each (r, c) is written by exactly one work item.
    let write = |r: usize, c: usize, v: f32| unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
    let aq = |r: usize| &act[r * arow..(r + 1) * arow];
    let ad = |r: usize| &da[r * kb..(r + 1) * kb];
    const COLS: usize = 2 * TILE_W;
    const ROWS: usize = 171 * TILE_A;
    let groups = n.div_ceil(COLS);
    let tiles = m.div_ceil(ROWS);
    crate::pool::for_ranges(groups * tiles, 1, &|range| {
        W_UNPACKED.with(|cell| {
            let (qs, ds) = &mut *cell.borrow_mut();
            qs.resize(COLS * kb, QBlock([0; 32]));
            ds.resize(COLS * kb, 0.0);
            for it in range.clone() {
                let (g, tile) = (it / tiles, it % tiles);
                let (c0, c_end) = (g * COLS, n.min(g * COLS + COLS));
                let (r0, r_end) = (tile * ROWS, m.min(tile * ROWS + ROWS));
                unpack_rows(&w[c0 * wrow..c_end * wrow], wblock, unpack, vnni, qs, ds);
                let (qs, ds) = (&*qs, &*ds);
                let wq = |c: usize| &qs[(c - c0) * kb..(c - c0 + 1) * kb];
                let wd = |c: usize| &ds[(c - c0) * kb..(c - c0 + 1) * kb];
                let mut c = c0;
                while c + TILE_W <= c_end {
                    let qw: [&[QBlock]; TILE_W] = std::array::from_fn(|i| wq(c + i));
                    let dw: [&[f32]; TILE_W] = std::array::from_fn(|i| wd(c + i));
                    let mut r = r0;
                    while r + TILE_A <= r_end {
                        let qa: [&[u8]; TILE_A] = std::array::from_fn(|j| aq(r + j));
                        let das: [&[f32]; TILE_A] = std::array::from_fn(|j| ad(r + j));
                        let out = tile_q0u(qw, dw, qa, das, vnni);
                        for (i, row) in out.iter().enumerate() {
                            for (j, &v) in row.iter().enumerate() {
                                write(r + j, c + i, v);
                            }
                        }
                        r += TILE_A;
                    }
                    for r in r..r_end {
                        let out = tile_q0u(qw, dw, [aq(r)], [ad(r)], vnni);
                        for (i, row) in out.iter().enumerate() {
                            write(r, c + i, row[0]);
                        }
                    }
                    c += TILE_W;
                }
                for c in c..c_end {
                    for r in r0..r_end {
                        write(
                            r,
                            c,
                            tile_q0u([wq(c)], [wd(c)], [aq(r)], [ad(r)], vnni)[0][0],
                        );
                    }
                }
            }
        })
    });
}

/// Unpacks consecutive weight rows, block after block, into `qs` and their scales into
/// `ds`.
fn unpack_rows(
    rows: &[u8],
    wblock: usize,
    unpack: Unpack,
    vnni: bool,
    qs: &mut [QBlock],
    ds: &mut [f32],
) {
    for (i, blk) in rows.chunks_exact(wblock).enumerate() {
        qs[i] = QBlock(simd::unpack_q0(blk, wblock, unpack, vnni));
        ds[i] = f16_at(blk, 0);
    }
}

/// One register tile of [`dot_tiles_q0`] on the best kernel the CPU has.
#[inline(always)]
fn tile_q0u<const RM: usize, const RN: usize>(
    qw: [&[QBlock]; RM],
    dw: [&[f32]; RM],
    qa: [&[u8]; RN],
    da: [&[f32]; RN],
    vnni: bool,
) -> [[f32; RN]; RM] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if vnni {
        if RM == 4 {
            let (qw4, dw4): ([&[QBlock]; 4], [&[f32]; 4]) = (
                std::array::from_fn(|i| qw[i]),
                std::array::from_fn(|i| dw[i]),
            );
            // SAFETY: `vnni` is set only where the CPU has the features (`has_vnni`).
            let out = unsafe { avx512::tile_q0u_4rows(qw4, dw4, qa, da) };
            return std::array::from_fn(|i| out[i]);
        }
        // SAFETY: as above.
        return unsafe { avx512_vnni::tile_q0u(qw, dw, qa, da) };
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    let _ = vnni;
    simd::tile_q0u(qw, dw, qa, da)
}

/// A register-tile kernel of one 32-value weight format against its activation blocks.
pub(super) trait Tiles32: Sync {
    /// Bytes of one weight block and of one activation block.
    fn blocks(&self) -> (usize, usize);
    /// The dot products of `RM` weight rows × `RN` activation rows.
    fn tile<const RM: usize, const RN: usize>(
        &self,
        w: [&[u8]; RM],
        a: [&[u8]; RN],
    ) -> [[f32; RN]; RM];
}

/// Q4_1 against Q8_1 activations.
pub(super) struct Q41Tiles {
    /// Use the AVX-512 VNNI kernel (the CPU has it).
    #[cfg_attr(
        not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )),
        allow(dead_code)
    )]
    pub(super) vnni: bool,
}

impl Tiles32 for Q41Tiles {
    fn blocks(&self) -> (usize, usize) {
        (20, 36)
    }
    fn tile<const RM: usize, const RN: usize>(
        &self,
        w: [&[u8]; RM],
        a: [&[u8]; RN],
    ) -> [[f32; RN]; RM] {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        if self.vnni {
            // SAFETY: `vnni` is set only where the CPU has the features (`has_vnni`).
            return unsafe { avx512_vnni::tile_q4_1(w, a) };
        }
        simd::tile_q4_1(w, a)
    }
}

/// The 32-value formats for several activation rows (prefill): each weight block is
/// unpacked once for [`TILE_A`] activation rows and each activation block loaded once for
/// [`TILE_W`] weight rows. Every (row, column) keeps the lanes and float operations of
/// the one-row kernel (`dot_q0`, `dot_q4_1`), so the results are the same bits.
pub(super) fn dot_tiles_32(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
    kern: &impl Tiles32,
) {
    let (wblock, ablock) = kern.blocks();
    let wrow = k / 32 * wblock;
    let arow = k / 32 * ablock;
    let dst_ptr = dst.as_mut_ptr() as usize;
    // SAFETY (raw writes): each (r, c) is written by exactly one work item.
    let write = |r: usize, c: usize, v: f32| unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
    let wr = |c: usize| &w[c * wrow..(c + 1) * wrow];
    let ar = |r: usize| &act[r * arow..(r + 1) * arow];
    // Work items of 8 weight rows × 24 activation rows: the activation rows of an item
    // stay in the L1 cache while both groups of weight rows pass them.
    const COLS: usize = 2 * TILE_W;
    const ROWS: usize = 8 * TILE_A;
    let groups = n.div_ceil(COLS);
    let tiles = m.div_ceil(ROWS);
    crate::pool::for_ranges(groups * tiles, 1, &|range| {
        for it in range {
            let (g, tile) = (it / tiles, it % tiles);
            let (c0, c_end) = (g * COLS, n.min(g * COLS + COLS));
            let (r0, r_end) = (tile * ROWS, m.min(tile * ROWS + ROWS));
            let mut c = c0;
            while c + TILE_W <= c_end {
                let ws: [&[u8]; TILE_W] = std::array::from_fn(|i| wr(c + i));
                let mut r = r0;
                while r + TILE_A <= r_end {
                    let acts: [&[u8]; TILE_A] = std::array::from_fn(|j| ar(r + j));
                    let out = kern.tile(ws, acts);
                    for (i, row) in out.iter().enumerate() {
                        for (j, &v) in row.iter().enumerate() {
                            write(r + j, c + i, v);
                        }
                    }
                    r += TILE_A;
                }
                for r in r..r_end {
                    let out = kern.tile(ws, [ar(r)]);
                    for (i, row) in out.iter().enumerate() {
                        write(r, c + i, row[0]);
                    }
                }
                c += TILE_W;
            }
            for c in c..c_end {
                for r in r0..r_end {
                    write(r, c, kern.tile([wr(c)], [ar(r)])[0][0]);
                }
            }
        }
    });
}
