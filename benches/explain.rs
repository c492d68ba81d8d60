//! What per-token attribution records (`Request::explain`) cost a step (harness-free
//! bench; target: at most 2% of a step).
//!
//! Two measures, release build, demo pair on the CPU:
//! 1. Whole steps, explain off against on: greedy, 64 tokens per prompt, the same
//!    prompts in alternating order (off-on, then on-off) so that drift cancels; the
//!    step time is the engine's own (`StepTime::total_ms`, which includes making the
//!    record), the first step (prefill) excluded.
//! 2. Making one record alone (`explain::attribute`) on a step of the demo pair's
//!    shape: two members, a union of 16 candidates, averaged over many calls.
//!
//! `cargo bench --bench explain` (needs the demo models: scripts/fetch-models.sh).
//! `cargo test --bench explain` (as `cargo test --all-targets` does) runs the same code
//! at smoke size: one prompt, 4 tokens.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use tutti::engine::explain::{attribute, Consulted, MemberInput};
use tutti::engine::step::CandidateKey;
use tutti::engine::{Ensemble, Gate, MemberSpec, Request};
use tutti_models::DeviceSpec;

const PROMPTS: [&str; 3] = [
    "The history of the city of Rome begins",
    "Here is a short story about a robot who learns to paint:",
    "The three most important inventions of the twentieth century are",
];
const TOKENS: usize = 64;

#[derive(Default)]
struct Totals {
    steps: usize,
    ms: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Under `cargo test` (no `--bench` argument) the code runs, the numbers mean nothing.
    let full = std::env::args().any(|a| a == "--bench");
    let (prompts, tokens, rounds, calls) = if full {
        (&PROMPTS[..], TOKENS, 2, 200_000)
    } else {
        (&PROMPTS[..1], 4, 1, 100)
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
    let request = |p: &str, on: bool| {
        Request::raw(p)
            .gate(Gate::Always)
            .max_tokens(tokens)
            .explain(on)
    };
    ens.generate_quiet(&request(PROMPTS[0], true))?;
    let (mut off, mut on) = (Totals::default(), Totals::default());
    for round in 0..rounds {
        for &p in prompts {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut texts = Vec::new();
            for explain in order {
                let out = ens.generate_quiet(&request(p, explain))?;
                let t = if explain { &mut on } else { &mut off };
                for s in out.steps.iter().skip(1) {
                    t.steps += 1;
                    t.ms += s.total_ms;
                }
                texts.push(out.text);
            }
            if texts[0] != texts[1] {
                return Err(format!("explain changed the text of {p:?}").into());
            }
        }
    }
    let ms = |t: &Totals| t.ms / t.steps.max(1) as f64;
    println!(
        "explain off: {:.3} ms/step, on: {:.3} ms/step ({} steps each): {:+.2}%",
        ms(&off),
        ms(&on),
        on.steps,
        100.0 * (ms(&on) / ms(&off) - 1.0)
    );

    // One record of a step shaped like the demo pair's: 16 candidates in the union.
    let keys: Vec<CandidateKey> = (0..16)
        .map(|i| CandidateKey::Bytes(format!(" word{i}").into_bytes()))
        .collect();
    let key_refs: Vec<&CandidateKey> = keys.iter().collect();
    let a: Vec<f32> = (0..16).map(|i| 0.5 / (i as f32 + 1.0)).collect();
    let b: Vec<f32> = (0..16).map(|i| 0.4 / (16.0 - i as f32)).collect();
    let combined: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
    let start = Instant::now();
    for i in 0..calls {
        let members = [
            MemberInput {
                slot: 0,
                consulted: Some(Consulted {
                    probs: &a,
                    weight: 1.0,
                    top: Some((&keys[0], a[0])),
                }),
                rolled_back: 0,
            },
            MemberInput {
                slot: 1,
                consulted: Some(Consulted {
                    probs: &b,
                    weight: 1.0,
                    top: Some((&keys[15], b[15])),
                }),
                rolled_back: i % 2,
            },
        ];
        black_box(attribute(
            i,
            black_box(&key_refs),
            black_box(&combined),
            i % 16,
            &members,
        ));
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / calls as f64;
    println!(
        "one record alone: {us:.2} µs = {:.4}% of an explain-off step",
        100.0 * us / 1e3 / ms(&off).max(f64::MIN_POSITIVE)
    );
    Ok(())
}
