//! A model's tokenizer with the facts generation needs around it: BOS/EOS ids, whether
//! to add BOS, the chat template, and a content hash that identifies the vocabulary.
//!
//! From an HF folder it reads `tokenizer.json` (+ `tokenizer_config.json`,
//! `generation_config.json`, `config.json`); from a GGUF file it rebuilds an equivalent
//! `tokenizer.json` from the `tokenizer.ggml.*` metadata, so every later stage sees one
//! `tokenizers::Tokenizer` regardless of where the model came from.

use crate::source::ModelSource;
use crate::{hex, Error, Result};
use candle_core::quantized::gguf_file;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Token texts that end a turn or a document in the families we support; counted as
/// EOS when they exist in the vocabulary as special tokens (llama.cpp does the same).
const END_TOKENS: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<eos>",
    "</s>",
];

#[derive(Clone)]
pub struct ModelTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    bos_text: Option<String>,
    eos_text: Option<String>,
    chat_template: Option<String>,
    content_hash: String,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| tok_err(path, format!("not valid JSON: {e}")))
}

/// `eos_token_id` may be an int or a list.
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

/// `bos_token` in tokenizer_config.json may be a string or an AddedToken object.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl ModelTokenizer {
    /// Loads the tokenizer of any model spec (see [`ModelSource::resolve`]).
    pub fn from_source(spec: &str) -> Result<Self> {
        Self::from_resolved(&ModelSource::resolve(spec)?)
    }

    pub fn from_resolved(source: &ModelSource) -> Result<Self> {
        match source {
            ModelSource::Folder(dir) => Self::from_hf_folder(dir),
            ModelSource::TokenizerFile(path) => Self::from_tokenizer_json(path, None, None, None),
            ModelSource::Gguf(path) => {
                let content = crate::read_gguf_header(path)?;
                Self::from_gguf(path, &content.metadata)
            }
        }
    }

    pub fn from_hf_folder(dir: &Path) -> Result<Self> {
        let tok = dir.join("tokenizer.json");
        if !tok.exists() {
            return Err(Error::Tokenizer(format!(
                "{}: no tokenizer.json in the model folder",
                dir.display()
            )));
        }
        let tcfg = read_json(&dir.join("tokenizer_config.json"))?;
        let gen = read_json(&dir.join("generation_config.json"))?;
        let cfg = read_json(&dir.join("config.json")).ok().flatten();
        Self::from_tokenizer_json(&tok, tcfg.as_ref(), gen.as_ref(), cfg.as_ref())
    }

    /// A `tokenizer.json` with optional `tokenizer_config.json`, `generation_config.json`
    /// and `config.json` values next to it.
    pub fn from_tokenizer_json(
        path: &Path,
        tcfg: Option<&Value>,
        gen: Option<&Value>,
        cfg: Option<&Value>,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // A tokenizer_config.json beside a bare tokenizer.json is used too.
        let side = if tcfg.is_none() {
            path.parent()
                .map(|d| read_json(&d.join("tokenizer_config.json")))
                .transpose()?
                .flatten()
        } else {
            None
        };
        Self::from_tokenizer_json_bytes(path, &bytes, tcfg.or(side.as_ref()), gen, cfg)
    }

    /// [`ModelTokenizer::from_tokenizer_json`] on the file's bytes; `path` names it in
    /// errors and nothing is read from disk.
    pub fn from_tokenizer_json_bytes(
        path: &Path,
        bytes: &[u8],
        tcfg: Option<&Value>,
        gen: Option<&Value>,
        cfg: Option<&Value>,
    ) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            tok_err(
                path,
                format!("not valid JSON ({e}); expected a tokenizer.json"),
            )
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| tok_err(path, e))?;
        let content_hash = hex(&Sha256::digest(bytes));
        let id_of = |text: &Option<String>| text.as_deref().and_then(|t| inner.token_to_id(t));
        let bos_text = tcfg.and_then(|c| token_text(c.get("bos_token")));
        let eos_text = tcfg.and_then(|c| token_text(c.get("eos_token")));
        let mut bos = id_of(&bos_text)
            .or_else(|| {
                ids_of(gen.and_then(|g| g.get("bos_token_id")))
                    .first()
                    .copied()
            })
            .or_else(|| {
                ids_of(cfg.and_then(|g| g.get("bos_token_id")))
                    .first()
                    .copied()
            });
        // Does the tokenizer's own post-processor add a BOS? Then honour that.
        let adds_bos_itself = match (inner.encode("a", true), inner.encode("a", false)) {
            (Ok(with), Ok(without)) => {
                let w = with.get_ids();
                w.len() > without.get_ids().len()
                    && Some(w[0]) != without.get_ids().first().copied()
            }
            _ => false,
        };
        if bos.is_none() && adds_bos_itself {
            bos = inner
                .encode("a", true)
                .ok()
                .and_then(|e| e.get_ids().first().copied());
        }
        let add_bos = tcfg
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(adds_bos_itself)
            && bos.is_some();
        let mut eos: Vec<u32> = ids_of(gen.and_then(|g| g.get("eos_token_id")));
        eos.extend(ids_of(cfg.and_then(|g| g.get("eos_token_id"))));
        eos.extend(id_of(&eos_text));
        let specials: Vec<(u32, String)> = value
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter(|t| t.get("special").and_then(|s| s.as_bool()).unwrap_or(false))
                    .filter_map(|t| {
                        Some((
                            t.get("id")?.as_u64()? as u32,
                            t.get("content")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        eos.extend(
            specials
                .iter()
                .filter(|(_, c)| END_TOKENS.contains(&c.as_str()))
                .map(|(id, _)| *id),
        );
        eos.sort_unstable();
        eos.dedup();
        let chat_template = tcfg.and_then(|c| chat_template_of(c.get("chat_template")));
        Ok(Self {
            bos_text: bos.and_then(|b| inner.id_to_token(b)),
            eos_text: eos_text.or_else(|| eos.first().and_then(|&e| inner.id_to_token(e))),
            inner,
            bos,
            eos,
            add_bos,
            chat_template,
            content_hash,
        })
    }

    /// Rebuilds the tokenizer from GGUF `tokenizer.ggml.*` metadata.
    pub fn from_gguf(path: &Path, md: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let fail = |e: &dyn std::fmt::Display| {
            let e = e.to_string();
            Error::Tokenizer(format!(
                "{}: {}; the file's vocabulary is damaged or unsupported: download it again or pass a tokenizer.json",
                path.display(),
                e.lines().next().unwrap_or_default()
            ))
        };
        let rebuilt = gguf_tokenizer_json(md).map_err(|e| fail(&e))?;
        let text = serde_json::to_string(&rebuilt.json).map_err(|e| fail(&e))?;
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| fail(&format!("rebuilt tokenizer is invalid: {e}")))?;
        let content_hash = hex(&Sha256::digest(text.as_bytes()));
        let n_tokens = rebuilt.n_tokens;
        // Like llama.cpp, a special-token id outside the vocabulary is ignored with a
        // warning rather than failing the load.
        let get_u32 = |k: &str| -> Option<u32> {
            let v = md.get(k)?;
            match crate::config::gguf_uint(v) {
                Some(id) if id < n_tokens => u32::try_from(id).ok(),
                _ => {
                    tracing::warn!(
                        "{}: ignoring `{k}` ({v:?}): not a token id below {n_tokens}",
                        path.display()
                    );
                    None
                }
            }
        };
        let bos = get_u32("tokenizer.ggml.bos_token_id");
        let eos_id = get_u32("tokenizer.ggml.eos_token_id");
        let mut eos: Vec<u32> = [
            eos_id,
            get_u32("tokenizer.ggml.eot_token_id"),
            get_u32("tokenizer.ggml.eom_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        eos.extend(
            rebuilt
                .control
                .iter()
                .filter(|(_, c)| END_TOKENS.contains(&c.as_str()))
                .map(|(id, _)| *id),
        );
        eos.sort_unstable();
        eos.dedup();
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(rebuilt.spm)
            && bos.is_some();
        let chat_template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        Ok(Self {
            bos_text: bos.and_then(|b| inner.id_to_token(b)),
            eos_text: eos_id.and_then(|e| inner.id_to_token(e)),
            inner,
            bos,
            eos,
            add_bos,
            chat_template,
            content_hash,
        })
    }

    /// Writes the tokenizer as an HF tokenizer folder: `tokenizer.json`,
    /// `tokenizer_config.json` (BOS/EOS texts, `add_bos_token`, chat template) and
    /// `generation_config.json` (BOS/EOS ids). A model known only as a GGUF file can
    /// then be tokenized by tools that read HF folders, and loading the folder back
    /// gives the same ids, EOS set, BOS rule and template. Each file is written
    /// through [`crate::durable::write_atomic`]: an interrupted export, a power loss
    /// or a concurrent export of the same folder leaves no half file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tokenizer = self
            .inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(format!("cannot serialise the tokenizer: {e}")))?;
        let mut config = Map::new();
        config.insert("bos_token".into(), json!(self.bos_text));
        config.insert("eos_token".into(), json!(self.eos_text));
        config.insert("add_bos_token".into(), json!(self.add_bos));
        if let Some(t) = &self.chat_template {
            config.insert("chat_template".into(), json!(t));
        }
        let generation = json!({"bos_token_id": self.bos, "eos_token_id": self.eos});
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
        write_atomic(&dir.join("tokenizer.json"), tokenizer.as_bytes())?;
        write_atomic(
            &dir.join("tokenizer_config.json"),
            pretty(&Value::Object(config)).as_bytes(),
        )?;
        write_atomic(
            &dir.join("generation_config.json"),
            pretty(&generation).as_bytes(),
        )
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// Whether raw prompts get a BOS prepended (the model's own setting).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Hex sha256 identifying the vocabulary and its rules.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// Number of ids the tokenizer knows (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text; special-token text in it (e.g. `<|im_start|>`) is recognised.
    /// `add_bos` prepends BOS unless the text already starts with it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let (true, Some(b)) = (add_bos, self.bos) {
            if enc.get_ids().first() != Some(&b) {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Encodes a raw prompt the way the model expects (BOS per the model's setting).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, self.add_bos)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Renders `messages` (role, content) through the chat template, ready to encode.
    /// Errors when the model has no template (then `--raw` is the fix).
    pub fn apply_chat_template(&self, messages: &[(String, String)]) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::ChatTemplate("this model has no chat template".into()))?;
        crate::chat::render(
            template,
            messages,
            self.bos_text.as_deref().unwrap_or(""),
            self.eos_text.as_deref().unwrap_or(""),
        )
    }
}

/// [`crate::durable::write_atomic`] with the error naming `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::durable::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
}

fn chat_template_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        // A list of named templates: take `default`.
        Value::Array(a) => a
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| a.first())
            .and_then(|t| t.get("template").and_then(|s| s.as_str()).map(String::from)),
        _ => None,
    }
}

struct RebuiltTokenizer {
    json: Value,
    /// Entries of `tokenizer.ggml.tokens`.
    n_tokens: usize,
    /// Control tokens (id, text).
    control: Vec<(u32, String)>,
    /// SentencePiece-style vocabulary.
    spm: bool,
}

const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level_pre(regex: Option<&str>) -> Value {
    match regex {
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
        Some(r) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
    }
}

/// A metadata array, `None` when the key is absent.
fn array<'a>(
    md: &'a HashMap<String, gguf_file::Value>,
    key: &str,
) -> std::result::Result<Option<&'a [gguf_file::Value]>, String> {
    match md.get(key) {
        None => Ok(None),
        Some(gguf_file::Value::Array(v)) => Ok(Some(v)),
        Some(_) => Err(format!("`{key}` is not an array")),
    }
}

/// One value per token, each read by `read`.
fn per_token<T>(
    values: &[gguf_file::Value],
    n_tokens: usize,
    key: &str,
    read: impl Fn(&gguf_file::Value) -> Option<T>,
) -> std::result::Result<Vec<T>, String> {
    if values.len() != n_tokens {
        return Err(format!(
            "`{key}` has {} entries for {n_tokens} tokens",
            values.len()
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| read(v).ok_or_else(|| format!("`{key}`[{i}] has the wrong type")))
        .collect()
}

/// Builds a `tokenizer.json` value equivalent to llama.cpp's reading of the metadata.
fn gguf_tokenizer_json(
    md: &HashMap<String, gguf_file::Value>,
) -> std::result::Result<RebuiltTokenizer, String> {
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or("the GGUF file has no vocabulary (tokenizer.ggml.model missing)")?;
    let tokens: Vec<String> = array(md, "tokenizer.ggml.tokens")?
        .ok_or("the GGUF file has no tokenizer.ggml.tokens")?
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.to_string()
                .cloned()
                .map_err(|_| format!("tokenizer.ggml.tokens[{i}] is not a string"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let n = tokens.len();
    let types: Vec<i32> = match array(md, "tokenizer.ggml.token_type")? {
        Some(v) => per_token(v, n, "tokenizer.ggml.token_type", |t| {
            crate::config::gguf_int(t).and_then(|x| i32::try_from(x).ok())
        })?,
        None => vec![1; n],
    };
    let get_u32 = |k: &str| {
        md.get(k)
            .and_then(crate::config::gguf_uint)
            .and_then(|x| u32::try_from(x).ok())
    };
    let mut added = Vec::new();
    let mut control = Vec::new();
    for (id, (text, &ty)) in tokens.iter().zip(types.iter()).enumerate() {
        // 3 = control, 4 = user-defined: matched as whole units before the model runs.
        if ty == 3 || ty == 4 {
            added.push(
                json!({"id": id, "content": text, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": ty == 3}),
            );
            if ty == 3 {
                control.push((id as u32, text.clone()));
            }
        }
    }
    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        // Duplicate texts keep their first id, as llama.cpp's text→id map does.
        vocab.entry(t.clone()).or_insert(json!(id));
    }
    match model.as_str() {
        "gpt2" => {
            let merges: Vec<Value> = array(md, "tokenizer.ggml.merges")?
                .ok_or("BPE vocabulary without tokenizer.ggml.merges")?
                .iter()
                .enumerate()
                .map(
                    |(i, m)| match m.to_string().ok().and_then(|m| m.split_once(' ')) {
                        Some((a, b)) => Ok(json!([a, b])),
                        None => Err(format!(
                            "tokenizer.ggml.merges[{i}] is not a string `left right`"
                        )),
                    },
                )
                .collect::<std::result::Result<_, _>>()?;
            let pre = md
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.to_string().ok())
                .map(|s| s.as_str())
                .unwrap_or("default");
            let pre_tokenizer = match pre {
                "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => {
                    byte_level_pre(Some(LLAMA3_REGEX))
                }
                "qwen2" | "deepseek-r1-qwen" => byte_level_pre(Some(QWEN2_REGEX)),
                "default" | "gpt-2" | "gpt2" | "smollm" => byte_level_pre(None),
                other => {
                    tracing::warn!(
                        "unknown GGUF pre-tokenizer `{other}`; using the GPT-2 split rules"
                    );
                    byte_level_pre(Some(GPT2_REGEX))
                }
            };
            let json = json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added, "normalizer": null,
                "pre_tokenizer": pre_tokenizer, "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null,
                          "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                          "vocab": vocab, "merges": merges}
            });
            Ok(RebuiltTokenizer {
                json,
                n_tokens: n,
                control,
                spm: false,
            })
        }
        "llama" => {
            let scores: Vec<f32> = match array(md, "tokenizer.ggml.scores")? {
                Some(v) => per_token(v, n, "tokenizer.ggml.scores", |s| match s {
                    gguf_file::Value::F32(x) => Some(*x),
                    gguf_file::Value::F64(x) => Some(*x as f32),
                    _ => None,
                })?,
                None => vec![0.0; n],
            };
            let merges = spm_merges(&tokens, &types, &scores);
            let add_space_prefix = md
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true);
            let replace =
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
            let normalizer = if add_space_prefix {
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
            } else {
                replace
            };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_space_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let unk = get_u32("tokenizer.ggml.unknown_token_id")
                .and_then(|id| tokens.get(id as usize).cloned())
                .or_else(|| {
                    types
                        .iter()
                        .position(|&t| t == 2)
                        .and_then(|i| tokens.get(i).cloned())
                });
            let json = json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added, "normalizer": normalizer,
                "pre_tokenizer": null, "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                          "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                          "vocab": vocab, "merges": merges}
            });
            Ok(RebuiltTokenizer {
                json,
                n_tokens: n,
                control,
                spm: true,
            })
        }
        other => Err(format!(
            "unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama)"
        )),
    }
}

/// SentencePiece BPE merges from scores: every split `a + b` of a normal token into two
/// vocabulary pieces is a merge, ranked by the merged token's score (higher first).
/// This is the order in which llama.cpp's SPM tokenizer merges bigrams.
fn spm_merges(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<Value> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(1) | None))
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (&t, &id) in index.iter() {
        for (split, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(split);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, ia, ib));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    merges
        .into_iter()
        .map(|(_, _, a, b)| json!([tokens[a], tokens[b]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_file::Value as G;

    fn strings(items: &[&str]) -> G {
        G::Array(items.iter().map(|s| G::String(s.to_string())).collect())
    }

    /// A small SentencePiece-style vocabulary as GGUF metadata.
    fn spm() -> HashMap<String, G> {
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), G::String("llama".into()));
        md.insert(
            "tokenizer.ggml.tokens".into(),
            strings(&["<unk>", "<s>", "</s>", "\u{2581}", "a", "\u{2581}a"]),
        );
        md.insert(
            "tokenizer.ggml.token_type".into(),
            G::Array([2, 3, 3, 1, 1, 1].map(G::I32).to_vec()),
        );
        md.insert(
            "tokenizer.ggml.scores".into(),
            G::Array([0.0, 0.0, 0.0, -3.0, -2.0, -1.0].map(G::F32).to_vec()),
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), G::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".into(), G::U32(2));
        md
    }

    /// Exports of one tokenizer into one folder at the same time (two `tutti tokenize
    /// --export` runs, or threads) each leave whole files and no temporary behind.
    #[test]
    fn concurrent_exports_into_one_folder_all_succeed() {
        let tok = load(&spm()).unwrap();
        let dir = std::env::temp_dir().join(format!("tutti-export-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..25)
                            .map(|_| tok.save(&dir).map_err(|e| e.to_string()))
                            .collect::<std::result::Result<Vec<()>, String>>()
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        let back = ModelTokenizer::from_source(dir.to_str().unwrap()).unwrap();
        assert_eq!(back.vocab_size(), tok.vocab_size());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn load(md: &HashMap<String, G>) -> Result<ModelTokenizer> {
        ModelTokenizer::from_gguf(Path::new("v.gguf"), md)
    }

    fn one_line_error(md: &HashMap<String, G>, needle: &str) {
        let err = load(md)
            .expect_err("malformed vocabulary must not load")
            .to_string();
        assert!(
            err.contains("v.gguf") && err.contains(needle) && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn well_formed_vocabulary_loads() {
        let t = load(&spm()).unwrap();
        assert_eq!(t.bos_id(), Some(1));
        assert_eq!(t.eos_ids(), &[2]);
        assert_eq!(t.vocab_size(), 6);
        assert_eq!(t.encode_prompt("a").unwrap(), vec![1, 5]);
    }

    #[test]
    fn per_token_arrays_must_match_the_tokens() {
        let mut md = spm();
        // One more type than tokens, and the extra one marks the unknown token.
        md.insert(
            "tokenizer.ggml.token_type".into(),
            G::Array([1, 3, 3, 1, 1, 1, 2].map(G::I32).to_vec()),
        );
        one_line_error(
            &md,
            "`tokenizer.ggml.token_type` has 7 entries for 6 tokens",
        );
        let mut md = spm();
        md.insert(
            "tokenizer.ggml.scores".into(),
            G::Array([0.0, 0.0].map(G::F32).to_vec()),
        );
        one_line_error(&md, "`tokenizer.ggml.scores` has 2 entries for 6 tokens");
        let mut md = spm();
        md.insert(
            "tokenizer.ggml.scores".into(),
            G::Array(vec![G::String("x".into()); 6]),
        );
        one_line_error(&md, "`tokenizer.ggml.scores`[0] has the wrong type");
        let mut md = spm();
        md.insert("tokenizer.ggml.tokens".into(), G::U32(5));
        one_line_error(&md, "`tokenizer.ggml.tokens` is not an array");
        let mut md = spm();
        md.insert("tokenizer.ggml.tokens".into(), G::Array(vec![G::U8(1); 6]));
        one_line_error(&md, "tokenizer.ggml.tokens[0] is not a string");
    }

    #[test]
    fn malformed_merges_are_an_error() {
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), G::String("gpt2".into()));
        md.insert("tokenizer.ggml.tokens".into(), strings(&["a", "b", "ab"]));
        md.insert("tokenizer.ggml.merges".into(), strings(&["a b"]));
        assert_eq!(load(&md).unwrap().vocab_size(), 3);
        md.insert("tokenizer.ggml.merges".into(), strings(&["a b", "ab"]));
        one_line_error(&md, "tokenizer.ggml.merges[1] is not a string `left right`");
        md.insert("tokenizer.ggml.merges".into(), strings(&["a zz"]));
        one_line_error(&md, "rebuilt tokenizer is invalid");
    }

    #[test]
    fn special_ids_outside_the_vocabulary_are_ignored() {
        let mut md = spm();
        md.insert("tokenizer.ggml.bos_token_id".into(), G::U32(99));
        md.insert("tokenizer.ggml.eos_token_id".into(), G::U64(1 << 40));
        md.insert("tokenizer.ggml.unknown_token_id".into(), G::U32(1000));
        let t = load(&md).unwrap();
        assert_eq!(t.bos_id(), None);
        assert!(!t.add_bos());
        // `</s>` is still an end token by its text.
        assert_eq!(t.eos_ids(), &[2]);
        assert_eq!(t.encode_prompt("a").unwrap(), vec![5]);
    }
}
