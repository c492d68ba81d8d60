//! The kernels on AVX-512 VNNI (with VL and BW) over 256-bit vectors: one `vpdpbusd`
//! sums each lane's four byte products, where AVX2 chains `maddubs` and `madd`. Built on
//! the AVX2 set and chosen at run time where the CPU has the features (`has_vnni` in
//! `mod.rs`); every kernel forms the integers of its AVX2 twin, so the same bits.

use super::avx2::{cvt8, hsum_float_8, nibbles, q4k_row_x8_body, q6k_row_x8_body};
use super::blocks::{Q4kGroup, Q6kGroup, QBlock};
use std::arch::x86_64::*;

/// [`super::avx2::tile_q4_1`] with AVX-512 VNNI (`vpdpbusd` for the lanes; the same integers).
///
/// # Safety
/// The CPU must have AVX-512 VNNI, VL and BW (the `avx512-vnni` kernel set).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_q4_1<const RM: usize, const RN: usize>(
    w: [&[u8]; RM],
    a: [&[u8]; RN],
) -> [[f32; RN]; RM] {
    const { assert!(RM <= 4 && RN <= 4) };
    let nb = a[0].len() / 36;
    assert!(w.iter().all(|r| r.len() >= nb * 20) && a.iter().all(|r| r.len() >= nb * 36));
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
            qx[i] = nibbles(wb.add(4));
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

/// [`super::avx2::tile_q0u`] with AVX-512 VNNI: the values are stored offset by 128, one
/// `vpdpbusd` forms each lane's four products, and `128 Σ y` per lane (once per
/// activation block) is taken back; the integers are those of [`super::avx2::dot_q0`].
///
/// # Safety
/// The CPU must have AVX-512 VNNI, VL and BW (the `avx512-vnni` kernel set).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_q0u<const RM: usize, const RN: usize>(
    qw: [&[QBlock]; RM],
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

/// [`super::avx2::q6k_row_x8`] with `vpdpbusd` for the integer sums.
///
/// # Safety
/// The CPU must have AVX-512 VNNI, VL and BW (the `avx512-vnni` kernel set).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn q6k_row_x8(g: &Q6kGroup, a: &[u8]) -> [f32; 8] {
    q6k_row_x8_body!(g, a, |s, w, y| _mm256_dpbusd_epi32(s, w, y))
}

/// [`super::avx2::q4k_row_x8`] with `vpdpbusd` for the integer sums.
///
/// # Safety
/// The CPU must have AVX-512 VNNI, VL and BW (the `avx512-vnni` kernel set).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn q4k_row_x8(g: &Q4kGroup, a: &[u8], gemm: bool) -> [f32; 8] {
    q4k_row_x8_body!(g, a, gemm, |s, w, y| _mm256_dpbusd_epi32(s, w, y))
}
