//! Shared helpers of the alignment integration tests: locating the real tokenizers and
//! building their vocabularies with each model's EOS ids and logit width.

#![allow(dead_code)]

use std::path::PathBuf;

use tokenizers::Tokenizer;
use tutti::vocab::Vocab;

/// The test tokenizers: (name, EOS token names, model logit width).
pub const KNOWN: &[(&str, &[&str], usize)] = &[
    ("llama3", &["<|end_of_text|>", "<|eot_id|>"], 128_256),
    // Qwen3 models have 151,936 logit rows for 151,669 tokens.
    ("qwen3", &["<|im_end|>", "<|endoftext|>"], 151_936),
    // Gemma 3 has 262,144 rows; the tokenizer's <image_soft_token> (262,144) has none.
    ("gemma3", &["<end_of_turn>", "<eos>"], 262_144),
    ("smollm2", &["<|im_end|>", "<|endoftext|>"], 49_152),
    ("gpt2", &["<|endoftext|>"], 50_257),
];

/// Path of tokenizer `name`: `models-cache/tokenizers/NAME/tokenizer.json` relative to
/// the repository root. Panics with instructions when it is missing: these tests are
/// never skipped.
pub fn tokenizer_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models-cache/tokenizers")
        .join(name)
        .join("tokenizer.json");
    if !path.is_file() {
        panic!(
            "tokenizer {name:?} not found at {}; run scripts/fetch-tokenizers.sh",
            path.display()
        );
    }
    path
}

/// Loads tokenizer `name` and its vocabulary.
pub fn load(name: &str) -> (Tokenizer, Vocab) {
    let (_, eos_names, width) = KNOWN
        .iter()
        .find(|k| k.0 == name)
        .unwrap_or_else(|| panic!("unknown test tokenizer {name}"));
    let path = tokenizer_path(name);
    let tok = Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let eos: Vec<u32> = eos_names
        .iter()
        .map(|n| {
            tok.token_to_id(n)
                .unwrap_or_else(|| panic!("{name}: no token {n}"))
        })
        .collect();
    let vocab = Vocab::from_tokenizer(&tok, &eos, Some(*width)).expect("vocabulary");
    (tok, vocab)
}
