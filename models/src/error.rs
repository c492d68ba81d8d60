//! Errors of the models crate. Every variant says what went wrong and, where there is
//! one, what the user can do about it; every message is one line.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: file not found (check the path, or fetch the demo models with scripts/fetch-models.sh)")]
    FileNotFound { path: PathBuf },

    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },

    #[error("{path}: not a valid GGUF file ({reason}); the file may be truncated or corrupt, download it again")]
    BadGguf { path: PathBuf, reason: String },

    #[error(
        "{path}: invalid config.json: {reason}; fix the file or download the checkpoint again"
    )]
    BadConfig { path: PathBuf, reason: String },

    /// The checkpoint's configuration (config.json or GGUF metadata) was read but
    /// describes a model this crate cannot or must not build.
    #[error("{path}: {problem}")]
    InvalidConfig {
        path: PathBuf,
        problem: Box<ConfigError>,
    },

    #[error("unsupported architecture `{found}`; supported: {supported} (override with --arch if the weights follow one of these)")]
    UnknownArchitecture { found: String, supported: String },

    #[error("missing tensor `{name}` in {source_desc}; the checkpoint does not match the `{arch}` layout")]
    MissingTensor {
        name: String,
        source_desc: String,
        arch: String,
    },

    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0} (a raw prompt skips the template)")]
    ChatTemplate(String),

    #[error("bad model source `{spec}`: {reason}")]
    BadSource { spec: String, reason: String },

    #[error("`{spec}` is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; run once with network access or pass a local path")]
    NotCached { spec: String },

    #[error("download of `{spec}` failed: {reason}")]
    Download { spec: String, reason: String },

    #[error("device `{spec}`: {reason}")]
    Device { spec: String, reason: String },

    #[error("unsupported dtype `{0}`; use f32, f16, bf16 or auto")]
    BadDType(String),

    #[error("empty input: at least one token id is needed")]
    EmptyInput,

    #[error("token id {id} is out of range for a vocabulary of {vocab} ids")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error("context overflow: position {needed} exceeds the model's context length {max}")]
    ContextOverflow { needed: usize, max: usize },

    #[error("batched forward: {0}")]
    Batch(&'static str),

    #[error("{}", one_line(.0))]
    Candle(#[from] candle_core::Error),
}

/// The advice every damaged-checkpoint message ends with.
const REDO: &str =
    "the checkpoint is damaged or was converted wrongly: download or convert it again";

/// What is wrong with a checkpoint's configuration. The same checks run on HF
/// `config.json` files, GGUF metadata and configs built in code; see
/// [`TransformerConfig::validate`](crate::TransformerConfig::validate).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("`{key}` is missing; {}", REDO)]
    Missing { key: String },

    #[error("`{key}` is {found}, expected {expected}; {}", REDO)]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("unsupported architecture `{found}`; supported: {supported} (override with --arch if the weights follow one of these)")]
    UnsupportedArchitecture { found: String, supported: String },

    #[error(
        "{field} is {value}, outside the supported range {min}..={max}; {}",
        REDO
    )]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },

    #[error("{field} is {value}, expected a finite number above 0; {}", REDO)]
    NotPositive { field: &'static str, value: f64 },

    #[error(
        "{heads} attention heads cannot be grouped over {kv_heads} KV heads (not a multiple); {}",
        REDO
    )]
    UngroupedHeads { heads: usize, kv_heads: usize },

    #[error(
        "head_dim {head_dim} is odd, rotary embeddings need pairs of dimensions; {}",
        REDO
    )]
    OddHeadDim { head_dim: usize },

    #[error("{found} per-layer attention types for {layers} layers; {}", REDO)]
    LayerTypes { found: usize, layers: usize },

    #[error(
        "rope scaling has high_freq_factor {high} <= low_freq_factor {low}; {}",
        REDO
    )]
    RopeFactors { low: f64, high: f64 },

    #[error("one position of KV cache takes {bytes} bytes (layers x KV heads x head_dim), above the {max}-byte limit; {}", REDO)]
    KvCacheTooLarge { bytes: u64, max: u64 },

    #[error(
        "the checkpoint has tensors for more than the {layers} layers its configuration states; {}",
        REDO
    )]
    ExtraLayers { layers: usize },

    #[error(
        "tensor `{name}` has shape {found:?} but the configuration implies {expected:?}; {}",
        REDO
    )]
    TensorShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        let path = path.into();
        if err.kind() == std::io::ErrorKind::NotFound {
            Error::FileNotFound { path }
        } else {
            Error::Io {
                path,
                message: err.to_string(),
            }
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, problem: ConfigError) -> Self {
        Error::InvalidConfig {
            path: path.into(),
            problem: Box::new(problem),
        }
    }
}

/// A candle error as one line: candle appends a backtrace on new lines when
/// `RUST_BACKTRACE` is set, and wraps some errors in context.
pub(crate) fn one_line(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => one_line(inner),
        other => {
            let text = other.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let first = lines.next().unwrap_or("").to_string();
            match lines.next() {
                Some(_) => format!("{first} ..."),
                None => first,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_display_on_one_line() {
        let inner = candle_core::Error::Msg("bad block".into());
        let wrapped = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(wrapped.to_string().contains('\n'));
        assert_eq!(Error::Candle(wrapped).to_string(), "bad block");
    }
}
