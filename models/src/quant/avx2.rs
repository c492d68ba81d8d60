//! The kernels on AVX2 and FMA (x86-64-v3), compiled where the build targets them: the
//! same lanes, integer sums and float operations as their twins in `scalar.rs` (same
//! names and signatures), so the same bits. The AVX-512 VNNI variants of the tile and
//! interleaved kernels are in `avx512_vnni.rs`, chosen at run time by the callers.

use super::blocks::{f16_at, hsum8, q4k_scales, Q4kGroup, Q6kGroup, QBlock, Unpack};
use std::arch::x86_64::*;

#[inline]
pub(super) unsafe fn hsum_float_8(x: __m256) -> f32 {
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

/// The 32 nibbles of the 16 bytes at `p` as bytes, low nibbles first (ggml's
/// `bytes_from_nibbles_32`).
#[inline(always)]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

pub(super) fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: compiled only with AVX2 and FMA enabled; loads stay inside the blocks.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
            // [d0, m0, d1, s1]; products [d0 * d1, m0 * s1] (rounded as f32 each).
            let scales = half4(wb, ab);
            let prod = _mm_mul_ps(scales, _mm_movehl_ps(scales, scales));
            summs += _mm_cvtss_f32(_mm_movehdup_ps(prod));
            let d0d1 = _mm256_broadcastss_ps(prod);
            let qx = nibbles(wb.as_ptr().add(4));
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
        let nib = nibbles(wb.as_ptr().add(6));
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
        _mm256_sub_epi8(nibbles(wb.as_ptr().add(2)), _mm256_set1_epi8(8))
    } else {
        let mut q = [0i8; 32];
        unpack(wb, &mut q);
        _mm256_loadu_si256(q.as_ptr() as *const __m256i)
    }
}

pub(super) fn dot_q0(w: &[u8], a: &[u8], wblock: usize, unpack: fn(&[u8], &mut [i8; 32])) -> f32 {
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

/// [`super::scalar::tile_q4_1`]: `RM` weight rows × `RN` activation rows, each weight block
/// unpacked once; per (row, column) the float operations of [`dot_q4_1`].
#[inline(always)]
pub(super) fn tile_q4_1<const RM: usize, const RN: usize>(
    w: [&[u8]; RM],
    a: [&[u8]; RN],
) -> [[f32; RN]; RM] {
    const { assert!(RM <= 4 && RN <= 4) };
    let nb = a[0].len() / 36;
    assert!(w.iter().all(|r| r.len() >= nb * 20) && a.iter().all(|r| r.len() >= nb * 36));
    // SAFETY: AVX2 and FMA are enabled at compile time; every block read is inside its
    // row (lengths checked above).
    unsafe {
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
pub(super) unsafe fn cvt8(h: [u16; 8]) -> [f32; 8] {
    let mut out = [0f32; 8];
    let v = _mm_loadu_si128(h.as_ptr() as *const __m128i);
    _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(v));
    out
}

/// [`super::scalar::unpack_q0`] with AVX2.
#[inline]
pub(super) fn unpack_q0(blk: &[u8], wblock: usize, unpack: Unpack, vnni: bool) -> [u8; 32] {
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

/// [`super::scalar::tile_q0u`] with AVX2 (signed values; the sign trick of [`dot_q0`]).
#[inline(always)]
pub(super) fn tile_q0u<const RM: usize, const RN: usize>(
    qw: [&[QBlock]; RM],
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
                    acc[i][j] = _mm256_fmadd_ps(dd, mul_sum_us8_pairs_float(ax[i], sy), acc[i][j]);
                }
            }
        }
        std::array::from_fn(|i| std::array::from_fn(|j| hsum_float_8(acc[i][j])))
    }
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
    let bits =
        u16::from_le_bytes([x[0], x[1]]) as u32 | (u16::from_le_bytes([y[0], y[1]]) as u32) << 16;
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

/// The 256 unsigned 6-bit values (0..64) of the Q6_K super-block at `x` as 8 vectors of
/// 32: vector `v` holds values `32v..32v + 32` in the order of
/// [`super::scalar::q6k_lanes`] (low nibbles of `ql`, then high, each with its bit pair
/// of `qh`).
///
/// # Safety
/// AVX2 (enabled at compile time); `x` points at a whole super-block.
#[inline(always)]
unsafe fn q6k_values(x: *const u8) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let (ql, qh) = (x, x.add(128));
    let hi = |h: __m256i| _mm256_slli_epi16(_mm256_and_si256(h, m2), 4);
    let mut q = [_mm256_setzero_si256(); 8];
    for half in 0..2 {
        let b1 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
        let b2 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
        let bh = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
        q[4 * half] = _mm256_or_si256(_mm256_and_si256(b1, m4), hi(bh));
        q[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(b2, m4), hi(_mm256_srli_epi16(bh, 2)));
        q[4 * half + 2] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
            hi(_mm256_srli_epi16(bh, 4)),
        );
        q[4 * half + 3] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
            hi(_mm256_srli_epi16(bh, 6)),
        );
    }
    q
}

/// [`super::scalar::q6k_lanes`] with AVX2 (the same integers).
pub(super) fn q6k_lanes(x: &[u8], y: &[u8]) -> [i32; 8] {
    assert!(x.len() >= 210 && y.len() >= 4 + 256 + 32);
    // SAFETY: AVX2 is enabled at compile time; every load is inside `x` or `y`
    // (lengths checked above).
    unsafe {
        let sc = x.as_ptr().add(192) as *const i8;
        let q8 = y.as_ptr().add(4);
        let mut lanes = _mm256_setzero_si256();
        for (v, qv) in q6k_values(x.as_ptr()).iter().enumerate() {
            let e0 = 32 * v;
            let y8 = _mm256_loadu_si256(q8.add(e0) as *const __m256i);
            let p = _mm256_maddubs_epi16(*qv, y8);
            let s = _mm256_set_m128i(
                _mm_set1_epi16(*sc.add(e0 / 16 + 1) as i16),
                _mm_set1_epi16(*sc.add(e0 / 16) as i16),
            );
            lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p, s));
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

/// One Q4_K super-block decoded once for all the activation rows of a tile: its nibbles
/// (low and high of each 32-byte pair), its scales as i16 vectors, and each min repeated
/// for the two bsums of its sub-block.
struct Q4kBlock {
    q: [__m256i; 8],
    sv: [__m256i; 8],
    mv: __m256i,
}

impl Q4kBlock {
    /// # Safety
    /// AVX2 (enabled at compile time); `x` holds a whole super-block.
    #[inline(always)]
    unsafe fn new(x: &[u8], scales: &[i32; 8], mins: &[i32; 8]) -> Self {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut q = [_mm256_setzero_si256(); 8];
        for pair in 0..4 {
            let v = _mm256_loadu_si256(x.as_ptr().add(16 + 32 * pair) as *const __m256i);
            q[2 * pair] = _mm256_and_si256(v, m4);
            q[2 * pair + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
        let sv = std::array::from_fn(|j| _mm256_set1_epi16(scales[j] as i16));
        let mut m16 = [0i16; 16];
        for j in 0..8 {
            m16[2 * j] = mins[j] as i16;
            m16[2 * j + 1] = mins[j] as i16;
        }
        let mv = _mm256_loadu_si256(m16.as_ptr() as *const __m256i);
        Self { q, sv, mv }
    }

    /// `[Σ v0, Σ v1, Σ v2, Σ v3]`: the exact sums `Σ scale Σ q4 q8` of the four sub-block
    /// pairs against the activation super-block at `y`.
    ///
    /// # Safety
    /// AVX2 (enabled at compile time); `y` points at a whole Q8_K super-block.
    #[inline(always)]
    unsafe fn pair_sums(&self, y: *const u8) -> __m128i {
        let (q, sv) = (&self.q, &self.sv);
        let mut v = [_mm256_setzero_si256(); 4];
        for (pair, vp) in v.iter_mut().enumerate() {
            let ya = _mm256_loadu_si256(y.add(4 + 64 * pair) as *const __m256i);
            let yb = _mm256_loadu_si256(y.add(4 + 64 * pair + 32) as *const __m256i);
            let sa = _mm256_madd_epi16(_mm256_maddubs_epi16(q[2 * pair], ya), sv[2 * pair]);
            let sb = _mm256_madd_epi16(_mm256_maddubs_epi16(q[2 * pair + 1], yb), sv[2 * pair + 1]);
            *vp = _mm256_add_epi32(sa, sb);
        }
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
    }

    /// Lane `j`: `min_j (bsum_2j + bsum_2j+1)` of the activation super-block at `y` (a
    /// pair of sub-blocks sums two neighbouring lanes).
    ///
    /// # Safety
    /// As [`Q4kBlock::pair_sums`].
    #[inline(always)]
    unsafe fn min_sums(&self, y: *const u8) -> __m256i {
        let bs = _mm256_loadu_si256(y.add(4 + 256) as *const __m256i);
        _mm256_madd_epi16(bs, self.mv)
    }
}

/// [`super::scalar::tile_q4k`]: each super-block's scales, mins and nibbles decoded once for
/// all `RN` activation rows; per row the integer sums and float operations of
/// [`super::kdot::dot_q4k_repacked`].
pub(super) fn tile_q4k<const RN: usize>(w: &[u8], a: [&[u8]; RN], gemm: bool) -> [f32; RN] {
    let ab = 4 + 256 + 32;
    let nb = w.len() / 144;
    assert!(a.iter().all(|r| r.len() >= nb * ab));
    // SAFETY: AVX2 and FMA are enabled at compile time; every load is inside a
    // super-block of `w` or of an activation row (lengths checked above).
    unsafe {
        let mut acc = [0f32; RN];
        let mut acc_min = [0f32; RN];
        for (b, x) in w.chunks_exact(144).enumerate() {
            let d = f16_at(x, 0);
            let dmin = f16_at(x, 2);
            let (scales, mins) = q4k_scales(&x[4..16]);
            let blk = Q4kBlock::new(x, &scales, &mins);
            for r in 0..RN {
                let y = a[r].as_ptr().add(b * ab);
                let dy = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
                let mut psums = [0i32; 4];
                _mm_storeu_si128(psums.as_mut_ptr() as *mut __m128i, blk.pair_sums(y));
                let mm = blk.min_sums(y);
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
pub(super) fn tile_q4k_x4(w: &[u8], a: [&[u8]; 4], gemm: bool) -> [f32; 4] {
    let ab = 4 + 256 + 32;
    let nb = w.len() / 144;
    assert!(a.iter().all(|r| r.len() >= nb * ab));
    // SAFETY: AVX2 and FMA are enabled at compile time; every load is inside a
    // super-block of `w` or of an activation row (lengths checked above).
    unsafe {
        let pick = _mm256_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5);
        let mut acc = _mm_setzero_ps();
        let mut acc_min = _mm_setzero_ps();
        for (b, x) in w.chunks_exact(144).enumerate() {
            let d = f16_at(x, 0);
            let dmin = f16_at(x, 2);
            let (scales, mins) = q4k_scales(&x[4..16]);
            let blk = Q4kBlock::new(x, &scales, &mins);
            let mut ps = [_mm_setzero_si128(); 4];
            let mut pm = [_mm_setzero_si128(); 4];
            let mut dy = [0f32; 4];
            for r in 0..4 {
                let y = a[r].as_ptr().add(b * ab);
                dy[r] = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
                ps[r] = blk.pair_sums(y);
                let hm = _mm256_hadd_epi32(blk.min_sums(y), _mm256_setzero_si256());
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
                let isum = _mm_add_epi32(_mm_add_epi32(ps[0], ps[1]), _mm_add_epi32(ps[2], ps[3]));
                let imin = _mm_add_epi32(_mm_add_epi32(pm[0], pm[1]), _mm_add_epi32(pm[2], pm[3]));
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), dd, acc);
                acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(imin), dm, acc_min);
            }
        }
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, acc_min));
        out
    }
}

/// [`super::scalar::regroup_q4k`] with AVX2: each sub-block's 32 values of the 8 rows are an
/// 8 × 8 matrix of 4-byte groups, transposed.
pub(super) fn regroup_q4k(blocks: [&[u8]; 8], out: &mut [QBlock]) {
    assert!(blocks.iter().all(|x| x.len() >= 144) && out.len() >= 64);
    // SAFETY: AVX2 is enabled at compile time; loads are inside the 144-byte blocks,
    // stores inside `out` (lengths checked above).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        for j in 0..8 {
            let mut v = [_mm256_setzero_si256(); 8];
            for (c, x) in blocks.iter().enumerate() {
                let raw = _mm256_loadu_si256(x.as_ptr().add(16 + 32 * (j / 2)) as *const __m256i);
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

/// [`super::scalar::regroup_q6k`] with AVX2 (the 6-bit values of [`q6k_lanes`], then the
/// 8 × 8 transpose of [`regroup_q4k`]).
pub(super) fn regroup_q6k(blocks: [&[u8]; 8], out: &mut [QBlock]) {
    assert!(blocks.iter().all(|x| x.len() >= 210) && out.len() >= 64);
    // SAFETY: AVX2 is enabled at compile time; loads are inside the 210-byte blocks,
    // stores inside `out` (lengths checked above).
    unsafe {
        let mut vals = [[_mm256_setzero_si256(); 8]; 8];
        for (c, x) in blocks.iter().enumerate() {
            for (chunk, v) in q6k_values(x.as_ptr()).into_iter().enumerate() {
                vals[chunk][c] = v;
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

/// [`super::scalar::q6k_row_x8`] with AVX2.
#[inline]
pub(super) fn q6k_row_x8(g: &Q6kGroup, a: &[u8]) -> [f32; 8] {
    // SAFETY: AVX2 is enabled at compile time.
    unsafe { q6k_row_x8_avx2(g, a) }
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
                    let wq = _mm256_load_si256($g.q.as_ptr().add(b * 64 + idx) as *const __m256i);
                    let a4 = _mm256_set1_epi32((y.add(4 + 4 * idx) as *const i32).read_unaligned());
                    sum = $dot(sum, wq, a4);
                }
                let sc = _mm256_loadu_si256($g.scales.as_ptr().add(b * 16 + grp) as *const __m256i);
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
pub(super) use q6k_row_x8_body;

/// # Safety
/// AVX2 and FMA (enabled at compile time).
#[inline]
unsafe fn q6k_row_x8_avx2(g: &Q6kGroup, a: &[u8]) -> [f32; 8] {
    // Unsigned 6-bit × signed 8-bit: the pair sums stay inside i16 (2 · 63 · 128).
    let ones = _mm256_set1_epi16(1);
    q6k_row_x8_body!(g, a, |s, w, y| _mm256_add_epi32(
        s,
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), ones)
    ))
}

/// [`super::scalar::q4k_row_x8`] with AVX2.
#[inline]
pub(super) fn q4k_row_x8(g: &Q4kGroup, a: &[u8], gemm: bool) -> [f32; 8] {
    // SAFETY: AVX2 is enabled at compile time.
    unsafe { q4k_row_x8_avx2(g, a, gemm) }
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
                    let wq =
                        _mm256_load_si256($g.q.as_ptr().add(b * 64 + j * 8 + t) as *const __m256i);
                    let a4 = _mm256_set1_epi32(
                        (y.add(4 + 32 * j + 4 * t) as *const i32).read_unaligned(),
                    );
                    sum = $dot(sum, wq, a4);
                }
                let sc = _mm256_loadu_si256($g.scales.as_ptr().add(b * 8 + j) as *const __m256i);
                let mn = _mm256_loadu_si256($g.mins.as_ptr().add(b * 8 + j) as *const __m256i);
                let bsum = *bs.add(2 * j) as i32 + *bs.add(2 * j + 1) as i32;
                ps[j / 2] = _mm256_add_epi32(ps[j / 2], _mm256_mullo_epi32(sum, sc));
                pm[j / 2] =
                    _mm256_add_epi32(pm[j / 2], _mm256_mullo_epi32(mn, _mm256_set1_epi32(bsum)));
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
pub(super) use q4k_row_x8_body;

/// # Safety
/// AVX2 and FMA (enabled at compile time).
#[inline]
unsafe fn q4k_row_x8_avx2(g: &Q4kGroup, a: &[u8], gemm: bool) -> [f32; 8] {
    // Unsigned 4-bit × signed 8-bit: the pair sums stay far inside i16.
    let ones = _mm256_set1_epi16(1);
    q4k_row_x8_body!(g, a, gemm, |s, w, y| _mm256_add_epi32(
        s,
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), ones)
    ))
}

/// Walks the Q6_K super-blocks of `w`, each one's 6-bit values and scales decoded once
/// for all `RN` activation rows, and calls `row(r, d_w, d_a, lanes)` per row with the
/// exact integer lanes of [`super::scalar::q6k_lanes`].
///
/// # Safety
/// AVX2 and FMA (enabled at compile time).
#[inline(always)]
unsafe fn q6k_by_rows<const RN: usize>(
    w: &[u8],
    a: [&[u8]; RN],
    mut row: impl FnMut(usize, f32, f32, __m256i),
) {
    let ab = 4 + 256 + 32;
    let nb = w.len() / 210;
    assert!(a.iter().all(|r| r.len() >= nb * ab));
    // Every load is inside a weight super-block of `w` or an activation block of a row
    // (lengths checked above).
    for (b, x) in w.chunks_exact(210).enumerate() {
        let dx = f16_at(x, 208);
        let sc = x.as_ptr().add(192) as *const i8;
        let q = q6k_values(x.as_ptr());
        let sv: [__m256i; 8] = std::array::from_fn(|v| {
            let g = 2 * v;
            _mm256_set_m128i(
                _mm_set1_epi16(*sc.add(g + 1) as i16),
                _mm_set1_epi16(*sc.add(g) as i16),
            )
        });
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
        for (r, act) in a.iter().enumerate() {
            let y = act.as_ptr().add(b * ab);
            let dy = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
            let mut lanes = _mm256_setzero_si256();
            for v in 0..8 {
                let y8 = _mm256_loadu_si256(y.add(4 + 32 * v) as *const __m256i);
                let p = _mm256_maddubs_epi16(q[v], y8);
                lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p, sv[v]));
            }
            let bsums = _mm256_loadu_si256(y.add(4 + 256) as *const __m256i);
            let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
            row(r, dx, dy, _mm256_sub_epi32(lanes, sub));
        }
    }
}

/// [`super::scalar::tile_q6k`]: each super-block decoded once for all `RN` activation
/// rows; per row the exact integer total of [`super::scalar::q6k_lanes`] and the float
/// operations of [`super::kdot::dot_q6k_tiled`].
pub(super) fn tile_q6k<const RN: usize>(w: &[u8], a: [&[u8]; RN]) -> [f32; RN] {
    let mut acc = [0f32; RN];
    // SAFETY: AVX2 and FMA are enabled at compile time.
    unsafe {
        q6k_by_rows(w, a, |r, dx, dy, lanes| {
            let rr = hsum_i32_8(lanes) as f32 * dx;
            acc[r] = rr.mul_add(dy, acc[r]);
        });
    }
    acc
}

/// [`super::kdot::dot_q6k`] (the one-row kernel) of one weight row against `RN`
/// activation rows: each super-block decoded once for all of them, and every row gets
/// the one-row kernel's integer lanes and float operations, so the same bits as a call
/// of its own.
pub(super) fn rows_q6k<const RN: usize>(w: &[u8], a: [&[u8]; RN]) -> [f32; RN] {
    // SAFETY: AVX2 and FMA are enabled at compile time.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); RN];
        q6k_by_rows(w, a, |r, dx, dy, lanes| {
            let lanes = _mm256_cvtepi32_ps(lanes);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dy * dx), lanes, acc[r]);
        });
        acc.map(|v| {
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), v);
            hsum8(&out)
        })
    }
}

/// [`super::scalar::q4k_pair_sums`] with AVX2 (the same integers).
pub(super) fn q4k_pair_sums(x: &[u8], y: &[u8], scales: &[i32; 8]) -> [i32; 4] {
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
