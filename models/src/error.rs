//! Errors of the models crate. Every variant says what went wrong and, where there is
//! one, what the user can do about it.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: file not found (check the path, or fetch the demo models with scripts/fetch-models.sh)")]
    FileNotFound { path: PathBuf },

    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },

    #[error("{path}: not a valid GGUF file ({reason}); the file may be truncated or corrupt, download it again")]
    BadGguf { path: PathBuf, reason: String },

    #[error("{path}: invalid config.json: {reason}")]
    BadConfig { path: PathBuf, reason: String },

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

    #[error("chat template: {0} (use --raw to skip the template)")]
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

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
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
}
