//! Byte surfaces of a tokenizer's vocabulary.
//!
//! A [`Vocab`] records, for every token id a member can see (the tokenizer's ids and
//! the model's logit rows, whichever is wider), the exact bytes that token contributes
//! to the decoded text. Candidates of different members are compared as these bytes,
//! never as display strings: a byte-level BPE token may be half of a UTF-8 sequence,
//! and a SentencePiece `<0xNN>` token is one raw byte.
//!
//! Three surface schemes are recognised from the tokenizer's decoder (or, without
//! one, its pre-tokenizer):
//!
//! * [`VocabScheme::ByteLevel`]: GPT-2 byte map (GPT-2, Llama 3, Qwen, SmolLM2): every
//!   character of a piece stands for one byte.
//! * [`VocabScheme::SentencePiece`]: `▁` stands for a space and `<0xNN>` pieces are
//!   byte-fallback tokens (Gemma, Llama 2, Mistral, Phi-3).
//! * [`VocabScheme::Plain`]: the piece's UTF-8 text is its surface (word-level and
//!   unigram vocabularies without either convention).
//!
//! Added tokens that are not in the model's own vocabulary (`<|im_end|>`, `<think>`)
//! contribute their literal content. Special tokens are flagged and are never
//! candidates, except end-of-sequence tokens, which are matched by role rather than by
//! bytes (see [`Vocab::is_eos`]).

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;
use tutti_models::config::limits::MAX_VOCAB;

/// Errors of reading a tokenizer's vocabulary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VocabError {
    /// The tokenizer's shape is not one whose surfaces can be recovered.
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    /// A model piece could not be converted under the detected scheme.
    #[error("token {id} ({piece:?}) is not a valid {scheme} piece")]
    BadPiece {
        id: u32,
        piece: String,
        scheme: &'static str,
    },
    /// The tokenizer has no tokens at all.
    #[error("the tokenizer has an empty vocabulary")]
    EmptyVocabulary,
    /// An EOS id outside the vocabulary.
    #[error("EOS id {id} is outside the vocabulary of {len} ids")]
    InvalidEos { id: u32, len: usize },
    /// A tokenizer file that cannot be read or parsed.
    #[error("cannot load tokenizer {path}: {reason}")]
    TokenizerLoad { path: String, reason: String },
}

/// How a tokenizer's pieces turn into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VocabScheme {
    /// GPT-2 byte-to-unicode map: one character per byte.
    ByteLevel,
    /// SentencePiece conventions: `▁` is a space, `<0xNN>` is a raw byte.
    SentencePiece,
    /// The piece's UTF-8 text is its surface.
    Plain,
}

impl VocabScheme {
    fn tag(self) -> u8 {
        match self {
            VocabScheme::ByteLevel => 1,
            VocabScheme::SentencePiece => 2,
            VocabScheme::Plain => 3,
        }
    }

    /// Short lowercase name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            VocabScheme::ByteLevel => "byte-level",
            VocabScheme::SentencePiece => "sentencepiece",
            VocabScheme::Plain => "plain",
        }
    }
}

const F_SPECIAL: u8 = 1;
const F_ADDED: u8 = 1 << 1;
const F_BYTE_FALLBACK: u8 = 1 << 2;
const F_NO_LOGIT: u8 = 1 << 3;
const F_MISSING: u8 = 1 << 4;
const F_EOS: u8 = 1 << 5;
const F_IN_MODEL: u8 = 1 << 6;
const F_CANDIDATE: u8 = 1 << 7;

/// The byte surface of every token id of one member.
///
/// Ids run from 0 to [`Vocab::len`] = max(tokenizer size, logit width). An id can be
/// *missing* (no token: logit padding, as in Qwen2.5's 151,936 logits for 151,665
/// tokens) or have *no logit* (a tokenizer entry beyond the model's output width).
#[derive(Clone, Debug)]
pub struct Vocab {
    scheme: VocabScheme,
    prepends_space: bool,
    data: Vec<u8>,
    offsets: Vec<u32>,
    flags: Vec<u8>,
    tokenizer_size: usize,
    logit_width: usize,
    eos: Vec<u32>,
    index: HashMap<Box<[u8]>, u32>,
    fingerprint: [u8; 32],
}

/// One token as the tokenizer lists it, before conversion to bytes.
struct RawToken {
    piece: String,
    in_model: bool,
    added: bool,
    special: bool,
}

impl Vocab {
    /// Builds the byte surfaces of `tokenizer`.
    ///
    /// `eos_ids` are the model's end-of-sequence ids (several are normal: Llama 3 and
    /// Qwen chat models stop on more than one). `logit_width` is the model's output
    /// width (`vocab_size`); `None` means "same as the tokenizer".
    pub fn from_tokenizer(
        tokenizer: &Tokenizer,
        eos_ids: &[u32],
        logit_width: Option<usize>,
    ) -> Result<Vocab, VocabError> {
        let model_kind = match tokenizer.get_model() {
            ModelWrapper::BPE(_) => "bpe",
            ModelWrapper::Unigram(_) => "unigram",
            ModelWrapper::WordLevel(_) => "wordlevel",
            ModelWrapper::WordPiece(_) => {
                // WordPiece surfaces depend on the `##` continuation convention and on
                // the decoder's cleanup; bytes cannot be recovered token by token.
                return Err(VocabError::UnsupportedTokenizer(
                    "WordPiece vocabularies have no per-token byte surface".into(),
                ));
            }
        };
        let decoder = json_of(tokenizer.get_decoder())?;
        let pre = json_of(tokenizer.get_pre_tokenizer())?;
        let normalizer = json_of(tokenizer.get_normalizer())?;
        let scheme = detect_scheme(&decoder, &pre, model_kind);
        let prepends_space = detect_prepend(&normalizer, &pre);

        let mut raw: HashMap<u32, RawToken> = HashMap::new();
        for (piece, id) in tokenizer.get_vocab(false) {
            raw.insert(
                id,
                RawToken {
                    piece,
                    in_model: true,
                    added: false,
                    special: false,
                },
            );
        }
        for (id, tok) in tokenizer.get_added_tokens_decoder() {
            let entry = raw.entry(id).or_insert_with(|| RawToken {
                piece: tok.content.clone(),
                in_model: false,
                added: true,
                special: false,
            });
            entry.added = true;
            entry.special = tok.special;
            if !entry.in_model {
                entry.piece = tok.content.clone();
            }
        }
        let tokenizer_size = raw.keys().max().map_or(0, |&m| m as usize + 1);
        let logit_width = logit_width.unwrap_or(tokenizer_size);
        let n = tokenizer_size.max(logit_width);
        if n == 0 {
            return Err(VocabError::EmptyVocabulary);
        }
        // The tables below hold one entry per id up to the largest: a stray huge id in a
        // tiny vocabulary would allocate and walk millions of empty entries.
        if n > MAX_VOCAB {
            return Err(VocabError::UnsupportedTokenizer(format!(
                "ids reach {} ({} tokens), past the largest vocabulary tutti accepts ({MAX_VOCAB} ids); the tokenizer.json is damaged or not a language model's",
                n - 1,
                raw.len()
            )));
        }
        for &e in eos_ids {
            if e as usize >= n {
                return Err(VocabError::InvalidEos { id: e, len: n });
            }
        }

        let byte_map = gpt2_char_to_byte();
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        let mut flags = vec![0u8; n];
        offsets.push(0u32);
        for (id, f) in flags.iter_mut().enumerate() {
            if id >= logit_width {
                *f |= F_NO_LOGIT;
            }
            match raw.get(&(id as u32)) {
                None => *f |= F_MISSING,
                Some(tok) => {
                    if tok.special {
                        *f |= F_SPECIAL;
                    }
                    if tok.added {
                        *f |= F_ADDED;
                    }
                    if tok.in_model {
                        *f |= F_IN_MODEL;
                        let fallback = piece_bytes(scheme, &tok.piece, &byte_map, &mut data)
                            .map_err(|piece| VocabError::BadPiece {
                                id: id as u32,
                                piece,
                                scheme: scheme.name(),
                            })?;
                        if fallback {
                            *f |= F_BYTE_FALLBACK;
                        }
                    } else {
                        // Added tokens outside the model vocabulary are matched in the raw
                        // text, so their surface is their literal content.
                        data.extend_from_slice(tok.piece.as_bytes());
                    }
                }
            }
            let end = u32::try_from(data.len()).map_err(|_| {
                VocabError::UnsupportedTokenizer("vocabulary surfaces exceed 4 GiB".into())
            })?;
            offsets.push(end);
        }
        let mut eos: Vec<u32> = Vec::new();
        for &e in eos_ids {
            if !eos.contains(&e) {
                eos.push(e);
            }
            flags[e as usize] |= F_EOS;
        }
        for id in 0..n {
            let f = flags[id];
            let len = offsets[id + 1] - offsets[id];
            let usable = f & (F_MISSING | F_NO_LOGIT) == 0 && len > 0;
            // Added tokens the model vocabulary also holds (Gemma's "\n", "▁▁", "</div>")
            // are ordinary text; added tokens outside it (`<think>`) are control tokens.
            let control = f & F_SPECIAL != 0 || (f & F_ADDED != 0 && f & F_IN_MODEL == 0);
            if usable && (!control || f & F_EOS != 0) {
                flags[id] |= F_CANDIDATE;
            }
        }

        let mut vocab = Vocab {
            scheme,
            prepends_space,
            data,
            offsets,
            flags,
            tokenizer_size,
            logit_width,
            eos,
            index: HashMap::new(),
            fingerprint: [0; 32],
        };
        vocab.index = vocab.build_index();
        vocab.fingerprint = vocab.compute_fingerprint();
        Ok(vocab)
    }

    /// Canonical id per byte string among non-EOS candidates: a regular token beats a
    /// byte-fallback token with the same byte, then the lower id wins.
    fn build_index(&self) -> HashMap<Box<[u8]>, u32> {
        let mut index: HashMap<Box<[u8]>, u32> = HashMap::with_capacity(self.len());
        for id in 0..self.len() as u32 {
            if !self.is_candidate(id) || self.is_eos(id) {
                continue;
            }
            let bytes = self.raw_bytes(id);
            match index.get_mut(bytes) {
                None => {
                    index.insert(bytes.into(), id);
                }
                Some(prev) => {
                    if self.is_byte_fallback(*prev) && !self.is_byte_fallback(id) {
                        *prev = id;
                    }
                }
            }
        }
        index
    }

    fn compute_fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"tutti-vocab-v1");
        h.update([self.scheme.tag(), self.prepends_space as u8]);
        h.update((self.tokenizer_size as u64).to_le_bytes());
        h.update((self.logit_width as u64).to_le_bytes());
        for id in 0..self.len() {
            let b = self.raw_bytes(id as u32);
            h.update([self.flags[id]]);
            h.update((b.len() as u32).to_le_bytes());
            h.update(b);
        }
        for &e in &self.eos {
            h.update(e.to_le_bytes());
        }
        h.finalize().into()
    }

    fn raw_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn flag(&self, id: u32, f: u8) -> bool {
        self.flags.get(id as usize).is_some_and(|x| x & f != 0)
    }

    /// Number of ids: max(tokenizer size, logit width).
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Always false: construction rejects empty vocabularies.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// One past the highest id the tokenizer knows.
    pub fn tokenizer_size(&self) -> usize {
        self.tokenizer_size
    }

    /// The model's logit width.
    pub fn logit_width(&self) -> usize {
        self.logit_width
    }

    /// The surface scheme detected from the tokenizer.
    pub fn scheme(&self) -> VocabScheme {
        self.scheme
    }

    /// True when the tokenizer's normalizer or pre-tokenizer puts a space (`▁`) in front
    /// of the text, so that `encode(text)` decodes to `" " + text`.
    pub fn prepends_space(&self) -> bool {
        self.prepends_space
    }

    /// The bytes token `id` contributes to the text; `None` for ids without a token
    /// (and for ids past [`Vocab::len`]). Special tokens return their literal content.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        if (id as usize) < self.len() && !self.flag(id, F_MISSING) {
            Some(self.raw_bytes(id))
        } else {
            None
        }
    }

    /// Concatenated surfaces of `ids` (ids without a token contribute nothing).
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some(b) = self.bytes(id) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// Whether `id` may be proposed and matched: it has a token, a logit and a
    /// non-empty surface, and is not a special or control token (EOS excepted).
    pub fn is_candidate(&self, id: u32) -> bool {
        self.flag(id, F_CANDIDATE)
    }

    /// Whether `id` is one of the model's end-of-sequence tokens.
    pub fn is_eos(&self, id: u32) -> bool {
        self.flag(id, F_EOS)
    }

    /// Whether the tokenizer marks `id` as special.
    pub fn is_special(&self, id: u32) -> bool {
        self.flag(id, F_SPECIAL)
    }

    /// Whether `id` is in the tokenizer's added-token list.
    pub fn is_added(&self, id: u32) -> bool {
        self.flag(id, F_ADDED)
    }

    /// Whether `id` is a SentencePiece `<0xNN>` byte-fallback token.
    pub fn is_byte_fallback(&self, id: u32) -> bool {
        self.flag(id, F_BYTE_FALLBACK)
    }

    /// Whether the model produces a logit for `id`.
    pub fn has_logit(&self, id: u32) -> bool {
        (id as usize) < self.logit_width
    }

    /// Whether `id` has a token in the tokenizer.
    pub fn has_token(&self, id: u32) -> bool {
        (id as usize) < self.len() && !self.flag(id, F_MISSING)
    }

    /// End-of-sequence ids, in the order given (duplicates removed).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The canonical candidate id whose surface is exactly `bytes` (EOS excluded:
    /// those match by role). A regular token is preferred over a byte-fallback token,
    /// then the lower id.
    pub fn id_of(&self, bytes: &[u8]) -> Option<u32> {
        self.index.get(bytes).copied()
    }

    /// All candidate ids, ascending.
    pub fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len() as u32).filter(|&id| self.is_candidate(id))
    }

    /// Number of distinct candidate surfaces (EOS excluded).
    pub fn distinct_surfaces(&self) -> usize {
        self.index.len()
    }

    /// The canonical (id, bytes) pairs of all distinct candidate surfaces, by id.
    pub fn canonical_surfaces(&self) -> Vec<(u32, &[u8])> {
        let mut v: Vec<(u32, &[u8])> = self
            .index
            .values()
            .map(|&id| (id, self.raw_bytes(id)))
            .collect();
        v.sort_unstable_by_key(|&(id, _)| id);
        v
    }

    /// SHA-256 of everything that determines a map: surfaces, flags, EOS ids, sizes.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// [`Vocab::fingerprint`] in lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        tutti_models::hex(&self.fingerprint)
    }
}

/// Reads a `tokenizer.json` file (or the only `tokenizer.json` in a folder).
pub fn load_tokenizer_file(path: &std::path::Path) -> Result<Tokenizer, VocabError> {
    let fail = |reason: String| VocabError::TokenizerLoad {
        path: path.display().to_string(),
        reason,
    };
    let file = if path.is_dir() {
        let inner = path.join("tokenizer.json");
        if !inner.is_file() {
            return Err(fail("folder holds no tokenizer.json".into()));
        }
        inner
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| fail(e.to_string()))?;
    // Parse as JSON first: the tokenizers crate's message for non-JSON input does not
    // say that the file is not JSON at all.
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .map_err(|e| fail(format!("not JSON: {e}")))?;
    Tokenizer::from_bytes(&bytes).map_err(|e| fail(format!("not a tokenizer.json: {e}")))
}

fn json_of<T: serde::Serialize>(x: Option<&T>) -> Result<Value, VocabError> {
    match x {
        None => Ok(Value::Null),
        Some(x) => serde_json::to_value(x).map_err(|e| {
            VocabError::UnsupportedTokenizer(format!("cannot inspect tokenizer: {e}"))
        }),
    }
}

/// Every JSON object in `v` (itself included) whose `"type"` is `ty`.
fn find_typed<'a>(v: &'a Value, ty: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some(ty) {
                out.push(v);
            }
            for x in map.values() {
                find_typed(x, ty, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| find_typed(x, ty, out)),
        _ => {}
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    let mut out = Vec::new();
    find_typed(v, ty, &mut out);
    !out.is_empty()
}

fn detect_scheme(decoder: &Value, pre: &Value, model_kind: &str) -> VocabScheme {
    // The decoder is what turns pieces back into text, so it decides; the
    // pre-tokenizer is the fallback for tokenizer files without a decoder.
    for v in [decoder, pre] {
        if has_type(v, "ByteLevel") {
            return VocabScheme::ByteLevel;
        }
        if has_type(v, "Metaspace") || has_type(v, "ByteFallback") {
            return VocabScheme::SentencePiece;
        }
        let mut replaces = Vec::new();
        find_typed(v, "Replace", &mut replaces);
        if replaces.iter().any(|r| r.to_string().contains('\u{2581}')) {
            return VocabScheme::SentencePiece;
        }
    }
    if model_kind == "unigram" {
        return VocabScheme::SentencePiece;
    }
    VocabScheme::Plain
}

fn detect_prepend(normalizer: &Value, pre: &Value) -> bool {
    let mut prepends = Vec::new();
    find_typed(normalizer, "Prepend", &mut prepends);
    if prepends
        .iter()
        .any(|p| p.get("prepend").and_then(Value::as_str) == Some("\u{2581}"))
    {
        return true;
    }
    let mut metas = Vec::new();
    find_typed(pre, "Metaspace", &mut metas);
    for m in metas {
        match m.get("prepend_scheme").and_then(Value::as_str) {
            Some("always") | Some("first") => return true,
            Some(_) => {}
            None => {
                if m.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                    return true;
                }
            }
        }
    }
    let mut bls = Vec::new();
    find_typed(pre, "ByteLevel", &mut bls);
    bls.iter()
        .any(|b| b.get("add_prefix_space").and_then(Value::as_bool) == Some(true))
}

/// The GPT-2 `bytes_to_unicode` table, inverted: printable Latin-1 bytes map to the
/// same code point, the other 68 bytes to U+0100.. in byte order.
fn gpt2_char_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next = 0u32;
    for b in 0u32..256 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            255 + next
        };
        if let Some(c) = char::from_u32(c) {
            map.insert(c, b as u8);
        }
    }
    map
}

/// Appends the surface of `piece` to `out`; returns whether it is a byte-fallback
/// token, or the piece back when it cannot be converted.
fn piece_bytes(
    scheme: VocabScheme,
    piece: &str,
    byte_map: &HashMap<char, u8>,
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    match scheme {
        VocabScheme::ByteLevel => {
            let start = out.len();
            for c in piece.chars() {
                match byte_map.get(&c) {
                    Some(&b) => out.push(b),
                    None => {
                        out.truncate(start);
                        return Err(piece.to_string());
                    }
                }
            }
            Ok(false)
        }
        VocabScheme::SentencePiece => {
            if let Some(b) = byte_fallback_value(piece) {
                out.push(b);
                return Ok(true);
            }
            for c in piece.chars() {
                if c == '\u{2581}' {
                    out.push(b' ');
                } else {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            Ok(false)
        }
        VocabScheme::Plain => {
            out.extend_from_slice(piece.as_bytes());
            Ok(false)
        }
    }
}

/// `<0xNN>` (two hex digits) → NN.
fn byte_fallback_value(piece: &str) -> Option<u8> {
    let hexpart = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hexpart.len() != 2 {
        return None;
    }
    u8::from_str_radix(hexpart, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(json: &str) -> Tokenizer {
        Tokenizer::from_bytes(json.as_bytes()).expect("test tokenizer parses")
    }

    const BYTE_LEVEL: &str = r#"{
      "version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [
        {"id": 5, "content": "<|eos|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 6, "content": "<think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
      ],
      "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "post_processor": null,
      "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
      "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "vocab": {"a": 0, "Ġ": 1, "Ġa": 2, "ä": 3, "Ċ": 4}, "merges": ["Ġ a"]}
    }"#;

    #[test]
    fn byte_level_surfaces_padding_and_flags() {
        let v = Vocab::from_tokenizer(&tok(BYTE_LEVEL), &[5], Some(9)).unwrap();
        assert_eq!(v.scheme(), VocabScheme::ByteLevel);
        assert_eq!(v.len(), 9);
        assert_eq!(v.tokenizer_size(), 7);
        assert_eq!(v.bytes(0), Some(&b"a"[..]));
        assert_eq!(v.bytes(1), Some(&b" "[..]));
        assert_eq!(v.bytes(2), Some(&b" a"[..]));
        // "ä" (U+00E4) is the GPT-2 stand-in for byte 0xE4: half of a UTF-8 sequence.
        assert_eq!(v.bytes(3), Some(&[0xe4u8][..]));
        assert_eq!(v.bytes(4), Some(&b"\n"[..]));
        assert_eq!(v.bytes(5), Some(&b"<|eos|>"[..]));
        assert!(v.is_special(5) && v.is_eos(5) && v.is_candidate(5));
        assert!(
            v.is_added(6) && !v.is_candidate(6),
            "<think> is a control token"
        );
        assert_eq!(v.bytes(7), None, "logit padding has no token");
        assert!(!v.is_candidate(7) && v.has_logit(7) && !v.has_token(7));
        assert_eq!(v.bytes(100), None);
        assert_eq!(v.id_of(b" a"), Some(2));
        assert_eq!(v.id_of(b"<|eos|>"), None, "EOS matches by role, not bytes");
        assert_eq!(v.decode_bytes(&[2, 1, 0, 7]), b" a a".to_vec());
    }

    #[test]
    fn a_stray_huge_id_is_refused_before_the_tables() {
        let json = BYTE_LEVEL.replace(r#""Ċ": 4}"#, r#""Ċ": 5333334}"#);
        let e = Vocab::from_tokenizer(&tok(&json), &[], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ids reach 5333334 (7 tokens)"), "{e}");
        assert!(e.contains("past the largest vocabulary"), "{e}");
    }

    #[test]
    fn logit_width_narrower_than_tokenizer() {
        let v = Vocab::from_tokenizer(&tok(BYTE_LEVEL), &[], Some(3)).unwrap();
        assert_eq!(v.len(), 7);
        assert!(v.has_token(4) && !v.has_logit(4) && !v.is_candidate(4));
        assert_eq!(v.id_of(b"\n"), None);
    }

    #[test]
    fn eos_out_of_range_is_an_error() {
        let err = Vocab::from_tokenizer(&tok(BYTE_LEVEL), &[70], None).unwrap_err();
        assert!(
            matches!(err, VocabError::InvalidEos { id: 70, .. }),
            "{err}"
        );
    }

    const SENTENCEPIECE: &str = r#"{
      "version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [
        {"id": 0, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 5, "content": "\n", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
      ],
      "normalizer": {"type": "Sequence", "normalizers": [
          {"type": "Prepend", "prepend": "▁"},
          {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
      "pre_tokenizer": null,
      "post_processor": null,
      "decoder": {"type": "Sequence", "decoders": [
          {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
          {"type": "ByteFallback"}, {"type": "Fuse"}]},
      "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": true,
                "vocab": {"<eos>": 0, "<0x41>": 1, "A": 2, "▁A": 3, "▁": 4, "\n": 5, "<0xE4>": 6},
                "merges": ["▁ A"]}
    }"#;

    #[test]
    fn sentencepiece_surfaces() {
        let v = Vocab::from_tokenizer(&tok(SENTENCEPIECE), &[0], None).unwrap();
        assert_eq!(v.scheme(), VocabScheme::SentencePiece);
        assert!(v.prepends_space());
        assert_eq!(v.bytes(1), Some(&b"A"[..]));
        assert!(v.is_byte_fallback(1));
        assert_eq!(v.bytes(3), Some(&b" A"[..]));
        assert_eq!(v.bytes(6), Some(&[0xe4u8][..]));
        // Added but also a model piece: ordinary text, hence a candidate.
        assert!(v.is_added(5) && v.is_candidate(5));
        // The regular "A" wins over the byte-fallback <0x41> for the same byte.
        assert_eq!(v.id_of(b"A"), Some(2));
        assert_eq!(v.id_of(&[0xe4]), Some(6));
    }

    #[test]
    fn gpt2_map_is_a_bijection() {
        let m = gpt2_char_to_byte();
        assert_eq!(m.len(), 256);
        let mut seen = [false; 256];
        for &b in m.values() {
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'!'], b'!');
    }

    #[test]
    fn byte_fallback_parsing() {
        assert_eq!(byte_fallback_value("<0x0A>"), Some(10));
        assert_eq!(byte_fallback_value("<0xff>"), Some(255));
        assert_eq!(byte_fallback_value("<0x0AA>"), None);
        assert_eq!(byte_fallback_value("0x0A"), None);
    }

    #[test]
    fn fingerprint_changes_with_logit_width() {
        let t = tok(BYTE_LEVEL);
        let a = Vocab::from_tokenizer(&t, &[5], Some(9)).unwrap();
        let b = Vocab::from_tokenizer(&t, &[5], Some(9)).unwrap();
        let c = Vocab::from_tokenizer(&t, &[5], Some(8)).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint_hex().len(), 64);
    }
}
