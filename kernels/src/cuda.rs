//! CUDA launch of `src/cuda/topk.cu` (compiled to PTX by build.rs) on a candle tensor.
//!
//! One thread block per call: the kernel scans the row once and writes the packed
//! [`crate::wire`] buffer (`32 + 8k` bytes), which is the only device-to-host copy.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Storage, Tensor};

use crate::cpu::{LogNorm, TopK};
use crate::prepare::{self, Row, Topk};
use crate::wire::packed_len;
use crate::{KernelError, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/topk.ptx"));
const MODULE: &str = "tutti_topk";
/// Threads per block of the top-k kernel (`TTK_THREADS` in topk.cu).
const TOPK_THREADS: u32 = 512;
/// Largest k the kernel selects (`TTK_MAX_K` in topk.cu).
pub const MAX_K: usize = 64;
const GATHER_THREADS: u32 = 256;

fn dev_err(e: candle_core::Error) -> KernelError {
    KernelError::Device(e.to_string())
}

/// The contiguous element range of a single-row tensor and its CUDA storage.
fn cuda_view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    start: usize,
    len: usize,
) -> Result<CudaView<'a, T>> {
    let slice: &CudaSlice<T> = storage.as_cuda_slice::<T>().map_err(dev_err)?;
    Ok(slice.slice(start..start + len))
}

/// Fused softmax + top-k of `logits` (all elements form one row) on its CUDA device.
/// `k` must be in `1..=MAX_K`; `temperature` is checked as on the CPU path.
pub fn softmax_topk(
    logits: &Tensor,
    temperature: f32,
    k: usize,
    allowed: Option<&[bool]>,
) -> Result<TopK> {
    let (
        Row {
            tensor: row,
            n,
            n32,
        },
        args,
    ) = prepare::topk(logits, temperature, k, allowed, MAX_K)?;
    let Topk {
        temperature,
        k32,
        mask_host,
        mask_len,
        has_mask,
    } = args;
    let (storage, layout) = row.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(KernelError::Device("tensor is not on a CUDA device".into()));
    };
    let (start, _) = layout
        .contiguous_offsets()
        .ok_or_else(|| KernelError::Device("non-contiguous logits".into()))?;
    let dev: &CudaDevice = &cs.device;
    let mut out = dev.alloc_zeros::<u32>(packed_len(k) / 4).map_err(dev_err)?;
    let mask = dev.clone_htod(&mask_host).map_err(dev_err)?;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (TOPK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    macro_rules! launch {
        ($t:ty, $name:literal) => {{
            let view = cuda_view::<$t>(cs, start, n)?;
            let func = dev
                .get_or_load_custom_func($name, MODULE, PTX)
                .map_err(dev_err)?;
            let mut b = func.builder();
            b.arg(&view)
                .arg(&n32)
                .arg(&temperature)
                .arg(&k32)
                .arg(&mask)
                .arg(&mask_len)
                .arg(&has_mask)
                .arg(&mut out);
            // SAFETY: the argument list matches the kernel's signature in topk.cu; `out`
            // holds packed_len(k) bytes, `view` n elements, `mask` mask_len (or 1) bytes.
            unsafe { b.launch(cfg) }.w().map_err(dev_err)?;
        }};
    }
    match row.dtype() {
        DType::F32 => launch!(f32, "tutti_softmax_topk_f32"),
        DType::BF16 => launch!(half::bf16, "tutti_softmax_topk_bf16"),
        DType::F16 => launch!(half::f16, "tutti_softmax_topk_f16"),
        other => return Err(KernelError::UnsupportedDType(format!("{other:?}"))),
    }
    let words: Vec<u32> = dev.clone_dtoh(&out).map_err(dev_err)?;
    prepare::topk_result(&words)
}

/// Probabilities of `ids` under `norm` from the logits on the CUDA device (0 for ids past
/// the end).
pub fn gather_probs(logits: &Tensor, norm: &LogNorm, ids: &[u32]) -> Result<Vec<f32>> {
    let Some((
        Row {
            tensor: row,
            n,
            n32,
        },
        n_ids,
    )) = prepare::gather(logits, ids)?
    else {
        return Ok(Vec::new());
    };
    let (storage, layout) = row.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(KernelError::Device("tensor is not on a CUDA device".into()));
    };
    let (start, _) = layout
        .contiguous_offsets()
        .ok_or_else(|| KernelError::Device("non-contiguous logits".into()))?;
    let dev: &CudaDevice = &cs.device;
    let ids_dev = dev.clone_htod(ids).map_err(dev_err)?;
    let mut out = dev.alloc_zeros::<f32>(ids.len()).map_err(dev_err)?;
    let cfg = LaunchConfig {
        grid_dim: (n_ids.div_ceil(GATHER_THREADS), 1, 1),
        block_dim: (GATHER_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    macro_rules! launch {
        ($t:ty, $name:literal) => {{
            let view = cuda_view::<$t>(cs, start, n)?;
            let func = dev
                .get_or_load_custom_func($name, MODULE, PTX)
                .map_err(dev_err)?;
            let mut b = func.builder();
            b.arg(&view)
                .arg(&n32)
                .arg(&ids_dev)
                .arg(&n_ids)
                .arg(&norm.temperature)
                .arg(&norm.max_logit)
                .arg(&norm.log_z)
                .arg(&mut out);
            // SAFETY: matches the kernel's signature; `out` and `ids_dev` hold n_ids values.
            unsafe { b.launch(cfg) }.w().map_err(dev_err)?;
        }};
    }
    match row.dtype() {
        DType::F32 => launch!(f32, "tutti_gather_probs_f32"),
        DType::BF16 => launch!(half::bf16, "tutti_gather_probs_bf16"),
        DType::F16 => launch!(half::f16, "tutti_gather_probs_f16"),
        other => return Err(KernelError::UnsupportedDType(format!("{other:?}"))),
    }
    dev.clone_dtoh(&out).map_err(dev_err)
}
