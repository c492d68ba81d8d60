//! Random-weight models of real shapes, for speed measurements without a download.
//!
//! [`shape_config`] names a few well-known shapes (`llama3-8b`, `qwen2.5-7b`,
//! `mistral-7b`, `tiny`); any HF `config.json` works through
//! [`TransformerConfig::from_hf_file`]. [`random_transformer`] fills every tensor the
//! decoder reads with uniform noise (projections, std 0.02) or ones (norms), tensor by
//! tensor directly on the target device, so peak memory is the model plus one f32 copy of
//! the largest tensor. The logits are meaningless; the work per token is the real one.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::config::{Architecture, TransformerConfig, WeightFormat};
use crate::transformer::{Role, TensorNames, Transformer};
use crate::weights::Weights;
use crate::{Error, Result};

/// Names accepted by [`shape_config`].
pub const SHAPES: &[&str] = &["llama3-8b", "qwen2.5-7b", "mistral-7b", "tiny"];

/// The config of a named shape (published `config.json` values of the base models;
/// `tiny` is a 2-layer Llama with SmolLM2's 49,152-entry vocabulary, for tests).
pub fn shape_config(name: &str) -> Result<TransformerConfig> {
    let v = match name.trim().to_ascii_lowercase().as_str() {
        "llama3-8b" | "llama-3-8b" | "llama3.1-8b" => json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": false
        }),
        "qwen2.5-7b" | "qwen2-7b" => json!({
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
            "tie_word_embeddings": false, "use_sliding_window": false
        }),
        "mistral-7b" => json!({
            "architectures": ["MistralForCausalLM"],
            "vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
            "tie_word_embeddings": false, "sliding_window": null
        }),
        "tiny" => json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
            "tie_word_embeddings": true
        }),
        other => {
            return Err(Error::BadSource {
                spec: other.to_string(),
                reason: format!("unknown shape; known: {}", SHAPES.join(", ")),
            })
        }
    };
    TransformerConfig::from_hf_value(&v, None)
}

/// Every tensor [`Transformer::load`] reads for `cfg` (HF names), with its shape and
/// whether it is a norm weight.
pub fn tensor_shapes(cfg: &TransformerConfig) -> Vec<(String, Vec<usize>, bool)> {
    let names = TensorNames::new(WeightFormat::HuggingFace, cfg.arch);
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut out = vec![(names.embed().to_string(), vec![cfg.vocab_size, h], false)];
    for i in 0..cfg.num_layers {
        let w = |r: Role| format!("{}.weight", names.layer(i, r));
        let b = |r: Role| format!("{}.bias", names.layer(i, r));
        out.push((w(Role::AttnNorm), vec![h], true));
        out.push((w(Role::Q), vec![q_out, h], false));
        out.push((w(Role::K), vec![kv_out, h], false));
        out.push((w(Role::V), vec![kv_out, h], false));
        if cfg.attention_bias {
            out.push((b(Role::Q), vec![q_out], false));
            out.push((b(Role::K), vec![kv_out], false));
            out.push((b(Role::V), vec![kv_out], false));
        }
        out.push((w(Role::O), vec![h, q_out], false));
        if cfg.qk_norm {
            out.push((w(Role::QNorm), vec![hd], true));
            out.push((w(Role::KNorm), vec![hd], true));
        }
        if cfg.sandwich_norms {
            out.push((w(Role::PostAttnNorm), vec![h], true));
            out.push((w(Role::PostFfnNorm), vec![h], true));
        }
        out.push((w(Role::FfnNorm), vec![h], true));
        out.push((w(Role::Gate), vec![cfg.intermediate_size, h], false));
        out.push((w(Role::Up), vec![cfg.intermediate_size, h], false));
        out.push((w(Role::Down), vec![h, cfg.intermediate_size], false));
    }
    out.push((names.final_norm().to_string(), vec![h], true));
    if !cfg.tie_word_embeddings {
        out.push((names.lm_head().to_string(), vec![cfg.vocab_size, h], false));
    }
    out
}

/// Bytes of weights read per decoded token in `dtype`: every tensor except the input
/// embedding table, of which one row is read (unless it doubles as the output head).
pub fn weight_bytes(cfg: &TransformerConfig, dtype: DType) -> u64 {
    let embed = TensorNames::new(WeightFormat::HuggingFace, cfg.arch).embed();
    tensor_shapes(cfg)
        .iter()
        .filter(|(name, _, _)| name != embed || cfg.tie_word_embeddings)
        .map(|(_, dims, _)| (dims.iter().product::<usize>() * dtype.size_in_bytes()) as u64)
        .sum()
}

/// Parameters of a decoder of shape `cfg` ([`TransformerConfig::parameter_count`]).
pub fn parameter_count(cfg: &TransformerConfig) -> u64 {
    cfg.parameter_count()
}

/// A decoder of shape `cfg` with random weights in `dtype` on `device`.
///
/// On the CPU the values come from a seeded generator (the same model for the same
/// seed); on a GPU from the device's own generator, seeded with `seed` where the backend
/// allows it.
pub fn random_transformer(
    cfg: TransformerConfig,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Transformer> {
    build(cfg, device, dtype, seed, device.is_cpu())
}

/// [`random_transformer`] with every value drawn on the host from the seeded generator
/// and copied to `device`: the same weights on every device (for CPU-vs-GPU parity
/// checks; slow for large shapes).
pub fn random_transformer_host(
    cfg: TransformerConfig,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Transformer> {
    build(cfg, device, dtype, seed, true)
}

fn build(
    cfg: TransformerConfig,
    device: &Device,
    dtype: DType,
    seed: u64,
    host_values: bool,
) -> Result<Transformer> {
    if !host_values {
        // Not every backend can be seeded; the values do not matter for speed.
        let _ = device.set_seed(seed);
    }
    let scale = 0.02f32 * 3f32.sqrt(); // uniform on [-a, a] has std a / sqrt(3)
    let mut rng = XorShift::new(seed);
    let mut tensors = HashMap::new();
    for (name, dims, is_norm) in tensor_shapes(&cfg) {
        let t = if is_norm {
            let fill = if cfg.norm_plus_one { 0.0 } else { 1.0 };
            Tensor::full(fill, dims.as_slice(), device)?
        } else if host_values {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.uniform() * scale).collect();
            Tensor::from_vec(v, dims.as_slice(), device)?.to_dtype(dtype)?
        } else {
            Tensor::rand(-scale, scale, dims.as_slice(), device)?.to_dtype(dtype)?
        };
        tensors.insert(name, t);
    }
    let mut weights = Weights::from_tensors(tensors, device, dtype, "random weights");
    weights.arch_name = cfg.arch.name().into();
    Transformer::load(&weights, cfg, WeightFormat::HuggingFace)
}

/// Architecture of a named shape, for reports.
pub fn shape_arch(name: &str) -> Option<Architecture> {
    shape_config(name).ok().map(|c| c.arch)
}

/// xorshift64*: fast, seeded, good enough for noise.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform on [-1, 1).
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CausalLm;

    #[test]
    fn named_shapes_parse() {
        for s in SHAPES {
            let c = shape_config(s).unwrap();
            assert!(c.vocab_size > 0 && c.num_layers > 0, "{s}");
        }
        assert!(shape_config("gpt-17").is_err());
        let l = shape_config("llama3-8b").unwrap();
        // 8.03e9 parameters, minus one embedding table read per token, in bf16.
        let gb = weight_bytes(&l, DType::BF16) as f64 / 1e9;
        assert!((14.0..15.5).contains(&gb), "{gb}");
        assert!(shape_config("qwen2.5-7b").unwrap().attention_bias);
        // Llama 3 8B: 8.03 billion parameters.
        let p = parameter_count(&l) as f64 / 1e9;
        assert!((8.0..8.1).contains(&p), "{p}");
    }

    #[test]
    fn parameter_count_is_the_sum_of_the_tensor_shapes() {
        for s in SHAPES {
            let mut cfg = shape_config(s).unwrap();
            for switches in 0..16u32 {
                cfg.attention_bias = switches & 1 != 0;
                cfg.qk_norm = switches & 2 != 0;
                cfg.sandwich_norms = switches & 4 != 0;
                cfg.tie_word_embeddings = switches & 8 != 0;
                let sum: u64 = tensor_shapes(&cfg)
                    .iter()
                    .map(|(_, dims, _)| dims.iter().product::<usize>() as u64)
                    .sum();
                assert_eq!(parameter_count(&cfg), sum, "{s} {switches:04b}");
            }
        }
    }

    #[test]
    fn encoding_is_pooled_and_leaves_the_cache_empty() {
        let cfg = shape_config("tiny").unwrap();
        let hidden = cfg.hidden_size;
        let mut m = random_transformer(cfg, &Device::Cpu, DType::F32, 7).unwrap();
        m.forward(&[5, 6]).unwrap();
        let a = m
            .encode(&[1, 2, 3])
            .unwrap()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a.len(), hidden);
        assert!(a.iter().all(|x| x.is_finite()));
        assert_eq!(m.position(), 0);
        // From position 0 whatever was cached, and the same ids give the same vector.
        assert_eq!(
            m.encode(&[1, 2, 3])
                .unwrap()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            a
        );
        let b = m
            .encode(&[1, 2, 4])
            .unwrap()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_ne!(a, b);
        assert!(m.encode(&[]).is_err());
        assert_eq!(m.position(), 0);
    }

    #[test]
    fn tiny_random_model_runs() {
        let cfg = shape_config("tiny").unwrap();
        let vocab = cfg.vocab_size;
        let mut m = random_transformer(cfg.clone(), &Device::Cpu, DType::F32, 7).unwrap();
        let a = m.forward(&[1, 2, 3]).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), vocab);
        assert!(a.iter().all(|x| x.is_finite()));
        assert_eq!(m.position(), 3);
        // Same seed, same model.
        let mut m2 = random_transformer(cfg, &Device::Cpu, DType::F32, 7).unwrap();
        assert_eq!(m2.forward(&[1, 2, 3]).unwrap().to_vec1::<f32>().unwrap(), a);
    }

    #[test]
    fn zero_kv_heads_fail_to_load_instead_of_panicking_in_forward() {
        let mut cfg = shape_config("tiny").unwrap();
        cfg.num_kv_heads = 0;
        let run = random_transformer(cfg, &Device::Cpu, DType::F32, 7)
            .and_then(|mut m| m.forward(&[1, 2]).map(|_| ()));
        let err = run
            .expect_err("a config with 0 KV heads must not load")
            .to_string();
        assert!(
            err.contains("num_kv_heads is 0") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn tensors_that_contradict_the_config_are_refused() {
        let cfg = shape_config("tiny").unwrap();
        let mut tensors = HashMap::new();
        for (name, dims, _) in tensor_shapes(&cfg) {
            tensors.insert(
                name,
                Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            );
        }
        let o = "model.layers.1.self_attn.o_proj.weight".to_string();
        tensors.insert(
            o.clone(),
            Tensor::zeros((64, 32), DType::F32, &Device::Cpu).unwrap(),
        );
        let w = Weights::from_tensors(tensors.clone(), &Device::Cpu, DType::F32, "t");
        let err = Transformer::load(&w, cfg.clone(), WeightFormat::HuggingFace)
            .err()
            .expect("a wrong o_proj shape must be refused")
            .to_string();
        assert!(err.contains(&o) && err.contains("[64, 32]"), "{err}");
        // A third layer in the tensors while the config says two.
        for (name, dims, _) in tensor_shapes(&cfg) {
            let t = Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).unwrap();
            tensors.insert(name.replace("layers.1.", "layers.2."), t.clone());
            tensors.insert(name, t);
        }
        let w = Weights::from_tensors(tensors, &Device::Cpu, DType::F32, "t");
        let err = Transformer::load(&w, cfg, WeightFormat::HuggingFace)
            .err()
            .expect("an extra layer must be refused")
            .to_string();
        assert!(err.contains("more than the 2 layers"), "{err}");
    }
}
