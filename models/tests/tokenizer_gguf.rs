//! The tokenizer rebuilt from GGUF metadata encodes like the model's own `tokenizer.json`.

mod common;

use common::*;
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

fn shared_tokenizer(name: &str) -> std::path::PathBuf {
    let candidates = [
        repo_root().join(format!("../shared/assets/tokenizers/{name}/tokenizer.json")),
        repo_root().join(format!("models-cache/tokenizers/{name}/tokenizer.json")),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| panic!("no {name} tokenizer.json: run scripts/fetch-tokenizers.sh"))
}

fn check(gguf: &str, tokenizer: &str) {
    let from_gguf = ModelTokenizer::from_source(demo_model(gguf).to_str().unwrap()).unwrap();
    let reference = tokenizers::Tokenizer::from_file(shared_tokenizer(tokenizer)).unwrap();
    for text in TEXTS {
        let ours = from_gguf.encode(text, false).unwrap();
        let theirs = reference.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(ours, theirs, "{gguf}: {text:?}");
        let back = from_gguf.decode(&ours, false).unwrap();
        assert_eq!(&back, text, "{gguf}: decode round trip");
    }
}

#[test]
fn smollm2_gguf_tokenizer_matches_tokenizer_json() {
    check(SMOLLM2, "smollm2");
    let t = ModelTokenizer::from_source(demo_model(SMOLLM2).to_str().unwrap()).unwrap();
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
fn gemma3_gguf_tokenizer_matches_tokenizer_json() {
    check(GEMMA3, "gemma3");
    let t = ModelTokenizer::from_source(demo_model(GEMMA3).to_str().unwrap()).unwrap();
    assert!(t.add_bos());
    assert_eq!(t.bos_id(), Some(2));
    assert_eq!(t.encode_prompt("Hi").unwrap()[0], 2);
    assert!(t.is_eos(1) && t.is_eos(106), "eos ids {:?}", t.eos_ids());
}
