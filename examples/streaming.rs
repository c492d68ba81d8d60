//! Streaming: the callback receives text as soon as the chosen bytes form complete
//! UTF-8 characters, here printed with the time since the start.
//!
//! `cargo run --release --example streaming -- "Write a haiku about the sea."`

use std::io::Write;
use std::time::Instant;

use tutti::engine::{Ensemble, MemberSpec, PromptMode, Sampling};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Write a haiku about the sea.".into());
    let mut ens = Ensemble::builder()
        .member(MemberSpec::new(
            "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
        ))
        .sampling(Sampling::Sample {
            temperature: 0.7,
            top_p: 0.9,
            seed: 42,
        })
        .max_tokens(64)
        .build()?;
    let t0 = Instant::now();
    let mut chunks = 0;
    let out = ens.generate(&prompt, PromptMode::Chat, &mut |text| {
        chunks += 1;
        print!("{text}");
        let _ = std::io::stdout().flush();
    })?;
    println!(
        "\n[{chunks} chunks, {} tokens, stop: {:?}, {:.2} s]",
        out.tokens,
        out.stop_reason,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
