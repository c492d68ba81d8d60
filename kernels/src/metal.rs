//! Metal launch of `src/metal/topk.metal` on a candle tensor (macOS only). The source is
//! compiled once per device and thread at the first call.
//!
//! Written against candle 0.11.1's Metal backend; it is built only on macOS with the
//! `metal` feature.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backend::BackendStorage;
use candle_core::{DType, MetalDevice, Storage, Tensor};
use candle_metal_kernels::metal::{Buffer, ComputePipeline};
use objc2_metal::MTLSize;

use crate::cpu::{LogNorm, TopK};
use crate::prepare::{self, Row, Topk};
use crate::wire::packed_len;
use crate::{KernelError, Result};

const SOURCE: &str = include_str!("metal/topk.metal");
const TOPK_THREADS: usize = 512;
const GATHER_THREADS: usize = 256;
/// Largest k the kernel selects (`TTK_MAX_K` in topk.metal).
pub const MAX_K: usize = 64;

thread_local! {
    static PIPELINES: RefCell<HashMap<(String, &'static str), ComputePipeline>> =
        RefCell::new(HashMap::new());
}

fn dev_err(e: impl std::fmt::Display) -> KernelError {
    KernelError::Device(e.to_string())
}

fn pipeline(dev: &MetalDevice, name: &'static str) -> Result<ComputePipeline> {
    let key = (format!("{:?}", dev.id()), name);
    PIPELINES.with(|cache| {
        if let Some(p) = cache.borrow().get(&key) {
            return Ok(p.clone());
        }
        let lib = dev
            .device()
            .new_library_with_source(SOURCE, None)
            .map_err(dev_err)?;
        let func = lib.get_function(name, None).map_err(dev_err)?;
        let p = dev
            .device()
            .new_compute_pipeline_state_with_function(&func)
            .map_err(dev_err)?;
        cache.borrow_mut().insert(key, p.clone());
        Ok(p)
    })
}

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(KernelError::UnsupportedDType(format!("{other:?}"))),
    }
}

fn read_u32(buf: &Buffer, n: usize) -> Vec<u32> {
    let ptr = buf.contents() as *const u32;
    // SAFETY: the buffer was allocated with at least n u32 values in shared storage and
    // the device has finished writing it (wait_until_completed).
    unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec()
}

/// Fused softmax + top-k on the tensor's Metal device (see `crate::cuda::softmax_topk`).
pub fn softmax_topk(
    logits: &Tensor,
    temperature: f32,
    k: usize,
    allowed: Option<&[bool]>,
) -> Result<TopK> {
    let (
        Row {
            tensor: row, n32, ..
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
    let name: &'static str = match suffix(row.dtype())? {
        "f32" => "tutti_softmax_topk_f32",
        "bf16" => "tutti_softmax_topk_bf16",
        _ => "tutti_softmax_topk_f16",
    };
    let (storage, layout) = row.storage_and_layout();
    let Storage::Metal(ms) = &*storage else {
        return Err(KernelError::Device(
            "tensor is not on a Metal device".into(),
        ));
    };
    let dev = ms.device();
    let offset = layout.start_offset() * row.dtype().size_in_bytes();
    let words = packed_len(k) / 4;
    let out = dev.allocate_zeros(packed_len(k)).map_err(dev_err)?;
    let mask = dev.new_buffer_with_data(&mask_host).map_err(dev_err)?;
    let pipe = pipeline(dev, name)?;
    {
        let guard = dev.command_encoder().map_err(dev_err)?;
        let enc = guard.as_ref();
        enc.set_compute_pipeline_state(&pipe);
        enc.set_input_buffer(0, Some(ms.buffer()), offset);
        enc.set_bytes(1, &n32);
        enc.set_bytes(2, &temperature);
        enc.set_bytes(3, &k32);
        enc.set_input_buffer(4, Some(&*mask), 0);
        enc.set_bytes(5, &mask_len);
        enc.set_bytes(6, &has_mask);
        enc.set_output_buffer(7, Some(&*out), 0);
        enc.dispatch_thread_groups(
            MTLSize {
                width: 1,
                height: 1,
                depth: 1,
            },
            MTLSize {
                width: TOPK_THREADS,
                height: 1,
                depth: 1,
            },
        );
    }
    dev.wait_until_completed().map_err(dev_err)?;
    prepare::topk_result(&read_u32(&out, words))
}

/// Probabilities of `ids` under `norm` on the tensor's Metal device.
pub fn gather_probs(logits: &Tensor, norm: &LogNorm, ids: &[u32]) -> Result<Vec<f32>> {
    let Some((
        Row {
            tensor: row, n32, ..
        },
        n_ids,
    )) = prepare::gather(logits, ids)?
    else {
        return Ok(Vec::new());
    };
    let name: &'static str = match suffix(row.dtype())? {
        "f32" => "tutti_gather_probs_f32",
        "bf16" => "tutti_gather_probs_bf16",
        _ => "tutti_gather_probs_f16",
    };
    let (storage, layout) = row.storage_and_layout();
    let Storage::Metal(ms) = &*storage else {
        return Err(KernelError::Device(
            "tensor is not on a Metal device".into(),
        ));
    };
    let dev = ms.device();
    let offset = layout.start_offset() * row.dtype().size_in_bytes();
    let ids_buf = dev.new_buffer_with_data(ids).map_err(dev_err)?;
    let out = dev.allocate_zeros(4 * ids.len()).map_err(dev_err)?;
    let pipe = pipeline(dev, name)?;
    {
        let guard = dev.command_encoder().map_err(dev_err)?;
        let enc = guard.as_ref();
        enc.set_compute_pipeline_state(&pipe);
        enc.set_input_buffer(0, Some(ms.buffer()), offset);
        enc.set_bytes(1, &n32);
        enc.set_input_buffer(2, Some(&*ids_buf), 0);
        enc.set_bytes(3, &n_ids);
        enc.set_bytes(4, &norm.temperature);
        enc.set_bytes(5, &norm.max_logit);
        enc.set_bytes(6, &norm.log_z);
        enc.set_output_buffer(7, Some(&*out), 0);
        enc.dispatch_thread_groups(
            MTLSize {
                width: ids.len().div_ceil(GATHER_THREADS),
                height: 1,
                depth: 1,
            },
            MTLSize {
                width: GATHER_THREADS,
                height: 1,
                depth: 1,
            },
        );
    }
    dev.wait_until_completed().map_err(dev_err)?;
    Ok(read_u32(&out, ids.len())
        .into_iter()
        .map(f32::from_bits)
        .collect())
}
