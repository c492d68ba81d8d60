//! Activation quantization exactly as ggml does it (see the module docs of `quant`): each
//! row of `x` becomes the block format its weight format is multiplied with.

use candle_core::quantized::k_quants::{GgmlType, QK_K};
use candle_core::quantized::GgmlDType;
use half::f16;

/// The activation block format a weight format is multiplied with (ggml's `vec_dot_type`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ActFormat {
    Q8_0,
    Q8_1,
    Q8K,
}

/// The activation format of weight format `d`; `None` for formats this path leaves to
/// candle.
pub(super) fn act_format(d: GgmlDType) -> Option<ActFormat> {
    Some(match d {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => ActFormat::Q8_0,
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => ActFormat::Q8_1,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
            ActFormat::Q8K
        }
        _ => return None,
    })
}

pub(super) fn act_format_of<T: GgmlType>() -> ActFormat {
    match act_format(T::DTYPE) {
        Some(f) => f,
        None => unreachable!("no activation format for {:?}", T::DTYPE),
    }
}

/// Bytes of one activation block (the layout of candle's `#[repr(C)]` block structs, which
/// is ggml's).
pub(super) fn act_block_bytes(f: ActFormat) -> usize {
    match f {
        ActFormat::Q8_0 => 34,
        ActFormat::Q8_1 => 36,
        ActFormat::Q8K => 4 + QK_K + QK_K / 16 * 2,
    }
}

/// ggml's `quantize_row_q8_0` / `quantize_row_q8_1` (x86 AVX2 path): `d = amax / 127`,
/// `q = round_half_even(x * (127 / amax))`, and for Q8_1 `s = f16(d * Σq)`.
pub(super) fn quantize_q8_0_or_1(xs: &[f32], out: &mut [u8], with_sum: bool) {
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
pub(super) fn quantize_q8k(xs: &[f32], out: &mut [u8]) {
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

/// Quantizes the `m` rows of `xs` (`k` values each, `row_bytes` once quantized) to `fmt`
/// in this thread's scratch buffer and hands the bytes to `f`. The buffer is kept between
/// calls: a decode step quantizes a few hundred rows and would otherwise allocate for each.
pub(super) fn with_quantized<R>(
    fmt: ActFormat,
    xs: &[f32],
    m: usize,
    k: usize,
    row_bytes: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    ACT_SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let need = (m * row_bytes).div_ceil(8);
        if scratch.len() < need {
            scratch.resize(need, 0);
        }
        // SAFETY: u64 storage is aligned for every activation block type (align ≤ 4) and
        // holds `need * 8 >= m * row_bytes` bytes.
        let bytes: &mut [u8] = unsafe {
            std::slice::from_raw_parts_mut(scratch.as_mut_ptr() as *mut u8, m * row_bytes)
        };
        quantize_rows(fmt, xs, m, k, row_bytes, bytes);
        f(bytes)
    })
}

/// Quantizes the `m` rows of `xs` (`k` values each) into their `row_bytes` of `bytes`.
fn quantize_rows(
    fmt: ActFormat,
    xs: &[f32],
    m: usize,
    k: usize,
    row_bytes: usize,
    bytes: &mut [u8],
) {
    let quantize = |r: usize, out: &mut [u8]| {
        let row = &xs[r * k..(r + 1) * k];
        match fmt {
            ActFormat::Q8_0 => quantize_q8_0_or_1(row, out, false),
            ActFormat::Q8_1 => quantize_q8_0_or_1(row, out, true),
            ActFormat::Q8K => quantize_q8k(row, out),
        }
    };
    if m >= 8 {
        // A prompt's rows are quantized on every thread (each row alone).
        let base = bytes.as_mut_ptr() as usize;
        crate::pool::for_ranges(m, 1, &|rows| {
            for r in rows {
                // SAFETY: row `r` owns bytes `r * row_bytes..(r + 1) * row_bytes` of `bytes`.
                let out = unsafe {
                    std::slice::from_raw_parts_mut((base as *mut u8).add(r * row_bytes), row_bytes)
                };
                quantize(r, out);
            }
        });
    } else {
        for (r, out) in bytes.chunks_exact_mut(row_bytes).enumerate() {
            quantize(r, out);
        }
    }
}
