//! The block layouts every kernel reads, whatever its instruction set: scales, the
//! unpacking of 32-value blocks, the packed scales of Q4_K, and ggml's horizontal sum.
//! Offsets are those of candle's `#[repr(C)]` block structs, which are ggml's.

use half::f16;

/// The f16 at byte `off` of a block (scales are stored as little-endian f16).
#[inline]
pub(super) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// `hsum_float_8`: lanes l and l+4 added, then (0+2) + (1+3).
#[inline]
pub(super) fn hsum8(v: &[f32; 8]) -> f32 {
    let r = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Writes one weight block's 32 signed values (the scalar unpacking).
pub(super) type Unpack = fn(&[u8], &mut [i8; 32]);

/// One weight block of a 32-value format unpacked for the prefill tiles: its 32 values as
/// signed bytes, or offset by 128 (unsigned) for the VNNI kernel.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct QBlock(pub(super) [u8; 32]);

/// [`Unpack`] of Q4_0: nibbles minus 8.
pub(super) fn unpack_q4_0(b: &[u8], q: &mut [i8; 32]) {
    for j in 0..16 {
        q[j] = (b[2 + j] & 0x0f) as i8 - 8;
        q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
    }
}

/// [`Unpack`] of Q5_0: nibbles with their fifth bit, minus 16.
pub(super) fn unpack_q5_0(b: &[u8], q: &mut [i8; 32]) {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let lo = (b[6 + j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (b[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        q[j] = lo as i8 - 16;
        q[j + 16] = hi as i8 - 16;
    }
}

/// [`Unpack`] of Q8_0: the bytes as they are.
pub(super) fn unpack_q8_0(b: &[u8], q: &mut [i8; 32]) {
    for j in 0..32 {
        q[j] = b[2 + j] as i8;
    }
}

/// The 6-bit scales and mins of a Q4_K super-block (its 12 packed bytes).
#[inline]
pub(super) fn q4k_scales(sc: &[u8]) -> ([i32; 8], [i32; 8]) {
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

/// Eight Q4_K weight rows regrouped for `dot_q4k_interleaved`, per super-block: the
/// values of each 32-value sub-block as 8 groups of 4 consecutive values, each group
/// holding the 4 bytes of all 8 rows side by side (so that one 32-bit lane is one row),
/// and the rows' scales, mins, `d` and `dmin` likewise side by side.
#[derive(Default)]
pub(super) struct Q4kGroup {
    pub(super) q: Vec<QBlock>,
    pub(super) scales: Vec<[i32; 8]>,
    pub(super) mins: Vec<[i32; 8]>,
    pub(super) d: Vec<[f32; 8]>,
    pub(super) dmin: Vec<[f32; 8]>,
}

/// Eight Q6_K weight rows regrouped for `dot_q6k_interleaved` (the layout of
/// [`Q4kGroup`]: 4-byte groups of the 8 rows side by side), with the rows' 16 scales per
/// super-block and `d`.
#[derive(Default)]
pub(super) struct Q6kGroup {
    pub(super) q: Vec<QBlock>,
    pub(super) scales: Vec<[i32; 8]>,
    pub(super) d: Vec<[f32; 8]>,
}
