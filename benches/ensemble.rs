//! End-to-end step cost of the demo pair against its members (harness-free bench).
//!
//! Greedy, 64 tokens per prompt, release build: each member alone, then the ensemble
//! (gate `always`), on the same prompts. Prints per-step alignment + combination +
//! feedback time as a share of step time (target ≤ 5%) and the ensemble's ms/token
//! over the sum of the members' single-model ms/token (target ≤ 1.10).
//!
//! `cargo bench --bench ensemble` (needs the demo models: scripts/fetch-models.sh).
//! `cargo test --bench ensemble` (as `cargo test --all-targets` does) runs the same code
//! at smoke size: one prompt, 8 tokens.

use std::path::Path;

use tutti::engine::{Ensemble, Gate, Generation, MemberSpec, Request};
use tutti_models::DeviceSpec;

const PROMPTS: [&str; 3] = [
    "The history of the city of Rome begins",
    "Here is a short story about a robot who learns to paint:",
    "The three most important inventions of the twentieth century are",
];
const TOKENS: usize = 64;

struct Totals {
    tokens: usize,
    step_ms: f64,
    overhead_ms: f64,
}

fn add(t: &mut Totals, out: &Generation) {
    // The first step holds the prompt's prefill: excluded, as in tokens/s.
    for s in out.steps.iter().skip(1) {
        t.tokens += 1;
        t.step_ms += s.total_ms;
        t.overhead_ms += s.align_combine_ms + s.feedback_ms;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Under `cargo test` (no `--bench` argument) the code runs, the numbers mean nothing.
    let full = std::env::args().any(|a| a == "--bench");
    let (prompts, tokens) = if full {
        (&PROMPTS[..], TOKENS)
    } else {
        (&PROMPTS[..1], 8)
    };
    let models = [
        "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models-cache/gemma-3-270m-q4_k_m.gguf",
    ];
    for m in models {
        if !Path::new(m).exists() {
            return Err(format!("{m} is missing: run scripts/fetch-models.sh first").into());
        }
    }
    let mut ens = Ensemble::builder()
        .member(MemberSpec::new(models[0]).device(DeviceSpec::Cpu))
        .member(MemberSpec::new(models[1]).device(DeviceSpec::Cpu))
        .build()?;
    let request = |p: &str| Request::raw(p).gate(Gate::Always).max_tokens(tokens);
    // Warm-up: first forwards allocate buffers.
    ens.generate_quiet(&request(PROMPTS[0]))?;
    let new = || Totals {
        tokens: 0,
        step_ms: 0.0,
        overhead_ms: 0.0,
    };
    let (mut solo, mut pair) = ([new(), new()], new());
    let mut rollbacks = 0;
    for &p in prompts {
        for (i, t) in solo.iter_mut().enumerate() {
            add(t, &ens.generate_quiet(&request(p).solo(i))?);
        }
        let out = ens.generate_quiet(&request(p))?;
        rollbacks += out.rollbacks();
        add(&mut pair, &out);
    }
    let ms = |t: &Totals| t.step_ms / t.tokens.max(1) as f64;
    for (i, t) in solo.iter().enumerate() {
        println!(
            "{:<36} {:>7.2} ms/token ({} tokens)",
            ens.members()[i].name(),
            ms(t),
            t.tokens
        );
    }
    println!(
        "{:<36} {:>7.2} ms/token ({} tokens, {rollbacks} rollbacks)",
        "ensemble",
        ms(&pair),
        pair.tokens
    );
    let ratio = ms(&pair) / (ms(&solo[0]) + ms(&solo[1]));
    let share = pair.overhead_ms / pair.step_ms;
    println!("ensemble ms/token / sum of members' ms/token = {ratio:.3} (target <= 1.10)");
    println!(
        "alignment + combine + feedback = {:.3} ms/step = {:.2}% of step time (target <= 5%)",
        pair.overhead_ms / pair.tokens.max(1) as f64,
        100.0 * share
    );
    Ok(())
}
