//! Shared helpers of the generation and ensemble tests: the demo models and a plain
//! greedy loop written directly against `CausalLm`, as the reference.
#![allow(dead_code)]

use std::collections::hash_map::{Entry, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tutti_models::{LoadOptions, Model};

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// Path of a demo model; fails with the fix when it is missing.
pub fn demo(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models-cache")
        .join(name);
    assert!(
        p.exists(),
        "demo model {} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p.display().to_string()
}

/// A demo model with an empty cache. Each file is read once per test binary; later
/// calls get forks sharing its weights (`Model::fork`), which decode like fresh loads
/// (`tests/ensemble.rs` checks that) at a fraction of the start-up time.
pub fn load(name: &str) -> Model {
    static LOADED: OnceLock<Mutex<HashMap<String, Model>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let model = match loaded.entry(name.to_string()) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(load_fresh(name)),
    };
    model.fork().expect("demo models share their weights")
}

/// A demo model read from its file.
pub fn load_fresh(name: &str) -> Model {
    Model::load(&demo(name), &LoadOptions::default()).expect("demo model loads")
}

/// Index of the largest logit (first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Reference greedy decoding: forward the prompt, then one id at a time, stopping at
/// EOS (not included) or after `max` ids.
pub fn plain_greedy(model: &mut Model, prompt: &[u32], max: usize) -> Vec<u32> {
    model.lm.reset();
    let mut logits: Vec<f32> = model.lm.forward(prompt).unwrap().to_vec1().unwrap();
    let mut out = Vec::new();
    while out.len() < max {
        let id = argmax(&logits);
        if model.tokenizer.is_eos(id) {
            break;
        }
        out.push(id);
        logits = model.lm.forward(&[id]).unwrap().to_vec1().unwrap();
    }
    out
}

/// Largest absolute difference of two logit vectors, relative to the larger range.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
