//! The one-row (decode) kernels of the 32-value formats on 512-bit vectors, with and
//! without VNNI. A 512-bit register holds the 8 lanes of two weight rows side by side
//! (row `c` in lanes 0–7, row `c + 1` in lanes 8–15) against the same activation row, so
//! each instruction does the work of two AVX2 ones while every lane sees the integer sums
//! and the float operations of [`super::avx2::dot_q4_1`] / [`super::avx2::dot_q0`] in the
//! same order: the same bits. Chosen at run time where the CPU has AVX-512 F, BW and VL
//! (`KernelSet` in `isa.rs`).

use super::avx2::hsum_float_8;
use std::arch::x86_64::*;

/// How far ahead of the second row's block the kernels ask for the weights, in bytes.
/// The rows of a small model are a few hundred bytes, too short for the hardware
/// prefetcher to get ahead within one row, and the rows of a matrix lie one after the
/// other, so this is what the next pairs of rows read. Measured on SmolLM2's decode
/// (Xeon, Ice Lake, 2 threads): 9.4 ms/token without, 7.8–8.6 with 1 or 2 KiB.
const PREFETCH: usize = 2048;

/// The two rows' 8 lanes as two `hsum_float_8` reductions.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn hsum_pair(acc: __m512) -> [f32; 2] {
    [
        hsum_float_8(_mm512_castps512_ps256(acc)),
        hsum_float_8(_mm256_castpd_ps(_mm512_extractf64x4_pd(
            _mm512_castps_pd(acc),
            1,
        ))),
    ]
}

/// The 32 nibbles of each of two 16-byte runs as bytes, low nibbles first: the first
/// row's 32 values in bytes 0–31, the second's in 32–63 (ggml's `bytes_from_nibbles_32`
/// twice).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn nibbles_pair(p0: *const u8, p1: *const u8) -> __m512i {
    let both = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(p0 as *const __m128i)),
        _mm_loadu_si128(p1 as *const __m128i),
        1,
    );
    let mask = _mm256_set1_epi8(0x0f);
    let lo = _mm256_and_si256(both, mask);
    let hi = _mm256_and_si256(_mm256_srli_epi16(both, 4), mask);
    // 128-bit lanes [lo0, lo1, hi0, hi1] reordered to [lo0, hi0, lo1, hi1].
    let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    _mm512_shuffle_i64x2(z, z, 0b11_01_10_00)
}

/// Lanes `0–7` take `s[0]`, lanes `8–15` take `s[i1]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn spread_pair(s: __m128, i1: i32) -> __m512 {
    let idx = _mm512_set_epi32(i1, i1, i1, i1, i1, i1, i1, i1, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s))
}

/// The 64 signed values of two Q4_0 / Q5_0 / Q8_0 blocks (`q - 8`, `q - 16`, `q`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load_q0_pair(w0: *const u8, w1: *const u8, wblock: usize) -> __m512i {
    match wblock {
        34 => _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(2) as *const __m256i)),
            _mm256_loadu_si256(w1.add(2) as *const __m256i),
            1,
        ),
        22 => {
            // A clear fifth bit means the value is the nibble minus 16: its high bits set.
            let nib = nibbles_pair(w0.add(6), w1.add(6));
            let qh0 = u32::from_le_bytes(*(w0.add(2) as *const [u8; 4])) as u64;
            let qh1 = u32::from_le_bytes(*(w1.add(2) as *const [u8; 4])) as u64;
            let clear: __mmask64 = !(qh0 | qh1 << 32);
            _mm512_mask_blend_epi8(
                clear,
                nib,
                _mm512_or_si512(nib, _mm512_set1_epi8(0xF0u8 as i8)),
            )
        }
        _ => _mm512_sub_epi8(nibbles_pair(w0.add(2), w1.add(2)), _mm512_set1_epi8(8)),
    }
}

macro_rules! pair_kernels {
    ($features:literal, $q4_1:ident, $q0:ident, |$x:ident, $y:ident| $dot:expr) => {
        /// Two rows of [`super::avx2::dot_q4_1`] at once.
        ///
        /// # Safety
        /// The CPU must have the features this function enables; the rows and the
        /// activation row are whole blocks of the same count.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $q4_1(w0: &[u8], w1: &[u8], a: &[u8]) -> [f32; 2] {
            let nb = a.len() / 36;
            debug_assert!(w0.len() >= nb * 20 && w1.len() >= nb * 20);
            let mut acc = _mm512_setzero_ps();
            // Lanes 1 and 3: each row's `Σ m·s`, added in block order.
            let mut summs = _mm_setzero_ps();
            for b in 0..nb {
                let (wb0, wb1) = (w0.as_ptr().add(b * 20), w1.as_ptr().add(b * 20));
                let ab = a.as_ptr().add(b * 36);
                let wd = (*(wb0 as *const [u8; 4]), *(wb1 as *const [u8; 4]));
                let halves =
                    u32::from_le_bytes(wd.0) as u64 | (u32::from_le_bytes(wd.1) as u64) << 32;
                // [d0, m0, d0', m0'] × [d1, s1, d1, s1], each product rounded as f32.
                let ws = _mm_cvtph_ps(_mm_cvtsi64_si128(halves as i64));
                let as_ = _mm_cvtph_ps(_mm_set1_epi32(
                    u32::from_le_bytes(*(ab as *const [u8; 4])) as i32
                ));
                let prod = _mm_mul_ps(ws, as_);
                summs = _mm_add_ps(summs, prod);
                _mm_prefetch::<_MM_HINT_T0>(wb1.wrapping_add(PREFETCH) as *const i8);
                let qx = nibbles_pair(wb0.add(4), wb1.add(4));
                let qy = _mm512_broadcast_i64x4(_mm256_loadu_si256(ab.add(4) as *const __m256i));
                let xy = _mm512_cvtepi32_ps({
                    let ($x, $y) = (qx, qy);
                    $dot
                });
                acc = _mm512_fmadd_ps(spread_pair(prod, 2), xy, acc);
            }
            let [r0, r1] = hsum_pair(acc);
            let mut s = [0f32; 4];
            _mm_storeu_ps(s.as_mut_ptr(), summs);
            [r0 + s[1], r1 + s[3]]
        }

        /// Two rows of [`super::avx2::dot_q0`] at once (Q4_0, Q5_0 or Q8_0 by `wblock`).
        ///
        /// # Safety
        /// As for the Q4_1 kernel above.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $q0(w0: &[u8], w1: &[u8], a: &[u8], wblock: usize) -> [f32; 2] {
            let nb = a.len() / 34;
            debug_assert!(w0.len() >= nb * wblock && w1.len() >= nb * wblock);
            let mut acc = _mm512_setzero_ps();
            for b in 0..nb {
                let (wb0, wb1) = (w0.as_ptr().add(b * wblock), w1.as_ptr().add(b * wblock));
                let ab = a.as_ptr().add(b * 34);
                let halves = u16::from_le_bytes(*(wb0 as *const [u8; 2])) as u32
                    | (u16::from_le_bytes(*(wb1 as *const [u8; 2])) as u32) << 16;
                let ws = _mm_cvtph_ps(_mm_cvtsi32_si128(halves as i32));
                let da = _mm_cvtph_ps(_mm_set1_epi16(
                    u16::from_le_bytes(*(ab as *const [u8; 2])) as i16
                ));
                let dd = _mm_mul_ps(ws, da);
                _mm_prefetch::<_MM_HINT_T0>(wb1.wrapping_add(PREFETCH) as *const i8);
                let qx = load_q0_pair(wb0, wb1, wblock);
                let qy = _mm512_broadcast_i64x4(_mm256_loadu_si256(ab.add(2) as *const __m256i));
                // The sign trick of the AVX2 kernel: |x| against y with x's sign.
                let ax = _mm512_abs_epi8(qx);
                let neg = _mm512_movepi8_mask(qx);
                let sy = _mm512_mask_sub_epi8(qy, neg, _mm512_setzero_si512(), qy);
                let xy = _mm512_cvtepi32_ps({
                    let ($x, $y) = (ax, sy);
                    $dot
                });
                acc = _mm512_fmadd_ps(spread_pair(dd, 1), xy, acc);
            }
            hsum_pair(acc)
        }
    };
}

// Unsigned × signed bytes, four consecutive products summed into each int32 lane: one
// `vpdpbusd` with VNNI, `vpmaddubsw` + `vpmaddwd` without (no pair reaches the 16-bit
// saturation: |x| ≤ 128 and |y| ≤ 127).
pair_kernels!(
    "avx512f,avx512bw,avx512vl,avx512vnni",
    dot2_q4_1_vnni,
    dot2_q0_vnni,
    |x, y| _mm512_dpbusd_epi32(_mm512_setzero_si512(), x, y)
);
pair_kernels!("avx512f,avx512bw,avx512vl", dot2_q4_1, dot2_q0, |x, y| {
    _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), _mm512_set1_epi16(1))
});

macro_rules! q4k_x16_kernel {
    ($features:literal, $name:ident, |$s:ident, $x:ident, $y:ident| $dot:expr) => {
        /// 16 rows of the repacked Q4_K one-row kernel (see `repack.rs`) against one
        /// activation row: each 32-bit lane is one weight row.
        ///
        /// # Safety
        /// The CPU must have the features this function enables; `g` is one group of
        /// [`super::repack::RepackedQ4k`] with as many super-blocks as `a` has.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(g: &[u8], a: &[u8], gemm: bool) -> [f32; 16] {
            use super::repack::{D, DMIN, GROUP_BLOCK, MINS, SCALES};
            let ab = 4 + 256 + 32;
            let nb = a.len() / ab;
            assert!(g.len() >= nb * GROUP_BLOCK);
            let low = _mm512_set1_epi8(0x0f);
            let mut acc = _mm512_setzero_ps();
            let mut acc_min = _mm512_setzero_ps();
            for b in 0..nb {
                let w = g.as_ptr().add(b * GROUP_BLOCK);
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(GROUP_BLOCK) as *const i8);
                let y = a.as_ptr().add(b * ab);
                let dy = _mm512_set1_ps(f32::from_le_bytes(*(y as *const [u8; 4])));
                let bs = y.add(4 + 256) as *const i16;
                let mut ps = [_mm512_setzero_si512(); 4];
                let mut pm = [_mm512_setzero_si512(); 4];
                for p in 0..4 {
                    let mut lo_sum = _mm512_setzero_si512();
                    let mut hi_sum = _mm512_setzero_si512();
                    for t in 0..8 {
                        let wq = _mm512_loadu_si512(w.add((p * 8 + t) * 64) as *const _);
                        let lo = _mm512_and_si512(wq, low);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(wq, 4), low);
                        let a_lo = _mm512_set1_epi32(
                            (y.add(4 + 32 * (2 * p) + 4 * t) as *const i32).read_unaligned(),
                        );
                        let a_hi = _mm512_set1_epi32(
                            (y.add(4 + 32 * (2 * p + 1) + 4 * t) as *const i32).read_unaligned(),
                        );
                        lo_sum = {
                            let ($s, $x, $y) = (lo_sum, lo, a_lo);
                            $dot
                        };
                        hi_sum = {
                            let ($s, $x, $y) = (hi_sum, hi, a_hi);
                            $dot
                        };
                    }
                    for (j, sum) in [(2 * p, lo_sum), (2 * p + 1, hi_sum)] {
                        let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            w.add(SCALES + 16 * j) as *const __m128i
                        ));
                        let mn = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            w.add(MINS + 16 * j) as *const __m128i
                        ));
                        let bsum = *bs.add(2 * j) as i32 + *bs.add(2 * j + 1) as i32;
                        ps[p] = _mm512_add_epi32(ps[p], _mm512_mullo_epi32(sum, sc));
                        pm[p] = _mm512_add_epi32(
                            pm[p],
                            _mm512_mullo_epi32(mn, _mm512_set1_epi32(bsum)),
                        );
                    }
                }
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(D) as *const __m256i));
                let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(DMIN) as *const __m256i));
                let dd = _mm512_mul_ps(d, dy);
                let dm = _mm512_mul_ps(dmin, dy);
                if gemm {
                    for p in 0..4 {
                        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ps[p]), dd, acc);
                        acc_min = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pm[p]), dm, acc_min);
                    }
                } else {
                    let is = _mm512_add_epi32(
                        _mm512_add_epi32(ps[0], ps[1]),
                        _mm512_add_epi32(ps[2], ps[3]),
                    );
                    let im = _mm512_add_epi32(
                        _mm512_add_epi32(pm[0], pm[1]),
                        _mm512_add_epi32(pm[2], pm[3]),
                    );
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), dd, acc);
                    acc_min = _mm512_fmadd_ps(_mm512_cvtepi32_ps(im), dm, acc_min);
                }
            }
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), _mm512_sub_ps(acc, acc_min));
            out
        }
    };
}

// 4-bit unsigned × signed bytes: the pair sums of `vpmaddubsw` stay far inside i16.
q4k_x16_kernel!(
    "avx512f,avx512bw,avx512vl,avx512vnni",
    q4k_x16_vnni,
    |s, x, y| _mm512_dpbusd_epi32(s, x, y)
);
q4k_x16_kernel!("avx512f,avx512bw,avx512vl", q4k_x16, |s, x, y| {
    _mm512_add_epi32(
        s,
        _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), _mm512_set1_epi16(1)),
    )
});

/// [`super::avx512_vnni::tile_q0u`] for 4 weight rows on 512-bit vectors: rows `2p` and
/// `2p + 1` share a register (8 lanes each) against the same activation block, so each
/// `vpdpbusd`, conversion and `fma` serves two rows; every lane's integers and float
/// operations are those of the 256-bit kernel.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and VNNI; the slices hold as many blocks as `dw[0]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_q0u_4rows<const RN: usize>(
    qw: [&[super::blocks::QBlock]; 4],
    dw: [&[f32]; 4],
    qa: [&[u8]; RN],
    da: [&[f32]; RN],
) -> [[f32; RN]; 4] {
    let nb = dw[0].len();
    assert!((0..4).all(|i| qw[i].len() >= nb && dw[i].len() >= nb));
    assert!((0..RN).all(|j| qa[j].len() >= nb * 34 && da[j].len() >= nb));
    let off = _mm512_set1_epi8(-128);
    let mut acc = [[_mm512_setzero_ps(); RN]; 2];
    for b in 0..nb {
        let mut x = [_mm512_setzero_si512(); 2];
        let mut bw = [_mm512_setzero_ps(); 2];
        for p in 0..2 {
            let (r0, r1) = (2 * p, 2 * p + 1);
            x[p] = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_load_si256(qw[r0].as_ptr().add(b) as *const __m256i)),
                _mm256_load_si256(qw[r1].as_ptr().add(b) as *const __m256i),
                1,
            );
            let pair = _mm_setr_ps(*dw[r0].get_unchecked(b), *dw[r1].get_unchecked(b), 0.0, 0.0);
            bw[p] = spread_pair(pair, 1);
        }
        for j in 0..RN {
            let qy = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                qa[j].as_ptr().add(b * 34 + 2) as *const __m256i
            ));
            let neg = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, qy),
            );
            let ba = _mm512_set1_ps(*da[j].get_unchecked(b));
            for p in 0..2 {
                let lanes = _mm512_dpbusd_epi32(neg, x[p], qy);
                let dd = _mm512_mul_ps(bw[p], ba);
                acc[p][j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lanes), acc[p][j]);
            }
        }
    }
    let mut out = [[0f32; RN]; 4];
    for p in 0..2 {
        for j in 0..RN {
            let [a, b] = hsum_pair(acc[p][j]);
            out[2 * p][j] = a;
            out[2 * p + 1][j] = b;
        }
    }
    out
}
