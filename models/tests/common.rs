//! Shared helpers of the models crate's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("models/ has a parent")
        .to_path_buf()
}

/// A demo model from `models-cache/` (or `$TUTTI_MODELS_DIR`); panics with the fix.
pub fn demo_model(file: &str) -> PathBuf {
    let dir = std::env::var_os("TUTTI_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models-cache"));
    let p = dir.join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh first (the README's test command does)",
        p.display()
    );
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

pub fn fixture(rel: &str) -> PathBuf {
    std::env::var_os("TUTTI_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/fixtures"))
        .join(rel)
}

/// Index of the largest value (lowest index on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
