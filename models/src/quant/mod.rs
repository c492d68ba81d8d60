//! Quantized matmul on the CPU with llama.cpp's (ggml's) activation quantization.
//!
//! candle's quantized CPU matmul quantizes the activations itself, but not exactly like
//! ggml's x86 kernels do: its Q8_1 block sum `s` is computed as `f16(sum) * f16(d)` (two
//! roundings, ggml rounds `sum * d` once), it rounds ties away from zero where ggml rounds
//! them to even, and it scales by `1 / (amax / 127)` where ggml uses `127 / amax`. Each of
//! these moves a projection by ~1e-4 relative, and a 30-layer model amplifies that into a
//! visible logit difference. Here the activations are quantized exactly as ggml does
//! (`quantize_row_q8_0` / `quantize_row_q8_1` of `ggml-cpu/arch/x86/quants.c`,
//! `quantize_row_q8_K_ref` of `ggml-quants.c`) and the dot products are those of
//! ggml's x86 kernels: reproduced here bit for bit for Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and
//! Q6_K (the lanes, integer sums and float operations of the kernel llama.cpp picks for
//! the shape), candle's block kernels (`GgmlType::vec_dot*`, the same integer sums and
//! scales) for the other formats.
//!
//! Only the CPU and the block formats listed in [`QuantLinear::supported`] take this path;
//! everything else keeps candle's `QMatMul`.
//!
//! The files, by concern:
//! - `act.rs`: the activation quantization;
//! - `blocks.rs`: the block layouts every kernel reads;
//! - `block32.rs`, `kquant.rs`, `interleaved.rs`: the drivers of the 32-value formats
//!   (with the one cell driver every format uses), of the K-quants, and the interleaved
//!   prompt kernels of the K-quants;
//! - `kdot.rs`: the K-quant row kernels, llama.cpp's float operations over the integer
//!   sums a kernel set gives;
//! - `scalar.rs`: the scalar reference of every SIMD kernel;
//! - one file per instruction set (`avx2.rs`, `avx512.rs`, `avx512_vnni.rs`), each with
//!   the functions of `scalar.rs` it speeds up, with the same results to the bit; AVX2 is
//!   the build's floor (`simd` below), the AVX-512 files are chosen at run time (`isa.rs`:
//!   the best set the CPU has, or a lower one named by `TUTTI_KERNELS`);
//! - `tests.rs`: every SIMD kernel and driver against the scalar reference.

mod act;
mod block32;
mod blocks;
mod interleaved;
mod isa;
mod kdot;
mod kquant;
mod repack;
#[cfg(test)]
mod tests;

/// Every x86-64-v3 build (the workspace's default target) has AVX2 and FMA.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2;
/// Chosen at run time on top of AVX2 ([`has_vnni`], [`isa::kernel_set`]).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx512;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx512_vnni;
// Where a SIMD file covers every kernel, the scalar ones are only the tests' reference.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
mod scalar;

/// The kernel set of this build: the best instruction set the target enables.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use avx2 as simd;
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
use scalar as simd;

pub use isa::{kernel_choice, kernel_set, KernelChoice, KernelSet, KERNELS_ENV};
pub use repack::repack_totals;

use crate::Numerics;
use act::{act_block_bytes, act_format, act_format_of, ActFormat};
use block32::{dot_rows_32, dot_tiles_32, dot_tiles_q0, Q41Tiles};
use blocks::{unpack_q4_0, unpack_q5_0, unpack_q8_0, Unpack};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use interleaved::{dot_q4k_interleaved, dot_q6k_interleaved};
use kdot::{dot_q4k, dot_q4k_tiled, dot_q6k};
use kquant::{dot_all_rows_k, dot_tiles_k, SUMS};
use std::sync::Arc;

/// A quantized `[n, k]` weight used as `y = x W^T` with ggml-exact activation quantization.
#[derive(Debug, Clone)]
pub struct QuantLinear {
    w: Arc<QTensor>,
    n: usize,
    k: usize,
    /// Whether several rows may take llama.cpp's prompt kernels (see [`Numerics`]).
    by_shape: bool,
    /// The weights regrouped at load for the 16-row kernels of the AVX-512 sets (Q4_K).
    repacked: Option<Arc<repack::RepackedQ4k>>,
}

impl QuantLinear {
    /// Whether `w` can take this path (CPU, 2-D, a block format with a known `vec_dot_type`).
    pub fn supported(w: &QTensor) -> bool {
        if !w.device().is_cpu() || w.shape().rank() != 2 {
            return false;
        }
        if std::env::var("CANDLE_DEQUANTIZE_ALL").is_ok()
            || std::env::var("TUTTI_CANDLE_QMATMUL").is_ok()
        {
            return false;
        }
        let k = w.shape().dims()[1];
        act_format(w.dtype()).is_some() && k.is_multiple_of(w.dtype().block_size())
    }

    pub fn new(w: Arc<QTensor>, numerics: Numerics) -> Self {
        let dims = w.shape().dims();
        let (n, k) = (dims[0], dims[1]);
        let repacked = repack::regroup(&w, n, k);
        Self {
            w,
            n,
            k,
            by_shape: !numerics.invariant(),
            repacked,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        if k != self.k {
            candle_core::bail!(
                "quantized matmul: input has {k} features, weight expects {}",
                self.k
            );
        }
        let m = x.elem_count() / k.max(1);
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut dst = Vec::new();
        self.forward_host(&xs, m, &mut dst)?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.n;
        let out = Tensor::from_vec(dst, out_dims, &Device::Cpu)?;
        if x.dtype() == DType::F32 {
            Ok(out)
        } else {
            out.to_dtype(x.dtype())
        }
    }
}

impl QuantLinear {
    /// `y = x W^T` for `m` rows of host memory; `dst` is resized to `m × n`.
    pub fn forward_host(&self, xs: &[f32], m: usize, dst: &mut Vec<f32>) -> Result<()> {
        let (k, n) = (self.k, self.n);
        if xs.len() != m * k {
            candle_core::bail!(
                "quantized matmul: {} input values for {m} rows of {k}",
                xs.len()
            );
        }
        dst.resize(m * n, 0.0);
        // Decode steps and prompts alike: a group's regrouped weights stay in the cache
        // while every activation row passes them.
        if let Some(rp) = self.repacked.as_deref() {
            let gemm_rows = if self.by_shape { m - m % 4 } else { 0 };
            repack::forward(rp, xs, m, k, gemm_rows, dst);
            return Ok(());
        }
        let data = self.w.data()?;
        let shape = Shape {
            m,
            k,
            n,
            by_shape: self.by_shape,
        };
        match self.w.dtype() {
            GgmlDType::Q4_0 => run::<BlockQ4_0>(&data, xs, shape, dst),
            GgmlDType::Q4_1 => run::<BlockQ4_1>(&data, xs, shape, dst),
            GgmlDType::Q5_0 => run::<BlockQ5_0>(&data, xs, shape, dst),
            GgmlDType::Q5_1 => run::<BlockQ5_1>(&data, xs, shape, dst),
            GgmlDType::Q8_0 => run::<BlockQ8_0>(&data, xs, shape, dst),
            GgmlDType::Q2K => run::<BlockQ2K>(&data, xs, shape, dst),
            GgmlDType::Q3K => run::<BlockQ3K>(&data, xs, shape, dst),
            GgmlDType::Q4K => run::<BlockQ4K>(&data, xs, shape, dst),
            GgmlDType::Q5K => run::<BlockQ5K>(&data, xs, shape, dst),
            GgmlDType::Q6K => run::<BlockQ6K>(&data, xs, shape, dst),
            d => candle_core::bail!("quantized matmul: unsupported format {d:?}"),
        }
    }
}

/// One call's sizes: `m` activation rows of `k` values against `n` weight rows, and
/// whether llama.cpp's choice of kernel by `m` applies.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    k: usize,
    n: usize,
    by_shape: bool,
}

impl Shape {
    /// Whether llama.cpp would take a several-row kernel with `min` rows or more; never
    /// under batch-invariant numerics, where every row takes the one-row kernel.
    fn rows_at_least(&self, min: usize) -> bool {
        self.by_shape && self.m >= min
    }
}

/// `y = x W^T` for a weight of block type `T` (`n` rows of `k` values in `data`) and `m`
/// rows of `xs`.
fn run<T: GgmlType>(data: &[u8], xs: &[f32], shape: Shape, dst: &mut [f32]) -> Result<()> {
    let Shape { m, k, n, .. } = shape;
    let kb = k / T::BLCK_SIZE;
    let wsize = std::mem::size_of::<T>();
    if data.len() != n * kb * wsize {
        candle_core::bail!(
            "quantized matmul: weight storage is {} bytes, expected {}",
            data.len(),
            n * kb * wsize
        );
    }
    if !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        candle_core::bail!("quantized matmul: misaligned weight storage");
    }
    // SAFETY: `data` is the storage of a QTensor of format `T`: `n * kb` consecutive `T`
    // blocks (length and alignment checked above).
    let w: &[T] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, n * kb) };

    let fmt = act_format_of::<T>();
    let abytes = act_block_bytes(fmt);
    let expected = match fmt {
        ActFormat::Q8_0 => GgmlDType::Q8_0,
        ActFormat::Q8_1 => GgmlDType::Q8_1,
        ActFormat::Q8K => GgmlDType::Q8K,
    };
    if T::VecDotType::DTYPE != expected || std::mem::size_of::<T::VecDotType>() != abytes {
        candle_core::bail!(
            "quantized matmul: unexpected activation block size for {:?}",
            T::DTYPE
        );
    }
    let akb = k / T::VecDotType::BLCK_SIZE;
    act::with_quantized(fmt, xs, m, k, akb * abytes, |bytes| {
        if dot_block32(T::DTYPE, data, bytes, shape, dst)
            || dot_kquant(T::DTYPE, data, bytes, shape, dst)
        {
            return;
        }
        // SAFETY: every byte was written with the `#[repr(C)]` layout of `T::VecDotType`
        // (size checked above); all bit patterns of its fields are valid.
        let act: &[T::VecDotType] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T::VecDotType, m * akb) };
        dot_all(w, act, m, k, n, kb, dst);
    });
    Ok(())
}

/// From this many rows on, the 32-value formats take the prefill tiles: they unpack
/// each group of weight rows once per call (Q4_0, Q5_0, Q8_0), which pays for itself
/// over a prompt and over a few decode rows (a small batch of sequences) but not over
/// two, where the one-row kernel over cached weight rows is as fast. Both give the same
/// bits. Measured on the demo models' shapes (Q4_1 1536×576, Q5_0 2048×640, Q8_0
/// 32768×640; Zen 4, 2 threads): at 4 rows the tiles take 0.6× (Q4_1, Q5_0) to 0.85×
/// (Q8_0) of the one-row time per row, at 2 rows about the same.
const TILE_ROWS: usize = 4;

/// The 32-value formats on the kernel llama.cpp's x86 build uses for them: the prefill
/// tiles for many rows, the one-row dot product otherwise. The tiles keep the one-row
/// kernel's lanes and float operations, so both numerics take them, and the choice by
/// row count is free to follow speed. `false` for other formats.
fn dot_block32(dtype: GgmlDType, data: &[u8], bytes: &[u8], shape: Shape, dst: &mut [f32]) -> bool {
    let Shape { m, k, n, .. } = shape;
    let tiles = m >= TILE_ROWS;
    match dtype {
        GgmlDType::Q4_1 if tiles => {
            dot_tiles_32(data, bytes, m, k, n, dst, &Q41Tiles { vnni: has_vnni() });
        }
        GgmlDType::Q4_1 => dot_rows_32(data, bytes, m, k, n, 20, unpack_q4_0, dst),
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 if tiles => {
            let (wblock, unpack): (usize, Unpack) = match dtype {
                GgmlDType::Q4_0 => (18, unpack_q4_0),
                GgmlDType::Q5_0 => (22, unpack_q5_0),
                _ => (34, unpack_q8_0),
            };
            dot_tiles_q0(data, bytes, m, k, n, wblock, unpack, has_vnni(), dst);
        }
        GgmlDType::Q4_0 => dot_rows_32(data, bytes, m, k, n, 18, unpack_q4_0, dst),
        GgmlDType::Q5_0 => dot_rows_32(data, bytes, m, k, n, 22, unpack_q5_0, dst),
        GgmlDType::Q8_0 => dot_rows_32(data, bytes, m, k, n, 34, unpack_q8_0, dst),
        _ => return false,
    }
    true
}

/// Q4_K and Q6_K on the kernel llama.cpp's x86 build uses for the shape. `false` for
/// other formats (candle's kernels then).
fn dot_kquant(dtype: GgmlDType, data: &[u8], bytes: &[u8], shape: Shape, dst: &mut [f32]) -> bool {
    let Shape { m, k, n, .. } = shape;
    match dtype {
        // llama.cpp repacks Q4_K weights with 8 | rows into its 8x8 layout on AVX2. Its
        // gemm kernel takes the rows in whole groups of 4, its gemv kernel the rest (and
        // every row under batch-invariant numerics).
        GgmlDType::Q4K if n.is_multiple_of(8) && m >= 16 => {
            let gemm_rows = if shape.by_shape { m - m % 4 } else { 0 };
            dot_q4k_interleaved(data, bytes, (m, k, n), gemm_rows, dst, has_vnni());
        }
        GgmlDType::Q4K if n.is_multiple_of(8) => {
            dot_tiles_k(data, bytes, m, k, n, 144, dst, &|w, a, dst_row| {
                // Rows in whole groups of 4 go through the gemm kernel, the rest gemv
                // (every row under batch-invariant numerics).
                let gemm_rows = if shape.by_shape { m - m % 4 } else { 0 };
                let mut r = 0;
                while r + 4 <= a.len() {
                    let rows: [&[u8]; 4] = std::array::from_fn(|j| a[r + j].1);
                    let gemm = a[r + 3].0 < gemm_rows;
                    for (j, v) in simd::tile_q4k_x4(w, rows, gemm).into_iter().enumerate() {
                        dst_row(a[r + j].0, v);
                    }
                    r += 4;
                }
                for &(row, act) in &a[r..] {
                    dst_row(row, simd::tile_q4k(w, [act], row < gemm_rows)[0]);
                }
            });
        }
        // Batches of 8 rows or more go through ggml's tiled K-quant matmul.
        GgmlDType::Q4K if shape.rows_at_least(8) => {
            dot_all_rows_k(data, bytes, m, k, n, 144, dst, |w, a, _| {
                dot_q4k_tiled(w, a, &SUMS)
            });
        }
        GgmlDType::Q4K => dot_all_rows_k(data, bytes, m, k, n, 144, dst, |w, a, _| dot_q4k(w, a)),
        GgmlDType::Q6K if n.is_multiple_of(8) && shape.rows_at_least(16) => {
            dot_q6k_interleaved(data, bytes, m, k, n, dst, has_vnni());
        }
        GgmlDType::Q6K if shape.rows_at_least(8) => {
            dot_tiles_k(data, bytes, m, k, n, 210, dst, &|w, a, dst_row| {
                let mut r = 0;
                while r + 4 <= a.len() {
                    let rows: [&[u8]; 4] = std::array::from_fn(|j| a[r + j].1);
                    for (j, v) in simd::tile_q6k(w, rows).into_iter().enumerate() {
                        dst_row(a[r + j].0, v);
                    }
                    r += 4;
                }
                for &(row, act) in &a[r..] {
                    dst_row(row, simd::tile_q6k(w, [act])[0]);
                }
            });
        }
        // A few rows (a batch of decode steps): the one-row kernel's arithmetic per row,
        // each weight super-block decoded once for all of them.
        GgmlDType::Q6K if m > 1 => {
            dot_tiles_k(data, bytes, m, k, n, 210, dst, &|w, a, dst_row| {
                let mut r = 0;
                while r + 4 <= a.len() {
                    let rows: [&[u8]; 4] = std::array::from_fn(|j| a[r + j].1);
                    for (j, v) in simd::rows_q6k(w, rows).into_iter().enumerate() {
                        dst_row(a[r + j].0, v);
                    }
                    r += 4;
                }
                for &(row, act) in &a[r..] {
                    dst_row(row, simd::rows_q6k(w, [act])[0]);
                }
            });
        }
        GgmlDType::Q6K => dot_all_rows_k(data, bytes, m, k, n, 210, dst, |w, a, _| {
            dot_q6k(w, a, &SUMS)
        }),
        _ => return false,
    }
    true
}

/// Every other format through candle's block kernels (`vec_dot_4`, `vec_dot`).
fn dot_all<T: GgmlType>(
    w: &[T],
    act: &[T::VecDotType],
    m: usize,
    k: usize,
    n: usize,
    kb: usize,
    dst: &mut [f32],
) {
    let akb = act.len() / m;
    let col = |c: usize| &w[c * kb..(c + 1) * kb];
    let row = |r: usize| &act[r * akb..(r + 1) * akb];
    let quads = n / 4;
    let dst_ptr = dst.as_mut_ptr() as usize;
    // SAFETY (raw writes): each (row, column) of dst is written by exactly one work item.
    let write = |r: usize, c: usize, v: f32| unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
    let item = |r: usize, q: usize| {
        let c = q * 4;
        let (d0, d1, d2, d3) = T::vec_dot_4(k, col(c), col(c + 1), col(c + 2), col(c + 3), row(r));
        write(r, c, d0);
        write(r, c + 1, d1);
        write(r, c + 2, d2);
        write(r, c + 3, d3);
    };
    if quads == 0 {
        for r in 0..m {
            for c in 0..n {
                write(r, c, T::vec_dot(k, col(c), row(r)));
            }
        }
        return;
    }
    const ROW_TILE: usize = 4;
    let tiles = m.div_ceil(ROW_TILE);
    crate::pool::for_ranges(tiles * quads, 1, &|range| {
        for it in range {
            let r0 = (it / quads) * ROW_TILE;
            let q = it % quads;
            for r in r0..m.min(r0 + ROW_TILE) {
                item(r, q);
            }
        }
    });
    for r in 0..m {
        for c in quads * 4..n {
            write(r, c, T::vec_dot(k, col(c), row(r)));
        }
    }
}

/// Whether the tile kernels may use AVX-512 VNNI (the kernel set, see [`isa`]).
fn has_vnni() -> bool {
    kernel_set() >= KernelSet::Avx512Vnni
}
