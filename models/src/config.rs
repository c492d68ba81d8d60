//! One configuration type for every supported family, read from an HF `config.json`
//! (transformers 4 and 5 spellings) or from GGUF metadata.
//!
//! The families differ in a handful of switches (norm placement, q/k norms, soft-capping,
//! sliding windows, fused projections); everything else is the same decoder, so the
//! switches live here and `transformer.rs` reads them.

use crate::{Error, Result};
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// Supported model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Llama 2/3, SmolLM/SmolLM2 and anything else with the Llama layout.
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
}

impl Architecture {
    pub const ALL: [Architecture; 7] = [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma2,
        Architecture::Gemma3,
        Architecture::Phi3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
            Architecture::Phi3 => "phi3",
        }
    }

    /// Accepts HF class names (`LlamaForCausalLM`), `model_type` values and GGUF
    /// `general.architecture` values.
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase();
        let n = n
            .strip_suffix("forcausallm")
            .or_else(|| n.strip_suffix("forconditionalgeneration"))
            .unwrap_or(&n);
        let arch = match n {
            "llama" | "smollm" | "smollm2" | "smollm3" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "gemma2" => Architecture::Gemma2,
            "gemma3" | "gemma3_text" | "gemma3text" => Architecture::Gemma3,
            "phi3" => Architecture::Phi3,
            _ => {
                return Err(Error::UnknownArchitecture {
                    found: name.to_string(),
                    supported: Self::supported_list(),
                })
            }
        };
        Ok(arch)
    }

    pub fn supported_list() -> String {
        Self::ALL
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn is_gemma(self) -> bool {
        matches!(self, Architecture::Gemma2 | Architecture::Gemma3)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate the two halves of the head (HF checkpoints, and GGUF for every
    /// architecture except llama).
    Halves,
    /// Rotate adjacent pairs: GGUF llama, whose converter permuted the q/k rows.
    Interleaved,
}

/// Frequency scaling applied to the rotary base frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1 style wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Rotary parameters of one kind of layer.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// Everything the decoder needs to know about a checkpoint.
#[derive(Debug, Clone)]
pub struct TransformerConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope_style: RopeStyle,
    /// Rotary parameters of full-attention layers.
    pub rope_global: RopeConfig,
    /// Rotary parameters of sliding-window layers (Gemma 3 uses a different base).
    pub rope_local: RopeConfig,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    /// Qwen 3 and Gemma 3 normalise q and k per head before rotary.
    pub qk_norm: bool,
    /// HF Gemma checkpoints store norm weights as `w` and apply `1 + w`; GGUF
    /// converters already added the one.
    pub norm_plus_one: bool,
    /// Gemma 2/3: extra norms after attention and around the MLP.
    pub sandwich_norms: bool,
    /// Gemma multiplies embeddings by sqrt(hidden_size).
    pub embed_scale: Option<f64>,
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window?
    pub layer_is_sliding: Vec<bool>,
    pub activation: Activation,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn get_usize(v: &Value, key: &str) -> Option<usize> {
    get(v, key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
    get(v, key).and_then(|x| x.as_f64())
}

fn get_bool(v: &Value, key: &str) -> Option<bool> {
    get(v, key).and_then(|x| x.as_bool())
}

fn parse_rope_scaling(v: Option<&Value>) -> RopeScaling {
    let Some(v) = v.filter(|v| v.is_object()) else {
        return RopeScaling::None;
    };
    let kind = get(v, "rope_type")
        .or_else(|| get(v, "type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    let factor = get_f64(v, "factor").unwrap_or(1.0);
    match kind {
        "linear" => RopeScaling::Linear { factor },
        "llama3" => RopeScaling::Llama3 {
            factor,
            low_freq_factor: get_f64(v, "low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get_f64(v, "high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: get_f64(v, "original_max_position_embeddings")
                .unwrap_or(8192.0),
        },
        _ => RopeScaling::None,
    }
}

/// Reads rotary parameters from either `rope_theta` + `rope_scaling` (transformers 4)
/// or `rope_parameters` (transformers 5, optionally split per layer type).
fn parse_rope(cfg: &Value, layer_type: &str, default_theta: f64) -> RopeConfig {
    if let Some(params) = get(cfg, "rope_parameters") {
        let params = get(params, layer_type).unwrap_or(params);
        if get(params, "rope_theta").is_some() || get(params, "rope_type").is_some() {
            return RopeConfig {
                theta: get_f64(params, "rope_theta").unwrap_or(default_theta),
                scaling: parse_rope_scaling(Some(params)),
            };
        }
    }
    RopeConfig {
        theta: get_f64(cfg, "rope_theta").unwrap_or(default_theta),
        scaling: parse_rope_scaling(get(cfg, "rope_scaling")),
    }
}

impl TransformerConfig {
    /// Reads an HF `config.json`. `arch_override` replaces `architectures[0]`.
    pub fn from_hf_file(path: &Path, arch_override: Option<Architecture>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_hf_value(&value, arch_override).map_err(|e| match e {
            Error::BadConfig { reason, .. } => Error::BadConfig {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    pub fn from_hf_value(cfg: &Value, arch_override: Option<Architecture>) -> Result<Self> {
        // Multimodal wrappers (Gemma 3 4B+) keep the decoder under `text_config`.
        let cfg = get(cfg, "text_config").unwrap_or(cfg);
        let bad = |reason: String| Error::BadConfig {
            path: "config.json".into(),
            reason,
        };
        let arch = match arch_override {
            Some(a) => a,
            None => {
                let name = get(cfg, "architectures")
                    .and_then(|a| a.get(0))
                    .and_then(|a| a.as_str())
                    .or_else(|| get(cfg, "model_type").and_then(|m| m.as_str()))
                    .ok_or_else(|| bad("neither `architectures` nor `model_type` is set".into()))?;
                Architecture::parse(name)?
            }
        };
        let req = |key: &str| get_usize(cfg, key).ok_or_else(|| bad(format!("missing `{key}`")));
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_layers = req("num_hidden_layers")?;
        let num_kv_heads = get_usize(cfg, "num_key_value_heads").unwrap_or(num_heads);
        let head_dim = get_usize(cfg, "head_dim").unwrap_or(hidden_size / num_heads.max(1));
        let gemma = arch.is_gemma();
        let sliding_window = get_usize(cfg, "sliding_window")
            .filter(|_| get_bool(cfg, "use_sliding_window").unwrap_or(true));
        let layer_is_sliding: Vec<bool> = match get(cfg, "layer_types").and_then(|v| v.as_array()) {
            Some(types) => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            None => (0..num_layers)
                .map(|i| match arch {
                    Architecture::Gemma2 => i % 2 == 0,
                    Architecture::Gemma3 => {
                        let pattern = get_usize(cfg, "sliding_window_pattern").unwrap_or(6);
                        (i + 1) % pattern != 0
                    }
                    _ => sliding_window.is_some(),
                })
                .collect(),
        };
        if layer_is_sliding.len() != num_layers {
            return Err(bad(format!(
                "`layer_types` has {} entries for {num_layers} layers",
                layer_is_sliding.len()
            )));
        }
        let rope_global = parse_rope(cfg, "full_attention", 10_000.0);
        let rope_local = match arch {
            Architecture::Gemma3 => {
                let mut local = parse_rope(cfg, "sliding_attention", 10_000.0);
                if get(cfg, "rope_parameters")
                    .and_then(|p| get(p, "sliding_attention"))
                    .is_none()
                {
                    local = RopeConfig {
                        theta: get_f64(cfg, "rope_local_base_freq").unwrap_or(10_000.0),
                        scaling: RopeScaling::None,
                    };
                }
                local
            }
            _ => rope_global.clone(),
        };
        let query_pre_attn_scalar = get_f64(cfg, "query_pre_attn_scalar");
        let attn_scale = match (gemma, query_pre_attn_scalar) {
            (true, Some(s)) => 1.0 / s.sqrt(),
            _ => 1.0 / (head_dim as f64).sqrt(),
        };
        let activation = match get(cfg, "hidden_activation")
            .or_else(|| get(cfg, "hidden_act"))
            .and_then(|a| a.as_str())
        {
            Some(a) if a.starts_with("gelu") => Activation::GeluTanh,
            _ => Activation::Silu,
        };
        Ok(Self {
            arch,
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: get_f64(cfg, "rms_norm_eps").unwrap_or(1e-6),
            max_position_embeddings: get_usize(cfg, "max_position_embeddings").unwrap_or(4096),
            rope_style: RopeStyle::Halves,
            rope_global,
            rope_local,
            tie_word_embeddings: get_bool(cfg, "tie_word_embeddings").unwrap_or(gemma),
            attention_bias: get_bool(cfg, "attention_bias").unwrap_or(arch == Architecture::Qwen2),
            qk_norm: matches!(arch, Architecture::Qwen3 | Architecture::Gemma3),
            norm_plus_one: gemma,
            sandwich_norms: gemma,
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            attn_scale,
            attn_softcap: if arch == Architecture::Gemma2 {
                get_f64(cfg, "attn_logit_softcapping")
            } else {
                None
            },
            final_softcap: if gemma {
                get_f64(cfg, "final_logit_softcapping")
            } else {
                None
            },
            sliding_window,
            layer_is_sliding,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                activation
            },
        })
    }

    /// Reads GGUF metadata (`{arch}.*` keys). `vocab_size` comes from the embedding
    /// tensor, which is authoritative.
    pub fn from_gguf(
        md: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
        arch_override: Option<Architecture>,
        vocab_size: usize,
        has_output: bool,
    ) -> std::result::Result<Self, String> {
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or("missing general.architecture")?;
        let arch = match arch_override {
            Some(a) => a,
            None => Architecture::parse(&arch_name).map_err(|e| e.to_string())?,
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| -> Option<usize> {
            md.get(&key(k))
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|x| x as usize)
        };
        let f = |k: &str| -> Option<f64> {
            md.get(&key(k))
                .and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
        };
        let need = |k: &str| u(k).ok_or_else(|| format!("missing metadata `{}`", key(k)));
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        let num_layers = need("block_count")?;
        // head_count_kv may be per-layer (an array) in some files; take the first.
        let num_kv_heads = u("attention.head_count_kv")
            .or_else(|| {
                md.get(&key("attention.head_count_kv"))
                    .and_then(|v| v.to_vec().ok())
                    .and_then(|v| v.first().and_then(|x| x.to_u32().ok()))
                    .map(|x| x as usize)
            })
            .unwrap_or(num_heads);
        let head_dim = u("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
        let gemma = arch.is_gemma();
        let sliding_window = u("attention.sliding_window");
        let layer_is_sliding: Vec<bool> = (0..num_layers)
            .map(|i| match arch {
                Architecture::Gemma2 => i % 2 == 0,
                Architecture::Gemma3 => (i + 1) % 6 != 0,
                _ => sliding_window.is_some(),
            })
            .collect();
        let theta = f("rope.freq_base").unwrap_or(10_000.0);
        let scaling = match (
            md.get(&key("rope.scaling.type"))
                .and_then(|v| v.to_string().ok())
                .map(|s| s.as_str()),
            f("rope.scaling.factor"),
        ) {
            (Some("linear"), Some(factor)) if factor != 1.0 => RopeScaling::Linear { factor },
            _ => RopeScaling::None,
        };
        let rope_global = RopeConfig { theta, scaling };
        let rope_local = if arch == Architecture::Gemma3 {
            RopeConfig {
                theta: 10_000.0,
                scaling: RopeScaling::None,
            }
        } else {
            rope_global.clone()
        };
        Ok(Self {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            max_position_embeddings: u("context_length").unwrap_or(4096),
            rope_style: if arch_name == "llama" {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Halves
            },
            rope_global,
            rope_local,
            tie_word_embeddings: !has_output,
            attention_bias: false, // decided per tensor at load time
            qk_norm: matches!(arch, Architecture::Qwen3 | Architecture::Gemma3),
            norm_plus_one: false,
            sandwich_norms: gemma,
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: if arch == Architecture::Gemma2 {
                f("attn_logit_softcapping")
            } else {
                None
            },
            final_softcap: if gemma {
                f("final_logit_softcapping")
            } else {
                None
            },
            sliding_window,
            layer_is_sliding,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_architecture_lists_supported() {
        let err = Architecture::parse("MambaForCausalLM")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MambaForCausalLM") && err.contains("gemma3"),
            "{err}"
        );
    }

    #[test]
    fn transformers5_rope_parameters() {
        let cfg = json!({
            "architectures": ["Gemma3ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 4, "sliding_window": null,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
            }
        });
        let c = TransformerConfig::from_hf_value(&cfg, None).unwrap();
        assert_eq!(c.rope_global.theta, 1e6);
        assert_eq!(c.rope_global.scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(c.rope_local.theta, 1e4);
        assert_eq!(c.layer_is_sliding, vec![true, false]);
        assert_eq!(c.sliding_window, None);
    }

    #[test]
    fn transformers4_rope_theta() {
        let cfg = json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        });
        let c = TransformerConfig::from_hf_value(&cfg, None).unwrap();
        assert_eq!(c.rope_global.theta, 5e5);
        assert!(matches!(c.rope_global.scaling, RopeScaling::Llama3 { .. }));
        assert_eq!(c.num_kv_heads, 2);
    }
}
