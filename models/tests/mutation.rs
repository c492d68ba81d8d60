//! Mutation test of the loaders: damaged headers and metadata of both demo GGUFs and
//! damaged `config.json` files of tiny HF checkpoints go through `Model::load` (and
//! `ModelTokenizer::from_source`), and each load must end in `Ok` or in an error whose
//! message is one line. A panic anywhere, in tutti or in a dependency it calls, fails the
//! test; every panicking mutant is reported with its mutation, not only the first.
//!
//! The mutants are drawn from a seeded generator, so every run checks the same ones.
//! GGUF mutants change only the header: the mutated header is written and the file is
//! extended with `File::set_len` to the length the tensor data needs, a sparse region of
//! zeros that costs no disk space and loads as all-zero weights. They start from the demo
//! header with its vocabulary cut to the first 512 tokens (the model part untouched), so
//! a mutant that loads costs the weights, not a 262k-token tokenizer rebuild; the header
//! writer is checked to reproduce the original file byte for byte. Models that load are
//! run for two tokens, because some damage (a KV head count of zero) only bites there.

mod common;

use candle_core::quantized::gguf_file::Value;
use common::*;
use serde_json::{json, Value as Json};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tutti_models::{LoadOptions, Model, ModelTokenizer};

/// xorshift64*: deterministic mutants.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------
// A GGUF header read and written here, so mutations can change any field.

#[derive(Clone, Debug)]
struct TensorInfo {
    name: String,
    /// In file order (fastest-varying first).
    dims: Vec<u64>,
    dtype: u32,
    offset: u64,
}

#[derive(Clone)]
struct Header {
    version: u32,
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    /// Bytes of tensor data after the header.
    data_len: u64,
}

fn type_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    fn value(&mut self, ty: u32) -> Value {
        match ty {
            0 => Value::U8(self.take(1)[0]),
            1 => Value::I8(self.take(1)[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2).try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.take(2).try_into().unwrap())),
            4 => Value::U32(self.u32()),
            5 => Value::I32(self.u32() as i32),
            6 => Value::F32(f32::from_bits(self.u32())),
            7 => Value::Bool(self.take(1)[0] != 0),
            8 => Value::String(self.string()),
            9 => {
                let elem = self.u32();
                let n = self.u64();
                Value::Array((0..n).map(|_| self.value(elem)).collect())
            }
            10 => Value::U64(self.u64()),
            11 => Value::I64(self.u64() as i64),
            12 => Value::F64(f64::from_bits(self.u64())),
            t => panic!("the demo file has an unknown value type {t}"),
        }
    }
}

/// Byte ranges of the fields that encode sizes, types and scalar values.
#[derive(Default)]
struct Spans {
    fixed: Vec<Range<usize>>,
    metadata: Vec<Range<usize>>,
    tensors: Vec<Range<usize>>,
}

impl Header {
    fn read(path: &Path) -> Header {
        let len = std::fs::metadata(path).unwrap().len();
        let mut bytes = Vec::new();
        File::open(path)
            .unwrap()
            .take(len.min(64 << 20))
            .read_to_end(&mut bytes)
            .unwrap();
        let mut r = Reader { b: &bytes, pos: 0 };
        assert_eq!(r.take(4), b"GGUF");
        let version = r.u32();
        assert_eq!(version, 3, "the demo files are GGUF v3");
        let n_tensors = r.u64();
        let n_kvs = r.u64();
        let kvs: Vec<(String, Value)> = (0..n_kvs)
            .map(|_| {
                let key = r.string();
                let ty = r.u32();
                (key, r.value(ty))
            })
            .collect();
        let tensors = (0..n_tensors)
            .map(|_| {
                let name = r.string();
                let n_dims = r.u32();
                let dims = (0..n_dims).map(|_| r.u64()).collect();
                TensorInfo {
                    name,
                    dims,
                    dtype: r.u32(),
                    offset: r.u64(),
                }
            })
            .collect();
        let mut h = Header {
            version,
            kvs,
            tensors,
            data_len: 0,
        };
        let data_start = (r.pos as u64).div_ceil(h.alignment()) * h.alignment();
        h.data_len = len - data_start;
        h
    }

    /// The same header with only the first `n` tokens (and the merges among them):
    /// the model part is untouched and the tokenizer builds in milliseconds, where the
    /// full Gemma 3 vocabulary takes seconds. Most mutants use this base.
    fn with_small_vocab(&self, n: usize) -> Header {
        let mut h = self.clone();
        for key in TOKENIZER_ARRAYS {
            if let Some(Value::Array(items)) = h.get_mut(key) {
                if *key != "tokenizer.ggml.merges" {
                    items.truncate(n);
                }
            }
        }
        let kept: HashSet<String> = match h.get("tokenizer.ggml.tokens") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| t.to_string().unwrap().clone())
                .collect(),
            _ => panic!("the demo files have tokens"),
        };
        if let Some(Value::Array(merges)) = h.get_mut("tokenizer.ggml.merges") {
            merges.retain(|m| {
                let (a, b) = m.to_string().unwrap().split_once(' ').unwrap();
                kept.contains(a) && kept.contains(b) && kept.contains(&format!("{a}{b}"))
            });
        }
        h
    }

    /// Whether the loader reads this key (mutating the others, such as
    /// `general.license`, shows nothing).
    fn is_read(&self, key: &str) -> bool {
        let arch = match self.get("general.architecture") {
            Some(Value::String(a)) => a.as_str(),
            _ => "",
        };
        key == "general.architecture"
            || key == "general.alignment"
            || (key.starts_with("tokenizer.ggml.") && key != "tokenizer.ggml.pre")
            || key.strip_prefix(arch).is_some_and(|k| k.starts_with('.'))
    }

    fn alignment(&self) -> u64 {
        match self.get("general.alignment") {
            Some(Value::U32(a)) if *a > 0 => *a as u64,
            _ => 32,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.kvs.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The header bytes (padded to the alignment), the file length with the tensor
    /// data, and the structural spans.
    fn write(&self) -> (Vec<u8>, u64, Spans) {
        let mut out = Vec::new();
        let mut spans = Spans::default();
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            let start = out.len();
            out.extend_from_slice(b);
            start..out.len()
        };
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        spans.fixed.push(0..out.len());
        for (key, v) in &self.kvs {
            let mut kv_spans = Vec::new();
            kv_spans.push(put(&mut out, &(key.len() as u64).to_le_bytes()));
            out.extend_from_slice(key.as_bytes());
            kv_spans.push(put(&mut out, &type_code(v).to_le_bytes()));
            write_value(&mut out, v, Some(&mut kv_spans));
            if self.is_read(key) {
                spans.metadata.extend(kv_spans);
            }
        }
        for t in &self.tensors {
            spans
                .tensors
                .push(put(&mut out, &(t.name.len() as u64).to_le_bytes()));
            out.extend_from_slice(t.name.as_bytes());
            spans
                .tensors
                .push(put(&mut out, &(t.dims.len() as u32).to_le_bytes()));
            for d in &t.dims {
                spans.tensors.push(put(&mut out, &d.to_le_bytes()));
            }
            spans.tensors.push(put(&mut out, &t.dtype.to_le_bytes()));
            spans.tensors.push(put(&mut out, &t.offset.to_le_bytes()));
        }
        let align = self.alignment() as usize;
        out.resize(out.len().div_ceil(align) * align, 0);
        let len = out.len() as u64 + self.data_len;
        (out, len, spans)
    }
}

/// Writes a value; scalar values and the type and length fields of arrays are
/// recorded as spans (the contents of arrays are not: they are mostly token strings).
fn write_value(out: &mut Vec<u8>, v: &Value, spans: Option<&mut Vec<Range<usize>>>) {
    let start = out.len();
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::String(s) => {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            if let Some(spans) = spans {
                spans.push(start..out.len());
            }
            out.extend_from_slice(s.as_bytes());
            return;
        }
        Value::Array(items) => {
            let elem = items.first().map(type_code).unwrap_or(8);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            if let Some(spans) = spans {
                spans.push(start..out.len());
            }
            for item in items {
                write_value(out, item, None);
            }
            return;
        }
    }
    if let Some(spans) = spans {
        spans.push(start..out.len());
    }
}

// ---------------------------------------------------------------------------------
// Running mutants.

/// What the mutants of one source did.
#[derive(Default)]
struct Tally {
    ok: usize,
    errors: Vec<String>,
    /// (mutation, what went wrong): panics and multi-line or empty messages.
    failures: Vec<(String, String)>,
}

impl Tally {
    fn total(&self) -> usize {
        self.ok + self.errors.len() + self.failures.len()
    }

    /// Runs `load` for one mutant and records its outcome.
    fn run(&mut self, what: &str, load: impl FnOnce() -> Result<(), String>) {
        match catch_unwind(AssertUnwindSafe(load)) {
            Ok(Ok(())) => self.ok += 1,
            Ok(Err(msg)) if msg.is_empty() || msg.contains('\n') => self
                .failures
                .push((what.to_string(), format!("error not on one line: {msg:?}"))),
            Ok(Err(msg)) => self.errors.push(msg),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.failures
                    .push((what.to_string(), format!("panic: {msg}")));
            }
        }
    }

    fn report(&self, name: &str, started: Instant) {
        let mut kinds: Vec<(usize, String)> = Vec::new();
        let mut all: Vec<String> = self.errors.iter().map(|e| kind_of(e)).collect();
        all.sort();
        for k in all {
            match kinds.last_mut() {
                Some((n, last)) if *last == k => *n += 1,
                _ => kinds.push((1, k)),
            }
        }
        kinds.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        eprintln!(
            "{name}: {} mutants in {:.1} s: {} loaded, {} errors of {} kinds, {} failures",
            self.total(),
            started.elapsed().as_secs_f64(),
            self.ok,
            self.errors.len(),
            kinds.len(),
            self.failures.len()
        );
        for (n, k) in &kinds {
            eprintln!("  {n:>3} x {k}");
        }
        for (what, why) in &self.failures {
            eprintln!("  FAILED {what}: {why}");
        }
    }

    fn assert_clean(&self, name: &str) {
        assert!(
            self.failures.is_empty(),
            "{name}: {} of {} mutants panicked or gave a multi-line error:\n{}",
            self.failures.len(),
            self.total(),
            self.failures
                .iter()
                .map(|(w, e)| format!("  {w}: {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            self.errors.len() * 2 > self.total(),
            "{name}: most mutants should be refused"
        );
    }
}

/// An error message without the file path and with numbers as `N`, so that messages
/// of one kind group together in the report.
fn kind_of(msg: &str) -> String {
    let m = [".gguf: ", "config.json: "]
        .iter()
        .find_map(|sep| msg.rsplit_once(sep).map(|(_, rest)| rest))
        .unwrap_or(msg);
    let mut out = String::new();
    for c in m.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('N') {
            out.push('N');
        }
    }
    out.chars().take(120).collect()
}

/// Loads a model and runs it for two tokens.
fn load_and_run(path: &Path) -> Result<(), String> {
    let spec = path.to_str().unwrap();
    let mut m = Model::load(spec, &LoadOptions::default()).map_err(|e| e.to_string())?;
    m.lm.forward(&[1, 2]).map_err(|e| e.to_string())?;
    Ok(())
}

fn load_tokenizer(path: &Path) -> Result<(), String> {
    ModelTokenizer::from_source(path.to_str().unwrap())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("mutation")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` and extends (or cuts) the file to `len` bytes.
fn write_sparse(path: &Path, bytes: &[u8], len: u64) {
    let mut f = File::create(path).unwrap();
    let keep = bytes.len().min(len as usize);
    f.write_all(&bytes[..keep]).unwrap();
    f.set_len(len).unwrap();
}

// ---------------------------------------------------------------------------------
// GGUF mutations.

const TOKENIZER_ARRAYS: &[&str] = &[
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
];

const SPECIAL_IDS: &[&str] = &[
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
];

/// Replacement values: counts to 0 and to huge, wrong types, negative, non-finite.
fn odd_value(rng: &mut Rng, old: &Value) -> (Value, String) {
    let choices: Vec<(Value, &str)> = vec![
        (Value::U32(0), "0"),
        (Value::U64(1 << 40), "2^40"),
        (Value::U32(u32::MAX), "u32::MAX"),
        (Value::I32(-1), "-1"),
        (Value::F32(f32::NAN), "NaN"),
        (Value::F32(0.0), "0.0"),
        (Value::F32(1e30), "1e30"),
        (Value::String("x".into()), "a string"),
        (Value::String(String::new()), "an empty string"),
        (Value::Bool(true), "true"),
        (Value::Array(vec![Value::U32(3); 3]), "an array"),
        (Value::Array(vec![]), "an empty array"),
    ];
    let (v, what) = rng.pick(&choices).clone();
    // Sometimes keep the type and change the number by one.
    if rng.below(4) == 0 {
        let bumped = match old {
            Value::U32(x) => Some(Value::U32(x.wrapping_add(1))),
            Value::U64(x) => Some(Value::U64(x.wrapping_add(1))),
            Value::F32(x) => Some(Value::F32(-x)),
            _ => None,
        };
        if let Some(b) = bumped {
            return (b, "itself changed".into());
        }
    }
    (v, what.into())
}

/// One mutant of `h`: its description, header bytes and file length.
fn gguf_mutant(h: &Header, rng: &mut Rng, kind: usize) -> (String, Vec<u8>, u64) {
    let (bytes, len, spans) = h.write();
    match kind {
        // Bit flips and byte overwrites in the fields that give sizes, types, values.
        0 | 1 => {
            let pool = match rng.below(3) {
                0 => &spans.fixed,
                1 => &spans.metadata,
                _ => &spans.tensors,
            };
            let span = rng.pick(pool).clone();
            let at = span.start + rng.below(span.len());
            let mut b = bytes;
            let what = if kind == 0 {
                let bit = rng.below(8);
                b[at] ^= 1 << bit;
                format!("bit {bit} of byte {at} flipped")
            } else {
                let random = rng.next() as u8;
                let mut v = *rng.pick(&[0x00, 0xff, 0x7f, 0x80, random]);
                if v == b[at] {
                    v = !v;
                }
                b[at] = v;
                format!("byte {at} set to {v:#04x}")
            };
            (what, b, len)
        }
        // A metadata value replaced or removed.
        2 => {
            let mut m = h.clone();
            let read: Vec<usize> = (0..m.kvs.len())
                .filter(|&i| m.is_read(&m.kvs[i].0))
                .collect();
            let i = *rng.pick(&read);
            let key = m.kvs[i].0.clone();
            if rng.below(8) == 0 {
                m.kvs.remove(i);
                let (b, l, _) = m.write();
                return (format!("`{key}` removed"), b, l);
            }
            let (v, what) = odd_value(rng, &m.kvs[i].1);
            m.kvs[i].1 = v;
            let (b, l, _) = m.write();
            (format!("`{key}` set to {what}"), b, l)
        }
        // Tokenizer arrays shortened, lengthened or given a wrong element; special
        // token ids out of range.
        3 => {
            let mut m = h.clone();
            let present: Vec<&str> = TOKENIZER_ARRAYS
                .iter()
                .chain(SPECIAL_IDS)
                .copied()
                .filter(|k| m.get(k).is_some())
                .collect();
            let key = *rng.pick(&present);
            let what = match m.get_mut(key).unwrap() {
                Value::Array(items) if items.is_empty() => {
                    items.push(Value::U32(1));
                    format!("`{key}` given one u32")
                }
                Value::Array(items) => match rng.below(4) {
                    0 => {
                        let n = rng.below(items.len());
                        items.truncate(n);
                        format!("`{key}` cut to {n} entries")
                    }
                    1 => {
                        let extra = items.last().cloned().unwrap_or(Value::U32(0));
                        items.push(extra.clone());
                        items.push(extra);
                        format!("`{key}` lengthened by 2")
                    }
                    2 => {
                        let at = rng.below(items.len());
                        items[at] = Value::U64(7);
                        format!("`{key}`[{at}] made a u64")
                    }
                    _ => {
                        let at = rng.below(items.len());
                        items[at] = Value::String("no-space".into());
                        format!("`{key}`[{at}] made the string `no-space`")
                    }
                },
                v => {
                    let id = *rng.pick(&[u32::MAX, 1 << 24, 262_144, 49_152]);
                    *v = Value::U32(id);
                    format!("`{key}` set to {id}")
                }
            };
            let (b, l, _) = m.write();
            (what, b, l)
        }
        // Tensor infos: dims, type, offset.
        4 => {
            let mut m = h.clone();
            let i = rng.below(m.tensors.len());
            let t = &mut m.tensors[i];
            let name = t.name.clone();
            let what = match rng.below(8) {
                _ if t.dims.is_empty() => {
                    t.dims.push(32);
                    "a dim of 32 given to a scalar".to_string()
                }
                0 => {
                    t.dims.clear();
                    "no dims".to_string()
                }
                1 => {
                    t.dims.push(2);
                    "an extra dim of 2".into()
                }
                2 => {
                    t.dims.reverse();
                    "dims reversed".into()
                }
                3 => {
                    let d = rng.below(t.dims.len());
                    t.dims[d] = *rng.pick(&[0, 1, 1 << 40, u64::MAX]);
                    format!("dim {d} set to {}", t.dims[d])
                }
                4 => {
                    let d = rng.below(t.dims.len());
                    t.dims[d] += 1;
                    format!("dim {d} grown by 1")
                }
                5 => {
                    t.dtype = *rng.pick(&[0, 1, 2, 8, 12, 14, 30, 99, u32::MAX]);
                    format!("type set to {}", t.dtype)
                }
                6 => {
                    t.offset = *rng.pick(&[1, 31, 1 << 40, u64::MAX - 7]);
                    format!("offset set to {}", t.offset)
                }
                _ => {
                    t.offset = m.data_len;
                    "offset set to the end of the data".into()
                }
            };
            let (b, l, _) = m.write();
            (format!("tensor `{name}`: {what}"), b, l)
        }
        // Truncation: in the header or in the tensor data.
        _ => {
            let at = if rng.below(2) == 0 {
                rng.below(bytes.len()) as u64
            } else {
                bytes.len() as u64 + rng.next() % h.data_len
            };
            (format!("truncated to {at} bytes"), bytes, at)
        }
    }
}

fn gguf_mutants(file: &str, seed: u64, count: usize) {
    let started = Instant::now();
    let original = demo_model(file);
    let header = Header::read(&original);
    let path = scratch(file).join(file);
    let mut tally = Tally::default();

    // The harness is sound: it writes the original header byte for byte, and the
    // small-vocabulary base loads.
    let (bytes, len, _) = header.write();
    assert_eq!(len, std::fs::metadata(&original).unwrap().len());
    let mut prefix = vec![0u8; bytes.len()];
    File::open(&original)
        .unwrap()
        .read_exact(&mut prefix)
        .unwrap();
    assert!(
        bytes == prefix,
        "the header is not re-written byte for byte"
    );
    let small = header.with_small_vocab(512);
    let (bytes, len, _) = small.write();
    write_sparse(&path, &bytes, len);
    load_and_run(&path).expect("the unmutated small-vocabulary header must load");

    let mut rng = Rng::new(seed);
    for i in 0..count {
        let kind = i % 6;
        let (what, bytes, len) = gguf_mutant(&small, &mut rng, kind);
        write_sparse(&path, &bytes, len);
        tally.run(&format!("{file} #{i}: {what}"), || load_and_run(&path));
        if kind == 3 {
            tally.run(&format!("{file} #{i} (tokenizer only): {what}"), || {
                load_tokenizer(&path)
            });
        }
    }
    std::fs::remove_file(&path).ok();
    tally.report(file, started);
    tally.assert_clean(file);
}

#[test]
fn smollm2_gguf_mutants() {
    gguf_mutants(SMOLLM2, 0x5e11, 130);
}

#[test]
fn gemma3_gguf_mutants() {
    gguf_mutants(GEMMA3, 0x9e33a, 70);
}

/// A tensor info with no dimensions (a scalar) for the embedding table: its row count
/// was read as `dims[0]`.
#[test]
fn gguf_embedding_without_dims_is_an_error() {
    let mut h = Header::read(&demo_model(SMOLLM2)).with_small_vocab(512);
    let embd = h
        .tensors
        .iter_mut()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    embd.dims.clear();
    // F32, so that the one element is a whole block and the header stays consistent.
    embd.dtype = 0;
    let path = scratch("no-dims").join("model.gguf");
    let (bytes, len, _) = h.write();
    write_sparse(&path, &bytes, len);
    let err = load_and_run(&path).unwrap_err();
    assert!(
        err.contains("`token_embd.weight` has shape [], expected [vocab, hidden]")
            && !err.contains('\n'),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// HF config.json mutations.

const HF_FAMILIES: &[&str] = &["llama3", "gemma3", "phi3", "qwen3", "gemma2"];

/// Keys the loader reads, present or not.
const HF_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_local_base_freq",
    "sliding_window",
    "use_sliding_window",
    "sliding_window_pattern",
    "layer_types",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "tie_word_embeddings",
    "attention_bias",
    "hidden_activation",
    "hidden_act",
    "text_config",
];

fn odd_json(rng: &mut Rng, old: Option<&Json>) -> Json {
    let mut choices = vec![
        json!(0),
        json!(1u64 << 40),
        json!(u64::MAX),
        json!(-1),
        json!(1.5),
        json!(1e300),
        json!("x"),
        json!(""),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!([1, "a", null]),
        json!({"rope_type": "llama3", "factor": 0.0, "low_freq_factor": 4.0}),
        json!({"full_attention": {"rope_theta": -1.0}, "sliding_attention": 7}),
    ];
    if let Some(Json::Number(n)) = old {
        if let Some(x) = n.as_u64() {
            choices.push(json!(x + 1));
            choices.push(json!(x.saturating_sub(1)));
            choices.push(json!(x * 3));
        }
    }
    if let Some(Json::Array(a)) = old {
        let mut shorter = a.clone();
        shorter.pop();
        choices.push(Json::Array(shorter));
        let mut longer = a.clone();
        longer.extend(a.iter().cloned());
        choices.push(Json::Array(longer));
    }
    rng.pick(&choices).clone()
}

fn hf_mutant(cfg: &Json, text: &str, rng: &mut Rng, kind: usize) -> (String, Vec<u8>) {
    match kind {
        // A top-level key given an odd value or removed.
        0..=2 => {
            let mut c = cfg.clone();
            let key = *rng.pick(HF_KEYS);
            let obj = c.as_object_mut().unwrap();
            if rng.below(6) == 0 {
                obj.remove(key);
                return (format!("`{key}` removed"), c.to_string().into_bytes());
            }
            let v = odd_json(rng, obj.get(key));
            let what = format!("`{key}` set to {v}");
            obj.insert(key.to_string(), v);
            (what, c.to_string().into_bytes())
        }
        // A nested value changed.
        3 => {
            let mut c = cfg.clone();
            let (key, v) = match c.get_mut("rope_parameters") {
                Some(Json::Object(p)) if !p.is_empty() => {
                    let keys: Vec<String> = p.keys().cloned().collect();
                    let k = rng.pick(&keys).clone();
                    let v = odd_json(rng, p.get(&k));
                    p.insert(k.clone(), v.clone());
                    (format!("rope_parameters.{k}"), v)
                }
                _ => {
                    let v = odd_json(rng, None);
                    c["layer_types"] = json!(["sliding_attention", v.clone()]);
                    ("layer_types".to_string(), v)
                }
            };
            (format!("`{key}` set to {v}"), c.to_string().into_bytes())
        }
        // Bit flips and byte overwrites in the text.
        4 => {
            let mut b = text.as_bytes().to_vec();
            let at = rng.below(b.len());
            let bit = rng.below(8);
            b[at] ^= 1 << bit;
            (format!("bit {bit} of byte {at} flipped"), b)
        }
        5 => {
            let mut b = text.as_bytes().to_vec();
            let at = rng.below(b.len());
            let v = *rng.pick(b"0123456789-.\"{}[],:ex ");
            b[at] = v;
            (format!("byte {at} set to {:?}", v as char), b)
        }
        // Truncation.
        _ => {
            let at = rng.below(text.len());
            (
                format!("truncated to {at} bytes"),
                text.as_bytes()[..at].to_vec(),
            )
        }
    }
}

#[test]
fn hf_config_mutants() {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut rng = Rng::new(0xc0f16);
    let tokenizer = fixture("tiny/bert/tokenizer.json");
    for family in HF_FAMILIES {
        let src = fixture(&format!("tiny/{family}"));
        let dir = scratch(&format!("hf-{family}"));
        for f in ["model.safetensors", "generation_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::copy(&tokenizer, dir.join("tokenizer.json")).unwrap();
        let text = std::fs::read_to_string(src.join("config.json")).unwrap();
        let cfg: Json = serde_json::from_str(&text).unwrap();
        std::fs::write(dir.join("config.json"), &text).unwrap();
        load_and_run(&dir).expect("the unmutated fixture must load");
        for i in 0..50 {
            let (what, bytes) = hf_mutant(&cfg, &text, &mut rng, i % 7);
            std::fs::write(dir.join("config.json"), bytes).unwrap();
            tally.run(&format!("{family} #{i}: {what}"), || load_and_run(&dir));
        }
    }
    tally.report("config.json", started);
    tally.assert_clean("config.json");
}
