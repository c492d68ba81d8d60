//! One entry point per operation for a logits tensor on any device: the CUDA or Metal
//! kernel when the tensor lives on that device (and the feature is built), else the CPU
//! implementation on the tensor's values.

use candle_core::{DType, Tensor};

use crate::cpu::{LogNorm, TopK};
use crate::{KernelError, Result};

/// Largest `k` the device kernels select in one pass; a larger `k` on a device falls back
/// to the CPU path (one copy of the row to the host).
pub const DEVICE_MAX_K: usize = 64;

fn host_row(logits: &Tensor) -> Result<Vec<f32>> {
    logits
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| KernelError::Device(e.to_string()))
}

/// Softmax of `logits / temperature` and its `k` most probable ids among those `allowed`
/// marks ([`crate::softmax_topk`] semantics), for a logits tensor of any shape holding
/// one row (`[vocab]` or `[1, vocab]`) of dtype f32, bf16 or f16 on any device.
///
/// On CUDA (feature `cuda`) and Metal (feature `metal`, macOS) one fused kernel scans the
/// row on the device and only the packed result ([`crate::wire`], `32 + 8k` bytes) comes
/// back; ids and their order are those of the CPU path, probabilities and the normaliser
/// agree to float rounding. On the CPU, or for `k > DEVICE_MAX_K`, the row is read as f32
/// and [`crate::softmax_topk`] runs on it: bit-identical to calling it directly.
pub fn softmax_topk_tensor(
    logits: &Tensor,
    temperature: f32,
    k: usize,
    allowed: Option<&[bool]>,
) -> Result<TopK> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() && k <= DEVICE_MAX_K {
        return crate::cuda::softmax_topk(logits, temperature, k, allowed);
    }
    #[cfg(all(feature = "metal", target_os = "macos"))]
    if logits.device().is_metal() && k <= DEVICE_MAX_K {
        return crate::metal::softmax_topk(logits, temperature, k, allowed);
    }
    crate::cpu::softmax_topk(&host_row(logits)?, temperature, k, allowed)
}

/// Probabilities of `ids` under `norm` (from [`softmax_topk_tensor`] on the same logits),
/// computed where the logits live; 0 for ids past the end.
pub fn gather_probs_tensor(logits: &Tensor, norm: &LogNorm, ids: &[u32]) -> Result<Vec<f32>> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        return crate::cuda::gather_probs(logits, norm, ids);
    }
    #[cfg(all(feature = "metal", target_os = "macos"))]
    if logits.device().is_metal() {
        return crate::metal::gather_probs(logits, norm, ids);
    }
    Ok(crate::cpu::gather_probs(&host_row(logits)?, norm, ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cpu_tensor_path_is_the_slice_path() {
        let v: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let t = Tensor::from_vec(v.clone(), (1, v.len()), &Device::Cpu).unwrap();
        for temp in [0.0, 0.7, 1.0] {
            let a = softmax_topk_tensor(&t, temp, 12, None).unwrap();
            let b = crate::softmax_topk(&v, temp, 12, None).unwrap();
            assert_eq!(a, b);
            let ids = [0u32, 17, 4999, 5000];
            assert_eq!(
                gather_probs_tensor(&t, &a.norm, &ids).unwrap(),
                crate::gather_probs(&v, &b.norm, &ids)
            );
        }
        let bf = t.to_dtype(DType::BF16).unwrap();
        let vb: Vec<f32> = bf
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            softmax_topk_tensor(&bf, 1.0, 5, None).unwrap(),
            crate::softmax_topk(&vb, 1.0, 5, None).unwrap()
        );
    }
}
