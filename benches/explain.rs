//! What per-token attribution records (`Request::explain`) cost a step (harness-free
//! bench; target: at most 2% of a step).
//!
//! Two measures, release build, demo pair on the CPU:
//! 1. Whole steps, explain off against on: greedy, 64 tokens per prompt, each prompt
//!    run off and on back to back in alternating order (off-on, then on-off) so that
//!    drift cancels. Wall time is the engine's own step time (`StepTime::total_ms`,
//!    which includes making the record; the first step, the prefill, excluded), as the
//!    mean over all steps and as the median of the pairs' ratios; on Linux also the
//!    process's CPU time per step (every thread's, from `/proc/self/task/*/schedstat`,
//!    prefill included), which other processes on a busy machine disturb far less.
//! 2. The record's own time inside those steps (`StepTime::explain_ms`, measured by
//!    the engine around the making of each record) over the step time.
//! 3. Making one record alone (`explain::attribute`) on a step of the demo pair's
//!    shape: two members, a union of 16 candidates, averaged over many calls.
//!
//! `cargo bench --bench explain` (needs the demo models: scripts/fetch-models.sh);
//! `cargo bench --bench explain -- --aa` runs both arms with explain off, which shows
//! how far apart two identical arms come out on the machine at hand (its noise floor).
//! `cargo test --bench explain` (as `cargo test --all-targets` does) runs the same code
//! at smoke size: one prompt, 4 tokens.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use tutti::engine::explain::{attribute, Consulted, MemberInput};
use tutti::engine::CandidateKey;
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
    /// Time spent making records, in the steps counted in `ms`.
    explain_ms: f64,
    /// CPU nanoseconds of the whole generations, and their steps (prefill included).
    cpu_ns: u64,
    all_steps: usize,
}

/// CPU time of every thread of this process, in nanoseconds (None off Linux).
fn cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Under `cargo test` (no `--bench` argument) the code runs, the numbers mean nothing.
    let full = std::env::args().any(|a| a == "--bench");
    let same_arms = std::env::args().any(|a| a == "--aa");
    let (prompts, tokens, rounds, calls) = if full {
        (&PROMPTS[..], TOKENS, 4, 200_000)
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
    let mut ratios = Vec::new();
    for round in 0..rounds {
        for &p in prompts {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut texts = Vec::new();
            let mut pair = [0.0f64; 2];
            for explain in order {
                let cpu0 = cpu_ns();
                let out = ens.generate_quiet(&request(p, explain && !same_arms))?;
                let cpu = cpu_ns().zip(cpu0).map_or(0, |(b, a)| b.saturating_sub(a));
                let t = if explain { &mut on } else { &mut off };
                let ms: f64 = out.steps.iter().skip(1).map(|s| s.total_ms).sum();
                t.explain_ms += out.steps.iter().skip(1).map(|s| s.explain_ms).sum::<f64>();
                let n = out.steps.len().saturating_sub(1);
                t.steps += n;
                t.ms += ms;
                t.cpu_ns += cpu;
                t.all_steps += out.steps.len();
                pair[usize::from(explain)] = ms / n.max(1) as f64;
                texts.push(out.text);
            }
            if texts[0] != texts[1] {
                return Err(format!("explain changed the text of {p:?}").into());
            }
            ratios.push(pair[1] / pair[0]);
        }
    }
    let ms = |t: &Totals| t.ms / t.steps.max(1) as f64;
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(1.0);
    println!(
        "wall: explain off {:.3} ms/step, on {:.3} ms/step ({} steps each): {:+.2}% \
         (median of {} pairs: {:+.2}%)",
        ms(&off),
        ms(&on),
        on.steps,
        100.0 * (ms(&on) / ms(&off) - 1.0),
        ratios.len(),
        100.0 * (median - 1.0)
    );
    println!(
        "inside the steps: making the records took {:.4} ms/step = {:.4}% of the step",
        on.explain_ms / on.steps.max(1) as f64,
        100.0 * on.explain_ms / on.ms.max(f64::MIN_POSITIVE)
    );
    if off.explain_ms != 0.0 || (same_arms && on.explain_ms != 0.0) {
        return Err("a request without explain spent time on records".into());
    }
    if off.cpu_ns > 0 {
        let cpu = |t: &Totals| t.cpu_ns as f64 / 1e6 / t.all_steps.max(1) as f64;
        println!(
            "cpu: explain off {:.3} ms/step, on {:.3} ms/step: {:+.2}%",
            cpu(&off),
            cpu(&on),
            100.0 * (cpu(&on) / cpu(&off) - 1.0)
        );
    }

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
