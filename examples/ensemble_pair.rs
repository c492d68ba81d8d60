//! Two heterogeneous models (SmolLM2, byte-level BPE; Gemma 3, SentencePiece) decoding
//! one text in lockstep, from the library.
//!
//! `cargo run --release --example ensemble_pair -- "The capital of France is"`

use tutti::engine::{Ensemble, MemberSpec, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "The capital of France is".into());
    let mut ens = Ensemble::builder()
        .member(MemberSpec::new(
            "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
        ))
        .member(MemberSpec::new("models-cache/gemma-3-270m-q4_k_m.gguf"))
        .build()?;
    let request = Request::raw(prompt.as_str()).max_tokens(48).stop("\n\n");
    let out = ens.generate_quiet(&request)?;
    println!("{prompt}{}", out.text);
    for m in &out.members {
        println!("{}: {} ids, {} rollbacks", m.name, m.ids.len(), m.rollbacks);
    }
    println!(
        "{:.1} tokens/s, {:.0}% of steps ensembled",
        out.timing.tokens_per_s,
        100.0 * out.ensembled_share
    );
    Ok(())
}
