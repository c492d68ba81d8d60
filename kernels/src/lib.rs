//! Per-step hot path of ensemble decoding: from one member's logits to its top-k
//! candidates (with probabilities) and the probabilities of the union candidates.
//!
//! Every step, every member's next-token distribution is reduced to
//! 1. [`softmax_topk`]: softmax with temperature over the whole vocabulary, the `k` most
//!    probable (optionally masked) ids, and the normaliser ([`LogNorm`]);
//! 2. [`gather_probs`]: the probabilities of arbitrary ids (the union of all members'
//!    candidates) under that same normaliser.
//!
//! This crate holds the CPU implementation ([`cpu`]), which is the reference the CUDA and
//! Metal kernels (built under the `cuda` / `metal` features) must reproduce, and the packed
//! result those kernels hand back to the host ([`wire`]). The CPU path is written in the
//! kernels' shape: one pass over fixed-size blocks, each block reduced to a local maximum,
//! a rescaled partial sum and (when it can beat the current k-th best) a selection update.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
#[cfg(all(feature = "metal", target_os = "macos"))]
pub mod metal;
#[cfg(any(feature = "cuda", all(feature = "metal", target_os = "macos")))]
mod prepare;
pub mod wire;

pub use cpu::{
    exp_nonpositive, gather_probs, log_norm, select_topk, select_topk_by, softmax_topk,
    softmax_topk_by, LogNorm, TopK, BLOCK,
};
pub use device::{gather_probs_tensor, softmax_topk_tensor, DEVICE_MAX_K};
pub use wire::{packed_len, PackedHeader, HEADER_BYTES, MAGIC};

/// Why a hot-path call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error("top-k needs k >= 1")]
    ZeroK,
    #[error("no logits")]
    EmptyLogits,
    #[error("temperature must be finite and >= 0 (got {0})")]
    BadTemperature(f32),
    #[error("logits hold NaN or +inf (or are all -inf): no distribution")]
    NonFinite,
    #[error("bad packed top-k buffer: {0}")]
    BadPacked(String),
    #[error("the device kernel selects at most {max} entries (asked for {k})")]
    KTooLarge { k: usize, max: usize },
    #[error("{0} entries do not fit a 32-bit index")]
    TooLong(usize),
    #[error("logits of dtype {0} are not supported (f32, bf16, f16)")]
    UnsupportedDType(String),
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;
