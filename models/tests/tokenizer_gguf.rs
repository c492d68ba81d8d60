//! The tokenizer rebuilt from GGUF metadata encodes like the model's reference: Gemma 3's
//! published `tokenizer.json`, and for SmolLM2 (whose `tokenizer.json` no package
//! registry ships) llama.cpp's own tokenization of the GGUF, recorded in
//! `tests/fixtures/llamacpp/smollm2.json`. The tokenizer folder that
//! `tutti tokenize --export` writes from the GGUF must encode the same way.

mod common;

use common::*;
use serde_json::Value;
use tutti_models::ModelTokenizer;

const TEXTS: &[&str] = &[
    "The capital of France is Paris.",
    "  leading spaces,\ttabs and  double  spaces:\n\n",
    "Le café crème à Paris coûte très cher, mais à Zürich et à São Paulo",
    "東京は日本の首都です。寿司が好き 🍣🎌 and emoji 😀👍",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In 1969, 12345 people paid $3.50 each; 7+8=15, 100/4=25.",
    "<|im_start|>user\nHi<|im_end|>\n",
];

fn fetched_tokenizer(name: &str) -> std::path::PathBuf {
    let p = repo_root().join(format!("models-cache/tokenizers/{name}/tokenizer.json"));
    assert!(
        p.exists(),
        "no {name} tokenizer.json at {}: run scripts/fetch-tokenizers.sh",
        p.display()
    );
    p
}

/// llama.cpp's (prompt, token ids) pairs for a demo model, from the reference fixture.
fn llamacpp_tokens(name: &str) -> Vec<(String, Vec<u32>)> {
    let path = fixture(&format!("llamacpp/{name}.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["tokens"].as_array().unwrap();
            (
                c["prompt"].as_str().unwrap().to_string(),
                ids.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            )
        })
        .collect()
}

fn round_trips(tok: &ModelTokenizer, what: &str) {
    for text in TEXTS {
        let ids = tok.encode(text, false).unwrap();
        let back = tok.decode(&ids, false).unwrap();
        assert_eq!(&back, text, "{what}: decode round trip");
    }
}

fn check_against_tokenizer_json(gguf: &str, tokenizer: &str) {
    let from_gguf = ModelTokenizer::from_source(demo_model(gguf).to_str().unwrap()).unwrap();
    let reference = tokenizers::Tokenizer::from_file(fetched_tokenizer(tokenizer)).unwrap();
    for text in TEXTS {
        let ours = from_gguf.encode(text, false).unwrap();
        let theirs = reference.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(ours, theirs, "{gguf}: {text:?}");
    }
    round_trips(&from_gguf, gguf);
}

#[test]
fn smollm2_gguf_tokenizer_matches_llamacpp() {
    let t = ModelTokenizer::from_source(demo_model(SMOLLM2).to_str().unwrap()).unwrap();
    let cases = llamacpp_tokens("smollm2");
    assert!(cases.len() >= 6);
    for (prompt, ids) in &cases {
        assert_eq!(&t.encode_prompt(prompt).unwrap(), ids, "{prompt:?}");
    }
    round_trips(&t, SMOLLM2);
    assert!(!t.add_bos(), "SmolLM2's GGUF says add_bos_token = false");
    assert!(t.chat_template().is_some());
    // <|im_end|> ends a chat turn; <|endoftext|> ends a document.
    assert!(t.is_eos(2) && t.is_eos(0), "eos ids {:?}", t.eos_ids());
    let chat = t
        .apply_chat_template(&[("user".into(), "Hi".into())])
        .unwrap();
    assert!(
        chat.contains("<|im_start|>user\nHi<|im_end|>")
            && chat.ends_with("<|im_start|>assistant\n"),
        "{chat:?}"
    );
}

#[test]
fn exported_smollm2_tokenizer_matches_llamacpp_and_the_gguf() {
    // The file scripts/fetch-tokenizers.sh exported, read by the plain tokenizers crate.
    let exported = tokenizers::Tokenizer::from_file(fetched_tokenizer("smollm2")).unwrap();
    for (prompt, ids) in llamacpp_tokens("smollm2") {
        let enc = exported.encode(prompt.as_str(), false).unwrap();
        assert_eq!(enc.get_ids(), ids.as_slice(), "{prompt:?}");
    }
    let gguf = ModelTokenizer::from_source(demo_model(SMOLLM2).to_str().unwrap()).unwrap();
    assert_eq!(exported.get_vocab_size(true), gguf.vocab_size());
    for id in (0..gguf.vocab_size() as u32).step_by(97) {
        assert_eq!(
            exported.id_to_token(id),
            gguf.inner().id_to_token(id),
            "id {id}"
        );
    }

    // A fresh export loads back as a tokenizer folder with the same facts.
    let dir = std::env::temp_dir().join(format!("tutti-export-{}", std::process::id()));
    gguf.save(&dir).unwrap();
    let back = ModelTokenizer::from_source(dir.to_str().unwrap()).unwrap();
    assert_eq!(back.bos_id(), gguf.bos_id());
    assert_eq!(back.eos_ids(), gguf.eos_ids());
    assert_eq!(back.add_bos(), gguf.add_bos());
    assert_eq!(back.chat_template(), gguf.chat_template());
    for text in TEXTS {
        assert_eq!(
            back.encode_prompt(text).unwrap(),
            gguf.encode_prompt(text).unwrap(),
            "{text:?}"
        );
    }
    assert!(
        !std::fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "temporary files left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gemma3_gguf_tokenizer_matches_tokenizer_json() {
    check_against_tokenizer_json(GEMMA3, "gemma3");
    let t = ModelTokenizer::from_source(demo_model(GEMMA3).to_str().unwrap()).unwrap();
    assert!(t.add_bos());
    assert_eq!(t.bos_id(), Some(2));
    assert_eq!(t.encode_prompt("Hi").unwrap()[0], 2);
    assert!(t.is_eos(1) && t.is_eos(106), "eos ids {:?}", t.eos_ids());
    // Gemma's prompts begin with BOS, as llama.cpp's do.
    for (prompt, ids) in llamacpp_tokens("gemma3") {
        assert_eq!(t.encode_prompt(&prompt).unwrap(), ids, "{prompt:?}");
    }
}
