//! The packed top-k result that the CUDA and Metal kernels write to device memory and the
//! host copies back: one small fixed-layout buffer per member per step, so a step costs
//! one device-to-host copy of a few hundred bytes instead of the whole logits row.
//!
//! Layout (all fields 4 bytes, little-endian, 4-byte aligned; `k` is the requested k,
//! which fixes the buffer size so the kernel can write it without knowing `count`):
//!
//! ```text
//! offset 0        PackedHeader (32 bytes, #[repr(C)])
//! offset 32       probs: [f32; k]   slots >= count hold 0.0
//! offset 32 + 4k  ids:   [u32; k]   slots >= count hold u32::MAX
//! ```
//!
//! Total [`packed_len`]`(k) = 32 + 8k` bytes: 544 bytes for k = 64. Entries are in
//! [`TopK`] order (most probable first, equal logits by lower id); the header carries the
//! [`LogNorm`] so [`crate::gather_probs`] can run on the host or on the device.

use crate::cpu::{LogNorm, TopK};
use crate::{KernelError, Result};

/// `b"TTK1"` read as a little-endian `u32`: identifies the layout and its version.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TTK1");

/// Size of [`PackedHeader`] in bytes.
pub const HEADER_BYTES: usize = 32;

/// Fixed header of a packed top-k buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PackedHeader {
    /// [`MAGIC`].
    pub magic: u32,
    /// Slots in the buffer (the requested k).
    pub k: u32,
    /// Valid entries, `<= k` (fewer when the mask allows fewer ids).
    pub count: u32,
    /// Temperature in effect (0 = greedy limit), [`LogNorm::temperature`].
    pub temperature: f32,
    /// [`LogNorm::max_logit`].
    pub max_logit: f32,
    /// [`LogNorm::log_z`].
    pub log_z: f32,
    /// Zero; room for flags without changing the size.
    pub reserved: [u32; 2],
}

const _: () = assert!(std::mem::size_of::<PackedHeader>() == HEADER_BYTES);

/// Bytes of a packed buffer with `k` slots.
pub const fn packed_len(k: usize) -> usize {
    HEADER_BYTES + 8 * k
}

impl TopK {
    /// This result in the packed layout with `k` slots (`k >= self.len()`).
    pub fn to_packed(&self, k: usize) -> Vec<u8> {
        assert!(
            k >= self.len(),
            "{} entries do not fit {k} slots",
            self.len()
        );
        let count = self.len();
        let mut out = Vec::with_capacity(packed_len(k));
        let words = [
            MAGIC,
            k as u32,
            count as u32,
            self.norm.temperature.to_bits(),
            self.norm.max_logit.to_bits(),
            self.norm.log_z.to_bits(),
            0,
            0,
        ];
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for i in 0..k {
            let p = self.probs.get(i).copied().unwrap_or(0.0);
            out.extend_from_slice(&p.to_le_bytes());
        }
        for i in 0..k {
            let id = self.ids.get(i).copied().unwrap_or(u32::MAX);
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// Reads a packed buffer (as written by [`TopK::to_packed`] or a device kernel).
    pub fn from_packed(bytes: &[u8]) -> Result<TopK> {
        let bad = |why: String| Err(KernelError::BadPacked(why));
        if bytes.len() < HEADER_BYTES || !bytes.len().is_multiple_of(4) {
            return bad(format!("length {}", bytes.len()));
        }
        let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        let h = PackedHeader {
            magic: word(0),
            k: word(1),
            count: word(2),
            temperature: f32::from_bits(word(3)),
            max_logit: f32::from_bits(word(4)),
            log_z: f32::from_bits(word(5)),
            reserved: [word(6), word(7)],
        };
        if h.magic != MAGIC {
            return bad(format!("magic {:#010x}", h.magic));
        }
        let (k, count) = (h.k as usize, h.count as usize);
        if bytes.len() != packed_len(k) || count > k {
            return bad(format!("k {k}, count {count}, length {}", bytes.len()));
        }
        let base = HEADER_BYTES / 4;
        Ok(TopK {
            probs: (0..count).map(|i| f32::from_bits(word(base + i))).collect(),
            ids: (0..count).map(|i| word(base + k + i)).collect(),
            norm: LogNorm {
                temperature: h.temperature,
                max_logit: h.max_logit,
                log_z: h.log_z,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax_topk;

    #[test]
    fn round_trip_and_layout() {
        let l = [0.5f32, 2.0, -1.0, 2.0];
        let t = softmax_topk(&l, 0.8, 3, None).unwrap();
        let bytes = t.to_packed(5);
        assert_eq!(bytes.len(), packed_len(5));
        assert_eq!(&bytes[..4], b"TTK1");
        assert_eq!(TopK::from_packed(&bytes).unwrap(), t);
        // Unused slots: probability 0, id u32::MAX.
        assert_eq!(&bytes[HEADER_BYTES + 12..HEADER_BYTES + 20], &[0; 8]);
        assert_eq!(&bytes[packed_len(5) - 4..], &[0xff; 4]);
        assert_eq!(packed_len(64), 544);
        let mut broken = bytes.clone();
        broken[0] = b'X';
        assert!(TopK::from_packed(&broken).is_err());
        assert!(TopK::from_packed(&bytes[..bytes.len() - 4]).is_err());
    }
}
