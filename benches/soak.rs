//! Soak: many sequential generations with the demo pair in one process (mixed raw and
//! chat prompts, short and long, greedy and sampled, stop strings, member subsets),
//! watching resident memory. Fails (exit 1) on any error or when resident memory grows
//! by more than the bound after the warm-up.
//!
//! `cargo bench --bench soak` runs 1,000 generations (`-- --count N` for another
//! number); `cargo test --bench soak` (as `cargo test --all-targets` does) runs the same
//! code for 8 generations of at most 6 tokens with a warm-up of 4.

use std::time::Instant;
use tutti::engine::{Ensemble, MemberSpec, Message, Request, Sampling};

/// Growth of resident memory allowed after the warm-up.
const BOUND_MIB: f64 = 32.0;

/// Resident memory of this process, MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Write one sentence about a café in Zürich:",
    "Q: What is 12 plus 30?\nA:",
    "List three colours:",
    "日本の首都は",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):",
    "🇨🇭 Swiss cheese is",
];

fn request(i: usize, max_tokens: usize) -> Request {
    let text = PROMPTS[i % PROMPTS.len()];
    let mut r = if i % 3 == 2 {
        Request::chat(vec![
            Message::system("Answer in one short sentence."),
            Message::user(text),
        ])
    } else {
        // Long prompts now and then: the KV caches grow and are reused.
        let repeat = if i.is_multiple_of(7) { 12 } else { 1 };
        Request::raw(vec![text; repeat].join(" "))
    };
    r = r.max_tokens((4 + (i * 7) % 29).min(max_tokens));
    if i % 2 == 1 {
        r = r.sampling(Sampling::Sample {
            temperature: 0.8,
            top_p: 0.95,
            seed: i as u64,
        });
    }
    if i.is_multiple_of(5) {
        r = r.stop("\n");
    }
    if i.is_multiple_of(11) {
        r = r.members(vec![i / 11 % 2]);
    }
    r
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let count = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if full { 1000 } else { 8 });
    let warmup = if full { 50 } else { 4 }.min(count);
    let max_tokens = if full { usize::MAX } else { 6 };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models-cache");
    let mut ens = match Ensemble::builder()
        .member(MemberSpec::new(
            root.join("SmolLM2-135M-Instruct.Q4_1.gguf")
                .display()
                .to_string(),
        ))
        .member(MemberSpec::new(
            root.join("gemma-3-270m-q4_k_m.gguf").display().to_string(),
        ))
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("soak: {e} (scripts/fetch-models.sh fetches the demo models)");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let (mut baseline, mut peak, mut tokens) = (0.0f64, 0.0f64, 0usize);
    for i in 0..count {
        match ens.generate_quiet(&request(i, max_tokens)) {
            Ok(out) => tokens += out.tokens,
            Err(e) => {
                eprintln!("soak: generation {i} failed: {e}");
                std::process::exit(1);
            }
        }
        let rss = rss_mib();
        if i + 1 == warmup {
            baseline = rss;
        }
        peak = peak.max(rss);
        if (i + 1) % 100 == 0 || i + 1 == count {
            println!(
                "soak: {:>5} generations, {tokens} tokens, {:.1} s, resident {rss:.1} MiB (after warm-up {baseline:.1}, peak {peak:.1})",
                i + 1,
                start.elapsed().as_secs_f64()
            );
        }
    }
    let growth = peak - baseline;
    println!(
        "soak: {count} generations, resident memory grew {growth:.1} MiB after {warmup} warm-up generations (bound {BOUND_MIB} MiB)"
    );
    if growth > BOUND_MIB {
        eprintln!("soak: resident memory grew {growth:.1} MiB, past the {BOUND_MIB} MiB bound");
        std::process::exit(1);
    }
}
