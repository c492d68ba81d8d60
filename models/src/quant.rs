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
        act_format(w.dtype()).is_some() && k % w.dtype().block_size() == 0
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
        let mut dst = vec![0f32; m * self.n];
        let data = self.w.data()?;
        match self.w.dtype() {
            GgmlDType::Q4_0 => run::<BlockQ4_0>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q4_1 => run::<BlockQ4_1>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q5_0 => run::<BlockQ5_0>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q5_1 => run::<BlockQ5_1>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q8_0 => run::<BlockQ8_0>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q2K => run::<BlockQ2K>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q3K => run::<BlockQ3K>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q4K => run::<BlockQ4K>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q5K => run::<BlockQ5K>(&data, &xs, m, k, self.n, &mut dst)?,
            GgmlDType::Q6K => run::<BlockQ6K>(&data, &xs, m, k, self.n, &mut dst)?,
            d => candle_core::bail!("quantized matmul: unsupported format {d:?}"),
        }
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
    if data.as_ptr() as usize % std::mem::align_of::<T>() != 0 {
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
        for r in 0..m {
            let row = &xs[r * k..(r + 1) * k];
            let out = &mut bytes[r * akb * abytes..(r + 1) * akb * abytes];
            match fmt {
                ActFormat::Q8_0 => quantize_q8_0_or_1(row, out, false),
                ActFormat::Q8_1 => quantize_q8_0_or_1(row, out, true),
                ActFormat::Q8K => quantize_q8k(row, out),
            }
        }
        // SAFETY: every byte was written with the `#[repr(C)]` layout of `T::VecDotType`
        // (size checked above); all bit patterns of its fields are valid.
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
    let pool = candle_core::utils::barrier_pool();
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
    pool.execute_chunked(tiles * quads, |range| {
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
