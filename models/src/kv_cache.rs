//! A key/value cache that can be cut back to any length.
//!
//! The ensemble rolls members back when re-tokenisation changes their tail, so
//! `truncate` must be cheap: it only moves the length. Storage grows in chunks (doubling)
//! and new entries are written in place with `slice_set`, so a decode step never
//! reallocates unless the capacity is exhausted.

use candle_core::{Result, Tensor};

/// Growth granularity in positions; the first allocation holds at least this many.
const CHUNK: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated positions.
    pub fn capacity(&self) -> usize {
        self.k.as_ref().map(|k| k.dims()[2]).unwrap_or(0)
    }

    /// Drops every entry at or after `len` (no-op if `len` is not shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `k`, `v` of shape `[b, heads, seq, head_dim]` and returns views over all
    /// cached positions.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = k.dim(2)?;
        let needed = self.len + seq;
        if needed > self.capacity() {
            self.grow(k, v, needed)?;
        }
        // Both are Some after grow.
        let (ck, cv) = match (&self.k, &self.v) {
            (Some(ck), Some(cv)) => (ck, cv),
            _ => candle_core::bail!("kv cache storage missing after growth"),
        };
        ck.slice_set(&k.contiguous()?, 2, self.len)?;
        cv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((ck.narrow(2, 0, self.len)?, cv.narrow(2, 0, self.len)?))
    }

    fn grow(&mut self, k: &Tensor, v: &Tensor, needed: usize) -> Result<()> {
        let new_cap = (self.capacity() * 2).max(needed).max(CHUNK).div_ceil(CHUNK) * CHUNK;
        let alloc = |t: &Tensor| {
            let (b, h, _, d) = t.dims4()?;
            Tensor::zeros((b, h, new_cap, d), t.dtype(), t.device())
        };
        let (nk, nv) = (alloc(k)?, alloc(v)?);
        if let (Some(ok), Some(ov)) = (&self.k, &self.v) {
            if self.len > 0 {
                nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
        }
        self.k = Some(nk);
        self.v = Some(nv);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn step(c: &mut KvCache, start: f32, n: usize) -> (Tensor, Tensor) {
        let k = Tensor::arange(start, start + n as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, n, 1))
            .unwrap();
        c.append(&k, &k).unwrap()
    }

    #[test]
    fn append_truncate_and_grow() {
        let mut c = KvCache::new();
        let (k, _) = step(&mut c, 0.0, 3);
        assert_eq!(
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2.]
        );
        c.truncate(1);
        let (k, _) = step(&mut c, 10.0, 2);
        assert_eq!(
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 10., 11.]
        );
        let cap = c.capacity();
        // Force growth past the first chunk and check the old content survives.
        let (k, _) = step(&mut c, 100.0, cap);
        let v = k.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&v[..4], &[0., 10., 11., 100.]);
        assert_eq!(v.len(), 3 + cap);
        assert!(c.capacity() >= 3 + cap);
        assert_eq!(k.dtype(), DType::F32);
    }
}
