//! Entry points for the fuzz targets (`fuzz/` in the repository) and for the test that
//! replays their committed corpora, for the inputs the engine crate reads: a tokenizer's
//! byte vocabulary, the ensemble TOML, bench data rows and the server's request bodies.
//! Each takes arbitrary bytes and must return without panicking, hanging or allocating
//! much more than the input's size: `Ok` when the input was accepted at every stage,
//! else the first error's message. The model loaders' entry points are in
//! [`tutti_models::fuzz`].

use crate::caught::panic_is_caught;
use crate::config::EnsembleFile;
use crate::engine::Request;
use crate::vocab::Vocab;
use std::path::Path;
use tutti_models::{DTypeSpec, DeviceSpec, ModelTokenizer};

pub use tutti_models::fuzz::{chat_template, gguf, hf_checkpoint, tokenizer_json, Outcome};

/// Makes the process abort on every panic except the caught ones (which then unwind to
/// tutti's `catch_unwind`). The fuzz targets call it first: libFuzzer's own hook aborts
/// on every panic, caught or not.
pub fn abort_on_uncaught_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.location().is_some_and(|l| panic_is_caught(l.file())) {
            default(info);
            std::process::abort();
        }
    }));
}

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A `tokenizer.json` turned into the byte vocabulary the alignment works on, then
/// read the way the maps read it.
pub fn byte_vocab(data: &[u8]) -> Outcome {
    let tok =
        ModelTokenizer::from_tokenizer_json_bytes(Path::new("fuzz-input"), data, None, None, None)
            .map_err(msg)?;
    let vocab = Vocab::from_tokenizer(tok.inner(), tok.eos_ids(), None).map_err(msg)?;
    let ids: Vec<u32> = vocab.candidates().take(64).collect();
    let text = vocab.decode_bytes(&ids);
    for (_, bytes) in vocab.canonical_surfaces().into_iter().take(64) {
        let _ = vocab.id_of(bytes);
    }
    let _ = vocab.id_of(&text);
    Ok(())
}

/// An ensemble TOML file: parsed, applied to a request, and each member turned into
/// its spec (served members' URLs included; nothing is loaded or contacted).
pub fn ensemble_toml(data: &[u8]) -> Outcome {
    let text = std::str::from_utf8(data).map_err(msg)?;
    let file = EnsembleFile::parse(text, "fuzz.toml").map_err(msg)?;
    file.apply(Request::raw("x"), "fuzz.toml").map_err(msg)?;
    for m in &file.members {
        m.to_spec(DeviceSpec::Cpu, DTypeSpec::Auto, "fuzz.toml")
            .map_err(msg)?;
    }
    Ok(())
}

/// A bench data file: the first byte picks the format (JSON Lines, a JSON array or
/// Parquet), the rest is the file; its rows are then read as QA and GSM8K items.
#[cfg(feature = "bench")]
pub fn bench_rows(data: &[u8]) -> Outcome {
    let (&kind, file) = data.split_first().ok_or("empty input")?;
    let ext = match kind % 3 {
        0 => "jsonl",
        1 => "json",
        _ => "parquet",
    };
    let rows = crate::bench::data::parse_rows(file.to_vec(), ext)?;
    // A file is one kind or the other: accepted when either reader takes every row.
    let qa: Result<Vec<_>, String> = rows
        .iter()
        .enumerate()
        .map(|(n, row)| crate::bench::qa::parse_row(row, n))
        .collect();
    let gsm8k = crate::bench::gsm8k::parse_rows(&rows, "fuzz-input").map_err(msg);
    qa.map(|_| ()).or(gsm8k.map(|_| ()))
}

/// A request body for the server: the first byte picks the endpoint (completions or
/// chat), the rest is the body; a body that passes the checks is then tokenized for
/// two members, as the server would before queueing it.
#[cfg(feature = "serve")]
pub fn serve_request(data: &[u8]) -> Outcome {
    use crate::serve::api::{self, Endpoint, Limits, MemberInfo};
    let (&kind, body) = data.split_first().ok_or("empty input")?;
    let endpoint = if kind % 2 == 0 {
        Endpoint::Completions
    } else {
        Endpoint::Chat
    };
    let tokenizer = tiny_tokenizer()?;
    let members: Vec<MemberInfo> = (0..2)
        .map(|i| MemberInfo {
            name: format!("m{i}"),
            tokenizer: tokenizer.clone(),
            context_length: 64,
            vocab_len: 4,
        })
        .collect();
    let limits = Limits {
        name: "pair".into(),
        template: Request::raw(""),
        max_tokens_cap: 64,
        seeds: Default::default(),
    };
    let call = api::parse(body, endpoint, &limits, &members).map_err(|e| format!("{e:?}"))?;
    api::encode(call, &members)
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// A four-token word-level tokenizer with a chat template, built in memory.
#[cfg(feature = "serve")]
fn tiny_tokenizer() -> Result<ModelTokenizer, String> {
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "<unk>": 2, "</s>": 3}, "unk_token": "<unk>"}
    });
    let tcfg = serde_json::json!({
        "eos_token": "</s>",
        "chat_template": "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    });
    ModelTokenizer::from_tokenizer_json_bytes(
        Path::new("tiny-tokenizer"),
        json.to_string().as_bytes(),
        Some(&tcfg),
        None,
        None,
    )
    .map_err(msg)
}
