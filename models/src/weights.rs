//! Reading tensors from an HF safetensors checkpoint or a GGUF file behind one interface,
//! so the decoder is written once.

use crate::quant::QuantLinear;
use crate::{Error, Result};
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A projection `y = x W^T (+ b)`, dense or quantized.
#[derive(Debug, Clone)]
pub struct Linear {
    w: QMatMul,
    /// The ggml-exact CPU path for quantized weights (see `quant/`).
    q: Option<QuantLinear>,
    b: Option<Tensor>,
    out_features: usize,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.q {
            Some(q) => q.forward(x)?,
            None => self.w.forward(x)?,
        };
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Whether the weight takes the ggml-exact quantized CPU path.
    pub(crate) fn is_quantized(&self) -> bool {
        self.q.is_some()
    }

    /// [`Linear::forward`] on `m` rows in host memory (CPU), into `out` (resized).
    pub(crate) fn forward_host(
        &self,
        x: &[f32],
        m: usize,
        out: &mut Vec<f32>,
    ) -> candle_core::Result<()> {
        match &self.q {
            Some(q) => q.forward_host(x, m, out)?,
            None => {
                let xt = Tensor::from_slice(x, (m, x.len() / m.max(1)), &Device::Cpu)?;
                let y = self.w.forward(&xt)?.to_dtype(DType::F32)?;
                out.clear();
                out.extend(y.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        if let Some(b) = &self.b {
            let b: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            for row in out.chunks_exact_mut(b.len().max(1)) {
                for (y, &bv) in row.iter_mut().zip(&b) {
                    *y += bv;
                }
            }
        }
        Ok(())
    }
}

/// The token embedding table, kept quantized when the file is quantized.
#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl Embedding {
    pub fn rows(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.dims()[0],
            Embedding::Quantized(q) => q.shape().dims()[0],
        }
    }

    /// Looks up rows; returns `[n, hidden]` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.embedding(ids)?.to_dtype(dtype),
            Embedding::Quantized(q) => q.embedding(ids)?.to_dtype(dtype),
        }
    }

    /// The whole table as F32 (used by relative-representation alignment).
    pub fn matrix(&self) -> candle_core::Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.to_dtype(DType::F32),
            Embedding::Quantized(q) => q.dequantize(&q.device()),
        }
    }

    /// The same table used as an output projection (tied embeddings), its CPU kernels
    /// summing in the `numerics` order.
    pub fn as_linear(&self, numerics: crate::Numerics) -> candle_core::Result<Linear> {
        let (w, q, out_features) = match self {
            Embedding::Dense(t) => (QMatMul::Tensor(t.clone()), None, t.dims()[0]),
            Embedding::Quantized(q) => (
                QMatMul::from_arc(q.clone())?,
                QuantLinear::supported(q).then(|| QuantLinear::new(q.clone(), numerics)),
                q.shape().dims()[0],
            ),
        };
        Ok(Linear {
            w,
            q,
            b: None,
            out_features,
        })
    }
}

enum Backend {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    /// Tensors already in memory (random-weight models, tests), by HF name.
    Map(std::collections::HashMap<String, Tensor>),
    Gguf {
        content: gguf_file::Content,
        file: std::sync::Mutex<File>,
    },
}

/// Tensors of one checkpoint, read on demand onto `device`.
pub struct Weights {
    backend: Backend,
    device: Device,
    /// Dtype for dense weights and activations.
    dtype: DType,
    desc: String,
    pub(crate) arch_name: String,
    /// The kernel order of quantized projections on the CPU.
    pub(crate) numerics: crate::Numerics,
}

impl Weights {
    pub fn from_safetensors(files: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        for f in files {
            if !f.exists() {
                return Err(Error::FileNotFound { path: f.clone() });
            }
        }
        // SAFETY: the files are memory-mapped read-only; modifying them while tutti runs
        // is not supported, as with every mmap-based loader.
        let st =
            unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }.map_err(|e| {
                Error::Io {
                    path: files.first().cloned().unwrap_or_default(),
                    message: format!("cannot read safetensors: {}", crate::error::one_line(&e)),
                }
            })?;
        Ok(Self {
            backend: Backend::Safetensors(st),
            device: device.clone(),
            dtype,
            desc: files
                .first()
                .and_then(|p| p.parent())
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            arch_name: String::new(),
            numerics: crate::Numerics::default(),
        })
    }

    pub fn from_gguf(path: &Path, content: gguf_file::Content, device: &Device) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            backend: Backend::Gguf {
                content,
                file: std::sync::Mutex::new(file),
            },
            device: device.clone(),
            dtype: DType::F32,
            desc: path.display().to_string(),
            arch_name: String::new(),
            numerics: crate::Numerics::default(),
        })
    }

    /// Tensors already on `device`, named as in an HF checkpoint; dense weights are used
    /// in `dtype`.
    pub fn from_tensors(
        tensors: std::collections::HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
        desc: impl Into<String>,
    ) -> Self {
        Self {
            backend: Backend::Map(tensors),
            device: device.clone(),
            dtype,
            desc: desc.into(),
            arch_name: String::new(),
            numerics: crate::Numerics::default(),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What the weights were read from (a path, or a description).
    pub fn desc(&self) -> &str {
        &self.desc
    }

    /// Shape of a tensor (`[out, in]` for projections), without reading its data.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match &self.backend {
            Backend::Safetensors(st) => st.get(name).ok().map(|t| t.shape().to_vec()),
            Backend::Map(m) => m.get(name).map(|t| t.dims().to_vec()),
            Backend::Gguf { content, .. } => content
                .tensor_infos
                .get(name)
                .map(|t| t.shape.dims().to_vec()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Safetensors(st) => st.get(name).is_ok(),
            Backend::Map(m) => m.contains_key(name),
            Backend::Gguf { content, .. } => content.tensor_infos.contains_key(name),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            source_desc: self.desc.clone(),
            arch: self.arch_name.clone(),
        }
    }

    fn qtensor(&self, name: &str) -> Result<QTensor> {
        match &self.backend {
            Backend::Gguf { content, file } => {
                if !content.tensor_infos.contains_key(name) {
                    return Err(self.missing(name));
                }
                let mut f = file.lock().map_err(|_| Error::Io {
                    path: self.desc.clone().into(),
                    message: "file handle poisoned".into(),
                })?;
                content
                    .tensor(&mut *f, name, &self.device)
                    .map_err(|e| Error::BadGguf {
                        path: self.desc.clone().into(),
                        reason: format!("tensor `{name}`: {}", crate::error::one_line(&e)),
                    })
            }
            Backend::Safetensors(_) | Backend::Map(_) => Err(self.missing(name)),
        }
    }

    /// A dense tensor in `dtype` (dequantized for GGUF).
    pub fn tensor(&self, name: &str, dtype: DType) -> Result<Tensor> {
        match &self.backend {
            Backend::Safetensors(st) => {
                let t = st
                    .load(name, &self.device)
                    .map_err(|_| self.missing(name))?;
                Ok(t.to_dtype(dtype)?)
            }
            Backend::Map(m) => Ok(m
                .get(name)
                .ok_or_else(|| self.missing(name))?
                .to_dtype(dtype)?),
            Backend::Gguf { .. } => Ok(self
                .qtensor(name)?
                .dequantize(&self.device)?
                .to_dtype(dtype)?),
        }
    }

    pub fn tensor_opt(&self, name: &str, dtype: DType) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.tensor(name, dtype).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A projection weight `[out, in]` with an optional bias, checked against `in_features`.
    pub fn linear(&self, weight: &str, bias: Option<&str>, in_features: usize) -> Result<Linear> {
        let (w, q, dims) = match &self.backend {
            Backend::Safetensors(_) | Backend::Map(_) => {
                let t = self.tensor(weight, self.dtype)?;
                let dims = t.dims().to_vec();
                (QMatMul::Tensor(t), None, dims)
            }
            Backend::Gguf { .. } => {
                let q = Arc::new(self.qtensor(weight)?);
                let dims = q.shape().dims().to_vec();
                let fast =
                    QuantLinear::supported(&q).then(|| QuantLinear::new(q.clone(), self.numerics));
                (QMatMul::from_arc(q)?, fast, dims)
            }
        };
        if dims.len() != 2 || dims[1] != in_features {
            return Err(Error::ShapeMismatch {
                name: weight.to_string(),
                found: dims,
                expected: vec![0, in_features],
            });
        }
        let b = match bias {
            Some(b) => self.tensor_opt(b, self.dtype)?,
            None => None,
        };
        Ok(Linear {
            w,
            q,
            b,
            out_features: dims[0],
        })
    }

    pub fn embedding(&self, name: &str) -> Result<Embedding> {
        match &self.backend {
            Backend::Safetensors(_) | Backend::Map(_) => {
                Ok(Embedding::Dense(self.tensor(name, self.dtype)?))
            }
            Backend::Gguf { .. } => {
                let q = self.qtensor(name)?;
                // Quantized lookup needs whole blocks per row; otherwise keep it dense.
                let hidden = q.shape().dims().get(1).copied().unwrap_or(0);
                if hidden % q.dtype().block_size() == 0 && q.dtype().block_size() > 1 {
                    Ok(Embedding::Quantized(Arc::new(q)))
                } else {
                    Ok(Embedding::Dense(q.dequantize(&self.device)?))
                }
            }
        }
    }

    /// A norm weight vector, with Gemma's `1 + w` folded in when asked.
    pub fn norm(&self, name: &str, plus_one: bool) -> Result<Tensor> {
        let w = self.tensor(name, DType::F32)?;
        let w = if plus_one { (w + 1.0)? } else { w };
        Ok(w.to_dtype(self.dtype)?)
    }
}

impl Linear {
    /// The weight as a dense F32 `[out, in]` matrix.
    pub fn dense_matrix(&self) -> candle_core::Result<Tensor> {
        match &self.w {
            QMatMul::QTensor(q) => q.dequantize(&q.device()),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(DType::F32),
        }
    }
}
