//! Entry points for the fuzz targets (`fuzz/` in the repository) and for the test that
//! replays their committed corpora. Each takes arbitrary bytes, runs one loader on them
//! exactly as a file on disk would be read, and must return without panicking, hanging
//! or allocating much more than the input's size. `Ok` means the input was accepted at
//! every stage; `Err` carries the first error's message, which the replay test checks
//! is the loader's clear one-line error.

use crate::{tokenizer::ModelTokenizer, TransformerConfig, WeightFormat};
use std::path::Path;

/// The name errors give the input.
const NAME: &str = "fuzz-input";

/// The outcome of one input: accepted, or the first error's message.
pub type Outcome = Result<(), String>;

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A GGUF file: header, metadata and tensor infos through tutti's checks (tensor
/// bounds, the config, the tensors' shapes), then the tokenizer rebuilt from its
/// `tokenizer.ggml.*` metadata, used, and its chat template rendered.
pub fn gguf(data: &[u8]) -> Outcome {
    let path = Path::new(NAME);
    let mut cursor = std::io::Cursor::new(data);
    let content = crate::read_gguf_header_from(&mut cursor, path).map_err(msg)?;
    let tensors = crate::check_gguf_tensors(path, &content, data.len() as u64).map_err(msg);
    let config = crate::gguf_config(path, &content, None).map_err(msg);
    let tokenizer = ModelTokenizer::from_gguf(path, &content.metadata)
        .map_err(msg)
        .and_then(|t| exercise_tokenizer(&t));
    tensors.and(config).map(|_| ()).and(tokenizer)
}

/// A dense checkpoint: `config.json`, a NUL byte, then a `.safetensors` file (absent:
/// the config alone). The config is read and validated, the safetensors header parsed,
/// its tensors' shapes checked against the config and the tensors converted as a load
/// would.
pub fn hf_checkpoint(data: &[u8]) -> Outcome {
    let (config, weights) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| format!("config.json: {e}"))?;
    let cfg = TransformerConfig::from_hf_value(&value, None).map_err(msg)?;
    if weights.is_empty() {
        return Ok(());
    }
    let st = safetensors::SafeTensors::deserialize(weights).map_err(msg)?;
    crate::transformer::check_shapes(&cfg, WeightFormat::HuggingFace, NAME, |n| {
        st.tensor(n).ok().map(|t| t.shape().to_vec())
    })
    .map_err(msg)?;
    candle_core::safetensors::load_buffer(weights, &candle_core::Device::Cpu)
        .map(|_| ())
        .map_err(|e| crate::error::one_line(&e))
}

/// A `tokenizer.json`: loaded as a model folder's tokenizer, then used.
pub fn tokenizer_json(data: &[u8]) -> Outcome {
    let tok = ModelTokenizer::from_tokenizer_json_bytes(Path::new(NAME), data, None, None, None)
        .map_err(msg)?;
    exercise_tokenizer(&tok)
}

/// A chat template (the input as text) rendered for a short conversation.
pub fn chat_template(data: &[u8]) -> Outcome {
    let template = String::from_utf8_lossy(data);
    crate::chat::render(&template, &conversation(), "<s>", "</s>")
        .map(|_| ())
        .map_err(msg)
}

fn conversation() -> Vec<(String, String)> {
    vec![
        ("system".into(), "Answer briefly.".into()),
        ("user".into(), "Where is Zürich? 🇨🇭".into()),
        ("assistant".into(), "In Switzerland.".into()),
        ("user".into(), "And Paris?".into()),
    ]
}

/// Encodes, decodes and renders with a loaded tokenizer, as a prompt would, on a thread
/// of its own: the `tokenizers` crate's BPE keeps a per-thread cache keyed by tokenizer
/// instance that outlives the instance (bounded for a process's few tokenizers, but one
/// per input here), and the thread takes it along when it ends.
fn exercise_tokenizer(tok: &ModelTokenizer) -> Outcome {
    std::thread::scope(|s| {
        s.spawn(|| exercise_tokenizer_here(tok))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn exercise_tokenizer_here(tok: &ModelTokenizer) -> Outcome {
    for text in ["Hello, world!", " café\n\tZürich 日本語 🇨🇭", ""] {
        let ids = tok.encode(text, tok.add_bos()).map_err(msg)?;
        tok.decode(&ids, false).map_err(msg)?;
    }
    if tok.chat_template().is_some() {
        tok.apply_chat_template(&conversation()).map_err(msg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(rel: &str) -> Vec<u8> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        std::fs::read(root.join(rel)).unwrap()
    }

    #[test]
    fn zero_alignment_is_refused_before_the_reader_divides_by_it() {
        let e = gguf(&committed("regressions/gguf/alignment-zero.gguf")).unwrap_err();
        assert!(
            e.contains("`general.alignment` is 0, not a power of two"),
            "{e}"
        );
        // The same file with its alignment intact is accepted.
        gguf(&committed("corpus/gguf/tiny-llama-bpe.gguf")).unwrap();
    }
}
