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

/// The same cache in plain host memory, `[kv head][position][head dim]` f32 rows, for
/// the CPU attention that follows llama.cpp (`ggml.rs`): it reads the rows in place
/// instead of copying the cache out of a tensor every step.
#[derive(Debug, Clone, Default)]
pub struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    heads: usize,
    head_dim: usize,
    cap: usize,
    len: usize,
}

impl HostKv {
    pub fn new(heads: usize, head_dim: usize) -> Self {
        HostKv {
            heads,
            head_dim,
            ..Default::default()
        }
    }

    /// Positions reserved per head.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `s` positions given as `[s][heads][head dim]` (as a projection writes them).
    pub fn append(&mut self, k: &[f32], v: &[f32], s: usize) -> Result<()> {
        let (h, d) = (self.heads, self.head_dim);
        if k.len() != h * s * d || v.len() != h * s * d {
            candle_core::bail!(
                "kv cache: {s} positions of {h} heads × {d} need {} values, got {} and {}",
                h * s * d,
                k.len(),
                v.len()
            );
        }
        let needed = self.len + s;
        if needed > self.cap {
            let cap = (self.cap * 2).max(needed).max(CHUNK).div_ceil(CHUNK) * CHUNK;
            for data in [&mut self.k, &mut self.v] {
                let mut grown = vec![0f32; h * cap * d];
                for head in 0..h {
                    let old = &data[head * self.cap * d..(head * self.cap + self.len) * d];
                    grown[head * cap * d..head * cap * d + old.len()].copy_from_slice(old);
                }
                *data = grown;
            }
            self.cap = cap;
        }
        for i in 0..s {
            for head in 0..h {
                let dst = (head * self.cap + self.len + i) * d;
                let src = (i * h + head) * d;
                self.k[dst..dst + d].copy_from_slice(&k[src..src + d]);
                self.v[dst..dst + d].copy_from_slice(&v[src..src + d]);
            }
        }
        self.len = needed;
        Ok(())
    }

    /// The cached rows from position `first` to the end, for the attention.
    pub fn rows(&self, first: usize) -> crate::ggml::KvRows<'_> {
        crate::ggml::KvRows {
            k: &self.k,
            v: &self.v,
            stride: self.cap,
            first,
            t: self.len.saturating_sub(first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn host_cache_appends_truncates_and_grows_per_head() {
        let mut c = HostKv::new(2, 3);
        let rows = |c: &HostKv, head: usize| {
            let r = c.rows(0);
            r.k[head * r.stride * 3..(head * r.stride + r.t) * 3].to_vec()
        };
        // Two positions, `[position][head][dim]`: head 0 gets 0..6, head 1 gets 10..16.
        let k: Vec<f32> = [0., 1., 2., 10., 11., 12., 3., 4., 5., 13., 14., 15.].to_vec();
        c.append(&k, &k, 2).unwrap();
        c.truncate(1);
        let k2: Vec<f32> = [7., 7., 7., 17., 17., 17.].to_vec();
        c.append(&k2, &k2, 1).unwrap();
        assert_eq!(rows(&c, 0), [0., 1., 2., 7., 7., 7.]);
        c.truncate(2);
        c.append(&k, &k, 2).unwrap();
        assert_eq!(&rows(&c, 0)[6..], [0., 1., 2., 3., 4., 5.]);
        assert_eq!(&rows(&c, 1)[6..], [10., 11., 12., 13., 14., 15.]);
        c.truncate(2);
        assert_eq!(rows(&c, 1), [10., 11., 12., 17., 17., 17.]);
        // Grow past the first chunk: old rows survive at their new stride.
        let n = c.capacity();
        let big = vec![1f32; 2 * n * 3];
        c.append(&big, &big, n).unwrap();
        assert!(c.capacity() >= n + 2);
        assert_eq!(&rows(&c, 1)[..6], &[10., 11., 12., 17., 17., 17.]);
        assert_eq!(c.rows(1).t, n + 1);
        assert!(c.append(&big[..5], &big[..5], 1).is_err());
    }

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
