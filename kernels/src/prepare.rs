//! What the CUDA and Metal launches share on the host side: the checks and arguments of a
//! call, prepared the same way before either backend launches its kernel, and the reading
//! of the packed top-k result they copy back. Only the launch itself is backend code.

use candle_core::Tensor;

use crate::cpu::{effective_temperature, TopK};
use crate::{KernelError, Result};

/// `reserved[0]` flag the kernels set when the row holds no distribution.
const FLAG_NONFINITE: u32 = 1;

/// The logits of a call as the kernels read them: every element in one contiguous row.
pub(crate) struct Row {
    /// Contiguous, on the logits' device.
    pub tensor: Tensor,
    /// Elements in the row.
    pub n: usize,
    /// `n` as the kernels' `u32` index.
    pub n32: u32,
}

/// The arguments of a top-k launch besides the row.
pub(crate) struct Topk {
    /// As the CPU path takes it (0 = greedy).
    pub temperature: f32,
    pub k32: u32,
    /// One byte per id of the mask (1 = allowed); a single unread byte without one, as a
    /// device buffer cannot be empty.
    pub mask_host: Vec<u8>,
    pub mask_len: u32,
    /// 1 when the mask applies (an empty mask allows nothing).
    pub has_mask: i32,
}

/// `logits` flattened into one contiguous row whose length fits a `u32`.
fn row(logits: &Tensor) -> Result<Row> {
    let tensor = logits
        .flatten_all()
        .and_then(|t| t.contiguous())
        .map_err(|e| KernelError::Device(e.to_string()))?;
    let n = tensor.elem_count();
    let n32 = u32::try_from(n).map_err(|_| KernelError::TooLong(n))?;
    Ok(Row { tensor, n, n32 })
}

/// Checks a softmax + top-k call (the errors of the CPU path, then `k <= max_k`) and
/// prepares its row and arguments.
pub(crate) fn topk(
    logits: &Tensor,
    temperature: f32,
    k: usize,
    allowed: Option<&[bool]>,
    max_k: usize,
) -> Result<(Row, Topk)> {
    let temperature = effective_temperature(temperature)?;
    if k == 0 {
        return Err(KernelError::ZeroK);
    }
    if k > max_k {
        return Err(KernelError::KTooLarge { k, max: max_k });
    }
    let row = row(logits)?;
    if row.n == 0 {
        return Err(KernelError::EmptyLogits);
    }
    let (mask_host, has_mask): (Vec<u8>, i32) = match allowed {
        Some(m) if !m.is_empty() => (m.iter().map(|&b| b as u8).collect(), 1),
        Some(_) => (vec![0u8], 1),
        None => (vec![0u8], 0),
    };
    let mask_len: u32 = allowed.map_or(0, |m| u32::try_from(m.len()).unwrap_or(u32::MAX));
    let args = Topk {
        temperature,
        k32: k as u32,
        mask_host,
        mask_len,
        has_mask,
    };
    Ok((row, args))
}

/// Prepares a gather call: its row and the number of ids as a `u32`; `None` when there
/// are no ids (nothing to launch).
pub(crate) fn gather(logits: &Tensor, ids: &[u32]) -> Result<Option<(Row, u32)>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let row = row(logits)?;
    let n_ids = u32::try_from(ids.len()).map_err(|_| KernelError::TooLong(ids.len()))?;
    Ok(Some((row, n_ids)))
}

/// The top-k result from the packed words a kernel wrote ([`crate::wire`]).
pub(crate) fn topk_result(words: &[u32]) -> Result<TopK> {
    if words.get(6).copied() == Some(FLAG_NONFINITE) {
        return Err(KernelError::NonFinite);
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    TopK::from_packed(&bytes)
}
