//! Decoder-only transformer families for tutti, written on candle-nn.
//!
//! Every model implements [`CausalLm`]: feed ids at the current position, get the last
//! position's logits, and cut the KV cache back to any length with `truncate` (the
//! ensemble's rollback). Weights come from an HF folder (safetensors, f32/f16/bf16) or a
//! GGUF file (quantized matmuls); the architecture is read from `config.json`
//! `architectures[0]` or GGUF `general.architecture`.
//!
//! Families: Llama 2/3 (and SmolLM2), Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3, Phi-3.
//!
//! Cargo features beyond the GPU backends (`cuda`, `metal`): `random`, random-weight
//! models of real shapes for speed measurements and tests (module `random`); `fuzz`, the
//! loaders' entry points for the fuzz targets and the corpus replay test (module `fuzz`).

mod chat;
pub mod config;
pub mod device;
pub mod durable;
pub(crate) mod error;
#[cfg(feature = "fuzz")]
pub mod fuzz;
mod ggml;
mod hex;
mod kv_cache;
mod pool;
mod quant;
#[cfg(feature = "random")]
pub mod random;
pub mod source;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use config::{Architecture, CheckpointFacts, TransformerConfig, WeightFormat};
pub use device::{default_dtype, device_name, parse_device, parse_dtype, DTypeSpec, DeviceSpec};
pub use error::{ConfigError, Error, Result};
pub use hex::hex;
pub use pool::{set_threads, threads};
pub use quant::{kernel_choice, kernel_set, repack_totals, KernelChoice, KernelSet, KERNELS_ENV};
pub use source::{fetch_hub_file, ModelSource, RepoKind};
pub use tokenizer::ModelTokenizer;
pub use transformer::Transformer;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A causal language model with a truncatable KV cache.
pub trait CausalLm: Send {
    /// Appends `ids` at the current position and returns the F32 logits of the last
    /// position, shape `[vocab]`. On error the cache is left at its previous length.
    fn forward(&mut self, ids: &[u32]) -> Result<Tensor>;
    /// [`CausalLm::forward`], plus the natural-log probability each position of `ids`
    /// but the last gives the id that follows it (`ids.len() - 1` values, the last
    /// position's logits unchanged). A model that cannot score returns no values.
    fn forward_scored(&mut self, ids: &[u32]) -> Result<(Tensor, Vec<f32>)> {
        Ok((self.forward(ids)?, Vec::new()))
    }
    /// Appends `ids` and returns the F32 logits of every one of their positions, shape
    /// `[ids.len(), vocab]`: row `i` is the distribution of the id after `ids[i]`. Each
    /// row holds the bits a one-id [`CausalLm::forward`] at that position gives (one
    /// forward for all of them where the model is [`CausalLm::chunk_invariant`], else
    /// one per id). On error the cache is left at its previous length.
    fn forward_rows(&mut self, ids: &[u32]) -> Result<Tensor> {
        transformer::forward_rows_by_steps(self, ids)
    }
    /// Number of positions in the KV cache.
    fn position(&self) -> usize;
    /// Drops every cached position at or after `len`.
    fn truncate(&mut self, len: usize);
    /// Empties the cache.
    fn reset(&mut self) {
        self.truncate(0)
    }
    /// For tests of the callers' recovery: the next forward panics right after layer
    /// `layer` has appended its rows to its KV cache, leaving the caches of the layers
    /// before it longer than [`CausalLm::position`]. Models without layers ignore it.
    #[doc(hidden)]
    fn inject_panic_after_layer(&mut self, _layer: usize) {}
    /// Width of the logits (may differ from the tokenizer's size).
    fn vocab_size(&self) -> usize;
    fn device(&self) -> &Device;
    /// Activation dtype.
    fn dtype(&self) -> DType;
    /// Input embedding table `[rows, hidden]` as F32 on the model's device.
    fn input_embeddings(&self) -> candle_core::Result<Tensor>;
    /// Output projection `[vocab, hidden]` as F32 when it is not tied to the input one.
    fn output_embeddings(&self) -> candle_core::Result<Option<Tensor>>;
    /// A fixed-size encoding of `ids` read from position 0: the last layer's hidden
    /// states after the final norm, averaged over positions, F32 `[hidden]`. Empties the
    /// cache before and after. `None` when the model cannot encode.
    fn encode(&mut self, ids: &[u32]) -> Result<Option<Tensor>> {
        let _ = ids;
        Ok(None)
    }
    /// A second decoder over the same weights (shared, not copied) with an empty cache
    /// of its own. `None` when the model cannot share its weights.
    fn fork(&self) -> Option<Box<dyn CausalLm>> {
        None
    }
    /// Bytes of KV cache one position takes across all layers (what a sequence's cache
    /// grows by per token); 0 when unknown.
    fn kv_bytes_per_token(&self) -> u64 {
        0
    }
    /// Whether a position's logits are the same bits however the ids before it were fed
    /// (whole, in chunks, after a kept prefix, beside other rows): what makes keeping a
    /// cached prefix for a new text safe.
    fn chunk_invariant(&self) -> bool {
        false
    }
    /// [`CausalLm::fork`] with a copy of the first `len` cached positions (at most what
    /// the cache holds), for a text that shares that prefix; returns the fork and how
    /// many positions it holds. A model that cannot copy its cache forks empty (0).
    fn fork_with_prefix(&self, len: usize) -> Option<(Box<dyn CausalLm>, usize)> {
        let _ = len;
        self.fork().map(|f| (f, 0))
    }
    /// The decoder behind this model, for [`forward_batch`]. `None` for other kinds.
    fn as_transformer_mut(&mut self) -> Option<&mut Transformer> {
        None
    }
}

/// Feeds each model its new ids and returns each one's last logits (`[vocab]` per
/// model), the rows of all of them going through the weights together: each weight row
/// is read once for the whole batch. The models must share their weights (a model and
/// its [`CausalLm::fork`]s) and run on the llama.cpp-exact CPU path with
/// batch-invariant numerics, so that each model's logits are the bits a
/// [`CausalLm::forward`] of its own would give. On error every cache is left at its
/// previous length.
pub fn forward_batch(batch: &mut [(&mut (dyn CausalLm + 'static), &[u32])]) -> Result<Vec<Tensor>> {
    let mut decoders = Vec::with_capacity(batch.len());
    for (lm, ids) in batch.iter_mut() {
        let t = lm
            .as_transformer_mut()
            .ok_or(Error::Batch("only transformer decoders batch"))?;
        decoders.push((t, *ids));
    }
    Transformer::forward_batch(&mut decoders)
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Activation/weight dtype for dense checkpoints; `None` picks per device.
    /// GGUF models always compute in F32 around their quantized matmuls.
    pub dtype: Option<DType>,
    /// Use this architecture instead of the one the checkpoint names.
    pub arch: Option<Architecture>,
    /// How the CPU kernels of GGUF models order their sums (see [`Numerics`]).
    pub numerics: Numerics,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            arch: None,
            numerics: Numerics::from_env(),
        }
    }
}

/// The order in which the llama.cpp-exact CPU path (GGUF weights on the CPU) sums.
///
/// llama.cpp picks its matmul and attention kernels by the number of rows in a call: a
/// prompt goes through tiled kernels, a decode step through one-row kernels, and the two
/// round differently. A position's logits then depend on how its prompt was fed (whole,
/// in chunks, after a cached prefix). [`Numerics::BatchInvariant`], the default, computes
/// every row with the one-row kernels whatever else shares the call, so the same ids
/// give the same bits however they arrive, at any thread count; decode steps stay
/// bit-identical to llama.cpp's and whole prompts agree within its parity bounds.
/// [`Numerics::LlamaCpp`] follows llama.cpp's choice by shape, for bit-for-bit
/// comparisons of whole prompts (`TUTTI_NUMERICS=llamacpp` selects it by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Numerics {
    /// A row's result never depends on the other rows of the call.
    #[default]
    BatchInvariant,
    /// llama.cpp's kernels by shape: its prompt logits to the bit.
    LlamaCpp,
}

impl Numerics {
    /// `TUTTI_NUMERICS=llamacpp` gives [`Numerics::LlamaCpp`]; anything else the default.
    pub fn from_env() -> Self {
        match std::env::var("TUTTI_NUMERICS").as_deref() {
            Ok("llamacpp") => Numerics::LlamaCpp,
            _ => Numerics::BatchInvariant,
        }
    }

    /// Whether every row takes the one-row kernels.
    pub(crate) fn invariant(self) -> bool {
        self == Numerics::BatchInvariant
    }
}

/// Facts about a loaded model, for logs, reports and cache keys.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Short display name (file or folder name).
    pub name: String,
    pub source: ModelSource,
    pub arch: Architecture,
    pub format: WeightFormat,
    pub dtype: DType,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// Longest context (prompt plus generated tokens) the model accepts.
    pub context_length: usize,
    /// Total bytes of weights read per decoded token (for bandwidth rooflines).
    pub weight_bytes: u64,
    /// Parameters, embedding table included (route mode's cost per invocation).
    pub parameters: u64,
    /// Identifies the weights: sha256 over file sizes and sampled content.
    pub weights_fingerprint: String,
}

/// A model ready to generate: network, tokenizer, facts.
pub struct Model {
    pub lm: Box<dyn CausalLm>,
    pub tokenizer: ModelTokenizer,
    pub info: ModelInfo,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("info", &self.info).finish()
    }
}

impl Model {
    /// A second instance sharing this one's weights (see [`CausalLm::fork`]), with an
    /// empty cache; `None` when the network cannot share them.
    pub fn fork(&self) -> Option<Model> {
        Some(Model {
            lm: self.lm.fork()?,
            tokenizer: self.tokenizer.clone(),
            info: self.info.clone(),
        })
    }

    /// [`Model::fork`] holding a copy of the first `len` cached positions
    /// ([`CausalLm::fork_with_prefix`]); returns it and how many positions it holds.
    pub fn fork_with_prefix(&self, len: usize) -> Option<(Model, usize)> {
        let (lm, kept) = self.lm.fork_with_prefix(len)?;
        Some((
            Model {
                lm,
                tokenizer: self.tokenizer.clone(),
                info: self.info.clone(),
            },
            kept,
        ))
    }

    /// Loads a model from a spec: folder, `.gguf`, or `hf:ORG/NAME[@REV][/FILE.gguf]`.
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let source = ModelSource::resolve(spec)?;
        Self::load_resolved(source, opts)
    }

    pub fn load_resolved(source: ModelSource, opts: &LoadOptions) -> Result<Self> {
        match &source {
            ModelSource::Gguf(path) => load_gguf(path, source.clone(), opts),
            ModelSource::Folder(dir) => load_folder(dir, source.clone(), opts),
            ModelSource::TokenizerFile(p) => Err(Error::BadSource {
                spec: p.display().to_string(),
                reason: "a tokenizer.json has no weights; pass a model folder or a .gguf file"
                    .into(),
            }),
        }
    }
}

/// Reads a GGUF header (metadata and tensor infos, no tensor data).
pub(crate) fn read_gguf_header(path: &Path) -> Result<gguf_file::Content> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // The header is read in many small pieces (one per token string).
    read_gguf_header_from(&mut std::io::BufReader::new(file), path)
}

/// [`read_gguf_header`] over any reader; `path` names the file in errors.
pub(crate) fn read_gguf_header_from<R: Read + Seek>(
    reader: &mut R,
    path: &Path,
) -> Result<gguf_file::Content> {
    let bad = |reason: String| Error::BadGguf {
        path: path.to_path_buf(),
        reason,
    };
    // candle 0.11.1 divides by `general.alignment` without checking it for zero.
    let start = reader.stream_position().map_err(|e| Error::io(path, e))?;
    // A header this walk cannot follow is left to the reader, which names the problem.
    if let Ok(Some(a)) = gguf_alignment(reader) {
        if !a.is_power_of_two() {
            return Err(bad(format!(
                "`general.alignment` is {a}, not a power of two"
            )));
        }
    }
    reader
        .seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(path, e))?;
    // Kept as a net: a panic inside the reader becomes this file's error.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gguf_file::Content::read(reader)
    }));
    match read {
        Ok(Ok(content)) => Ok(content),
        Ok(Err(e)) => Err(bad(error::one_line(&e))),
        Err(_) => Err(bad(
            "the GGUF reader failed on the header (is `general.alignment` 0?)".into(),
        )),
    }
}

/// The `general.alignment` value of a GGUF v2/v3 header, if present, found by walking
/// the metadata without keeping it (every length is checked against the file's size
/// before it is skipped).
fn gguf_alignment<R: Read + Seek>(r: &mut R) -> std::io::Result<Option<u64>> {
    let start = r.stream_position()?;
    let len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(start))?;
    let mut walk = Walk { r, pos: start, len };
    if walk.u32()? != 0x4655_4747 || !(2..=3).contains(&walk.u32()?) {
        return Ok(None);
    }
    walk.u64()?; // tensor count
    let kv_count = walk.u64()?;
    const KEY: &[u8] = b"general.alignment";
    for _ in 0..kv_count {
        let key_len = walk.u64()?;
        let is_alignment = if key_len == KEY.len() as u64 {
            let mut key = [0u8; KEY.len()];
            walk.read(&mut key)?;
            key == KEY
        } else {
            walk.skip(key_len)?;
            false
        };
        let t = walk.u32()?;
        if is_alignment {
            let Some(size) = gguf_scalar_size(t) else {
                return Ok(None);
            };
            let mut v = [0u8; 8];
            walk.read(&mut v[..size as usize])?;
            return Ok(Some(u64::from_le_bytes(v)));
        }
        match (t, gguf_scalar_size(t)) {
            (_, Some(size)) => walk.skip(size)?,
            (8, None) => {
                let n = walk.u64()?;
                walk.skip(n)?;
            }
            (9, None) => {
                let elem = walk.u32()?;
                let count = walk.u64()?;
                match (elem, gguf_scalar_size(elem)) {
                    (_, Some(size)) => walk.skip(count.saturating_mul(size))?,
                    (8, None) => {
                        for _ in 0..count {
                            let n = walk.u64()?;
                            walk.skip(n)?;
                        }
                    }
                    // Nested arrays: left to the reader.
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Bytes of one GGUF scalar value type.
fn gguf_scalar_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// A forward walk over a file of known length that never seeks past its end; skips stay
/// inside a buffered reader's buffer where they can.
struct Walk<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Walk<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.r.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.len => {
                self.r.seek_relative(n as i64)?;
                self.pos = end;
                Ok(())
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "length past the end",
            )),
        }
    }
}

/// Bytes of one tensor's data, or why its info is impossible.
fn tensor_bytes(name: &str, t: &gguf_file::TensorInfo) -> std::result::Result<u64, String> {
    let dims = t.shape.dims();
    let elems = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| {
            format!("tensor `{name}` has dimensions {dims:?} whose product overflows")
        })?;
    let block = t.ggml_dtype.block_size() as u64;
    if elems % block != 0 {
        return Err(format!(
            "tensor `{name}` has {elems} elements, not a whole number of {:?} blocks of {block}",
            t.ggml_dtype
        ));
    }
    (elems / block)
        .checked_mul(t.ggml_dtype.type_size() as u64)
        .ok_or_else(|| format!("tensor `{name}` is too large"))
}

/// Checks that every tensor's data lies inside a file of `len` bytes (candle reads the
/// header only, so a truncated download is caught here) and returns the bytes of
/// weights read per decoded token.
fn check_gguf_tensors(path: &Path, content: &gguf_file::Content, len: u64) -> Result<u64> {
    let bad = |reason: String| Error::BadGguf {
        path: path.to_path_buf(),
        reason,
    };
    let mut total = 0u64;
    for (name, t) in &content.tensor_infos {
        let bytes = tensor_bytes(name, t).map_err(bad)?;
        let end = content
            .tensor_data_offset
            .checked_add(t.offset)
            .and_then(|start| start.checked_add(bytes));
        if end.is_none_or(|end| end > len) {
            return Err(bad(format!(
                "tensor `{name}` ends past the end of the file ({len} bytes)"
            )));
        }
        if name != "token_embd.weight" || !content.tensor_infos.contains_key("output.weight") {
            total = total.saturating_add(bytes);
        }
    }
    Ok(total)
}

/// The decoder's config from a GGUF header, checked against the tensors' shapes.
fn gguf_config(
    path: &Path,
    content: &gguf_file::Content,
    arch: Option<Architecture>,
) -> Result<TransformerConfig> {
    let vocab_rows = match content.tensor_infos.get("token_embd.weight") {
        Some(embd) => match embd.shape.dims() {
            [rows, _] => *rows,
            dims => {
                return Err(Error::BadGguf {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor `token_embd.weight` has shape {dims:?}, expected [vocab, hidden]"
                    ),
                })
            }
        },
        None => {
            return Err(Error::BadGguf {
                path: path.to_path_buf(),
                reason: "no token_embd.weight tensor".into(),
            })
        }
    };
    let has_output = content.tensor_infos.contains_key("output.weight");
    let cfg = TransformerConfig::from_gguf(path, &content.metadata, arch, vocab_rows, has_output)?;
    transformer::check_shapes(
        &cfg,
        WeightFormat::Gguf,
        &path.display().to_string(),
        |name| {
            content
                .tensor_infos
                .get(name)
                .map(|t| t.shape.dims().to_vec())
        },
    )?;
    Ok(cfg)
}

fn load_gguf(path: &Path, source: ModelSource, opts: &LoadOptions) -> Result<Model> {
    // Cheap checks on the header first, so a damaged file fails before the tokenizer
    // and the weights are read.
    let content = read_gguf_header(path)?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let weight_bytes = check_gguf_tensors(path, &content, len)?;
    let cfg = gguf_config(path, &content, opts.arch)?;
    let tokenizer = ModelTokenizer::from_gguf(path, &content.metadata)?;
    let mut weights = weights::Weights::from_gguf(path, content, &opts.device)?;
    weights.arch_name = cfg.arch.name().into();
    weights.numerics = opts.numerics;
    let info = ModelInfo {
        name: source.display_name(),
        arch: cfg.arch,
        format: WeightFormat::Gguf,
        dtype: DType::F32,
        num_layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        vocab_size: cfg.vocab_size,
        context_length: cfg.max_position_embeddings,
        weight_bytes,
        parameters: cfg.parameter_count(),
        weights_fingerprint: fingerprint(&[path.to_path_buf()])?,
        source,
    };
    let lm = Transformer::load(&weights, cfg, WeightFormat::Gguf)?;
    Ok(Model {
        lm: Box::new(lm),
        tokenizer,
        info,
    })
}

fn load_folder(dir: &Path, source: ModelSource, opts: &LoadOptions) -> Result<Model> {
    let cfg = TransformerConfig::from_hf_file(&dir.join("config.json"), opts.arch)?;
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        source::shard_files(&text)
            .map_err(|reason| Error::BadSource {
                spec: dir.display().to_string(),
                reason,
            })?
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    } else {
        let all = source::list_with_ext(dir, "safetensors");
        if all.is_empty() {
            return Err(Error::BadSource {
                spec: dir.display().to_string(),
                reason: "no *.safetensors weights in the folder".into(),
            });
        }
        all
    };
    let dtype = opts.dtype.unwrap_or_else(|| default_dtype(&opts.device));
    let mut weights = weights::Weights::from_safetensors(&files, &opts.device, dtype)?;
    weights.arch_name = cfg.arch.name().into();
    transformer::check_shapes(&cfg, WeightFormat::HuggingFace, weights.desc(), |name| {
        weights.shape(name)
    })?;
    let tokenizer = ModelTokenizer::from_hf_folder(dir)?;
    let weight_bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let info = ModelInfo {
        name: source.display_name(),
        arch: cfg.arch,
        format: WeightFormat::HuggingFace,
        dtype,
        num_layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        vocab_size: cfg.vocab_size,
        context_length: cfg.max_position_embeddings,
        weight_bytes,
        parameters: cfg.parameter_count(),
        weights_fingerprint: fingerprint(&files)?,
        source,
    };
    let lm = Transformer::load(&weights, cfg, WeightFormat::HuggingFace)?;
    Ok(Model {
        lm: Box::new(lm),
        tokenizer,
        info,
    })
}

/// sha256 over each file's length and 64 KiB samples at its start, middle and end:
/// cheap on multi-GB checkpoints and changes whenever a file is replaced.
pub fn fingerprint(files: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for path in files {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        h.update(len.to_le_bytes());
        for at in [0, len / 2, len.saturating_sub(buf.len() as u64)] {
            f.seek(SeekFrom::Start(at))
                .map_err(|e| Error::io(path, e))?;
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            h.update(&buf[..n]);
        }
    }
    Ok(hex(&h.finalize()))
}

/// The candle version this crate was built against (for `tutti info`).
pub const CANDLE_VERSION: &str = "0.11.1";
