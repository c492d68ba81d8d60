//! Quantized matmul on the CPU with llama.cpp's (ggml's) activation quantization.
//!
//! candle's quantized CPU matmul quantizes the activations itself, but not exactly like
//! ggml's x86 kernels do: its Q8_1 block sum `s` is computed as `f16(sum) * f16(d)` (two
//! roundings, ggml rounds `sum * d` once), it rounds ties away from zero where ggml rounds
//! them to even, and it scales by `1 / (amax / 127)` where ggml uses `127 / amax`. Each of
//! these moves a projection by ~1e-4 relative, and a 30-layer model amplifies that into a
//! visible logit difference. Here the activations are quantized exactly as ggml does
//! (`quantize_row_q8_0` / `quantize_row_q8_1` of `ggml-cpu/arch/x86/quants.c`,
//! `quantize_row_q8_K_ref` of `ggml-quants.c`) and the dot products are candle's
//! block kernels (`GgmlType::vec_dot*`), which compute the same integer sums and scales.
//!
//! Only the CPU and the block formats listed in [`QuantLinear::supported`] take this path;
//! everything else keeps candle's `QMatMul`.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType, QK_K,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use half::f16;
use std::sync::Arc;

/// A quantized `[n, k]` weight used as `y = x W^T` with ggml-exact activation quantization.
#[derive(Debug, Clone)]
pub struct QuantLinear {
    w: Arc<QTensor>,
    n: usize,
    k: usize,
}

/// The activation block format a weight format is multiplied with (ggml's `vec_dot_type`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ActFormat {
    Q8_0,
    Q8_1,
    Q8K,
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

    pub fn new(w: Arc<QTensor>) -> Self {
        let dims = w.shape().dims();
        let (n, k) = (dims[0], dims[1]);
        Self { w, n, k }
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
        let data = self.w.data()?;
        match self.w.dtype() {
            GgmlDType::Q4_0 => run::<BlockQ4_0>(&data, xs, m, k, n, dst),
            GgmlDType::Q4_1 => run::<BlockQ4_1>(&data, xs, m, k, n, dst),
            GgmlDType::Q5_0 => run::<BlockQ5_0>(&data, xs, m, k, n, dst),
            GgmlDType::Q5_1 => run::<BlockQ5_1>(&data, xs, m, k, n, dst),
            GgmlDType::Q8_0 => run::<BlockQ8_0>(&data, xs, m, k, n, dst),
            GgmlDType::Q2K => run::<BlockQ2K>(&data, xs, m, k, n, dst),
            GgmlDType::Q3K => run::<BlockQ3K>(&data, xs, m, k, n, dst),
            GgmlDType::Q4K => run::<BlockQ4K>(&data, xs, m, k, n, dst),
            GgmlDType::Q5K => run::<BlockQ5K>(&data, xs, m, k, n, dst),
            GgmlDType::Q6K => run::<BlockQ6K>(&data, xs, m, k, n, dst),
            d => candle_core::bail!("quantized matmul: unsupported format {d:?}"),
        }
    }
}

fn act_format(d: GgmlDType) -> Option<ActFormat> {
    Some(match d {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => ActFormat::Q8_0,
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => ActFormat::Q8_1,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
            ActFormat::Q8K
        }
        _ => return None,
    })
}

fn act_format_of<T: GgmlType>() -> ActFormat {
    match act_format(T::DTYPE) {
        Some(f) => f,
        None => unreachable!("no activation format for {:?}", T::DTYPE),
    }
}

/// Bytes of one activation block (the layout of candle's `#[repr(C)]` block structs, which
/// is ggml's).
fn act_block_bytes(f: ActFormat) -> usize {
    match f {
        ActFormat::Q8_0 => 34,
        ActFormat::Q8_1 => 36,
        ActFormat::Q8K => 4 + QK_K + QK_K / 16 * 2,
    }
}

/// ggml's `quantize_row_q8_0` / `quantize_row_q8_1` (x86 AVX2 path): `d = amax / 127`,
/// `q = round_half_even(x * (127 / amax))`, and for Q8_1 `s = f16(d * Σq)`.
fn quantize_q8_0_or_1(xs: &[f32], out: &mut [u8], with_sum: bool) {
    let bs = if with_sum { 36 } else { 34 };
    for (x, o) in xs.chunks_exact(32).zip(out.chunks_exact_mut(bs)) {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        o[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let qs_off = if with_sum { 4 } else { 2 };
        let mut sum = 0i32;
        for (j, &v) in x.iter().enumerate() {
            let q = (v * id).round_ties_even() as i32;
            sum += q;
            o[qs_off + j] = q as i8 as u8;
        }
        if with_sum {
            o[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_bits().to_le_bytes());
        }
    }
}

/// ggml's `quantize_row_q8_K_ref`: scale by `-127 / max` (max = the value of largest
/// magnitude), round to nearest (ties to even), clamp at 127, `d = 1 / iscale`.
fn quantize_q8k(xs: &[f32], out: &mut [u8]) {
    let bs = act_block_bytes(ActFormat::Q8K);
    for (x, o) in xs.chunks_exact(QK_K).zip(out.chunks_exact_mut(bs)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            o.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let mut q = [0i8; QK_K];
        for (qj, &v) in q.iter_mut().zip(x) {
            *qj = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        o[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for (j, &qj) in q.iter().enumerate() {
            o[4 + j] = qj as u8;
        }
        for j in 0..QK_K / 16 {
            let s: i32 = q[j * 16..(j + 1) * 16].iter().map(|&v| v as i32).sum();
            let off = 4 + QK_K + 2 * j;
            o[off..off + 2].copy_from_slice(&(s as i16).to_le_bytes());
        }
    }
}

thread_local! {
    static ACT_SCRATCH: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn run<T: GgmlType>(
    data: &[u8],
    xs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
) -> Result<()> {
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
    ACT_SCRATCH.with(|cell| -> Result<()> {
        let mut scratch = cell.borrow_mut();
        let need = (m * akb * abytes).div_ceil(8);
        if scratch.len() < need {
            scratch.resize(need, 0);
        }
        // SAFETY: u64 storage is aligned for every activation block type (align ≤ 4) and
        // holds `need * 8 >= m * akb * abytes` bytes.
        let bytes: &mut [u8] = unsafe {
            std::slice::from_raw_parts_mut(scratch.as_mut_ptr() as *mut u8, m * akb * abytes)
        };
        let quantize = |r: usize, out: &mut [u8]| {
            let row = &xs[r * k..(r + 1) * k];
            match fmt {
                ActFormat::Q8_0 => quantize_q8_0_or_1(row, out, false),
                ActFormat::Q8_1 => quantize_q8_0_or_1(row, out, true),
                ActFormat::Q8K => quantize_q8k(row, out),
            }
        };
        let arow = akb * abytes;
        if m >= 8 {
            // A prompt's rows are quantized on every thread (each row alone).
            let base = bytes.as_mut_ptr() as usize;
            crate::pool::for_ranges(m, 1, &|rows| {
                for r in rows {
                    // SAFETY: row `r` owns bytes `r * arow..(r + 1) * arow` of `bytes`.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut((base as *mut u8).add(r * arow), arow)
                    };
                    quantize(r, out);
                }
            });
        } else {
            for (r, out) in bytes.chunks_exact_mut(arow).enumerate() {
                quantize(r, out);
            }
        }
        // SAFETY: every byte was written with the `#[repr(C)]` layout of `T::VecDotType`
        // (size checked above); all bit patterns of its fields are valid.
        match T::DTYPE {
            GgmlDType::Q4_1 if m >= 2 => {
                dot_tiles_32(data, bytes, m, k, n, dst, &Q41Tiles { vnni: has_vnni() });
                return Ok(());
            }
            GgmlDType::Q4_1 => {
                dot_all_rows(data, bytes, m, k, n, 20, 36, dst, simd::dot_q4_1);
                return Ok(());
            }
            GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 if m >= 2 => {
                let (wblock, unpack): (usize, Unpack) = match T::DTYPE {
                    GgmlDType::Q4_0 => (18, unpack_q4_0),
                    GgmlDType::Q5_0 => (22, unpack_q5_0),
                    _ => (34, unpack_q8_0),
                };
                dot_tiles_q0(data, bytes, m, k, n, wblock, unpack, has_vnni(), dst);
                return Ok(());
            }
            GgmlDType::Q4_0 => {
                dot_all_rows(data, bytes, m, k, n, 18, 34, dst, |w, a| {
                    simd::dot_q0(w, a, 18, unpack_q4_0)
                });
                return Ok(());
            }
            GgmlDType::Q5_0 => {
                dot_all_rows(data, bytes, m, k, n, 22, 34, dst, |w, a| {
                    simd::dot_q0(w, a, 22, unpack_q5_0)
                });
                return Ok(());
            }
            GgmlDType::Q8_0 => {
                dot_all_rows(data, bytes, m, k, n, 34, 34, dst, |w, a| {
                    simd::dot_q0(w, a, 34, unpack_q8_0)
                });
                return Ok(());
            }
            // llama.cpp repacks Q4_K weights with 8 | rows into its 8x8 layout on AVX2.
            GgmlDType::Q4K if n.is_multiple_of(8) && m >= 16 => {
                dot_q4k_interleaved(data, bytes, m, k, n, dst, has_vnni());
                return Ok(());
            }
            GgmlDType::Q4K if n.is_multiple_of(8) => {
                dot_tiles_k(data, bytes, m, k, n, 144, dst, &|w, a, dst_row| {
                    // Rows in whole groups of 4 go through the gemm kernel, the rest gemv.
                    let gemm_rows = m - m % 4;
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
                return Ok(());
            }
            // Batches of 8 rows or more go through ggml's tiled K-quant matmul.
            GgmlDType::Q4K if m >= 8 => {
                dot_all_rows_k(data, bytes, m, k, n, 144, dst, |w, a, _| {
                    dot_q4k_tiled(w, a)
                });
                return Ok(());
            }
            GgmlDType::Q4K => {
                dot_all_rows_k(data, bytes, m, k, n, 144, dst, |w, a, _| dot_q4k(w, a));
                return Ok(());
            }
            GgmlDType::Q6K if n.is_multiple_of(8) && m >= 16 => {
                dot_q6k_interleaved(data, bytes, m, k, n, dst, has_vnni());
                return Ok(());
            }
            GgmlDType::Q6K if m >= 8 => {
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
                return Ok(());
            }
            GgmlDType::Q6K => {
                dot_all_rows_k(data, bytes, m, k, n, 210, dst, |w, a, _| dot_q6k(w, a));
                return Ok(());
            }
            _ => {}
        }
        let act: &[T::VecDotType] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T::VecDotType, m * akb) };
        dot_all(w, act, m, k, n, kb, dst);
        Ok(())
    })
}

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

#[inline]
fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// `ggml_vec_dot_q4_1_q8_1` (x86 AVX2/AVX-512 build) bit for bit: per block the products
/// of 4 consecutive values are summed exactly into 8 lanes and accumulated with
/// `fma(d_w * d_a, lane, acc)`; the `m * s` terms are summed separately in f32; at the end
/// the 8 lanes are reduced pairwise (`hsum_float_8`) and the `m * s` sum is added.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
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

/// `hsum_float_8`: lanes l and l+4 added, then (0+2) + (1+3).
#[inline]
fn hsum8(v: &[f32; 8]) -> f32 {
    let r = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Runs `dot(weight row, activation row)` for every (row, column) on the thread pool.
#[allow(clippy::too_many_arguments)]
fn dot_all_rows(
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
    let wrow = k / 32 * wblock;
    let arow = k / 32 * ablock;
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
                    let v = dot(&w[c * wrow..(c + 1) * wrow], a);
                    // SAFETY: each (r, c) is written by exactly one work item.
                    unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
                }
            }
        }
    });
}

/// Weight rows × activation rows of one register tile (tinyBLAS's AVX2 tile for the
/// 32-value formats).
const TILE_W: usize = 4;
const TILE_A: usize = 3;

/// Whether the tile kernels may use AVX-512 VNNI (checked once; `TUTTI_NO_VNNI` turns it
/// off, for comparing the two kernels).
fn has_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        {
            simd::has_vnni() && std::env::var_os("TUTTI_NO_VNNI").is_none()
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        {
            false
        }
    })
}

/// Writes one weight block's 32 signed values (the scalar unpacking).
type Unpack = fn(&[u8], &mut [i8; 32]);

/// One weight block of a 32-value format unpacked for the prefill tiles: its 32 values as
/// signed bytes, or offset by 128 (unsigned) for the VNNI kernel.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct QBlock([u8; 32]);

thread_local! {
    /// The unpacked weight rows of the work item a thread is running, and their scales.
    static W_UNPACKED: std::cell::RefCell<(Vec<QBlock>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Q4_0, Q5_0 and Q8_0 for several activation rows (prefill). A work item (8 weight rows
/// × up to 512 activation rows) first unpacks its weight rows into bytes and f32 scales, once;
/// register tiles of [`TILE_W`] weight rows × [`TILE_A`] activation rows then only load.
/// Every (row, column) keeps the lanes and float operations of [`dot_q0`], so the results
/// are the same bits.
#[allow(clippy::too_many_arguments)]
fn dot_tiles_q0(
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
                for c in c0..c_end {
                    for b in 0..kb {
                        let blk = &w[c * wrow + b * wblock..c * wrow + (b + 1) * wblock];
                        let i = (c - c0) * kb + b;
                        qs[i] = QBlock(simd::unpack_q0(blk, wblock, unpack, vnni));
                        ds[i] = f16_at(blk, 0);
                    }
                }
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
    {
        if vnni {
            // SAFETY: `vnni` is set only where the CPU has the features (`has_vnni`).
            return unsafe { simd::tile_q0u_vnni(qw, dw, qa, da) };
        }
        simd::tile_q0u(qw, dw, qa, da)
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        let _ = vnni;
        tile_q0u_scalar(qw, dw, qa, da)
    }
}

/// The scalar [`tile_q0u`] (signed values): per (row, column) the lanes and float
/// operations of [`dot_q0`].
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn tile_q0u_scalar<const RM: usize, const RN: usize>(
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

/// One weight block's signed values as bytes (offset by 128 for the VNNI kernel).
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn unpack_q0(blk: &[u8], _wblock: usize, unpack: Unpack, vnni: bool) -> [u8; 32] {
    let mut q = [0i8; 32];
    unpack(blk, &mut q);
    q.map(|v| if vnni { (v as u8) ^ 0x80 } else { v as u8 })
}

/// A register-tile kernel of one 32-value weight format against its activation blocks.
trait Tiles32: Sync {
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
struct Q41Tiles {
    /// Use the AVX-512 VNNI kernel (the CPU has it).
    #[cfg_attr(
        not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )),
        allow(dead_code)
    )]
    vnni: bool,
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
            // SAFETY: as above.
            return unsafe { simd::tile_q4_1_vnni(w, a) };
        }
        simd::tile_q4_1(w, a)
    }
}

/// The 32-value formats for several activation rows (prefill): each weight block is
/// unpacked once for [`TILE_A`] activation rows and each activation block loaded once for
/// [`TILE_W`] weight rows. Every (row, column) keeps the lanes and float operations of
/// the one-row kernel ([`dot_q0`], [`dot_q4_1`]), so the results are the same bits.
fn dot_tiles_32(
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

/// [`dot_q4_1`] of every weight row against every activation row (the scalar tile).
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn tile_q4_1<const RM: usize, const RN: usize>(w: [&[u8]; RM], a: [&[u8]; RN]) -> [[f32; RN]; RM] {
    std::array::from_fn(|i| std::array::from_fn(|j| dot_q4_1(w[i], a[j])))
}

fn unpack_q4_0(b: &[u8], q: &mut [i8; 32]) {
    for j in 0..16 {
        q[j] = (b[2 + j] & 0x0f) as i8 - 8;
        q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
    }
}

fn unpack_q5_0(b: &[u8], q: &mut [i8; 32]) {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let lo = (b[6 + j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (b[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        q[j] = lo as i8 - 16;
        q[j + 16] = hi as i8 - 16;
    }
}

fn unpack_q8_0(b: &[u8], q: &mut [i8; 32]) {
    for j in 0..32 {
        q[j] = b[2 + j] as i8;
    }
}

/// The 32-value formats with Q8_0 activations (`ggml_vec_dot_q{4,5,8}_0_q8_0` on x86 and
/// tinyBLAS's `tinyBLAS_Q0_AVX`, which agree): per block the products of 4 consecutive
/// values are summed exactly into 8 lanes, accumulated with `fma(d_w * d_a, lane, acc)`,
/// and the lanes reduced by `hsum_float_8`.
#[inline]
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn dot_q0(w: &[u8], a: &[u8], wblock: usize, unpack: fn(&[u8], &mut [i8; 32])) -> f32 {
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

/// [`dot_all_rows`] for 256-value super-blocks with Q8_K activations.
// The matmul's shape and buffers, spelled out like ggml's kernels take them.
#[allow(clippy::too_many_arguments)]
fn dot_all_rows_k(
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
type KTile<'a> = dyn Fn(&[u8], &[(usize, &[u8])], &dyn Fn(usize, f32)) + Sync + 'a;

/// [`dot_all_rows_k`] for kernels that take several activation rows per weight row (the
/// weight super-blocks are decoded once for all of them).
#[allow(clippy::too_many_arguments)]
fn dot_tiles_k(
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

/// Eight Q4_K weight rows regrouped for [`dot_q4k_interleaved`], per super-block: the
/// values of each 32-value sub-block as 8 groups of 4 consecutive values, each group
/// holding the 4 bytes of all 8 rows side by side (so that one 32-bit lane is one row),
/// and the rows' scales, mins, `d` and `dmin` likewise side by side.
#[derive(Default)]
struct Q4kGroup {
    q: Vec<QBlock>,
    scales: Vec<[i32; 8]>,
    mins: Vec<[i32; 8]>,
    d: Vec<[f32; 8]>,
    dmin: Vec<[f32; 8]>,
}

thread_local! {
    static Q4K_GROUP: std::cell::RefCell<Q4kGroup> = std::cell::RefCell::new(Q4kGroup::default());
}

/// Q4_K for a prompt (`ggml_gemm_q4_K_8x8_q8_K`'s arrangement): 8 weight rows at a time
/// are regrouped so that each lane of a vector is one weight row; an activation row's
/// 4 values are broadcast against them, so the per-(row, column) sums need no horizontal
/// reduction and the float work is done for 8 columns per instruction. Per (row, column)
/// the integers and float operations are those of [`dot_q4k_repacked`] (gemm for the rows
/// in whole groups of 4, gemv for the rest), so the results are the same bits.
fn dot_q4k_interleaved(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
    vnni: bool,
) {
    let gemm_rows = m - m % 4;
    dot_interleaved(w, act, m, k, n, dst, &Q4K_GROUP, &|g: &Q4kGroup, a, r| {
        simd::q4k_row_x8(g, a, r < gemm_rows, vnni)
    });
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

/// The scalar [`simd::regroup_q4k`]: sub-block `j`'s group `t` holds values
/// `4t..4t + 4` of each of the 8 rows.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn regroup_q4k(blocks: [&[u8]; 8], out: &mut [QBlock]) {
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

/// The scalar [`simd::q4k_row_x8`]: one activation row against 8 regrouped weight rows.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn q4k_row_x8(g: &Q4kGroup, a: &[u8], gemm: bool, _vnni: bool) -> [f32; 8] {
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

/// Eight Q6_K weight rows regrouped for [`dot_q6k_interleaved`] (the layout of
/// [`Q4kGroup`]: 4-byte groups of the 8 rows side by side), with the rows' 16 scales per
/// super-block and `d`.
#[derive(Default)]
struct Q6kGroup {
    q: Vec<QBlock>,
    scales: Vec<[i32; 8]>,
    d: Vec<[f32; 8]>,
}

thread_local! {
    static Q6K_GROUP: std::cell::RefCell<Q6kGroup> = std::cell::RefCell::new(Q6kGroup::default());
}

/// Q6_K for a prompt, arranged like [`dot_q4k_interleaved`]; per (row, column) the
/// integer total and the float operations of [`dot_q6k_tiled`], so the same bits.
fn dot_q6k_interleaved(
    w: &[u8],
    act: &[u8],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
    vnni: bool,
) {
    dot_interleaved(w, act, m, k, n, dst, &Q6K_GROUP, &|g: &Q6kGroup, a, _| {
        simd::q6k_row_x8(g, a, vnni)
    });
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

/// The scalar [`simd::regroup_q6k`]: 32-value chunk `v` (values `32v..32v + 32` in
/// [`q6k_lanes`]' order), group `t` holds its values `4t..4t + 4` of each of the 8 rows.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn regroup_q6k(blocks: [&[u8]; 8], out: &mut [QBlock]) {
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

/// The scalar [`simd::q6k_row_x8`].
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn q6k_row_x8(g: &Q6kGroup, a: &[u8], _vnni: bool) -> [f32; 8] {
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

/// [`dot_q4k_repacked`] of one weight row against `RN` activation rows.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn tile_q4k<const RN: usize>(w: &[u8], a: [&[u8]; RN], gemm: bool) -> [f32; RN] {
    a.map(|a| dot_q4k_repacked(w, a, gemm))
}

#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn tile_q4k_x4(w: &[u8], a: [&[u8]; 4], gemm: bool) -> [f32; 4] {
    tile_q4k(w, a, gemm)
}

/// [`dot_q6k_tiled`] of one weight row against `RN` activation rows.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn tile_q6k<const RN: usize>(w: &[u8], a: [&[u8]; RN]) -> [f32; RN] {
    a.map(|a| dot_q6k_tiled(w, a))
}

/// `ggml_vec_dot_q6_K_q8_K` (x86 AVX2) bit for bit. Per super-block the integer dot
/// product is split into 8 int32 lanes (lane `l` holds the values `e` with
/// `(e % 32) / 4 == l`, minus its share `32 * Σ scale * bsum` of the two 16-value groups
/// `2l`, `2l+1`), each lane accumulated with `fma(d_a * d_w, lane, acc)`; `hsum_float_8`
/// at the end.
fn dot_q6k(w: &[u8], a: &[u8]) -> f32 {
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

/// The 8 exact int32 lanes of one Q6_K super-block against its Q8_K activations, as
/// `ggml_vec_dot_q6_K_q8_K` (AVX2) forms them: lane `l` sums `scale * q * q8` over the
/// values `e` with `(e % 32) / 4 == l` (`q` unsigned, 0..64), minus
/// `32 * Σ scale * bsum` over the 16-value groups `2l` and `2l + 1`.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn q6k_lanes(x: &[u8], y: &[u8]) -> [i32; 8] {
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

/// The 6-bit scales and mins of a Q4_K super-block (its 12 packed bytes).
#[inline]
fn q4k_scales(sc: &[u8]) -> ([i32; 8], [i32; 8]) {
    let mut scales = [0i32; 8];
    let mut mins = [0i32; 8];
    for j in 0..8 {
        let (s, m) = if j < 4 {
            ((sc[j] & 63) as i32, (sc[j + 4] & 63) as i32)
        } else {
            (
                ((sc[j + 4] & 0x0f) | ((sc[j - 4] >> 6) << 4)) as i32,
                ((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)) as i32,
            )
        };
        scales[j] = s;
        mins[j] = m;
    }
    (scales, mins)
}

/// The exact sums `Σ scale Σ q4 q8` of one Q4_K super-block per pair of 32-value
/// sub-blocks (`2p`: low nibbles of bytes `32p..32p+32`, `2p + 1`: high nibbles).
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn q4k_pair_sums(x: &[u8], y: &[u8], scales: &[i32; 8]) -> [i32; 4] {
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

/// Q4_K as llama.cpp's repacked x86 kernels compute it. Per super-block and 64-value pair
/// of sub-blocks the exact integer sums `Σ scale Σ q4 q8` and `Σ min bsum` are formed;
/// `ggml_gemv_q4_K_8x8_q8_K` (rows past the last group of 4) accumulates them per
/// super-block with `fma(sum, d_w * d_a, acc)`, `ggml_gemm_q4_K_8x8_q8_K` (rows in groups
/// of 4) per sub-block pair; the result is `acc - acc_min`.
fn dot_q4k_repacked(w: &[u8], a: &[u8], gemm: bool) -> f32 {
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
fn dot_q4k(w: &[u8], a: &[u8]) -> f32 {
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

/// AVX2 versions of the dot products above with the same lane structure and float
/// operations (so the same results); the scalar code is the fallback.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod simd {
    use std::arch::x86_64::*;

    #[inline]
    unsafe fn hsum_float_8(x: __m256) -> f32 {
        let mut res = _mm256_extractf128_ps(x, 1);
        res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// Unsigned × signed bytes, 4 consecutive products summed into 8 int32 lanes, as f32.
    #[inline]
    unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ax, sy);
        let summed = _mm256_madd_epi16(_mm256_set1_epi16(1), dot);
        _mm256_cvtepi32_ps(summed)
    }

    #[inline]
    unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        mul_sum_us8_pairs_float(ax, sy)
    }

    pub fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
        // SAFETY: compiled only with AVX2 and FMA enabled; loads stay inside the blocks.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            let low = _mm256_set1_epi8(0x0f);
            for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
                // [d0, m0, d1, s1]; products [d0 * d1, m0 * s1] (rounded as f32 each).
                let scales = half4(wb, ab);
                let prod = _mm_mul_ps(scales, _mm_movehl_ps(scales, scales));
                summs += _mm_cvtss_f32(_mm_movehdup_ps(prod));
                let d0d1 = _mm256_broadcastss_ps(prod);
                let tmp = _mm_loadu_si128(wb.as_ptr().add(4) as *const __m128i);
                let qx = _mm256_and_si256(
                    _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1),
                    low,
                );
                let qy = _mm256_loadu_si256(ab.as_ptr().add(4) as *const __m256i);
                let xy = mul_sum_us8_pairs_float(qx, qy);
                acc = _mm256_fmadd_ps(d0d1, xy, acc);
            }
            hsum_float_8(acc) + summs
        }
    }

    /// One weight block's 32 signed values (`q - 8`, `q - 16` or `q`).
    #[inline(always)]
    unsafe fn load_q0(wb: &[u8], wblock: usize, unpack: fn(&[u8], &mut [i8; 32])) -> __m256i {
        if wblock == 34 {
            _mm256_loadu_si256(wb.as_ptr().add(2) as *const __m256i)
        } else if wblock == 22 {
            // Q5_0: ggml's bytes_from_nibbles_32 | (bit ? 0 : 0xF0), i.e. q - 16.
            let tmp = _mm_loadu_si128(wb.as_ptr().add(6) as *const __m128i);
            let nib = _mm256_and_si256(
                _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1),
                _mm256_set1_epi8(0x0f),
            );
            let x32 = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]) as i32;
            let shuf = _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            );
            let mut bits = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
            bits = _mm256_or_si256(bits, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
            let bits = _mm256_cmpeq_epi8(bits, _mm256_set1_epi64x(-1));
            let hi = _mm256_andnot_si256(bits, _mm256_set1_epi8(0xF0u8 as i8));
            _mm256_or_si256(nib, hi)
        } else if wblock == 18 {
            // Q4_0: nibbles minus 8.
            let tmp = _mm_loadu_si128(wb.as_ptr().add(2) as *const __m128i);
            let nib = _mm256_and_si256(
                _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1),
                _mm256_set1_epi8(0x0f),
            );
            _mm256_sub_epi8(nib, _mm256_set1_epi8(8))
        } else {
            let mut q = [0i8; 32];
            unpack(wb, &mut q);
            _mm256_loadu_si256(q.as_ptr() as *const __m256i)
        }
    }

    pub fn dot_q0(w: &[u8], a: &[u8], wblock: usize, unpack: fn(&[u8], &mut [i8; 32])) -> f32 {
        // SAFETY: as above.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (wb, ab) in w.chunks_exact(wblock).zip(a.chunks_exact(34)) {
                let scales = half2(wb, ab);
                let dd = _mm256_broadcastss_ps(_mm_mul_ss(scales, _mm_movehdup_ps(scales)));
                let qx = load_q0(wb, wblock, unpack);
                let qy = _mm256_loadu_si256(ab.as_ptr().add(2) as *const __m256i);
                acc = _mm256_fmadd_ps(dd, mul_sum_i8_pairs_float(qx, qy), acc);
            }
            hsum_float_8(acc)
        }
    }

    /// [`super::tile_q4_1`]: `RM` weight rows × `RN` activation rows, each weight block
    /// unpacked once; per (row, column) the float operations of [`dot_q4_1`].
    #[inline(always)]
    pub fn tile_q4_1<const RM: usize, const RN: usize>(
        w: [&[u8]; RM],
        a: [&[u8]; RN],
    ) -> [[f32; RN]; RM] {
        const { assert!(RM <= 4 && RN <= 4) };
        let nb = a[0].len() / 36;
        assert!(w.iter().all(|r| r.len() >= nb * 20) && a.iter().all(|r| r.len() >= nb * 36));
        // SAFETY: AVX2 and FMA are enabled at compile time; every block read is inside its
        // row (lengths checked above).
        unsafe {
            let low = _mm256_set1_epi8(0x0f);
            let mut acc = [[_mm256_setzero_ps(); RN]; RM];
            let mut summs = [[0f32; RN]; RM];
            for b in 0..nb {
                let mut dw = [0u16; 8];
                let mut da = [0u16; 8];
                let mut qx = [_mm256_setzero_si256(); RM];
                for i in 0..RM {
                    let wb = w[i].as_ptr().add(b * 20);
                    dw[2 * i] = u16::from_le_bytes([*wb, *wb.add(1)]);
                    dw[2 * i + 1] = u16::from_le_bytes([*wb.add(2), *wb.add(3)]);
                    let tmp = _mm_loadu_si128(wb.add(4) as *const __m128i);
                    qx[i] = _mm256_and_si256(
                        _mm256_insertf128_si256(
                            _mm256_castsi128_si256(tmp),
                            _mm_srli_epi16(tmp, 4),
                            1,
                        ),
                        low,
                    );
                }
                for j in 0..RN {
                    let ab = a[j].as_ptr().add(b * 36);
                    da[2 * j] = u16::from_le_bytes([*ab, *ab.add(1)]);
                    da[2 * j + 1] = u16::from_le_bytes([*ab.add(2), *ab.add(3)]);
                }
                let dwf = cvt8(dw);
                let daf = cvt8(da);
                for j in 0..RN {
                    let qy = _mm256_loadu_si256(a[j].as_ptr().add(b * 36 + 4) as *const __m256i);
                    for i in 0..RM {
                        summs[i][j] += dwf[2 * i + 1] * daf[2 * j + 1];
                        let d0d1 = _mm256_set1_ps(dwf[2 * i] * daf[2 * j]);
                        acc[i][j] =
                            _mm256_fmadd_ps(d0d1, mul_sum_us8_pairs_float(qx[i], qy), acc[i][j]);
                    }
                }
            }
            let mut out = [[0f32; RN]; RM];
            for i in 0..RM {
                for j in 0..RN {
                    out[i][j] = hsum_float_8(acc[i][j]) + summs[i][j];
                }
            }
            out
        }
    }

    /// Eight f16 values in f32, converted in one instruction.
    #[inline(always)]
    unsafe fn cvt8(h: [u16; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        let v = _mm_loadu_si128(h.as_ptr() as *const __m128i);
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(v));
        out
    }

    /// Whether the CPU has AVX-512 VNNI (with VL and BW) for the tile kernels below.
    pub fn has_vnni() -> bool {
        is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
    }

    /// [`tile_q4_1`] with AVX-512 VNNI (`vpdpbusd` for the lanes; the same integers).
    ///
    /// # Safety
    /// The CPU must have AVX-512 VNNI, VL and BW ([`has_vnni`]).
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn tile_q4_1_vnni<const RM: usize, const RN: usize>(
        w: [&[u8]; RM],
        a: [&[u8]; RN],
    ) -> [[f32; RN]; RM] {
        const { assert!(RM <= 4 && RN <= 4) };
        let nb = a[0].len() / 36;
        assert!(w.iter().all(|r| r.len() >= nb * 20) && a.iter().all(|r| r.len() >= nb * 36));
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        let mut summs = [[0f32; RN]; RM];
        for b in 0..nb {
            let mut dw = [0u16; 8];
            let mut da = [0u16; 8];
            let mut qx = [_mm256_setzero_si256(); RM];
            for i in 0..RM {
                let wb = w[i].as_ptr().add(b * 20);
                dw[2 * i] = u16::from_le_bytes([*wb, *wb.add(1)]);
                dw[2 * i + 1] = u16::from_le_bytes([*wb.add(2), *wb.add(3)]);
                let tmp = _mm_loadu_si128(wb.add(4) as *const __m128i);
                qx[i] = _mm256_and_si256(
                    _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1),
                    low,
                );
            }
            for j in 0..RN {
                let ab = a[j].as_ptr().add(b * 36);
                da[2 * j] = u16::from_le_bytes([*ab, *ab.add(1)]);
                da[2 * j + 1] = u16::from_le_bytes([*ab.add(2), *ab.add(3)]);
            }
            let dwf = cvt8(dw);
            let daf = cvt8(da);
            let bw: [__m256; RM] = std::array::from_fn(|i| _mm256_set1_ps(dwf[2 * i]));
            for j in 0..RN {
                let qy = _mm256_loadu_si256(a[j].as_ptr().add(b * 36 + 4) as *const __m256i);
                let ba = _mm256_set1_ps(daf[2 * j]);
                for i in 0..RM {
                    summs[i][j] += dwf[2 * i + 1] * daf[2 * j + 1];
                    let lanes = _mm256_dpbusd_epi32(_mm256_setzero_si256(), qx[i], qy);
                    let d0d1 = _mm256_mul_ps(bw[i], ba);
                    acc[i][j] = _mm256_fmadd_ps(d0d1, _mm256_cvtepi32_ps(lanes), acc[i][j]);
                }
            }
        }
        let mut out = [[0f32; RN]; RM];
        for i in 0..RM {
            for j in 0..RN {
                out[i][j] = hsum_float_8(acc[i][j]) + summs[i][j];
            }
        }
        out
    }

    /// [`super::unpack_q0`] with AVX2.
    #[inline]
    pub fn unpack_q0(blk: &[u8], wblock: usize, unpack: super::Unpack, vnni: bool) -> [u8; 32] {
        // SAFETY: AVX2 is enabled at compile time; `load_q0` reads inside the block.
        unsafe {
            let mut q = load_q0(blk, wblock, unpack);
            if vnni {
                q = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
            }
            let mut out = [0u8; 32];
            _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, q);
            out
        }
    }

    /// [`super::tile_q0u`] with AVX2 (signed values; the sign trick of [`dot_q0`]).
    #[inline(always)]
    pub fn tile_q0u<const RM: usize, const RN: usize>(
        qw: [&[super::QBlock]; RM],
        dw: [&[f32]; RM],
        qa: [&[u8]; RN],
        da: [&[f32]; RN],
    ) -> [[f32; RN]; RM] {
        let nb = dw[0].len();
        assert!((0..RM).all(|i| qw[i].len() >= nb && dw[i].len() >= nb));
        assert!((0..RN).all(|j| qa[j].len() >= nb * 34 && da[j].len() >= nb));
        // SAFETY: AVX2 and FMA are enabled at compile time; every index is below the
        // lengths checked above; `QBlock` is 32-byte aligned.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); RN]; RM];
            for b in 0..nb {
                let mut x = [_mm256_setzero_si256(); RM];
                let mut ax = [_mm256_setzero_si256(); RM];
                let mut bw = [_mm256_setzero_ps(); RM];
                for i in 0..RM {
                    x[i] = _mm256_load_si256(qw[i].as_ptr().add(b) as *const __m256i);
                    ax[i] = _mm256_sign_epi8(x[i], x[i]);
                    bw[i] = _mm256_set1_ps(*dw[i].get_unchecked(b));
                }
                for j in 0..RN {
                    let qy = _mm256_loadu_si256(qa[j].as_ptr().add(b * 34 + 2) as *const __m256i);
                    let ba = _mm256_set1_ps(*da[j].get_unchecked(b));
                    for i in 0..RM {
                        let dd = _mm256_mul_ps(bw[i], ba);
                        let sy = _mm256_sign_epi8(qy, x[i]);
                        acc[i][j] =
                            _mm256_fmadd_ps(dd, mul_sum_us8_pairs_float(ax[i], sy), acc[i][j]);
                    }
                }
            }
            std::array::from_fn(|i| std::array::from_fn(|j| hsum_float_8(acc[i][j])))
        }
    }

    /// [`super::tile_q0u`] with AVX-512 VNNI: the values are stored offset by 128, one
    /// `vpdpbusd` forms each lane's four products, and `128 Σ y` per lane (once per
    /// activation block) is taken back; the integers are those of [`dot_q0`].
    ///
    /// # Safety
    /// The CPU must have AVX-512 VNNI, VL and BW ([`has_vnni`]).
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn tile_q0u_vnni<const RM: usize, const RN: usize>(
        qw: [&[super::QBlock]; RM],
        dw: [&[f32]; RM],
        qa: [&[u8]; RN],
        da: [&[f32]; RN],
    ) -> [[f32; RN]; RM] {
        let nb = dw[0].len();
        assert!((0..RM).all(|i| qw[i].len() >= nb && dw[i].len() >= nb));
        assert!((0..RN).all(|j| qa[j].len() >= nb * 34 && da[j].len() >= nb));
        let off = _mm256_set1_epi8(-128);
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        for b in 0..nb {
            let mut x = [_mm256_setzero_si256(); RM];
            let mut bw = [_mm256_setzero_ps(); RM];
            for i in 0..RM {
                x[i] = _mm256_load_si256(qw[i].as_ptr().add(b) as *const __m256i);
                bw[i] = _mm256_set1_ps(*dw[i].get_unchecked(b));
            }
            for j in 0..RN {
                let qy = _mm256_loadu_si256(qa[j].as_ptr().add(b * 34 + 2) as *const __m256i);
                let neg = _mm256_sub_epi32(
                    _mm256_setzero_si256(),
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), off, qy),
                );
                let ba = _mm256_set1_ps(*da[j].get_unchecked(b));
                for i in 0..RM {
                    let lanes = _mm256_dpbusd_epi32(neg, x[i], qy);
                    let dd = _mm256_mul_ps(bw[i], ba);
                    acc[i][j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes), acc[i][j]);
                }
            }
        }
        std::array::from_fn(|i| std::array::from_fn(|j| hsum_float_8(acc[i][j])))
    }

    /// The f16 pairs at the start of two blocks as `[x0, x1, y0, y1]` in f32, converted
    /// together: one conversion of a full register, where converting each value alone
    /// lets the compiler insert it into a live register and chain the loop iterations
    /// on that register.
    #[inline(always)]
    unsafe fn half4(x: &[u8], y: &[u8]) -> __m128 {
        let lo = u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as u64;
        let hi = u32::from_le_bytes([y[0], y[1], y[2], y[3]]) as u64;
        _mm_cvtph_ps(_mm_cvtsi64_si128((lo | hi << 32) as i64))
    }

    /// `[x0, y0, 0, 0]`: the first f16 of each block in f32 (see [`half4`]).
    #[inline(always)]
    unsafe fn half2(x: &[u8], y: &[u8]) -> __m128 {
        let bits = u16::from_le_bytes([x[0], x[1]]) as u32
            | (u16::from_le_bytes([y[0], y[1]]) as u32) << 16;
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
    }

    /// Sum of 8 int32 lanes (exact, any order).
    #[inline]
    unsafe fn hsum_i32_8(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// [`super::q6k_lanes`] with AVX2 (the same integers).
    pub fn q6k_lanes(x: &[u8], y: &[u8]) -> [i32; 8] {
        assert!(x.len() >= 210 && y.len() >= 4 + 256 + 32);
        // SAFETY: AVX2 is enabled at compile time; every load is inside `x` or `y`
        // (lengths checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(3);
            let ql = x.as_ptr();
            let qh = x.as_ptr().add(128);
            let sc = x.as_ptr().add(192) as *const i8;
            let q8 = y.as_ptr().add(4);
            let mut lanes = _mm256_setzero_si256();
            for half in 0..2 {
                let b1 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                let b2 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                let bh = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                let hi = |shift: i32| -> __m256i {
                    let h = match shift {
                        0 => bh,
                        2 => _mm256_srli_epi16(bh, 2),
                        4 => _mm256_srli_epi16(bh, 4),
                        _ => _mm256_srli_epi16(bh, 6),
                    };
                    _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
                };
                let q = [
                    _mm256_or_si256(_mm256_and_si256(b1, m4), hi(0)),
                    _mm256_or_si256(_mm256_and_si256(b2, m4), hi(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), hi(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4), hi(6)),
                ];
                for (v, qv) in q.iter().enumerate() {
                    let e0 = 128 * half + 32 * v;
                    let y8 = _mm256_loadu_si256(q8.add(e0) as *const __m256i);
                    let p = _mm256_maddubs_epi16(*qv, y8);
                    let s = _mm256_set_m128i(
                        _mm_set1_epi16(*sc.add(e0 / 16 + 1) as i16),
                        _mm_set1_epi16(*sc.add(e0 / 16) as i16),
                    );
                    lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p, s));
                }
            }
            let bsums = _mm256_loadu_si256(y.as_ptr().add(4 + 256) as *const __m256i);
            let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
            let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales), 5);
            let mut out = [0i32; 8];
            _mm256_storeu_si256(
                out.as_mut_ptr() as *mut __m256i,
                _mm256_sub_epi32(lanes, sub),
            );
            out
        }
    }

    /// [`super::tile_q4k`]: each super-block's scales, mins and nibbles decoded once for
    /// all `RN` activation rows; per row the integer sums and float operations of
    /// [`super::dot_q4k_repacked`].
    pub fn tile_q4k<const RN: usize>(w: &[u8], a: [&[u8]; RN], gemm: bool) -> [f32; RN] {
        let ab = 4 + 256 + 32;
        let nb = w.len() / 144;
        assert!(a.iter().all(|r| r.len() >= nb * ab));
        // SAFETY: AVX2 and FMA are enabled at compile time; every load is inside a
        // super-block of `w` or of an activation row (lengths checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let mut acc = [0f32; RN];
            let mut acc_min = [0f32; RN];
            for (b, x) in w.chunks_exact(144).enumerate() {
                let d = super::f16_at(x, 0);
                let dmin = super::f16_at(x, 2);
                let (scales, mins) = super::q4k_scales(&x[4..16]);
                let mut q = [_mm256_setzero_si256(); 8];
                let mut sv = [_mm256_setzero_si256(); 8];
                for pair in 0..4 {
                    let v = _mm256_loadu_si256(x.as_ptr().add(16 + 32 * pair) as *const __m256i);
                    q[2 * pair] = _mm256_and_si256(v, m4);
                    q[2 * pair + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                }
                for j in 0..8 {
                    sv[j] = _mm256_set1_epi16(scales[j] as i16);
                }
                let mut m16 = [0i16; 16];
                for j in 0..8 {
                    m16[2 * j] = mins[j] as i16;
                    m16[2 * j + 1] = mins[j] as i16;
                }
                let mv = _mm256_loadu_si256(m16.as_ptr() as *const __m256i);
                for r in 0..RN {
                    let y = a[r].as_ptr().add(b * ab);
                    let dy = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
                    let mut v = [_mm256_setzero_si256(); 4];
                    for (pair, vp) in v.iter_mut().enumerate() {
                        let ya = _mm256_loadu_si256(y.add(4 + 64 * pair) as *const __m256i);
                        let yb = _mm256_loadu_si256(y.add(4 + 64 * pair + 32) as *const __m256i);
                        let sa =
                            _mm256_madd_epi16(_mm256_maddubs_epi16(q[2 * pair], ya), sv[2 * pair]);
                        let sb = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(q[2 * pair + 1], yb),
                            sv[2 * pair + 1],
                        );
                        *vp = _mm256_add_epi32(sa, sb);
                    }
                    // [Σ v0, Σ v1, Σ v2, Σ v3]: the four pair sums.
                    let h = _mm256_hadd_epi32(
                        _mm256_hadd_epi32(v[0], v[1]),
                        _mm256_hadd_epi32(v[2], v[3]),
                    );
                    let ps =
                        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                    let mut psums = [0i32; 4];
                    _mm_storeu_si128(psums.as_mut_ptr() as *mut __m128i, ps);
                    // Sub-block j: min_j (bsum_2j + bsum_2j+1); pairs sum two neighbours.
                    let bs = _mm256_loadu_si256(y.add(4 + 256) as *const __m256i);
                    let mm = _mm256_madd_epi16(bs, mv);
                    let hm = _mm256_hadd_epi32(mm, mm);
                    let mut mlanes = [0i32; 8];
                    _mm256_storeu_si256(mlanes.as_mut_ptr() as *mut __m256i, hm);
                    let pmin = [mlanes[0], mlanes[1], mlanes[4], mlanes[5]];
                    let (dd, dm) = (d * dy, dmin * dy);
                    if gemm {
                        for p in 0..4 {
                            acc[r] = (psums[p] as f32).mul_add(dd, acc[r]);
                            acc_min[r] = (pmin[p] as f32).mul_add(dm, acc_min[r]);
                        }
                    } else {
                        let isum: i32 = psums.iter().sum();
                        let imin: i32 = pmin.iter().sum();
                        acc[r] = (isum as f32).mul_add(dd, acc[r]);
                        acc_min[r] = (imin as f32).mul_add(dm, acc_min[r]);
                    }
                }
            }
            std::array::from_fn(|r| acc[r] - acc_min[r])
        }
    }

    /// [`tile_q4k`] for four activation rows, with the per-row float work done for the
    /// four rows at once: each lane of a 4-wide vector is one row's accumulator, given the
    /// same operands in the same order as the one-row kernel.
    pub fn tile_q4k_x4(w: &[u8], a: [&[u8]; 4], gemm: bool) -> [f32; 4] {
        let ab = 4 + 256 + 32;
        let nb = w.len() / 144;
        assert!(a.iter().all(|r| r.len() >= nb * ab));
        // SAFETY: AVX2 and FMA are enabled at compile time; every load is inside a
        // super-block of `w` or of an activation row (lengths checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let pick = _mm256_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5);
            let mut acc = _mm_setzero_ps();
            let mut acc_min = _mm_setzero_ps();
            for (b, x) in w.chunks_exact(144).enumerate() {
                let d = super::f16_at(x, 0);
                let dmin = super::f16_at(x, 2);
                let (scales, mins) = super::q4k_scales(&x[4..16]);
                let mut q = [_mm256_setzero_si256(); 8];
                for pair in 0..4 {
                    let v = _mm256_loadu_si256(x.as_ptr().add(16 + 32 * pair) as *const __m256i);
                    q[2 * pair] = _mm256_and_si256(v, m4);
                    q[2 * pair + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                }
                let sv: [__m256i; 8] = std::array::from_fn(|j| _mm256_set1_epi16(scales[j] as i16));
                let mut m16 = [0i16; 16];
                for j in 0..8 {
                    m16[2 * j] = mins[j] as i16;
                    m16[2 * j + 1] = mins[j] as i16;
                }
                let mv = _mm256_loadu_si256(m16.as_ptr() as *const __m256i);
                let mut ps = [_mm_setzero_si128(); 4];
                let mut pm = [_mm_setzero_si128(); 4];
                let mut dy = [0f32; 4];
                for r in 0..4 {
                    let y = a[r].as_ptr().add(b * ab);
                    dy[r] = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
                    let mut v = [_mm256_setzero_si256(); 4];
                    for (pair, vp) in v.iter_mut().enumerate() {
                        let ya = _mm256_loadu_si256(y.add(4 + 64 * pair) as *const __m256i);
                        let yb = _mm256_loadu_si256(y.add(4 + 64 * pair + 32) as *const __m256i);
                        let sa =
                            _mm256_madd_epi16(_mm256_maddubs_epi16(q[2 * pair], ya), sv[2 * pair]);
                        let sb = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(q[2 * pair + 1], yb),
                            sv[2 * pair + 1],
                        );
                        *vp = _mm256_add_epi32(sa, sb);
                    }
                    let h = _mm256_hadd_epi32(
                        _mm256_hadd_epi32(v[0], v[1]),
                        _mm256_hadd_epi32(v[2], v[3]),
                    );
                    ps[r] =
                        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                    let bs = _mm256_loadu_si256(y.add(4 + 256) as *const __m256i);
                    let hm = _mm256_hadd_epi32(_mm256_madd_epi16(bs, mv), _mm256_setzero_si256());
                    pm[r] = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(hm, pick));
                }
                // Rows × pairs → pairs × rows.
                let t = |m: [__m128i; 4]| -> [__m128i; 4] {
                    let a01 = _mm_unpacklo_epi32(m[0], m[1]);
                    let a23 = _mm_unpacklo_epi32(m[2], m[3]);
                    let b01 = _mm_unpackhi_epi32(m[0], m[1]);
                    let b23 = _mm_unpackhi_epi32(m[2], m[3]);
                    [
                        _mm_unpacklo_epi64(a01, a23),
                        _mm_unpackhi_epi64(a01, a23),
                        _mm_unpacklo_epi64(b01, b23),
                        _mm_unpackhi_epi64(b01, b23),
                    ]
                };
                let (ps, pm) = (t(ps), t(pm));
                let dyv = _mm_loadu_ps(dy.as_ptr());
                let dd = _mm_mul_ps(_mm_set1_ps(d), dyv);
                let dm = _mm_mul_ps(_mm_set1_ps(dmin), dyv);
                if gemm {
                    for p in 0..4 {
                        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(ps[p]), dd, acc);
                        acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(pm[p]), dm, acc_min);
                    }
                } else {
                    let isum =
                        _mm_add_epi32(_mm_add_epi32(ps[0], ps[1]), _mm_add_epi32(ps[2], ps[3]));
                    let imin =
                        _mm_add_epi32(_mm_add_epi32(pm[0], pm[1]), _mm_add_epi32(pm[2], pm[3]));
                    acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), dd, acc);
                    acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(imin), dm, acc_min);
                }
            }
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, acc_min));
            out
        }
    }

    /// [`super::regroup_q4k`] with AVX2: each sub-block's 32 values of the 8 rows are an
    /// 8 × 8 matrix of 4-byte groups, transposed.
    pub fn regroup_q4k(blocks: [&[u8]; 8], out: &mut [super::QBlock]) {
        assert!(blocks.iter().all(|x| x.len() >= 144) && out.len() >= 64);
        // SAFETY: AVX2 is enabled at compile time; loads are inside the 144-byte blocks,
        // stores inside `out` (lengths checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            for j in 0..8 {
                let mut v = [_mm256_setzero_si256(); 8];
                for (c, x) in blocks.iter().enumerate() {
                    let raw =
                        _mm256_loadu_si256(x.as_ptr().add(16 + 32 * (j / 2)) as *const __m256i);
                    v[c] = if j % 2 == 0 {
                        _mm256_and_si256(raw, m4)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4)
                    };
                }
                let t = transpose8x8_epi32(&v);
                for (g, tv) in t.iter().enumerate() {
                    _mm256_store_si256(out.as_mut_ptr().add(j * 8 + g) as *mut __m256i, *tv);
                }
            }
        }
    }

    /// [`super::regroup_q6k`] with AVX2 (the 6-bit values of [`q6k_lanes`], then the
    /// 8 × 8 transpose of [`regroup_q4k`]).
    pub fn regroup_q6k(blocks: [&[u8]; 8], out: &mut [super::QBlock]) {
        assert!(blocks.iter().all(|x| x.len() >= 210) && out.len() >= 64);
        // SAFETY: AVX2 is enabled at compile time; loads are inside the 210-byte blocks,
        // stores inside `out` (lengths checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(3);
            let mut vals = [[_mm256_setzero_si256(); 8]; 8];
            for (c, x) in blocks.iter().enumerate() {
                let ql = x.as_ptr();
                let qh = x.as_ptr().add(128);
                for half in 0..2 {
                    let b1 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                    let b2 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                    let bh = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                    let hi = |h: __m256i| _mm256_slli_epi16(_mm256_and_si256(h, m2), 4);
                    vals[4 * half][c] = _mm256_or_si256(_mm256_and_si256(b1, m4), hi(bh));
                    vals[4 * half + 1][c] =
                        _mm256_or_si256(_mm256_and_si256(b2, m4), hi(_mm256_srli_epi16(bh, 2)));
                    vals[4 * half + 2][c] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                        hi(_mm256_srli_epi16(bh, 4)),
                    );
                    vals[4 * half + 3][c] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                        hi(_mm256_srli_epi16(bh, 6)),
                    );
                }
            }
            for (chunk, v) in vals.iter().enumerate() {
                let t = transpose8x8_epi32(v);
                for (g, tv) in t.iter().enumerate() {
                    _mm256_store_si256(out.as_mut_ptr().add(chunk * 8 + g) as *mut __m256i, *tv);
                }
            }
        }
    }

    /// 8 × 8 transpose of 32-bit elements: row `c`, element `t` → row `t`, element `c`.
    #[inline(always)]
    unsafe fn transpose8x8_epi32(v: &[__m256i; 8]) -> [__m256i; 8] {
        let a0 = _mm256_unpacklo_epi32(v[0], v[1]);
        let a1 = _mm256_unpackhi_epi32(v[0], v[1]);
        let a2 = _mm256_unpacklo_epi32(v[2], v[3]);
        let a3 = _mm256_unpackhi_epi32(v[2], v[3]);
        let a4 = _mm256_unpacklo_epi32(v[4], v[5]);
        let a5 = _mm256_unpackhi_epi32(v[4], v[5]);
        let a6 = _mm256_unpacklo_epi32(v[6], v[7]);
        let a7 = _mm256_unpackhi_epi32(v[6], v[7]);
        let b0 = _mm256_unpacklo_epi64(a0, a2);
        let b1 = _mm256_unpackhi_epi64(a0, a2);
        let b2 = _mm256_unpacklo_epi64(a1, a3);
        let b3 = _mm256_unpackhi_epi64(a1, a3);
        let b4 = _mm256_unpacklo_epi64(a4, a6);
        let b5 = _mm256_unpackhi_epi64(a4, a6);
        let b6 = _mm256_unpacklo_epi64(a5, a7);
        let b7 = _mm256_unpackhi_epi64(a5, a7);
        [
            _mm256_permute2x128_si256(b0, b4, 0x20),
            _mm256_permute2x128_si256(b1, b5, 0x20),
            _mm256_permute2x128_si256(b2, b6, 0x20),
            _mm256_permute2x128_si256(b3, b7, 0x20),
            _mm256_permute2x128_si256(b0, b4, 0x31),
            _mm256_permute2x128_si256(b1, b5, 0x31),
            _mm256_permute2x128_si256(b2, b6, 0x31),
            _mm256_permute2x128_si256(b3, b7, 0x31),
        ]
    }

    /// [`super::q6k_row_x8`] with AVX2, or AVX-512 VNNI for the integer sums.
    #[inline]
    pub fn q6k_row_x8(g: &super::Q6kGroup, a: &[u8], vnni: bool) -> [f32; 8] {
        if vnni {
            // SAFETY: `vnni` is set only where the CPU has the features.
            unsafe { q6k_row_x8_vnni(g, a) }
        } else {
            // SAFETY: AVX2 is enabled at compile time.
            unsafe { q6k_row_x8_avx2(g, a) }
        }
    }

    macro_rules! q6k_row_x8_body {
        ($g:ident, $a:ident, $dot:expr) => {{
            let ab = 4 + 256 + 32;
            let nb = $a.len() / ab;
            assert!($g.q.len() >= nb * 64 && $g.scales.len() >= nb * 16 && $g.d.len() >= nb);
            let mut acc = _mm256_setzero_ps();
            for b in 0..nb {
                let y = $a.as_ptr().add(b * ab);
                let dy = _mm256_set1_ps(f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]));
                let bs = y.add(4 + 256) as *const i16;
                let mut s = _mm256_setzero_si256();
                let mut sub = _mm256_setzero_si256();
                for grp in 0..16 {
                    let mut sum = _mm256_setzero_si256();
                    for t in 0..4 {
                        let idx = grp * 4 + t;
                        let wq =
                            _mm256_load_si256($g.q.as_ptr().add(b * 64 + idx) as *const __m256i);
                        let a4 =
                            _mm256_set1_epi32((y.add(4 + 4 * idx) as *const i32).read_unaligned());
                        sum = $dot(sum, wq, a4);
                    }
                    let sc =
                        _mm256_loadu_si256($g.scales.as_ptr().add(b * 16 + grp) as *const __m256i);
                    s = _mm256_add_epi32(s, _mm256_mullo_epi32(sum, sc));
                    sub = _mm256_add_epi32(
                        sub,
                        _mm256_mullo_epi32(sc, _mm256_set1_epi32(*bs.add(grp) as i32)),
                    );
                }
                let s1 = _mm256_sub_epi32(s, _mm256_slli_epi32(sub, 5));
                let r = _mm256_mul_ps(_mm256_cvtepi32_ps(s1), _mm256_loadu_ps($g.d[b].as_ptr()));
                acc = _mm256_fmadd_ps(r, dy, acc);
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), acc);
            out
        }};
    }

    /// # Safety
    /// AVX2 and FMA (enabled at compile time).
    #[inline]
    unsafe fn q6k_row_x8_avx2(g: &super::Q6kGroup, a: &[u8]) -> [f32; 8] {
        // Unsigned 6-bit × signed 8-bit: the pair sums stay inside i16 (2 · 63 · 128).
        let ones = _mm256_set1_epi16(1);
        q6k_row_x8_body!(g, a, |s, w, y| _mm256_add_epi32(
            s,
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), ones)
        ))
    }

    /// # Safety
    /// The CPU must have AVX-512 VNNI, VL and BW ([`has_vnni`]).
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
    unsafe fn q6k_row_x8_vnni(g: &super::Q6kGroup, a: &[u8]) -> [f32; 8] {
        q6k_row_x8_body!(g, a, |s, w, y| _mm256_dpbusd_epi32(s, w, y))
    }

    /// [`super::q4k_row_x8`] with AVX2, or AVX-512 VNNI for the integer sums.
    #[inline]
    pub fn q4k_row_x8(g: &super::Q4kGroup, a: &[u8], gemm: bool, vnni: bool) -> [f32; 8] {
        if vnni {
            // SAFETY: `vnni` is set only where the CPU has the features.
            unsafe { q4k_row_x8_vnni(g, a, gemm) }
        } else {
            // SAFETY: AVX2 is enabled at compile time.
            unsafe { q4k_row_x8_avx2(g, a, gemm) }
        }
    }

    macro_rules! q4k_row_x8_body {
        ($g:ident, $a:ident, $gemm:ident, $dot:expr) => {{
            let ab = 4 + 256 + 32;
            let nb = $a.len() / ab;
            assert!($g.q.len() >= nb * 64 && $g.scales.len() >= nb * 8 && $g.d.len() >= nb);
            let mut acc = _mm256_setzero_ps();
            let mut acc_min = _mm256_setzero_ps();
            for b in 0..nb {
                let y = $a.as_ptr().add(b * ab);
                let dy = _mm256_set1_ps(f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]));
                let bs = y.add(4 + 256) as *const i16;
                let mut ps = [_mm256_setzero_si256(); 4];
                let mut pm = [_mm256_setzero_si256(); 4];
                for j in 0..8 {
                    let mut sum = _mm256_setzero_si256();
                    for t in 0..8 {
                        let wq = _mm256_load_si256(
                            $g.q.as_ptr().add(b * 64 + j * 8 + t) as *const __m256i
                        );
                        let a4 = _mm256_set1_epi32(
                            (y.add(4 + 32 * j + 4 * t) as *const i32).read_unaligned(),
                        );
                        sum = $dot(sum, wq, a4);
                    }
                    let sc =
                        _mm256_loadu_si256($g.scales.as_ptr().add(b * 8 + j) as *const __m256i);
                    let mn = _mm256_loadu_si256($g.mins.as_ptr().add(b * 8 + j) as *const __m256i);
                    let bsum = *bs.add(2 * j) as i32 + *bs.add(2 * j + 1) as i32;
                    ps[j / 2] = _mm256_add_epi32(ps[j / 2], _mm256_mullo_epi32(sum, sc));
                    pm[j / 2] = _mm256_add_epi32(
                        pm[j / 2],
                        _mm256_mullo_epi32(mn, _mm256_set1_epi32(bsum)),
                    );
                }
                let dd = _mm256_mul_ps(_mm256_loadu_ps($g.d[b].as_ptr()), dy);
                let dm = _mm256_mul_ps(_mm256_loadu_ps($g.dmin[b].as_ptr()), dy);
                if $gemm {
                    for p in 0..4 {
                        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ps[p]), dd, acc);
                        acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pm[p]), dm, acc_min);
                    }
                } else {
                    let is = _mm256_add_epi32(
                        _mm256_add_epi32(ps[0], ps[1]),
                        _mm256_add_epi32(ps[2], ps[3]),
                    );
                    let im = _mm256_add_epi32(
                        _mm256_add_epi32(pm[0], pm[1]),
                        _mm256_add_epi32(pm[2], pm[3]),
                    );
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), dd, acc);
                    acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(im), dm, acc_min);
                }
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc, acc_min));
            out
        }};
    }

    /// # Safety
    /// AVX2 and FMA (enabled at compile time).
    #[inline]
    unsafe fn q4k_row_x8_avx2(g: &super::Q4kGroup, a: &[u8], gemm: bool) -> [f32; 8] {
        // Unsigned 4-bit × signed 8-bit: the pair sums stay far inside i16.
        let ones = _mm256_set1_epi16(1);
        q4k_row_x8_body!(g, a, gemm, |s, w, y| _mm256_add_epi32(
            s,
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), ones)
        ))
    }

    /// # Safety
    /// The CPU must have AVX-512 VNNI, VL and BW ([`has_vnni`]).
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
    unsafe fn q4k_row_x8_vnni(g: &super::Q4kGroup, a: &[u8], gemm: bool) -> [f32; 8] {
        q4k_row_x8_body!(g, a, gemm, |s, w, y| _mm256_dpbusd_epi32(s, w, y))
    }

    /// [`super::tile_q6k`]: each super-block's 6-bit values and scales decoded once for
    /// all `RN` activation rows; per row the exact integer total of
    /// [`super::q6k_lanes`] and the float operations of [`super::dot_q6k_tiled`].
    pub fn tile_q6k<const RN: usize>(w: &[u8], a: [&[u8]; RN]) -> [f32; RN] {
        let ab = 4 + 256 + 32;
        let nb = w.len() / 210;
        assert!(a.iter().all(|r| r.len() >= nb * ab));
        // SAFETY: as above.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(3);
            let mut acc = [0f32; RN];
            for (b, x) in w.chunks_exact(210).enumerate() {
                let dx = super::f16_at(x, 208);
                let ql = x.as_ptr();
                let qh = x.as_ptr().add(128);
                let sc = x.as_ptr().add(192) as *const i8;
                let mut q = [_mm256_setzero_si256(); 8];
                let mut sv = [_mm256_setzero_si256(); 8];
                for half in 0..2 {
                    let b1 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                    let b2 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                    let bh = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                    let hi = |h: __m256i| _mm256_slli_epi16(_mm256_and_si256(h, m2), 4);
                    q[4 * half] = _mm256_or_si256(_mm256_and_si256(b1, m4), hi(bh));
                    q[4 * half + 1] =
                        _mm256_or_si256(_mm256_and_si256(b2, m4), hi(_mm256_srli_epi16(bh, 2)));
                    q[4 * half + 2] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                        hi(_mm256_srli_epi16(bh, 4)),
                    );
                    q[4 * half + 3] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                        hi(_mm256_srli_epi16(bh, 6)),
                    );
                    for v in 0..4 {
                        let g = (128 * half + 32 * v) / 16;
                        sv[4 * half + v] = _mm256_set_m128i(
                            _mm_set1_epi16(*sc.add(g + 1) as i16),
                            _mm_set1_epi16(*sc.add(g) as i16),
                        );
                    }
                }
                let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
                for r in 0..RN {
                    let y = a[r].as_ptr().add(b * ab);
                    let dy = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
                    let mut lanes = _mm256_setzero_si256();
                    for v in 0..8 {
                        let y8 = _mm256_loadu_si256(y.add(4 + 32 * v) as *const __m256i);
                        let p = _mm256_maddubs_epi16(q[v], y8);
                        lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p, sv[v]));
                    }
                    let bsums = _mm256_loadu_si256(y.add(4 + 256) as *const __m256i);
                    let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
                    let s1 = hsum_i32_8(_mm256_sub_epi32(lanes, sub));
                    let rr = s1 as f32 * dx;
                    acc[r] = rr.mul_add(dy, acc[r]);
                }
            }
            acc
        }
    }

    /// [`super::q4k_pair_sums`] with AVX2 (the same integers).
    pub fn q4k_pair_sums(x: &[u8], y: &[u8], scales: &[i32; 8]) -> [i32; 4] {
        assert!(x.len() >= 144 && y.len() >= 4 + 256);
        // SAFETY: as above.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let qs = x.as_ptr().add(16);
            let q8 = y.as_ptr().add(4);
            let mut out = [0i32; 4];
            for (pair, o) in out.iter_mut().enumerate() {
                let q = _mm256_loadu_si256(qs.add(32 * pair) as *const __m256i);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                let ya = _mm256_loadu_si256(q8.add(64 * pair) as *const __m256i);
                let yb = _mm256_loadu_si256(q8.add(64 * pair + 32) as *const __m256i);
                let sa = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, ya),
                    _mm256_set1_epi16(scales[2 * pair] as i16),
                );
                let sb = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, yb),
                    _mm256_set1_epi16(scales[2 * pair + 1] as i16),
                );
                *o = hsum_i32_8(_mm256_add_epi32(sa, sb));
            }
            out
        }
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
mod simd {
    pub(super) use super::{
        dot_q0, dot_q4_1, q4k_pair_sums, q4k_row_x8, q6k_lanes, q6k_row_x8, regroup_q4k,
        regroup_q6k, tile_q4_1, tile_q4k, tile_q4k_x4, tile_q6k, unpack_q0,
    };
}

/// Q4_K / Q6_K through ggml's tiled K-quant matmul (`ggml-cpu/tiled`, AVX-512 VNNI
/// micro-kernel), which llama.cpp uses for batches of at least 8 rows when the weight is
/// not repacked: per super-block the exact integer sums `s1 = Σ scale Σ q q8` (and
/// `s2 = Σ min bsum`) give `r = s1 * d_w` (`r = fnmadd(dmin_w, s2, r)` with mins), and
/// `acc += r * d_a`.
fn dot_q6k_tiled(w: &[u8], a: &[u8]) -> f32 {
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

fn dot_q4k_tiled(w: &[u8], a: &[u8]) -> f32 {
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

/// The four unsigned 6-bit Q6_K values (0..64) at position `l` of a 128-value half
/// block: from `ql[l]`, `ql[l + 32]` (low and high nibbles) and the bit pairs of `qh[l]`.
#[inline(always)]
fn q6k_quads(ql: &[u8], qh: &[u8], l: usize) -> [i32; 4] {
    let h = qh[l] as i32;
    [
        (ql[l] & 0x0f) as i32 | ((h & 3) << 4),
        (ql[l + 32] & 0x0f) as i32 | (((h >> 2) & 3) << 4),
        (ql[l] >> 4) as i32 | (((h >> 4) & 3) << 4),
        (ql[l + 32] >> 4) as i32 | (((h >> 6) & 3) << 4),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no extra dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn f(&mut self) -> f32 {
            self.next() as f32 / u32::MAX as f32 * 2.0 - 1.0
        }
    }

    fn random_blocks(rng: &mut Lcg, n: usize, block: usize, d_off: &[usize]) -> Vec<u8> {
        let mut v: Vec<u8> = (0..n * block).map(|_| rng.next() as u8).collect();
        for b in 0..n {
            for &o in d_off {
                let d = f16::from_f32(rng.f() * 0.01).to_bits().to_le_bytes();
                v[b * block + o..b * block + o + 2].copy_from_slice(&d);
            }
        }
        v
    }

    #[test]
    fn simd_dots_equal_scalar_dots() {
        let mut rng = Lcg(7);
        let k = 512;
        let xs: Vec<f32> = (0..k).map(|_| rng.f() * 3.0).collect();
        let mut a1 = vec![0u8; k / 32 * 36];
        quantize_q8_0_or_1(&xs, &mut a1, true);
        let mut a0 = vec![0u8; k / 32 * 34];
        quantize_q8_0_or_1(&xs, &mut a0, false);
        for _ in 0..20 {
            let w = random_blocks(&mut rng, k / 32, 20, &[0, 2]);
            assert_eq!(
                simd::dot_q4_1(&w, &a1).to_bits(),
                dot_q4_1(&w, &a1).to_bits()
            );
            let w = random_blocks(&mut rng, k / 32, 22, &[0]);
            assert_eq!(
                simd::dot_q0(&w, &a0, 22, unpack_q5_0).to_bits(),
                dot_q0(&w, &a0, 22, unpack_q5_0).to_bits()
            );
            let w = random_blocks(&mut rng, k / 32, 34, &[0]);
            assert_eq!(
                simd::dot_q0(&w, &a0, 34, unpack_q8_0).to_bits(),
                dot_q0(&w, &a0, 34, unpack_q8_0).to_bits()
            );
            let w = random_blocks(&mut rng, k / 32, 18, &[0]);
            assert_eq!(
                simd::dot_q0(&w, &a0, 18, unpack_q4_0).to_bits(),
                dot_q0(&w, &a0, 18, unpack_q4_0).to_bits()
            );
        }
    }

    #[test]
    fn prefill_tiles_equal_pairwise_dots() {
        // Shapes that leave partial tiles on both sides (9 weight rows, 7 activation rows).
        let mut rng = Lcg(13);
        let (k, n, m) = (96, 9, 7);
        let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 3.0).collect();
        let mut act = vec![0u8; m * k / 32 * 34];
        quantize_q8_0_or_1(&xs, &mut act, false);
        let formats: [(usize, Unpack); 3] =
            [(18, unpack_q4_0), (22, unpack_q5_0), (34, unpack_q8_0)];
        for (wblock, unpack) in formats {
            let w = random_blocks(&mut rng, n * k / 32, wblock, &[0]);
            for vnni in [false, has_vnni()] {
                let mut dst = vec![0f32; m * n];
                dot_tiles_q0(&w, &act, m, k, n, wblock, unpack, vnni, &mut dst);
                let (wrow, arow) = (k / 32 * wblock, k / 32 * 34);
                for r in 0..m {
                    for c in 0..n {
                        let wc = &w[c * wrow..(c + 1) * wrow];
                        let ar = &act[r * arow..(r + 1) * arow];
                        let want = dot_q0(wc, ar, wblock, unpack);
                        let got = dst[r * n + c];
                        assert_eq!(got.to_bits(), want.to_bits(), "{wblock} {vnni} ({r}, {c})");
                        // The portable tile gives the same bits.
                        let qs: Vec<QBlock> = wc
                            .chunks_exact(wblock)
                            .map(|b| QBlock(unpack_q0(b, wblock, unpack, false)))
                            .collect();
                        let ds: Vec<f32> = wc.chunks_exact(wblock).map(|b| f16_at(b, 0)).collect();
                        let da: Vec<f32> = ar.chunks_exact(34).map(|b| f16_at(b, 0)).collect();
                        let scalar = tile_q0u_scalar([&qs[..]], [&ds[..]], [ar], [&da[..]]);
                        assert_eq!(scalar[0][0].to_bits(), want.to_bits());
                    }
                }
            }
        }
        let mut act1 = vec![0u8; m * k / 32 * 36];
        quantize_q8_0_or_1(&xs, &mut act1, true);
        let w = random_blocks(&mut rng, n * k / 32, 20, &[0, 2]);
        for vnni in [false, has_vnni()] {
            let mut dst = vec![0f32; m * n];
            dot_tiles_32(&w, &act1, m, k, n, &mut dst, &Q41Tiles { vnni });
            let (wrow, arow) = (k / 32 * 20, k / 32 * 36);
            for r in 0..m {
                for c in 0..n {
                    let wc = &w[c * wrow..(c + 1) * wrow];
                    let want = dot_q4_1(wc, &act1[r * arow..(r + 1) * arow]);
                    let got = dst[r * n + c];
                    assert_eq!(got.to_bits(), want.to_bits(), "Q4_1 {vnni} ({r}, {c})");
                }
            }
        }
    }

    /// Q8_K activations of a random row of `k` values.
    fn q8k_row(rng: &mut Lcg, k: usize) -> Vec<u8> {
        let xs: Vec<f32> = (0..k).map(|_| rng.f() * 3.0).collect();
        let mut a = vec![0u8; k / QK_K * act_block_bytes(ActFormat::Q8K)];
        quantize_q8k(&xs, &mut a);
        a
    }

    #[test]
    fn simd_k_quant_sums_equal_scalar_sums() {
        let mut rng = Lcg(11);
        let ab = act_block_bytes(ActFormat::Q8K);
        for _ in 0..50 {
            let a = q8k_row(&mut rng, QK_K);
            let x6 = random_blocks(&mut rng, 1, 210, &[208]);
            assert_eq!(simd::q6k_lanes(&x6, &a[..ab]), q6k_lanes(&x6, &a[..ab]));
            let x4 = random_blocks(&mut rng, 1, 144, &[0, 2]);
            let (scales, _) = q4k_scales(&x4[4..16]);
            assert_eq!(
                simd::q4k_pair_sums(&x4, &a[..ab], &scales),
                q4k_pair_sums(&x4, &a[..ab], &scales)
            );
        }
    }

    #[test]
    fn k_quant_tiles_equal_pairwise_dots() {
        let mut rng = Lcg(17);
        let k = 2 * QK_K;
        let ab = act_block_bytes(ActFormat::Q8K);
        for _ in 0..20 {
            let rows: Vec<Vec<u8>> = (0..4).map(|_| q8k_row(&mut rng, k)).collect();
            let a: [&[u8]; 4] = std::array::from_fn(|j| &rows[j][..k / QK_K * ab]);
            let w4 = random_blocks(&mut rng, k / QK_K, 144, &[0, 2]);
            for gemm in [false, true] {
                assert_eq!(
                    simd::tile_q4k_x4(&w4, a, gemm),
                    simd::tile_q4k(&w4, a, gemm)
                );
                let got = simd::tile_q4k(&w4, a, gemm);
                for j in 0..4 {
                    assert_eq!(
                        got[j].to_bits(),
                        dot_q4k_repacked(&w4, a[j], gemm).to_bits()
                    );
                }
            }
            let w6 = random_blocks(&mut rng, k / QK_K, 210, &[208]);
            let got = simd::tile_q6k(&w6, a);
            for j in 0..4 {
                assert_eq!(got[j].to_bits(), dot_q6k_tiled(&w6, a[j]).to_bits());
            }
        }
    }

    #[test]
    fn k_quant_prefill_matmul_keeps_the_row_kernels() {
        // 9 rows: Q4_K has two gemm groups of 4 and one gemv row; Q6_K is tiled (m >= 8).
        let mut rng = Lcg(19);
        let (k, n, m) = (2 * QK_K, 8, 9);
        let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 2.0).collect();
        let ab = act_block_bytes(ActFormat::Q8K);
        let mut act = vec![0u8; m * k / QK_K * ab];
        quantize_q8k(&xs, &mut act);
        let arow = |r: usize| &act[r * k / QK_K * ab..(r + 1) * k / QK_K * ab];
        for wblock in [144, 210] {
            let dmin: &[usize] = if wblock == 144 { &[0, 2] } else { &[208] };
            let bytes = random_blocks(&mut rng, n * k / QK_K, wblock, dmin);
            // Block structs need their alignment: copy into u64 storage.
            let mut store = vec![0u64; bytes.len().div_ceil(8)];
            // SAFETY: `store` holds at least `bytes.len()` bytes.
            let w: &mut [u8] = unsafe {
                std::slice::from_raw_parts_mut(store.as_mut_ptr() as *mut u8, bytes.len())
            };
            w.copy_from_slice(&bytes);
            let mut dst = vec![0f32; m * n];
            if wblock == 144 {
                run::<BlockQ4K>(w, &xs, m, k, n, &mut dst).unwrap();
            } else {
                run::<BlockQ6K>(w, &xs, m, k, n, &mut dst).unwrap();
            }
            let wrow = k / QK_K * wblock;
            for r in 0..m {
                for c in 0..n {
                    let wc = &w[c * wrow..(c + 1) * wrow];
                    let want = if wblock == 144 {
                        dot_q4k_repacked(wc, arow(r), r < 8)
                    } else {
                        dot_q6k_tiled(wc, arow(r))
                    };
                    assert_eq!(
                        dst[r * n + c].to_bits(),
                        want.to_bits(),
                        "{wblock} ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    fn interleaved_q4k_equals_the_row_kernels() {
        // 18 rows: four gemm groups of 4 and two gemv rows; 16 weight rows (two groups).
        let mut rng = Lcg(23);
        let (k, n, m) = (2 * QK_K, 16, 18);
        let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 2.0).collect();
        let ab = act_block_bytes(ActFormat::Q8K);
        let arow = k / QK_K * ab;
        let mut act = vec![0u8; m * arow];
        quantize_q8k(&xs, &mut act);
        let w = random_blocks(&mut rng, n * k / QK_K, 144, &[0, 2]);
        let wrow = k / QK_K * 144;
        for vnni in [false, has_vnni()] {
            let mut dst = vec![0f32; m * n];
            dot_q4k_interleaved(&w, &act, m, k, n, &mut dst, vnni);
            for r in 0..m {
                for c in 0..n {
                    let wc = &w[c * wrow..(c + 1) * wrow];
                    let want = dot_q4k_repacked(wc, &act[r * arow..(r + 1) * arow], r < 16);
                    let got = dst[r * n + c];
                    assert_eq!(got.to_bits(), want.to_bits(), "{vnni} ({r}, {c})");
                }
            }
        }
        // The portable versions agree.
        let blocks: [&[u8]; 8] = std::array::from_fn(|c| &w[c * wrow..c * wrow + 144]);
        let mut simd_q = vec![QBlock([0; 32]); 64];
        let mut plain_q = vec![QBlock([0; 32]); 64];
        simd::regroup_q4k(blocks, &mut simd_q);
        regroup_q4k(blocks, &mut plain_q);
        assert!(simd_q.iter().zip(&plain_q).all(|(a, b)| a.0 == b.0));
        let mut g = Q4kGroup {
            q: plain_q,
            scales: vec![[0; 8]; 8],
            mins: vec![[0; 8]; 8],
            d: vec![[0.0; 8]],
            dmin: vec![[0.0; 8]],
        };
        for (c, x) in blocks.iter().enumerate() {
            g.d[0][c] = f16_at(x, 0);
            g.dmin[0][c] = f16_at(x, 2);
            let (scales, mins) = q4k_scales(&x[4..16]);
            for j in 0..8 {
                g.scales[j][c] = scales[j];
                g.mins[j][c] = mins[j];
            }
        }
        for gemm in [false, true] {
            let a = &act[..ab];
            let want = simd::q4k_row_x8(&g, a, gemm, false);
            assert_eq!(q4k_row_x8(&g, a, gemm, false), want);
        }
    }

    #[test]
    fn interleaved_q6k_equals_the_tiled_kernel() {
        let mut rng = Lcg(29);
        let (k, n, m) = (2 * QK_K, 16, 17);
        let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 2.0).collect();
        let ab = act_block_bytes(ActFormat::Q8K);
        let arow = k / QK_K * ab;
        let mut act = vec![0u8; m * arow];
        quantize_q8k(&xs, &mut act);
        let w = random_blocks(&mut rng, n * k / QK_K, 210, &[208]);
        let wrow = k / QK_K * 210;
        for vnni in [false, has_vnni()] {
            let mut dst = vec![0f32; m * n];
            dot_q6k_interleaved(&w, &act, m, k, n, &mut dst, vnni);
            for r in 0..m {
                for c in 0..n {
                    let wc = &w[c * wrow..(c + 1) * wrow];
                    let want = dot_q6k_tiled(wc, &act[r * arow..(r + 1) * arow]);
                    let got = dst[r * n + c];
                    assert_eq!(got.to_bits(), want.to_bits(), "{vnni} ({r}, {c})");
                }
            }
        }
        // The portable versions agree.
        let blocks: [&[u8]; 8] = std::array::from_fn(|c| &w[c * wrow..c * wrow + 210]);
        let mut simd_q = vec![QBlock([0; 32]); 64];
        let mut plain_q = vec![QBlock([0; 32]); 64];
        simd::regroup_q6k(blocks, &mut simd_q);
        regroup_q6k(blocks, &mut plain_q);
        assert!(simd_q.iter().zip(&plain_q).all(|(a, b)| a.0 == b.0));
        let mut g = Q6kGroup {
            q: plain_q,
            scales: vec![[0; 8]; 16],
            d: vec![[0.0; 8]],
        };
        for (c, x) in blocks.iter().enumerate() {
            g.d[0][c] = f16_at(x, 208);
            for j in 0..16 {
                g.scales[j][c] = x[192 + j] as i8 as i32;
            }
        }
        let a = &act[..ab];
        assert_eq!(q6k_row_x8(&g, a, false), simd::q6k_row_x8(&g, a, false));
    }

    #[test]
    fn q6k_lane_total_is_the_tiled_kernels_sum() {
        // The tiled kernel sums scale * (q - 32) * q8 directly; the lanes subtract the
        // 32 * scale * bsum terms instead. Both are the same integer.
        let mut rng = Lcg(5);
        let ab = act_block_bytes(ActFormat::Q8K);
        for _ in 0..50 {
            let a = q8k_row(&mut rng, QK_K);
            let x = random_blocks(&mut rng, 1, 210, &[208]);
            let (ql, qh, sc, q8) = (&x[0..128], &x[128..192], &x[192..208], &a[4..4 + QK_K]);
            let mut direct = 0i32;
            for half in 0..2 {
                for l in 0..32 {
                    let vals = q6k_quads(&ql[64 * half..], &qh[32 * half..], l);
                    for (v, &q) in vals.iter().enumerate() {
                        let e = 128 * half + 32 * v + l;
                        direct += (sc[e / 16] as i8 as i32) * (q - 32) * (q8[e] as i8 as i32);
                    }
                }
            }
            assert_eq!(q6k_lanes(&x, &a[..ab]).iter().sum::<i32>(), direct);
        }
    }

    #[test]
    fn q8_1_matches_ggml_rounding() {
        // 127 / amax scaling, ties to even, s = f16(d * Σq).
        let mut xs = vec![0f32; 32];
        xs[0] = 127.0;
        xs[1] = 2.5;
        xs[2] = -3.5;
        xs[3] = 1.0;
        let mut out = vec![0u8; 36];
        quantize_q8_0_or_1(&xs, &mut out, true);
        assert_eq!(out[4] as i8, 127);
        assert_eq!(out[5] as i8, 2);
        assert_eq!(out[6] as i8, -4);
        assert_eq!(f16_at(&out, 2), 127.0 + 2.0 - 4.0 + 1.0);
    }
}
