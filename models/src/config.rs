//! One configuration type for every supported family, read from an HF `config.json`
//! (transformers 4 and 5 spellings) or from GGUF metadata.
//!
//! Reading happens in three steps so that each family rule exists once:
//! 1. a reader turns `config.json` (serde structs) or GGUF metadata into
//!    [`CheckpointFacts`], the sizes and switches the checkpoint states, nothing implied;
//! 2. [`TransformerConfig::from_facts`] applies the family rules (defaults, patterns,
//!    attention scale) for an [`Architecture`];
//! 3. [`TransformerConfig::validate`] refuses impossible or absurd values before
//!    anything is allocated from them.
//!
//! The families differ in a handful of switches (norm placement, q/k norms, soft-capping,
//! sliding windows, fused projections); everything else is the same decoder, so the
//! switches live here and `transformer.rs` reads them.

use crate::{ConfigError, Error, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
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

/// Largest sizes accepted from a checkpoint. Each sits far above every published model
/// (the largest known value is in the comment) and low enough that a corrupt or
/// hostile value is refused before anything is allocated from it.
pub mod limits {
    /// Vocabulary rows (Gemma 3: 262,208).
    pub const MAX_VOCAB: usize = 1 << 22;
    /// Hidden size (Llama 3.1 405B: 16,384).
    pub const MAX_HIDDEN: usize = 1 << 16;
    /// MLP width (Llama 3.1 405B: 53,248).
    pub const MAX_INTERMEDIATE: usize = 1 << 20;
    /// Decoder layers (Llama 3.1 405B: 126).
    pub const MAX_LAYERS: usize = 1 << 10;
    /// Attention heads, query or KV (Llama 3.1 405B: 128).
    pub const MAX_HEADS: usize = 1 << 10;
    /// Size of one head (Gemma: 256).
    pub const MAX_HEAD_DIM: usize = 1 << 10;
    /// Context length and sliding window (Llama 4 Scout: 10,485,760).
    pub const MAX_CONTEXT: usize = 1 << 24;
    /// Bytes of K and V for one position over all layers, in f32 (Llama 3.1 405B:
    /// about 1 MiB). Above this a few thousand tokens exhaust any device.
    pub const MAX_KV_BYTES_PER_POSITION: u64 = 1 << 24;
}
use limits::*;

/// Where a family's tensors live in a checkpoint. Config reading needs it too (GGUF
/// stores norms and rotary pairs differently), so it lives here rather than with the
/// tensor names in `transformer.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    HuggingFace,
    Gguf,
}

/// What a checkpoint states about its shape, before any family rule is applied.
/// `None` means the checkpoint does not say; [`TransformerConfig::from_facts`] supplies
/// the family's default.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFacts {
    /// Where the facts come from (decides how norms and rotary pairs are stored).
    pub format: WeightFormat,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub context_length: Option<usize>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: RopeScaling,
    /// Rotary base of sliding-window layers, where it differs (Gemma 3).
    pub rope_local_theta: Option<f64>,
    pub rope_local_scaling: RopeScaling,
    /// The converter permuted q/k rows for adjacent-pair rotary (GGUF `llama`).
    pub rope_interleaved: bool,
    pub sliding_window: Option<usize>,
    pub sliding_window_pattern: Option<usize>,
    /// Per layer: is it a sliding-window layer?
    pub layer_sliding: Option<Vec<bool>>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub activation: Option<Activation>,
}

/// The fields of an HF `config.json` the decoder needs. Unknown fields are ignored and
/// `null` reads as absent (transformers 5 writes `"sliding_window": null`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a config object")]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    /// Multimodal wrappers (Gemma 3 4B+) keep the decoder here.
    text_config: Option<Box<HfConfig>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    /// transformers 4: `rope_theta` + `rope_scaling`.
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRope>,
    /// transformers 5: one set, or one per layer type.
    rope_parameters: Option<HfRope>,
    rope_local_base_freq: Option<f64>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
}

/// A `rope_scaling` / `rope_parameters` object; transformers 5 may nest one per layer
/// type.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a rope parameters object")]
struct HfRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    full_attention: Option<Box<HfRope>>,
    sliding_attention: Option<Box<HfRope>>,
}

impl HfRope {
    fn scaling(&self) -> RopeScaling {
        let factor = self.factor.unwrap_or(1.0);
        match self.rope_type.as_deref().or(self.kind.as_deref()) {
            Some("linear") => RopeScaling::Linear { factor },
            Some("llama3") => RopeScaling::Llama3 {
                factor,
                low_freq_factor: self.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: self.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: self
                    .original_max_position_embeddings
                    .unwrap_or(8192.0),
            },
            _ => RopeScaling::None,
        }
    }
}

fn scaling_of(rope: Option<&HfRope>) -> RopeScaling {
    rope.map(HfRope::scaling).unwrap_or(RopeScaling::None)
}

impl HfConfig {
    /// Rotary base and scaling of one layer type: from `rope_parameters` when it states
    /// them, else from `rope_theta` + `rope_scaling`.
    fn rope(&self, per_type: Option<&HfRope>) -> (Option<f64>, RopeScaling) {
        if let Some(params) = &self.rope_parameters {
            let params = per_type.unwrap_or(params);
            if params.rope_theta.is_some() || params.rope_type.is_some() {
                return (params.rope_theta, params.scaling());
            }
        }
        (self.rope_theta, scaling_of(self.rope_scaling.as_ref()))
    }

    fn arch_name(&self) -> Option<&str> {
        self.architectures
            .as_ref()
            .and_then(|a| a.first())
            .or(self.model_type.as_ref())
            .map(String::as_str)
    }

    fn facts(&self) -> std::result::Result<CheckpointFacts, ConfigError> {
        let req =
            |v: Option<usize>, key: &str| v.ok_or_else(|| ConfigError::Missing { key: key.into() });
        let params = self.rope_parameters.as_ref();
        let (rope_theta, rope_scaling) =
            self.rope(params.and_then(|p| p.full_attention.as_deref()));
        let (rope_local_theta, rope_local_scaling) =
            match params.and_then(|p| p.sliding_attention.as_deref()) {
                Some(local) => self.rope(Some(local)),
                None => (self.rope_local_base_freq, RopeScaling::None),
            };
        let activation = self
            .hidden_activation
            .as_ref()
            .or(self.hidden_act.as_ref())
            .map(|a| {
                if a.starts_with("gelu") {
                    Activation::GeluTanh
                } else {
                    Activation::Silu
                }
            });
        Ok(CheckpointFacts {
            format: WeightFormat::HuggingFace,
            vocab_size: req(self.vocab_size, "vocab_size")?,
            hidden_size: req(self.hidden_size, "hidden_size")?,
            intermediate_size: req(self.intermediate_size, "intermediate_size")?,
            num_layers: req(self.num_hidden_layers, "num_hidden_layers")?,
            num_heads: req(self.num_attention_heads, "num_attention_heads")?,
            num_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            context_length: self.max_position_embeddings,
            rope_theta,
            rope_scaling,
            rope_local_theta,
            rope_local_scaling,
            rope_interleaved: false,
            sliding_window: self
                .sliding_window
                .filter(|_| self.use_sliding_window.unwrap_or(true)),
            sliding_window_pattern: self.sliding_window_pattern,
            layer_sliding: self
                .layer_types
                .as_ref()
                .map(|types| types.iter().map(|t| t == "sliding_attention").collect()),
            query_pre_attn_scalar: self.query_pre_attn_scalar,
            attn_softcap: self.attn_logit_softcapping,
            final_softcap: self.final_logit_softcapping,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            activation,
        })
    }
}

/// How a GGUF metadata value reads in an error message.
fn describe(v: &gguf_file::Value) -> String {
    use gguf_file::Value as V;
    match v {
        V::String(s) if s.is_empty() => "an empty string".into(),
        V::String(_) => "a string".into(),
        V::Array(a) => format!("an array of {}", a.len()),
        V::Bool(b) => format!("the boolean {b}"),
        V::F32(x) => format!("{x}"),
        V::F64(x) => format!("{x}"),
        other => match gguf_int(other) {
            Some(x) => format!("{x}"),
            None => format!("{other:?}"),
        },
    }
}

/// Any GGUF integer, widened.
pub(crate) fn gguf_int(v: &gguf_file::Value) -> Option<i128> {
    use gguf_file::Value as V;
    Some(match v {
        V::U8(x) => (*x).into(),
        V::I8(x) => (*x).into(),
        V::U16(x) => (*x).into(),
        V::I16(x) => (*x).into(),
        V::U32(x) => (*x).into(),
        V::I32(x) => (*x).into(),
        V::U64(x) => (*x).into(),
        V::I64(x) => (*x).into(),
        _ => return None,
    })
}

/// A non-negative GGUF integer that fits `usize`.
pub(crate) fn gguf_uint(v: &gguf_file::Value) -> Option<usize> {
    gguf_int(v).and_then(|x| usize::try_from(x).ok())
}

/// The `{arch}.*` keys of a GGUF file, read with typed errors.
struct GgufMeta<'a> {
    md: &'a HashMap<String, gguf_file::Value>,
    arch: &'a str,
}

impl GgufMeta<'_> {
    fn get(&self, k: &str) -> (String, Option<&gguf_file::Value>) {
        let key = format!("{}.{k}", self.arch);
        let v = self.md.get(&key);
        (key, v)
    }

    fn wrong(key: String, expected: &'static str, v: &gguf_file::Value) -> ConfigError {
        ConfigError::WrongType {
            key,
            expected,
            found: describe(v),
        }
    }

    fn uint(&self, k: &str) -> std::result::Result<Option<usize>, ConfigError> {
        match self.get(k) {
            (_, None) => Ok(None),
            (key, Some(v)) => gguf_uint(v)
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "an unsigned integer", v)),
        }
    }

    fn need(&self, k: &str) -> std::result::Result<usize, ConfigError> {
        self.uint(k)?.ok_or_else(|| ConfigError::Missing {
            key: format!("{}.{k}", self.arch),
        })
    }

    /// A count that may be stored per layer; every layer must agree.
    fn uniform_uint(&self, k: &str) -> std::result::Result<Option<usize>, ConfigError> {
        let (key, Some(gguf_file::Value::Array(items))) = self.get(k) else {
            return self.uint(k);
        };
        let expected = "one unsigned integer, or the same one for every layer";
        let first = items.first().and_then(gguf_uint);
        match first {
            Some(n) if items.iter().all(|x| gguf_uint(x) == Some(n)) => Ok(Some(n)),
            _ => Err(ConfigError::WrongType {
                key,
                expected,
                found: format!(
                    "an array of {} differing or non-integer values",
                    items.len()
                ),
            }),
        }
    }

    fn float(&self, k: &str) -> std::result::Result<Option<f64>, ConfigError> {
        use gguf_file::Value as V;
        match self.get(k) {
            (_, None) => Ok(None),
            (_, Some(V::F32(x))) => Ok(Some(f64::from(*x))),
            (_, Some(V::F64(x))) => Ok(Some(*x)),
            (key, Some(v)) => match gguf_int(v) {
                Some(x) => Ok(Some(x as f64)),
                None => Err(Self::wrong(key, "a number", v)),
            },
        }
    }

    fn string(&self, k: &str) -> std::result::Result<Option<&str>, ConfigError> {
        match self.get(k) {
            (_, None) => Ok(None),
            (_, Some(gguf_file::Value::String(s))) => Ok(Some(s.as_str())),
            (key, Some(v)) => Err(Self::wrong(key, "a string", v)),
        }
    }

    /// `vocab_size` comes from the embedding tensor, which is authoritative; whether
    /// an `output.weight` exists decides tying.
    fn facts(
        &self,
        vocab_size: usize,
        has_output: bool,
    ) -> std::result::Result<CheckpointFacts, ConfigError> {
        let factor = self.float("rope.scaling.factor")?;
        let rope_scaling = match (self.string("rope.scaling.type")?, factor) {
            (Some("linear"), Some(factor)) if factor != 1.0 => RopeScaling::Linear { factor },
            _ => RopeScaling::None,
        };
        Ok(CheckpointFacts {
            format: WeightFormat::Gguf,
            vocab_size,
            hidden_size: self.need("embedding_length")?,
            intermediate_size: self.need("feed_forward_length")?,
            num_layers: self.need("block_count")?,
            num_heads: self.need("attention.head_count")?,
            num_kv_heads: self.uniform_uint("attention.head_count_kv")?,
            head_dim: self.uint("attention.key_length")?,
            rms_norm_eps: self.float("attention.layer_norm_rms_epsilon")?,
            context_length: self.uint("context_length")?,
            rope_theta: self.float("rope.freq_base")?,
            rope_scaling,
            rope_local_theta: None,
            rope_local_scaling: RopeScaling::None,
            rope_interleaved: self.arch == "llama",
            // llama.cpp reads a window of 0 as "no sliding window".
            sliding_window: self.uint("attention.sliding_window")?.filter(|&w| w > 0),
            sliding_window_pattern: None,
            layer_sliding: None,
            query_pre_attn_scalar: None,
            attn_softcap: self.float("attn_logit_softcapping")?,
            final_softcap: self.float("final_logit_softcapping")?,
            tie_word_embeddings: Some(!has_output),
            attention_bias: Some(false),
            activation: None,
        })
    }
}

/// A serde error with the field it happened in.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    match e.path().to_string().as_str() {
        "." | "?" => e.inner().to_string(),
        field => format!("`{field}`: {}", e.inner()),
    }
}

fn unsupported(name: &str) -> ConfigError {
    ConfigError::UnsupportedArchitecture {
        found: name.to_string(),
        supported: Architecture::supported_list(),
    }
}

impl TransformerConfig {
    /// Reads an HF `config.json`. `arch_override` replaces `architectures[0]`.
    pub fn from_hf_file(path: &Path, arch_override: Option<Architecture>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let cfg = serde_path_to_error::deserialize(&mut de)
            .map_err(field_error)
            .and_then(|cfg: HfConfig| de.end().map(|_| cfg).map_err(|e| e.to_string()))
            .map_err(|reason| Error::BadConfig {
                path: path.to_path_buf(),
                reason,
            })?;
        Self::from_hf(cfg, arch_override).map_err(|p| Error::invalid(path, p))
    }

    /// Reads a parsed HF `config.json`.
    pub fn from_hf_value(cfg: &Value, arch_override: Option<Architecture>) -> Result<Self> {
        let cfg = serde_path_to_error::deserialize(cfg)
            .map_err(field_error)
            .map_err(|reason| Error::BadConfig {
                path: "config.json".into(),
                reason,
            })?;
        Self::from_hf(cfg, arch_override).map_err(|p| Error::invalid("config.json", p))
    }

    fn from_hf(
        root: HfConfig,
        arch_override: Option<Architecture>,
    ) -> std::result::Result<Self, ConfigError> {
        let outer_name = root.arch_name().map(String::from);
        let cfg = match root.text_config {
            Some(inner) => *inner,
            None => root,
        };
        let arch = match arch_override {
            Some(a) => a,
            None => {
                let name = cfg.arch_name().or(outer_name.as_deref()).ok_or_else(|| {
                    ConfigError::Missing {
                        key: "architectures` or `model_type".into(),
                    }
                })?;
                Architecture::parse(name).map_err(|_| unsupported(name))?
            }
        };
        Self::from_facts(arch, &cfg.facts()?)
    }

    /// Reads GGUF metadata (`general.architecture` and its `{arch}.*` keys).
    /// `vocab_size` is the row count of the embedding tensor; `has_output` says whether
    /// the file has an `output.weight` (else the head is tied to the embedding).
    pub fn from_gguf(
        path: &Path,
        md: &HashMap<String, gguf_file::Value>,
        arch_override: Option<Architecture>,
        vocab_size: usize,
        has_output: bool,
    ) -> Result<Self> {
        let read = || -> std::result::Result<Self, ConfigError> {
            let key = "general.architecture";
            let name = match md.get(key) {
                Some(gguf_file::Value::String(s)) => s.as_str(),
                Some(v) => {
                    return Err(ConfigError::WrongType {
                        key: key.into(),
                        expected: "a string",
                        found: describe(v),
                    })
                }
                None => return Err(ConfigError::Missing { key: key.into() }),
            };
            let arch = match arch_override {
                Some(a) => a,
                None => Architecture::parse(name).map_err(|_| unsupported(name))?,
            };
            let facts = GgufMeta { md, arch: name }.facts(vocab_size, has_output)?;
            Self::from_facts(arch, &facts)
        };
        read().map_err(|p| Error::invalid(path, p))
    }

    /// The family rules: what an `arch` checkpoint means by `facts`, with each family's
    /// defaults filled in. The result is validated.
    pub fn from_facts(
        arch: Architecture,
        facts: &CheckpointFacts,
    ) -> std::result::Result<Self, ConfigError> {
        let f = facts;
        let gemma = arch.is_gemma();
        let hf = f.format == WeightFormat::HuggingFace;
        let num_heads = f.num_heads;
        let head_dim = f.head_dim.unwrap_or(f.hidden_size / num_heads.max(1));

        // Which layers use the sliding window: stated per layer, else the family's
        // fixed pattern (Gemma 2 alternates starting with a local layer; Gemma 3 has
        // five local layers per global one).
        let layer_is_sliding = match &f.layer_sliding {
            Some(kinds) => kinds.clone(),
            // validate() reports the count; the pattern is not built for it.
            None if f.num_layers > MAX_LAYERS => Vec::new(),
            None => {
                let pattern = f.sliding_window_pattern.unwrap_or(6);
                if arch == Architecture::Gemma3 && pattern == 0 {
                    return Err(ConfigError::OutOfRange {
                        field: "sliding_window_pattern",
                        value: 0,
                        min: 1,
                        max: MAX_LAYERS as u64,
                    });
                }
                (0..f.num_layers)
                    .map(|i| match arch {
                        Architecture::Gemma2 => i % 2 == 0,
                        Architecture::Gemma3 => (i + 1) % pattern != 0,
                        _ => f.sliding_window.is_some(),
                    })
                    .collect()
            }
        };

        let rope_global = RopeConfig {
            theta: f.rope_theta.unwrap_or(10_000.0),
            scaling: f.rope_scaling.clone(),
        };
        // Gemma 3's local layers rotate with their own base, 10,000 unless stated.
        let rope_local = if arch == Architecture::Gemma3 {
            RopeConfig {
                theta: f.rope_local_theta.unwrap_or(10_000.0),
                scaling: f.rope_local_scaling.clone(),
            }
        } else {
            rope_global.clone()
        };

        // Gemma scales queries by 1/sqrt(query_pre_attn_scalar). GGUF files do not
        // store it: llama.cpp (`llama-model.cpp`, LLM_ARCH_GEMMA2 / LLM_ARCH_GEMMA3)
        // uses 1/sqrt(n_embd / n_head) for the 27B models, recognised by their layer
        // count (Gemma 2: 46, Gemma 3: 62), and 1/sqrt(head_dim) for every other size.
        let is_27b = matches!(
            (arch, f.num_layers),
            (Architecture::Gemma2, 46) | (Architecture::Gemma3, 62)
        );
        let attn_scale = match f.query_pre_attn_scalar {
            Some(s) if gemma => 1.0 / s.sqrt(),
            None if is_27b => 1.0 / ((f.hidden_size / num_heads.max(1)) as f64).sqrt(),
            _ => 1.0 / (head_dim as f64).sqrt(),
        };

        let cfg = Self {
            arch,
            vocab_size: f.vocab_size,
            hidden_size: f.hidden_size,
            intermediate_size: f.intermediate_size,
            num_layers: f.num_layers,
            num_heads,
            num_kv_heads: f.num_kv_heads.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: f.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: f.context_length.unwrap_or(4096),
            rope_style: if f.rope_interleaved {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Halves
            },
            rope_global,
            rope_local,
            tie_word_embeddings: f.tie_word_embeddings.unwrap_or(gemma),
            attention_bias: f.attention_bias.unwrap_or(arch == Architecture::Qwen2),
            qk_norm: matches!(arch, Architecture::Qwen3 | Architecture::Gemma3),
            // GGUF converters fold Gemma's `1 + w` into the stored norm weights.
            norm_plus_one: gemma && hf,
            sandwich_norms: gemma,
            embed_scale: gemma.then(|| (f.hidden_size as f64).sqrt()),
            attn_scale,
            attn_softcap: f.attn_softcap.filter(|_| arch == Architecture::Gemma2),
            final_softcap: f.final_softcap.filter(|_| gemma),
            sliding_window: f.sliding_window,
            layer_is_sliding,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                f.activation.unwrap_or(Activation::Silu)
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the decoder can be built from this config: every size positive and
    /// within [`limits`], heads grouped evenly over KV heads, one attention type per
    /// layer, and every scale a finite positive number.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let in_range = |field: &'static str, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(ConfigError::OutOfRange {
                    field,
                    value: value as u64,
                    min: 1,
                    max: max as u64,
                })
            } else {
                Ok(())
            }
        };
        in_range("vocab_size", self.vocab_size, MAX_VOCAB)?;
        in_range("hidden_size", self.hidden_size, MAX_HIDDEN)?;
        in_range(
            "intermediate_size",
            self.intermediate_size,
            MAX_INTERMEDIATE,
        )?;
        in_range("num_layers", self.num_layers, MAX_LAYERS)?;
        in_range("num_heads", self.num_heads, MAX_HEADS)?;
        in_range("num_kv_heads", self.num_kv_heads, MAX_HEADS)?;
        in_range("head_dim", self.head_dim, MAX_HEAD_DIM)?;
        in_range(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_CONTEXT,
        )?;
        if let Some(w) = self.sliding_window {
            in_range("sliding_window", w, MAX_CONTEXT)?;
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(ConfigError::UngroupedHeads {
                heads: self.num_heads,
                kv_heads: self.num_kv_heads,
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::OddHeadDim {
                head_dim: self.head_dim,
            });
        }
        if self.layer_is_sliding.len() != self.num_layers {
            return Err(ConfigError::LayerTypes {
                found: self.layer_is_sliding.len(),
                layers: self.num_layers,
            });
        }
        // Bounded above, so the product cannot overflow.
        let kv_bytes = 2 * 4 * (self.num_layers * self.num_kv_heads * self.head_dim) as u64;
        if kv_bytes > MAX_KV_BYTES_PER_POSITION {
            return Err(ConfigError::KvCacheTooLarge {
                bytes: kv_bytes,
                max: MAX_KV_BYTES_PER_POSITION,
            });
        }
        let positive = |field: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(ConfigError::NotPositive { field, value })
            }
        };
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("attention scale", self.attn_scale)?;
        if let Some(s) = self.embed_scale {
            positive("embedding scale", s)?;
        }
        if let Some(c) = self.attn_softcap {
            positive("attn_logit_softcapping", c)?;
        }
        if let Some(c) = self.final_softcap {
            positive("final_logit_softcapping", c)?;
        }
        for rope in [&self.rope_global, &self.rope_local] {
            positive("rope_theta", rope.theta)?;
            match rope.scaling {
                RopeScaling::None => {}
                RopeScaling::Linear { factor } => positive("rope scaling factor", factor)?,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                } => {
                    positive("rope scaling factor", factor)?;
                    positive("low_freq_factor", low_freq_factor)?;
                    positive("high_freq_factor", high_freq_factor)?;
                    positive(
                        "original_max_position_embeddings",
                        original_max_position_embeddings,
                    )?;
                    if high_freq_factor <= low_freq_factor {
                        return Err(ConfigError::RopeFactors {
                            low: low_freq_factor,
                            high: high_freq_factor,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Parameters of a decoder of this shape: every tensor it reads, the embedding table
    /// counted once when the output head is tied to it. Counted from the shape alone, so
    /// that the loader needs no tensor names; `random::tensor_shapes` lists the same
    /// tensors (a test there checks the two agree).
    pub fn parameter_count(&self) -> u64 {
        let (h, hd) = (self.hidden_size as u64, self.head_dim as u64);
        let (q_out, kv_out) = (self.num_heads as u64 * hd, self.num_kv_heads as u64 * hd);
        let inter = self.intermediate_size as u64;
        // Attention norm, q, k, v, o; MLP norm, gate, up, down.
        let mut layer = h + q_out * h + 2 * kv_out * h + h * q_out + h + 3 * inter * h;
        if self.attention_bias {
            layer += q_out + 2 * kv_out;
        }
        if self.qk_norm {
            layer += 2 * hd;
        }
        if self.sandwich_norms {
            layer += 2 * h;
        }
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_layers as u64 * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameter_count_of_llama_3_8b() {
        let cfg = json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": false
        });
        let cfg = TransformerConfig::from_hf_value(&cfg, None).unwrap();
        assert_eq!(cfg.parameter_count(), 8_030_261_248);
    }

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

    use gguf_file::Value as G;

    fn tiny_hf(extra: Value) -> Value {
        let mut cfg = json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    }

    fn hf_problem(extra: Value) -> ConfigError {
        match TransformerConfig::from_hf_value(&tiny_hf(extra), None) {
            Err(Error::InvalidConfig { problem, .. }) => *problem,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    fn gguf_md(arch: &str, entries: &[(&str, G)]) -> HashMap<String, G> {
        let mut md = HashMap::new();
        md.insert("general.architecture".to_string(), G::String(arch.into()));
        for (k, v) in entries {
            md.insert(format!("{arch}.{k}"), v.clone());
        }
        md
    }

    /// GGUF metadata of a model shape: layers, hidden, heads, KV heads, head_dim, MLP.
    fn shape_md(arch: &str, s: [u32; 6]) -> HashMap<String, G> {
        gguf_md(
            arch,
            &[
                ("block_count", G::U32(s[0])),
                ("embedding_length", G::U32(s[1])),
                ("attention.head_count", G::U32(s[2])),
                ("attention.head_count_kv", G::U32(s[3])),
                ("attention.key_length", G::U32(s[4])),
                ("feed_forward_length", G::U32(s[5])),
                ("context_length", G::U32(8192)),
                ("attention.sliding_window", G::U32(512)),
            ],
        )
    }

    fn from_md(md: &HashMap<String, G>) -> Result<TransformerConfig> {
        TransformerConfig::from_gguf(Path::new("m.gguf"), md, None, 1000, false)
    }

    #[test]
    fn gemma_gguf_attention_scale_follows_llamacpp() {
        // 27B models: 1/sqrt(hidden / heads), which differs from 1/sqrt(head_dim = 128).
        let g3_27b = from_md(&shape_md("gemma3", [62, 5376, 32, 16, 128, 21504])).unwrap();
        assert_eq!(g3_27b.attn_scale, 1.0 / 168f64.sqrt());
        let g2_27b = from_md(&shape_md("gemma2", [46, 4608, 32, 16, 128, 36864])).unwrap();
        assert_eq!(g2_27b.attn_scale, 1.0 / 144f64.sqrt());
        // Every other size: 1/sqrt(head_dim), although hidden / heads differs (160, 288).
        let g3_270m = from_md(&shape_md("gemma3", [18, 640, 4, 1, 256, 2048])).unwrap();
        assert_eq!(g3_270m.attn_scale, 1.0 / 16.0);
        let g2_2b = from_md(&shape_md("gemma2", [26, 2304, 8, 4, 256, 9216])).unwrap();
        assert_eq!(g2_2b.attn_scale, 1.0 / 16.0);
        // The layer counts mean 27B only for Gemma.
        let llama = from_md(&shape_md("llama", [62, 5376, 32, 16, 128, 21504])).unwrap();
        assert_eq!(llama.attn_scale, 1.0 / 128f64.sqrt());
    }

    #[test]
    fn hf_gemma_honours_query_pre_attn_scalar() {
        let c = TransformerConfig::from_hf_value(
            &tiny_hf(
                json!({"architectures": ["Gemma2ForCausalLM"], "head_dim": 4,
                            "query_pre_attn_scalar": 24}),
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.attn_scale, 1.0 / 24f64.sqrt());
        assert!(c.norm_plus_one && c.tie_word_embeddings);
    }

    #[test]
    fn gguf_and_hf_readings_of_one_shape_agree() {
        let hf = TransformerConfig::from_hf_value(
            &tiny_hf(
                json!({"architectures": ["Gemma3ForCausalLM"], "vocab_size": 1000,
                            "hidden_size": 640, "intermediate_size": 2048,
                            "num_hidden_layers": 18, "num_attention_heads": 4,
                            "num_key_value_heads": 1, "head_dim": 256,
                            "max_position_embeddings": 8192, "sliding_window": 512,
                            "rope_theta": 10000.0}),
            ),
            None,
        )
        .unwrap();
        let gguf = from_md(&shape_md("gemma3", [18, 640, 4, 1, 256, 2048])).unwrap();
        assert_eq!(hf.layer_is_sliding, gguf.layer_is_sliding);
        assert_eq!(hf.attn_scale, gguf.attn_scale);
        assert_eq!(hf.rope_local, gguf.rope_local);
        assert_eq!(hf.sliding_window, gguf.sliding_window);
        // The storage conventions are the only differences.
        assert!(hf.norm_plus_one && !gguf.norm_plus_one);
    }

    #[test]
    fn zero_kv_heads_are_refused() {
        let p = hf_problem(json!({"num_key_value_heads": 0}));
        assert!(matches!(
            p,
            ConfigError::OutOfRange {
                field: "num_kv_heads",
                value: 0,
                ..
            }
        ));
        let p = hf_problem(json!({"num_key_value_heads": 3, "num_attention_heads": 4}));
        assert_eq!(
            p,
            ConfigError::UngroupedHeads {
                heads: 4,
                kv_heads: 3
            }
        );
        let p = hf_problem(json!({"num_attention_heads": 0}));
        assert!(matches!(
            p,
            ConfigError::OutOfRange {
                field: "num_heads",
                ..
            }
        ));
    }

    #[test]
    fn absurd_sizes_are_refused_before_allocation() {
        let huge = 1u64 << 40;
        for (key, field) in [
            ("vocab_size", "vocab_size"),
            ("max_position_embeddings", "max_position_embeddings"),
            ("hidden_size", "hidden_size"),
            // Building the per-layer pattern for this many layers would need 1 TiB.
            ("num_hidden_layers", "num_layers"),
            ("intermediate_size", "intermediate_size"),
        ] {
            let p = hf_problem(json!({ key: huge }));
            assert!(
                matches!(p, ConfigError::OutOfRange { field: f, value, .. } if f == field && value == huge),
                "{key}: {p}"
            );
        }
        // Each size alone is plausible; the KV cache per position is not.
        let p = hf_problem(
            json!({"num_hidden_layers": 1000, "num_attention_heads": 1000,
                                  "hidden_size": 1000, "head_dim": 1000}),
        );
        assert!(matches!(p, ConfigError::KvCacheTooLarge { .. }), "{p}");
    }

    #[test]
    fn malformed_values_are_refused() {
        let p = hf_problem(json!({"head_dim": 3}));
        assert_eq!(p, ConfigError::OddHeadDim { head_dim: 3 });
        let p = hf_problem(json!({"rms_norm_eps": 0.0}));
        assert!(matches!(
            p,
            ConfigError::NotPositive {
                field: "rms_norm_eps",
                ..
            }
        ));
        let p = hf_problem(json!({"layer_types": ["full_attention"]}));
        assert_eq!(
            p,
            ConfigError::LayerTypes {
                found: 1,
                layers: 2
            }
        );
        let p = hf_problem(json!({"sliding_window": 0}));
        assert!(matches!(
            p,
            ConfigError::OutOfRange {
                field: "sliding_window",
                ..
            }
        ));
        let p =
            hf_problem(json!({"architectures": ["Gemma2ForCausalLM"], "query_pre_attn_scalar": 0}));
        assert!(matches!(p, ConfigError::NotPositive { .. }), "{p}");
        // A pattern of 0 would divide by zero when laying out Gemma 3's layers.
        let p = hf_problem(
            json!({"architectures": ["Gemma3ForCausalLM"], "sliding_window_pattern": 0}),
        );
        assert!(matches!(
            p,
            ConfigError::OutOfRange {
                field: "sliding_window_pattern",
                ..
            }
        ));
        let p = hf_problem(json!({"architectures": ["MambaForCausalLM"]}));
        assert!(matches!(p, ConfigError::UnsupportedArchitecture { .. }));
        let p = hf_problem(json!({"hidden_size": null}));
        assert_eq!(
            p,
            ConfigError::Missing {
                key: "hidden_size".into()
            }
        );
        // A wrong JSON type is a parse error naming the field.
        let err = TransformerConfig::from_hf_value(&tiny_hf(json!({"vocab_size": "ten"})), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config.json: invalid config.json: `vocab_size`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn multimodal_wrapper_reads_text_config() {
        let cfg = json!({"architectures": ["Gemma3ForConditionalGeneration"],
                         "text_config": tiny_hf(json!({"architectures": null,
                                                       "model_type": "gemma3_text"}))});
        let c = TransformerConfig::from_hf_value(&cfg, None).unwrap();
        assert_eq!(c.arch, Architecture::Gemma3);
        assert_eq!(c.vocab_size, 10);
    }

    #[test]
    fn gguf_metadata_errors_name_the_file_and_key() {
        let shape = [2, 64, 4, 2, 16, 128];
        let mut md = shape_md("llama", shape);
        md.insert("llama.block_count".into(), G::String("two".into()));
        let err = from_md(&md).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "m.gguf: `llama.block_count` is a string, expected an unsigned integer"
            ),
            "{err}"
        );
        let mut md = shape_md("llama", shape);
        md.remove("llama.embedding_length");
        let err = from_md(&md).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { problem, .. }
                     if matches!(&**problem, ConfigError::Missing { key } if key == "llama.embedding_length")),
            "{err}"
        );
        let mut md = shape_md("llama", shape);
        md.insert("llama.rope.freq_base".into(), G::F32(f32::NAN));
        let err = from_md(&md).unwrap_err();
        assert!(err.to_string().contains("rope_theta is NaN"), "{err}");
        let mut md = shape_md("llama", shape);
        md.insert("llama.attention.head_count_kv".into(), G::I32(-2));
        assert!(from_md(&md).unwrap_err().to_string().contains("is -2"));
        let md = shape_md("mamba", shape);
        let err = from_md(&md).unwrap_err().to_string();
        assert!(
            err.starts_with("m.gguf: unsupported architecture `mamba`"),
            "{err}"
        );
        let mut md = shape_md("llama", shape);
        md.remove("general.architecture");
        let err = from_md(&md).unwrap_err().to_string();
        assert!(err.contains("`general.architecture` is missing"), "{err}");
        // Per-layer KV head counts are accepted when they agree.
        let mut md = shape_md("llama", shape);
        md.insert(
            "llama.attention.head_count_kv".into(),
            G::Array(vec![G::U32(2), G::U32(2)]),
        );
        assert_eq!(from_md(&md).unwrap().num_kv_heads, 2);
    }
}
