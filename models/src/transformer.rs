//! The decoder shared by every family: embeddings → blocks (attention + MLP, with the
//! family's norm placement) → final norm → output projection.
//!
//! Family differences are switches in [`TransformerConfig`]; tensor names differ between
//! HF checkpoints and GGUF files and are resolved by [`TensorNames`].

use crate::config::{
    Activation, Architecture, RopeConfig, RopeScaling, RopeStyle, TransformerConfig, WeightFormat,
};
use crate::kv_cache::{HostKv, KvCache};
use crate::weights::{Embedding, Linear, Weights};
use crate::{CausalLm, ConfigError, Error, Result};
use candle_core::{DType, Device, Tensor, D};

mod batch;

/// Resolves the tensor names of one layer (or of the model) for a format.
pub struct TensorNames {
    format: WeightFormat,
    arch: Architecture,
}

impl TensorNames {
    pub fn new(format: WeightFormat, arch: Architecture) -> Self {
        Self { format, arch }
    }

    fn gemma(&self) -> bool {
        matches!(self.arch, Architecture::Gemma2 | Architecture::Gemma3)
    }

    pub fn embed(&self) -> &'static str {
        match self.format {
            WeightFormat::HuggingFace => "model.embed_tokens.weight",
            WeightFormat::Gguf => "token_embd.weight",
        }
    }

    pub fn final_norm(&self) -> &'static str {
        match self.format {
            WeightFormat::HuggingFace => "model.norm.weight",
            WeightFormat::Gguf => "output_norm.weight",
        }
    }

    pub fn lm_head(&self) -> &'static str {
        match self.format {
            WeightFormat::HuggingFace => "lm_head.weight",
            WeightFormat::Gguf => "output.weight",
        }
    }

    /// Name of a per-layer tensor given its role.
    pub fn layer(&self, i: usize, role: Role) -> String {
        let (hf, gguf) = match role {
            Role::AttnNorm => ("input_layernorm", "attn_norm"),
            Role::Q => ("self_attn.q_proj", "attn_q"),
            Role::K => ("self_attn.k_proj", "attn_k"),
            Role::V => ("self_attn.v_proj", "attn_v"),
            Role::Qkv => ("self_attn.qkv_proj", "attn_qkv"),
            Role::O => ("self_attn.o_proj", "attn_output"),
            Role::QNorm => ("self_attn.q_norm", "attn_q_norm"),
            Role::KNorm => ("self_attn.k_norm", "attn_k_norm"),
            Role::PostAttnNorm => ("post_attention_layernorm", "post_attention_norm"),
            // In Llama-style HF checkpoints the pre-MLP norm is the one called
            // `post_attention_layernorm`; Gemma calls it `pre_feedforward_layernorm`.
            Role::FfnNorm if self.gemma() => ("pre_feedforward_layernorm", "ffn_norm"),
            Role::FfnNorm => ("post_attention_layernorm", "ffn_norm"),
            Role::PostFfnNorm => ("post_feedforward_layernorm", "post_ffw_norm"),
            Role::Gate => ("mlp.gate_proj", "ffn_gate"),
            Role::Up => ("mlp.up_proj", "ffn_up"),
            Role::GateUp => ("mlp.gate_up_proj", "ffn_up"),
            Role::Down => ("mlp.down_proj", "ffn_down"),
        };
        match self.format {
            WeightFormat::HuggingFace => format!("model.layers.{i}.{hf}"),
            WeightFormat::Gguf => format!("blk.{i}.{gguf}"),
        }
    }
}

/// Checks, before any tensor is read, that the checkpoint holds the tensors `cfg`
/// implies with the shapes it implies: embedding `[vocab, hidden]`, q/k/v/o and MLP
/// projections `[out, in]`, norms `[hidden]` (q/k norms `[head_dim]`), and no layer past
/// the last. `shape_of` gives a tensor's shape without reading it; `desc` names the
/// checkpoint in errors.
pub fn check_shapes(
    cfg: &TransformerConfig,
    format: WeightFormat,
    desc: &str,
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<()> {
    let check = |name: &str, expected: &[usize], required: bool| -> Result<()> {
        match shape_of(name) {
            None if required => Err(Error::MissingTensor {
                name: name.to_string(),
                source_desc: desc.to_string(),
                arch: cfg.arch.name().to_string(),
            }),
            Some(found) if found != expected => Err(Error::invalid(
                desc,
                ConfigError::TensorShape {
                    name: name.to_string(),
                    found,
                    expected: expected.to_vec(),
                },
            )),
            _ => Ok(()),
        }
    };
    let need = |name: &str, expected: &[usize]| check(name, expected, true);
    let names = TensorNames::new(format, cfg.arch);
    let (h, hd, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    need(names.embed(), &[cfg.vocab_size, h])?;
    need(names.final_norm(), &[h])?;
    if !cfg.tie_word_embeddings {
        check(names.lm_head(), &[cfg.vocab_size, h], false)?;
    }
    for i in 0..cfg.num_layers {
        let w = |r: Role| format!("{}.weight", names.layer(i, r));
        let has = |r: Role| shape_of(&w(r)).is_some();
        need(&w(Role::AttnNorm), &[h])?;
        need(&w(Role::FfnNorm), &[h])?;
        if has(Role::Qkv) {
            need(&w(Role::Qkv), &[q_out + 2 * kv_out, h])?;
        } else {
            need(&w(Role::Q), &[q_out, h])?;
            need(&w(Role::K), &[kv_out, h])?;
            need(&w(Role::V), &[kv_out, h])?;
        }
        need(&w(Role::O), &[h, q_out])?;
        if cfg.qk_norm {
            need(&w(Role::QNorm), &[hd])?;
            need(&w(Role::KNorm), &[hd])?;
        }
        if cfg.sandwich_norms {
            need(&w(Role::PostAttnNorm), &[h])?;
            need(&w(Role::PostFfnNorm), &[h])?;
        }
        if fused_mlp(format, has(Role::GateUp), has(Role::Gate)) {
            need(&w(Role::GateUp), &[2 * ff, h])?;
        } else {
            need(&w(Role::Gate), &[ff, h])?;
            need(&w(Role::Up), &[ff, h])?;
        }
        need(&w(Role::Down), &[h, ff])?;
    }
    let next = format!("{}.weight", names.layer(cfg.num_layers, Role::AttnNorm));
    if shape_of(&next).is_some() {
        return Err(Error::invalid(
            desc,
            ConfigError::ExtraLayers {
                layers: cfg.num_layers,
            },
        ));
    }
    Ok(())
}

/// Whether a layer's MLP is one `[gate; up]` projection (Phi-3): HF names it, GGUF
/// stores it as `ffn_up` with no `ffn_gate`.
fn fused_mlp(format: WeightFormat, has_gate_up: bool, has_gate: bool) -> bool {
    match format {
        WeightFormat::HuggingFace => has_gate_up,
        WeightFormat::Gguf => !has_gate,
    }
}

/// The role of a per-layer tensor.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    AttnNorm,
    Q,
    K,
    V,
    Qkv,
    O,
    QNorm,
    KNorm,
    PostAttnNorm,
    FfnNorm,
    PostFfnNorm,
    Gate,
    Up,
    GateUp,
    Down,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    w: Tensor,
    eps: f32,
    /// `w` in host memory when it is an f32 CPU tensor (the ggml-exact path).
    host: Vec<f32>,
}

impl RmsNorm {
    fn new(w: Tensor, eps: f32) -> candle_core::Result<Self> {
        let host = if w.device().is_cpu() && w.dtype() == DType::F32 {
            w.flatten_all()?.to_vec1()?
        } else {
            Vec::new()
        };
        Ok(Self { w, eps, host })
    }

    fn load(w: &Weights, name: &str, cfg: &TransformerConfig) -> Result<Self> {
        Ok(Self::new(
            w.norm(&format!("{name}.weight"), cfg.norm_plus_one)?,
            cfg.rms_norm_eps as f32,
        )?)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && !self.host.is_empty() {
            let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let mut out = vec![0f32; xs.len()];
            self.rows(&xs, &mut out)?;
            return Tensor::from_vec(out, x.dims(), x.device());
        }
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.w, self.eps)
    }

    /// RMS norm of every row of `x` (rows as long as the weight) into `out`, computed
    /// like ggml (`ggml_compute_forward_rms_norm_f32`): the sum of squares accumulated
    /// in f64, `scale = 1 / sqrt(mean + eps)` in f32 and `y = (x * scale) * w`. Quantized
    /// matmuls round their inputs to 8 bits, so the last bit of the norm decides some
    /// roundings; matching ggml's arithmetic keeps them identical.
    fn rows(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        let n = self.host.len();
        if n == 0 || !x.len().is_multiple_of(n) || out.len() < x.len() {
            candle_core::bail!(
                "rms_norm: weight has {n} elements, input {} values",
                x.len()
            );
        }
        for (xr, yr) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
            let mean = (sum / n as f64) as f32;
            let scale = 1.0f32 / (mean + self.eps).sqrt();
            for ((y, &v), &g) in yr.iter_mut().zip(xr).zip(&self.host) {
                *y = v * scale * g;
            }
        }
        Ok(())
    }

    /// [`RmsNorm::rows`] with the rows spread over the CPU threads when there are many.
    fn rows_par(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        let n = self.host.len();
        if n == 0 || !x.len().is_multiple_of(n) || out.len() < x.len() {
            return self.rows(x, out);
        }
        let out = &mut out[..x.len()];
        crate::pool::for_pieces_mut(out, n, PAR_MIN, &|off, piece| {
            // The shapes were checked above, so the pieces cannot fail.
            let _ = self.rows(&x[off..off + piece.len()], piece);
        });
        Ok(())
    }

    /// [`RmsNorm::rows`] in place (`tmp` holds the input).
    fn rows_in_place(&self, x: &mut [f32], tmp: &mut Vec<f32>) -> candle_core::Result<()> {
        tmp.clear();
        tmp.extend_from_slice(x);
        self.rows_par(tmp, x)
    }
}

#[derive(Clone)]
enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Clone)]
struct Attention {
    qkv: QkvProj,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
    /// Sliding window for this layer, if it is a local layer.
    window: Option<usize>,
    rope_style: RopeStyle,
    cache: KvCache,
    /// The cache of the llama.cpp-exact attention (`ggml_compat` without softcap),
    /// used instead of `cache`.
    host_cache: Option<HostKv>,
    /// Follow llama.cpp's CPU arithmetic (see `ggml.rs`): q, k, v and the attention
    /// probabilities rounded to f16 like its default attention (f16 KV cache, `mul_mat`
    /// converting its f32 operand to the cache's f16), ggml's rope, softmax and MLP
    /// activations.
    ggml_compat: bool,
    /// Whether a prompt's rows take llama.cpp's several-row attention (see
    /// [`crate::Numerics`]).
    by_shape: bool,
}

/// Rounds an f32 tensor to the nearest f16 values, keeping f32 storage.
fn round_f16(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.dtype() == DType::F32 {
        t.to_dtype(DType::F16)?.to_dtype(DType::F32)
    } else {
        Ok(t.clone())
    }
}

/// Rotary tables for the positions of one forward call.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// ggml's own cos/sin table (`[s][half][cos, sin]`) when following llama.cpp.
    ggml: Option<Vec<f32>>,
}

impl Attention {
    /// The first key any query from `pos0` on can see (older keys are outside every
    /// query's window).
    fn first_key(&self, pos0: usize) -> usize {
        match self.window {
            Some(w) => (pos0 + 1).saturating_sub(w),
            None => 0,
        }
    }

    /// The llama.cpp-exact attention of `s` queries at `pos0` (`q`: `[nh, s, hd]`,
    /// rounded to f16) over the host cache, which already holds their keys.
    fn attend_host(&self, q: &[f32], pos0: usize, s: usize, out: &mut [f32]) {
        if let Some(cache) = &self.host_cache {
            self.attend_in(cache, q, pos0, s, out);
        }
    }

    /// [`Attention::attend_host`] over `cache`, one sequence's keys and values.
    fn attend_in(&self, cache: &HostKv, q: &[f32], pos0: usize, s: usize, out: &mut [f32]) {
        let first_key = self.first_key(pos0);
        let window = self.window;
        let visible = |i: usize, j: usize| {
            let (qp, kp) = (pos0 + i, first_key + j);
            kp <= qp && window.is_none_or(|w| qp - kp < w)
        };
        crate::ggml::attention(
            q,
            cache.rows(first_key),
            self.num_heads,
            self.num_kv_heads,
            s,
            self.head_dim,
            self.scale as f32,
            visible,
            self.by_shape,
            out,
        );
    }

    fn truncate_cache(&mut self, len: usize) {
        self.cache.truncate(len);
        if let Some(c) = self.host_cache.as_mut() {
            c.truncate(len);
        }
    }

    /// Empty caches with nothing shared with any other copy of this layer.
    fn fresh_cache(&mut self) {
        self.cache = KvCache::new();
        if let Some(c) = self.host_cache.as_mut() {
            *c = HostKv::new(self.num_kv_heads, self.head_dim);
        }
    }

    fn forward(&mut self, x: &Tensor, pos0: usize, rot: &Rotary) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            QkvProj::Fused(qkv) => {
                let t = qkv.forward(x)?;
                (
                    t.narrow(D::Minus1, 0, nh * hd)?,
                    t.narrow(D::Minus1, nh * hd, nkv * hd)?,
                    t.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let mut q = heads(q, nh)?;
        let mut k = heads(k, nkv)?;
        let v = heads(v, nkv)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        let rope = match self.rope_style {
            RopeStyle::Halves => candle_nn::rotary_emb::rope,
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i,
        };
        let (mut q, mut k) = match &rot.ggml {
            Some(table) if b == 1 && q.dtype() == DType::F32 && q.device().is_cpu() => {
                let il = self.rope_style == RopeStyle::Interleaved;
                let mut qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
                let mut kv: Vec<f32> = k.flatten_all()?.to_vec1()?;
                crate::ggml::rope(&mut qv, nh, s, hd, table, il);
                crate::ggml::rope(&mut kv, nkv, s, hd, table, il);
                (
                    Tensor::from_vec(qv, q.shape(), q.device())?,
                    Tensor::from_vec(kv, k.shape(), k.device())?,
                )
            }
            _ => (rope(&q, &rot.cos, &rot.sin)?, rope(&k, &rot.cos, &rot.sin)?),
        };
        let mut v = v;
        if self.ggml_compat {
            q = round_f16(&q)?;
            k = round_f16(&k)?;
            v = round_f16(&v)?;
        }
        if let Some(cache) = self.host_cache.as_mut() {
            if b != 1 {
                candle_core::bail!("the llama.cpp-exact attention takes one sequence, got {b}");
            }
            // `[b, heads, s, hd]` to the `[s, heads, hd]` rows the host cache takes.
            let rows = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
                t.transpose(1, 2)?.contiguous()?.flatten_all()?.to_vec1()
            };
            let (qv, kv, vv) = (rows(&q)?, rows(&k)?, rows(&v)?);
            cache.append(&kv, &vv, s)?;
            let mut out = vec![0f32; s * nh * hd];
            self.attend_host(&qv, pos0, s, &mut out);
            let out = Tensor::from_vec(out, (b, s, nh * hd), x.device())?;
            return self.o.forward(&out);
        }
        let (k_all, v_all) = self.cache.append(&k, &v)?;

        // Keys older than the first query's window are invisible to every query.
        let first_key = self.first_key(pos0);
        let total = k_all.dim(2)?;
        let (k_all, v_all) = if first_key > 0 {
            (
                k_all.narrow(2, first_key, total - first_key)?,
                v_all.narrow(2, first_key, total - first_key)?,
            )
        } else {
            (k_all, v_all)
        };
        let t = total - first_key;
        let n_rep = nh / nkv;
        // Grouped-query attention without copying keys: fold the query heads that share
        // a kv head into the row dimension.
        let q = q.reshape((b, nkv, n_rep * s, hd))?;
        let mut att = (q.matmul(&k_all.contiguous()?.t()?)? * self.scale)?;
        if let Some(cap) = self.softcap {
            att = ((att / cap)?.tanh()? * cap)?;
        }
        let att = att.to_dtype(DType::F32)?;
        let att = if s > 1 {
            let mask = causal_mask(s, pos0, first_key, t, self.window, x.device())?;
            att.reshape((b, nkv, n_rep, s, t))?
                .broadcast_add(&mask)?
                .reshape((b, nkv, n_rep * s, t))?
        } else {
            att
        };
        let mut p = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(v_all.dtype())?;
        if self.ggml_compat {
            p = round_f16(&p)?;
        }
        let out = p.matmul(&v_all.contiguous()?)?;
        let out = out
            .reshape((b, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((b, s, nh * hd))?;
        self.o.forward(&out)
    }
}

/// Additive mask `[s, t]`: query `i` sits at absolute position `pos0 + i`, key `j` at
/// `first_key + j`.
fn causal_mask(
    s: usize,
    pos0: usize,
    first_key: usize,
    t: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; s * t];
    for i in 0..s {
        let qp = pos0 + i;
        for j in 0..t {
            let kp = first_key + j;
            let visible = kp <= qp && window.is_none_or(|w| qp - kp < w);
            if !visible {
                m[i * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (s, t), device)
}

#[derive(Clone)]
enum Mlp {
    Separate {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    Fused {
        gate_up: Linear,
        down: Linear,
        ff: usize,
    },
}

impl Mlp {
    fn forward(&self, x: &Tensor, act: Activation, ggml: bool) -> candle_core::Result<Tensor> {
        if ggml && x.device().is_cpu() && x.dtype() == DType::F32 {
            let (g, u, down) = match self {
                Mlp::Separate { gate, up, down } => (gate.forward(x)?, up.forward(x)?, down),
                Mlp::Fused { gate_up, down, ff } => {
                    let gu = gate_up.forward(x)?;
                    (
                        gu.narrow(D::Minus1, 0, *ff)?,
                        gu.narrow(D::Minus1, *ff, *ff)?,
                        down,
                    )
                }
            };
            let dims = g.dims().to_vec();
            let mut gv: Vec<f32> = g.contiguous()?.flatten_all()?.to_vec1()?;
            let uv: Vec<f32> = u.contiguous()?.flatten_all()?.to_vec1()?;
            match act {
                Activation::Silu => crate::ggml::swiglu(&mut gv, &uv),
                Activation::GeluTanh => crate::ggml::geglu(&mut gv, &uv),
            }
            let h = Tensor::from_vec(gv, dims, x.device())?;
            return down.forward(&h);
        }
        let apply = |t: &Tensor| match act {
            Activation::Silu => candle_nn::ops::silu(t),
            Activation::GeluTanh => t.gelu(),
        };
        match self {
            Mlp::Separate { gate, up, down } => {
                let g = gate.forward(x)?;
                let u = up.forward(x)?;
                let h = (apply(&g)? * u)?;
                down.forward(&h)
            }
            Mlp::Fused { gate_up, down, ff } => {
                let gu = gate_up.forward(x)?;
                let g = gu.narrow(D::Minus1, 0, *ff)?;
                let u = gu.narrow(D::Minus1, *ff, *ff)?;
                down.forward(&(apply(&g)? * u)?)
            }
        }
    }
}

#[derive(Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    post_ffn_norm: Option<RmsNorm>,
    sliding: bool,
}

impl Block {
    fn forward(
        &mut self,
        x: &Tensor,
        pos0: usize,
        rot: &Rotary,
        act: Activation,
        last_only: bool,
    ) -> candle_core::Result<Tensor> {
        let mut x = self.attend(x, pos0, rot)?;
        if last_only {
            // Only the last position feeds the logits: like llama.cpp (which drops the
            // other rows after the last attention), skip their MLP. Besides saving work
            // this keeps the MLP's batch size, which selects llama.cpp's kernels, equal.
            x = last_row(&x)?;
        }
        self.feed_forward(&x, act)
    }

    /// The attention half with its residual (appends to the KV cache).
    fn attend(&mut self, x: &Tensor, pos0: usize, rot: &Rotary) -> candle_core::Result<Tensor> {
        let mut h = self.attn.forward(&self.attn_norm.forward(x)?, pos0, rot)?;
        if let Some(n) = &self.post_attn_norm {
            h = n.forward(&h)?;
        }
        x + h
    }

    /// The MLP half with its residual.
    fn feed_forward(&self, x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
        let mut h = self
            .mlp
            .forward(&self.ffn_norm.forward(x)?, act, self.attn.ggml_compat)?;
        if let Some(n) = &self.post_ffn_norm {
            h = n.forward(&h)?;
        }
        x + h
    }
}

impl Block {
    /// Whether every projection takes the exact quantized path and the attention the
    /// host cache (the conditions of the host decode step).
    fn is_host_exact(&self) -> bool {
        let a = &self.attn;
        let qkv = match &a.qkv {
            QkvProj::Separate { q, k, v } => {
                q.is_quantized() && k.is_quantized() && v.is_quantized()
            }
            QkvProj::Fused(l) => l.is_quantized(),
        };
        let mlp = match &self.mlp {
            Mlp::Separate { gate, up, down } => {
                gate.is_quantized() && up.is_quantized() && down.is_quantized()
            }
            Mlp::Fused { gate_up, down, .. } => gate_up.is_quantized() && down.is_quantized(),
        };
        let norms = [
            Some(&self.attn_norm),
            Some(&self.ffn_norm),
            a.q_norm.as_ref(),
            a.k_norm.as_ref(),
        ]
        .into_iter()
        .chain([self.post_attn_norm.as_ref(), self.post_ffn_norm.as_ref()])
        .flatten()
        .all(|n| !n.host.is_empty());
        qkv && mlp && norms && a.o.is_quantized() && a.host_cache.is_some() && a.ggml_compat
    }

    /// [`Block::attend`] on host buffers for the rows of every part (`sc.x`, `[rows,
    /// hidden]`, in and out); `caches[p]` is part `p`'s cache of this layer.
    fn attend_rows(
        &self,
        parts: &[Part],
        caches: &mut [&mut HostKv],
        table: &[f32],
        sc: &mut Scratch,
    ) -> candle_core::Result<()> {
        sc.normed.resize(sc.x.len(), 0.0);
        self.attn_norm.rows_par(&sc.x, &mut sc.normed)?;
        self.attn.forward_rows(parts, caches, table, sc)?;
        if let Some(n) = &self.post_attn_norm {
            n.rows_in_place(&mut sc.proj, &mut sc.tmp)?;
        }
        add_rows(&mut sc.x, &sc.proj);
        Ok(())
    }

    /// [`Block::feed_forward`] for the `m` rows of `sc.x` on host buffers.
    fn feed_forward_host(
        &self,
        m: usize,
        act: Activation,
        sc: &mut Scratch,
    ) -> candle_core::Result<()> {
        sc.normed.resize(sc.x.len(), 0.0);
        self.ffn_norm.rows_par(&sc.x, &mut sc.normed)?;
        self.mlp.forward_host(m, act, sc)?;
        if let Some(n) = &self.post_ffn_norm {
            n.rows_in_place(&mut sc.proj, &mut sc.tmp)?;
        }
        add_rows(&mut sc.x, &sc.proj);
        Ok(())
    }
}

/// Element-wise work shorter than this runs on the calling thread: a parallel section
/// costs more than a decode step's few thousand values.
const PAR_MIN: usize = 16 * 1024;

/// `x += h` (the residual), spread over the CPU threads when long.
fn add_rows(x: &mut [f32], h: &[f32]) {
    crate::pool::for_pieces_mut(x, 1, PAR_MIN, &|off, piece| {
        for (x, &h) in piece.iter_mut().zip(&h[off..]) {
            *x += h;
        }
    });
}

/// Rounds every value to the nearest f16 (kept as f32), like a store to an f16 cache.
fn round_f16_rows(x: &mut [f32]) {
    crate::pool::for_pieces_mut(x, 1, PAR_MIN, &|_, piece| {
        for x in piece.iter_mut() {
            *x = half::f16::from_f32(*x).to_f32();
        }
    });
}

/// Copies columns `cols` of every `width`-wide row of `src` into `dst` (rows kept).
fn take_columns(src: &[f32], width: usize, cols: std::ops::Range<usize>, dst: &mut Vec<f32>) {
    dst.clear();
    for row in src.chunks_exact(width) {
        dst.extend_from_slice(&row[cols.clone()]);
    }
}

impl Attention {
    /// [`Attention::forward`] on host buffers for the rows of every part: `sc.normed`
    /// in, `sc.proj` out. `table` holds ggml's rotary angles of every row. The
    /// projections run once over all rows; each part appends to its own cache and
    /// attends over it.
    fn forward_rows(
        &self,
        parts: &[Part],
        caches: &mut [&mut HostKv],
        table: &[f32],
        sc: &mut Scratch,
    ) -> candle_core::Result<()> {
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let rows = parts.iter().map(|p| p.s).sum();
        match &self.qkv {
            QkvProj::Separate { q, k, v } => {
                q.forward_host(&sc.normed, rows, &mut sc.q)?;
                k.forward_host(&sc.normed, rows, &mut sc.k)?;
                v.forward_host(&sc.normed, rows, &mut sc.v)?;
            }
            QkvProj::Fused(qkv) => {
                qkv.forward_host(&sc.normed, rows, &mut sc.fused)?;
                let width = (nh + 2 * nkv) * hd;
                take_columns(&sc.fused, width, 0..nh * hd, &mut sc.q);
                take_columns(&sc.fused, width, nh * hd..(nh + nkv) * hd, &mut sc.k);
                take_columns(&sc.fused, width, (nh + nkv) * hd..width, &mut sc.v);
            }
        }
        if let Some(n) = &self.q_norm {
            n.rows_in_place(&mut sc.q, &mut sc.tmp)?;
        }
        if let Some(n) = &self.k_norm {
            n.rows_in_place(&mut sc.k, &mut sc.tmp)?;
        }
        let il = self.rope_style == RopeStyle::Interleaved;
        for (t, heads) in [(&mut sc.q, nh), (&mut sc.k, nkv)] {
            crate::pool::for_pieces_mut(t, heads * hd, PAR_MIN, &|off, piece| {
                let first = off / (heads * hd);
                crate::ggml::rope_rows(piece, heads, hd, &table[first * hd..], il);
            });
        }
        for t in [&mut sc.q, &mut sc.k, &mut sc.v] {
            round_f16_rows(t);
        }
        sc.att.resize(rows * nh * hd, 0.0);
        for (p, cache) in parts.iter().zip(caches.iter_mut()) {
            let kv = p.row0 * nkv * hd..(p.row0 + p.s) * nkv * hd;
            cache.append(&sc.k[kv.clone()], &sc.v[kv], p.s)?;
            let q = p.row0 * nh * hd..(p.row0 + p.s) * nh * hd;
            self.attend_in(cache, &sc.q[q.clone()], p.pos0, p.s, &mut sc.att[q]);
        }
        self.o.forward_host(&sc.att, rows, &mut sc.proj)
    }
}

impl Mlp {
    /// [`Mlp::forward`] (ggml arithmetic) for `m` rows: `sc.normed` in, `sc.proj` out.
    fn forward_host(&self, m: usize, act: Activation, sc: &mut Scratch) -> candle_core::Result<()> {
        let down = match self {
            Mlp::Separate { gate, up, down } => {
                gate.forward_host(&sc.normed, m, &mut sc.gate)?;
                up.forward_host(&sc.normed, m, &mut sc.up)?;
                down
            }
            Mlp::Fused { gate_up, down, ff } => {
                gate_up.forward_host(&sc.normed, m, &mut sc.fused)?;
                take_columns(&sc.fused, 2 * ff, 0..*ff, &mut sc.gate);
                take_columns(&sc.fused, 2 * ff, *ff..2 * ff, &mut sc.up);
                down
            }
        };
        let up = &sc.up;
        crate::pool::for_pieces_mut(&mut sc.gate, 1, PAR_MIN, &|off, g| {
            let u = &up[off..off + g.len()];
            match act {
                Activation::Silu => crate::ggml::swiglu(g, u),
                Activation::GeluTanh => crate::ggml::geglu(g, u),
            }
        });
        down.forward_host(&sc.gate, m, &mut sc.proj)
    }
}

/// Which logits a host forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowsOut {
    /// The last row of each part.
    Last,
    /// The last row, and the log-probability of each next id from the earlier rows.
    Scored,
    /// Every row (one part).
    Every,
}

/// [`CausalLm::forward_rows`] as one forward per id: the rows a decode gives.
pub(crate) fn forward_rows_by_steps<M: CausalLm + ?Sized>(
    lm: &mut M,
    ids: &[u32],
) -> Result<Tensor> {
    let pos0 = lm.position();
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        match lm.forward(std::slice::from_ref(id)) {
            Ok(t) => rows.push(t),
            Err(e) => {
                lm.truncate(pos0);
                return Err(e);
            }
        }
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// The last position of `[1, s, hidden]`.
fn last_row(x: &Tensor) -> candle_core::Result<Tensor> {
    let s = x.dim(1)?;
    x.narrow(1, s - 1, 1)
}

/// Rows of hidden states scored per output-projection call: bounds the `rows × vocab`
/// logits held at once (64 × 262,144 f32 = 64 MiB).
const SCORE_ROWS: usize = 64;

/// Whether to follow llama.cpp's CPU arithmetic: GGUF weights, computed on the CPU in f32
/// (`TUTTI_NO_GGML_COMPAT` turns it off, e.g. to compare with the plain candle path).
fn ggml_mode(format: WeightFormat, w: &Weights) -> bool {
    format == WeightFormat::Gguf
        && w.device().is_cpu()
        && w.dtype() == DType::F32
        && std::env::var_os("TUTTI_NO_GGML_COMPAT").is_none()
}

/// Inverse frequencies of one rotary configuration.
fn inv_freqs(head_dim: usize, rope: &RopeConfig, freq_factors: Option<&[f32]>) -> Vec<f64> {
    let half = head_dim / 2;
    (0..half)
        .map(|i| {
            let mut f = 1.0 / rope.theta.powf((2 * i) as f64 / head_dim as f64);
            match rope.scaling {
                RopeScaling::None => {}
                RopeScaling::Linear { factor } => f /= factor,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings: orig,
                } => {
                    let low_wavelen = orig / low_freq_factor;
                    let high_wavelen = orig / high_freq_factor;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen > low_wavelen {
                        f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (orig / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        f = (1.0 - smooth) * f / factor + smooth * f;
                    }
                }
            }
            if let Some(ff) = freq_factors {
                f /= ff.get(i).copied().unwrap_or(1.0) as f64;
            }
            f
        })
        .collect()
}

/// A loaded decoder with its KV caches.
#[derive(Clone)]
pub struct Transformer {
    cfg: TransformerConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    untied_head: bool,
    inv_freq_global: Vec<f64>,
    inv_freq_local: Vec<f64>,
    dtype: DType,
    device: Device,
    position: usize,
    /// Follow llama.cpp's CPU arithmetic (GGUF weights on the CPU in f32, see `ggml.rs`).
    ggml: bool,
    has_freq_factors: bool,
    /// Run forwards on host buffers ([`Transformer::forward_host`]): `ggml` with every
    /// layer on the exact quantized path and ggml's rotary tables.
    host_path: bool,
    scratch: Scratch,
    /// [`CausalLm::inject_panic_after_layer`]: armed for the next forward only.
    panic_after_layer: Option<usize>,
    /// Shared by a model and its forks: the weights a batched forward may share.
    weights_id: std::sync::Arc<()>,
}

/// The buffers of a host forward, kept from decode step to decode step.
#[derive(Clone, Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    fused: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    tmp: Vec<f32>,
    logits: Vec<f32>,
}

/// One sequence's rows in a host forward: `s` new positions from `pos0`, at rows
/// `row0..row0 + s` of the call.
#[derive(Clone, Copy, Debug)]
struct Part {
    pos0: usize,
    s: usize,
    row0: usize,
}

impl Transformer {
    /// Builds the decoder from `w`. The config is validated and the tensor shapes are
    /// checked against it before any tensor is read.
    pub fn load(w: &Weights, cfg: TransformerConfig, format: WeightFormat) -> Result<Self> {
        cfg.validate().map_err(|p| Error::invalid(w.desc(), p))?;
        check_shapes(&cfg, format, w.desc(), |name| w.shape(name))?;
        let names = TensorNames::new(format, cfg.arch);
        let embed = w.embedding(names.embed())?;
        let hd = cfg.head_dim;
        let h = cfg.hidden_size;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let n = |r: Role| names.layer(i, r);
            let wname = |r: Role| format!("{}.weight", n(r));
            let bname = |r: Role| format!("{}.bias", n(r));
            let qkv = if w.has(&wname(Role::Qkv)) {
                QkvProj::Fused(w.linear(&wname(Role::Qkv), Some(&bname(Role::Qkv)), h)?)
            } else {
                QkvProj::Separate {
                    q: w.linear(&wname(Role::Q), Some(&bname(Role::Q)), h)?,
                    k: w.linear(&wname(Role::K), Some(&bname(Role::K)), h)?,
                    v: w.linear(&wname(Role::V), Some(&bname(Role::V)), h)?,
                }
            };
            let sliding = cfg.layer_is_sliding.get(i).copied().unwrap_or(false);
            let attn = Attention {
                qkv,
                o: w.linear(&wname(Role::O), None, cfg.num_heads * hd)?,
                q_norm: if cfg.qk_norm {
                    Some(RmsNorm::load(w, &n(Role::QNorm), &cfg)?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(RmsNorm::load(w, &n(Role::KNorm), &cfg)?)
                } else {
                    None
                },
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: hd,
                scale: cfg.attn_scale,
                softcap: cfg.attn_softcap,
                window: if sliding { cfg.sliding_window } else { None },
                rope_style: cfg.rope_style,
                cache: KvCache::new(),
                host_cache: None,
                ggml_compat: false,
                by_shape: false,
            };
            let mlp = if fused_mlp(
                format,
                w.has(&wname(Role::GateUp)),
                w.has(&wname(Role::Gate)),
            ) {
                let gate_up = w.linear(&wname(Role::GateUp), None, h)?;
                let ff = gate_up.out_features() / 2;
                Mlp::Fused {
                    gate_up,
                    down: w.linear(&wname(Role::Down), None, ff)?,
                    ff,
                }
            } else {
                Mlp::Separate {
                    gate: w.linear(&wname(Role::Gate), None, h)?,
                    up: w.linear(&wname(Role::Up), None, h)?,
                    down: w.linear(&wname(Role::Down), None, cfg.intermediate_size)?,
                }
            };
            let sandwich = |r: Role| -> Result<Option<RmsNorm>> {
                if cfg.sandwich_norms {
                    Ok(Some(RmsNorm::load(w, &n(r), &cfg)?))
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                attn_norm: RmsNorm::load(w, &n(Role::AttnNorm), &cfg)?,
                attn,
                post_attn_norm: sandwich(Role::PostAttnNorm)?,
                ffn_norm: RmsNorm::load(w, &n(Role::FfnNorm), &cfg)?,
                mlp,
                post_ffn_norm: sandwich(Role::PostFfnNorm)?,
                sliding,
            });
        }
        let norm = RmsNorm::new(
            w.norm(names.final_norm(), cfg.norm_plus_one)?,
            cfg.rms_norm_eps as f32,
        )?;
        let untied_head = !cfg.tie_word_embeddings && w.has(names.lm_head());
        let lm_head = if untied_head {
            w.linear(names.lm_head(), None, h)?
        } else {
            embed.as_linear(w.numerics)?
        };
        // llama.cpp stores Llama 3.1 frequency factors as a tensor.
        let freq_factors = match w.tensor_opt("rope_freqs.weight", DType::F32)? {
            Some(t) => Some(t.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let has_freq_factors = freq_factors.is_some();
        let ggml = ggml_mode(format, w);
        for b in blocks.iter_mut() {
            b.attn.ggml_compat = ggml;
            b.attn.by_shape = !w.numerics.invariant();
            if ggml && b.attn.softcap.is_none() {
                b.attn.host_cache = Some(HostKv::new(cfg.num_kv_heads, hd));
            }
        }
        let inv_freq_global = inv_freqs(hd, &cfg.rope_global, freq_factors.as_deref());
        let inv_freq_local = inv_freqs(hd, &cfg.rope_local, freq_factors.as_deref());
        let ggml_tables = |r: &RopeConfig| !matches!(r.scaling, RopeScaling::Llama3 { .. });
        let host_path = ggml
            && !has_freq_factors
            && ggml_tables(&cfg.rope_global)
            && ggml_tables(&cfg.rope_local)
            && lm_head.is_quantized()
            && blocks.iter().all(Block::is_host_exact)
            && std::env::var_os("TUTTI_NO_HOST_PATH").is_none();
        Ok(Self {
            host_path,
            scratch: Scratch::default(),
            panic_after_layer: None,
            weights_id: std::sync::Arc::new(()),
            embed,
            blocks,
            norm,
            lm_head,
            untied_head,
            inv_freq_global,
            inv_freq_local,
            dtype: w.dtype(),
            device: w.device().clone(),
            position: 0,
            ggml,
            has_freq_factors,
            cfg,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    fn rotary(
        &self,
        inv_freq: &[f64],
        rope: &RopeConfig,
        pos0: usize,
        s: usize,
    ) -> candle_core::Result<Rotary> {
        let freq_scale = match rope.scaling {
            RopeScaling::None => Some(1.0f32),
            RopeScaling::Linear { factor } => Some((1.0 / factor) as f32),
            RopeScaling::Llama3 { .. } => None,
        };
        let ggml = match freq_scale {
            Some(fs) if self.ggml && !self.has_freq_factors => Some(crate::ggml::rope_table(
                rope.theta as f32,
                fs,
                self.cfg.head_dim,
                pos0,
                s,
            )),
            _ => None,
        };
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        for p in pos0..pos0 + s {
            for f in inv_freq {
                // Angles in f32 like the reference implementations.
                let a = (p as f32) * (*f as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (s, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (s, half), &self.device)?.to_dtype(self.dtype)?;
        Ok(Rotary { cos, sin, ggml })
    }

    /// Logits of `h` (`[1, s, hidden]`, final norm not applied yet), softcapped.
    fn head(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm.forward(h)?;
        let mut logits = self.lm_head.forward(&h)?.to_dtype(DType::F32)?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }

    /// Log-probability each position of `h` (`[1, s, hidden]`) gives `next[i]`.
    fn score_rows(&self, h: &Tensor, next: &[u32]) -> candle_core::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(next.len());
        for start in (0..next.len()).step_by(SCORE_ROWS) {
            let n = SCORE_ROWS.min(next.len() - start);
            let logits = self.head(&h.narrow(1, start, n)?)?.squeeze(0)?;
            let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
            let idx = Tensor::new(&next[start..start + n], &self.device)?.unsqueeze(1)?;
            out.extend(logp.gather(&idx, 1)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    fn forward_impl(&mut self, ids: &[u32]) -> Result<Tensor> {
        self.forward_scoring(ids, false).map(|(l, _)| l)
    }

    /// Refuses empty input, ids past the embedding and input past the context.
    fn check_input(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        let rows = self.embed.rows();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(Error::TokenOutOfRange { id, vocab: rows });
        }
        let needed = self.position + ids.len();
        if needed > self.cfg.max_position_embeddings {
            return Err(Error::ContextOverflow {
                needed,
                max: self.cfg.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// A forward of the llama.cpp-exact CPU path on host buffers: the same arithmetic,
    /// row batches and results as the tensor path in `ggml_compat` mode (see
    /// [`Transformer::forward_scoring`]), without a tensor per operation, with the
    /// element-wise work (norms, rope, activations, residuals) spread over the threads
    /// for a prompt and the buffers kept from call to call for decode steps.
    fn forward_host(
        &mut self,
        ids: &[u32],
        out: RowsOut,
    ) -> candle_core::Result<(Tensor, Vec<f32>)> {
        let part = Part {
            pos0: self.position,
            s: ids.len(),
            row0: 0,
        };
        let mut caches = vec![self.take_caches()?];
        let mut sc = std::mem::take(&mut self.scratch);
        let panic_at = self.panic_after_layer.take();
        let result = self.run_rows(&[part], ids, &mut caches, out, panic_at, &mut sc);
        self.put_caches(caches.pop().unwrap_or_default());
        // A prompt's buffers are as long as the prompt: keep only a decode step's worth.
        if ids.len() > 1 {
            sc = Scratch::default();
        }
        self.scratch = sc;
        let (logits, scores) = result?;
        let rows = logits.len() / self.vocab_size().max(1);
        let shape: &[usize] = match out {
            RowsOut::Every => &[rows, self.vocab_size()],
            _ => &[self.vocab_size()],
        };
        Ok((Tensor::from_vec(logits, shape, &self.device)?, scores))
    }

    /// The host caches of every layer, moved out (a panic before they are put back
    /// leaves none, which [`Transformer::position`] and `truncate` then treat as empty).
    fn take_caches(&mut self) -> candle_core::Result<Vec<HostKv>> {
        let mut caches = Vec::with_capacity(self.blocks.len());
        for b in self.blocks.iter_mut() {
            match b.attn.host_cache.take() {
                Some(c) => caches.push(c),
                None => candle_core::bail!("host forward without a host cache"),
            }
        }
        Ok(caches)
    }

    fn put_caches(&mut self, caches: Vec<HostKv>) {
        for (b, c) in self.blocks.iter_mut().zip(caches) {
            b.attn.host_cache = Some(c);
        }
    }

    /// Whether a host-path model lost its caches to a panic mid-forward.
    fn caches_lost(&self) -> bool {
        self.host_path && self.blocks.iter().any(|b| b.attn.host_cache.is_none())
    }

    /// The rows of every part through the layers: `ids` holds the parts' new ids in
    /// order, `caches[p]` part `p`'s cache of every layer. Returns the logits `out`
    /// asks for, one row after another ([`RowsOut`]), and under [`RowsOut::Scored`]
    /// (one part only) the log-probability every other row gives the id that follows it.
    fn run_rows(
        &self,
        parts: &[Part],
        ids: &[u32],
        caches: &mut [Vec<HostKv>],
        out: RowsOut,
        panic_at: Option<usize>,
        sc: &mut Scratch,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let hidden = self.cfg.hidden_size;
        let ids_t = Tensor::new(ids, &self.device)?;
        let mut x0 = self.embed.forward(&ids_t, self.dtype)?;
        if let Some(scale) = self.cfg.embed_scale {
            x0 = (x0 * scale)?;
        }
        sc.x.clear();
        sc.x.extend(x0.flatten_all()?.to_vec1::<f32>()?);
        let table = |rope: &RopeConfig| {
            let fs = match rope.scaling {
                RopeScaling::Linear { factor } => (1.0 / factor) as f32,
                _ => 1.0,
            };
            let mut t = Vec::new();
            for p in parts {
                let hd = self.cfg.head_dim;
                t.extend(crate::ggml::rope_table(
                    rope.theta as f32,
                    fs,
                    hd,
                    p.pos0,
                    p.s,
                ));
            }
            t
        };
        let global = table(&self.cfg.rope_global);
        let local =
            (self.inv_freq_local != self.inv_freq_global).then(|| table(&self.cfg.rope_local));
        let act = self.cfg.activation;
        let n_blocks = self.blocks.len();
        let every_row = parts.iter().all(|p| p.s == 1) || out == RowsOut::Every;
        let scoring = out == RowsOut::Scored && parts.len() == 1 && parts[0].s > 1;
        let mut earlier = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let rot = match (&local, block.sliding) {
                (Some(l), true) => l,
                _ => &global,
            };
            let mut layer: Vec<&mut HostKv> = caches.iter_mut().map(|c| &mut c[i]).collect();
            block.attend_rows(parts, &mut layer, rot, sc)?;
            if panic_at == Some(i) {
                panic!("injected panic after layer {i}");
            }
            if i + 1 < n_blocks || every_row {
                block.feed_forward_host(sc.x.len() / hidden, act, sc)?;
                continue;
            }
            // The last block: only each part's last row feeds the logits, and the MLP
            // runs on those rows alone (under llama.cpp numerics the batch size selects
            // its kernels); under `score` the earlier rows go through the MLP as one
            // batch of their own.
            let mut last = Vec::with_capacity(parts.len() * hidden);
            for p in parts {
                let r = p.row0 + p.s - 1;
                last.extend_from_slice(&sc.x[r * hidden..(r + 1) * hidden]);
            }
            if scoring {
                sc.x.truncate((parts[0].s - 1) * hidden);
                block.feed_forward_host(parts[0].s - 1, act, sc)?;
                earlier = Some(std::mem::replace(&mut sc.x, last));
            } else {
                sc.x = last;
            }
            block.feed_forward_host(parts.len(), act, sc)?;
        }
        let scores = match earlier {
            Some(rows) => {
                let h = Tensor::from_vec(rows, (1, parts[0].s - 1, hidden), &self.device)?;
                self.score_rows(&h, &ids[1..])?
            }
            None => Vec::new(),
        };
        sc.normed.resize(sc.x.len(), 0.0);
        self.norm.rows(&sc.x, &mut sc.normed)?;
        self.lm_head
            .forward_host(&sc.normed, sc.x.len() / hidden, &mut sc.logits)?;
        let mut logits = std::mem::take(&mut sc.logits);
        if let Some(cap) = self.cfg.final_softcap {
            let t = Tensor::from_vec(
                logits,
                sc.normed.len() / hidden * self.vocab_size(),
                &self.device,
            )?;
            logits = ((t / cap)?.tanh()? * cap)?.to_vec1()?;
        }
        Ok((logits, scores))
    }

    /// The embedded `ids` at the current position and their rotary tables (global, and
    /// local when sliding layers use another base), after checking the ids and the room.
    fn inputs(&self, ids: &[u32]) -> Result<(Tensor, Rotary, Option<Rotary>)> {
        self.check_input(ids)?;
        let s = ids.len();
        let pos0 = self.position;
        let ids_t = Tensor::new(ids, &self.device)?;
        let mut x = self.embed.forward(&ids_t, self.dtype)?.unsqueeze(0)?;
        if let Some(scale) = self.cfg.embed_scale {
            x = (x * scale)?;
        }
        let rot_global = self.rotary(&self.inv_freq_global, &self.cfg.rope_global, pos0, s)?;
        let has_local =
            self.blocks.iter().any(|b| b.sliding) && self.inv_freq_local != self.inv_freq_global;
        let rot_local = if has_local {
            Some(self.rotary(&self.inv_freq_local, &self.cfg.rope_local, pos0, s)?)
        } else {
            None
        };
        Ok((x, rot_global, rot_local))
    }

    fn encode_impl(&mut self, ids: &[u32]) -> Result<Tensor> {
        self.truncate(0);
        let encoded = self.inputs(ids).and_then(|(mut x, rot_global, rot_local)| {
            let act = self.cfg.activation;
            let pooled: candle_core::Result<Tensor> = (|| {
                for block in self.blocks.iter_mut() {
                    let rot = match (&rot_local, block.sliding) {
                        (Some(r), true) => r,
                        _ => &rot_global,
                    };
                    x = block.forward(&x, 0, rot, act, false)?;
                }
                self.norm
                    .forward(&x)?
                    .to_dtype(DType::F32)?
                    .mean(1)?
                    .flatten_all()
            })();
            Ok(pooled?)
        });
        self.truncate(0);
        encoded
    }

    /// The logits of the last position and, when `score`, the log-probability every
    /// other position gives the id that follows it. The last position's logits are
    /// computed as without scoring (its MLP runs on that row alone).
    fn forward_scoring(&mut self, ids: &[u32], score: bool) -> Result<(Tensor, Vec<f32>)> {
        let pos0 = self.position;
        let s = ids.len();
        if self.host_path {
            self.check_input(ids)?;
            let out = if score {
                RowsOut::Scored
            } else {
                RowsOut::Last
            };
            return match self.forward_host(ids, out) {
                Ok(out) => {
                    self.position = pos0 + s;
                    Ok(out)
                }
                Err(e) => {
                    self.truncate(pos0);
                    Err(e.into())
                }
            };
        }
        let (mut x, rot_global, rot_local) = self.inputs(ids)?;
        let act = self.cfg.activation;
        let panic_at = self.panic_after_layer.take();
        let result: candle_core::Result<(Tensor, Vec<f32>)> = (|| {
            let n_blocks = self.blocks.len();
            // Under `score`, the last block's MLP also runs on every earlier row.
            let mut earlier: Option<Tensor> = None;
            for (i, block) in self.blocks.iter_mut().enumerate() {
                if i > 0 && panic_at == Some(i - 1) {
                    panic!("injected panic after layer {}", i - 1);
                }
                let rot = match (&rot_local, block.sliding) {
                    (Some(r), true) => r,
                    _ => &rot_global,
                };
                if i + 1 < n_blocks {
                    x = block.forward(&x, pos0, rot, act, false)?;
                } else if score && s > 1 {
                    let attended = block.attend(&x, pos0, rot)?;
                    earlier = Some(block.feed_forward(&attended.narrow(1, 0, s - 1)?, act)?);
                    x = block.feed_forward(&last_row(&attended)?, act)?;
                } else {
                    x = block.forward(&x, pos0, rot, act, true)?;
                }
            }
            let scores = match &earlier {
                Some(h) => self.score_rows(h, &ids[1..])?,
                None => Vec::new(),
            };
            Ok((self.head(&last_row(&x)?)?.flatten_all()?, scores))
        })();
        match result {
            Ok(l) => {
                self.position = pos0 + s;
                Ok(l)
            }
            Err(e) => {
                // Leave the caches consistent with `position` after a failed step.
                self.truncate(pos0);
                Err(e.into())
            }
        }
    }
}

impl CausalLm for Transformer {
    fn as_transformer_mut(&mut self) -> Option<&mut Transformer> {
        Some(self)
    }

    fn chunk_invariant(&self) -> bool {
        self.host_path && !self.blocks.iter().any(|b| b.attn.by_shape)
    }

    fn kv_bytes_per_token(&self) -> u64 {
        // Keys and values, f32 on the host path (the tensor cache holds the dtype's).
        let size = if self
            .blocks
            .first()
            .is_some_and(|b| b.attn.host_cache.is_some())
        {
            4
        } else {
            self.dtype().size_in_bytes() as u64
        };
        self.blocks
            .iter()
            .map(|b| 2 * (b.attn.num_kv_heads * b.attn.head_dim) as u64 * size)
            .sum()
    }

    fn forward(&mut self, ids: &[u32]) -> Result<Tensor> {
        self.forward_impl(ids)
    }

    fn forward_scored(&mut self, ids: &[u32]) -> Result<(Tensor, Vec<f32>)> {
        self.forward_scoring(ids, true)
    }

    fn forward_rows(&mut self, ids: &[u32]) -> Result<Tensor> {
        // Only the batch-invariant host path gives every row the bits of a one-id step;
        // elsewhere the rows come from such steps.
        if !self.chunk_invariant() {
            return forward_rows_by_steps(self, ids);
        }
        let pos0 = self.position;
        self.check_input(ids)?;
        match self.forward_host(ids, RowsOut::Every) {
            Ok((logits, _)) => {
                self.position = pos0 + ids.len();
                Ok(logits)
            }
            Err(e) => {
                self.truncate(pos0);
                Err(e.into())
            }
        }
    }

    fn encode(&mut self, ids: &[u32]) -> Result<Option<Tensor>> {
        self.encode_impl(ids).map(Some)
    }

    fn fork(&self) -> Option<Box<dyn CausalLm>> {
        let mut twin = self.clone();
        // New caches, not truncated clones: a cloned tensor cache shares its storage,
        // which decoding overwrites in place.
        for b in twin.blocks.iter_mut() {
            b.attn.fresh_cache();
        }
        twin.scratch = Scratch::default();
        twin.position = 0;
        twin.panic_after_layer = None;
        Some(Box::new(twin))
    }

    fn fork_with_prefix(&self, len: usize) -> Option<(Box<dyn CausalLm>, usize)> {
        if !self.host_path || self.caches_lost() {
            return self.fork().map(|f| (f, 0));
        }
        // The host caches are plain vectors: a clone is a copy of its own.
        let mut twin = self.clone();
        let kept = self.position.min(len);
        for b in twin.blocks.iter_mut() {
            b.attn.cache = KvCache::new();
            b.attn.truncate_cache(kept);
        }
        twin.scratch = Scratch::default();
        twin.position = kept;
        twin.panic_after_layer = None;
        Some((Box::new(twin), kept))
    }

    fn position(&self) -> usize {
        if self.caches_lost() {
            0
        } else {
            self.position
        }
    }

    fn inject_panic_after_layer(&mut self, layer: usize) {
        self.panic_after_layer = Some(layer);
    }

    fn truncate(&mut self, len: usize) {
        if self.caches_lost() {
            // A panic mid-forward took the caches: start over from an empty context.
            for b in self.blocks.iter_mut() {
                b.attn.host_cache = Some(HostKv::new(b.attn.num_kv_heads, b.attn.head_dim));
            }
            self.position = 0;
        }
        for b in self.blocks.iter_mut() {
            b.attn.truncate_cache(len);
        }
        self.position = self.position.min(len);
    }

    fn vocab_size(&self) -> usize {
        self.lm_head.out_features()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn input_embeddings(&self) -> candle_core::Result<Tensor> {
        self.embed.matrix()
    }

    fn output_embeddings(&self) -> candle_core::Result<Option<Tensor>> {
        if !self.untied_head {
            return Ok(None);
        }
        // Recover the dense matrix by projecting the identity would be wasteful; the
        // head is dense for safetensors and dequantizable for GGUF.
        Ok(Some(self.lm_head_matrix()?))
    }
}

impl Transformer {
    fn lm_head_matrix(&self) -> candle_core::Result<Tensor> {
        self.lm_head.dense_matrix()
    }
}
