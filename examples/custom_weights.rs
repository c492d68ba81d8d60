//! Per-request weights, a confidence gate and top-k on one ensemble: the ensemble's
//! choice moves from one member to the other as the weights do. Settings travel with
//! each request; the members and their vocabulary maps are loaded once.
//!
//! `cargo run --release --example custom_weights`

use tutti::align::AlignMethod;
use tutti::engine::{Ensemble, Gate, MemberSpec, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut ens = Ensemble::builder()
        .member(MemberSpec::new(
            "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
        ))
        .member(MemberSpec::new("models-cache/gemma-3-270m-q4_k_m.gguf"))
        .align(AlignMethod::MinEd)
        .build()?;
    let base = Request::raw("Q: What is the largest planet in the solar system?\nA:")
        .top_k(8)
        .gate(Gate::Uncertain(0.7))
        .max_tokens(16)
        .stop("\n");
    for weights in [[1.0, 0.0], [0.7, 0.3], [0.5, 0.5], [0.3, 0.7], [0.0, 1.0]] {
        let out = ens.generate_quiet(&base.clone().weights(weights.to_vec()))?;
        println!(
            "weights {weights:?}: {:?} ({:.0}% ensembled)",
            out.text.trim(),
            100.0 * out.ensembled_share
        );
    }
    Ok(())
}
