//! `tutti bench serve`: a load test of the server in one run. The ensemble first decodes
//! the prompts directly (the `tutti generate` path: the reference outputs and decode
//! speed), then serves them on a loopback port: once in sequence, then from many
//! concurrent streaming clients (outputs must equal the sequential ones; throughput,
//! latency and time to first token), then a burst larger than the queue (every answer
//! must be 200 or 429).

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tutti::engine::{Message, Prompt, Sampling};
use tutti::serve::{ServeOptions, Server};

use super::ensemble_args::{self, EnsembleArgs};

#[derive(clap::Args, Debug)]
pub struct ServeBenchArgs {
    /// Members and settings (decoding is greedy; --max-tokens is the length of every
    /// answer, default 16).
    #[command(flatten)]
    pub ens: EnsembleArgs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Requests per client, one after another.
    #[arg(long, default_value_t = 8)]
    pub requests: usize,
    /// The server's queue (the overflow burst sends this many plus the clients plus one).
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Name three colors.",
    "What is 7 times 6?",
    "Write a short greeting.",
    "Which planet is closest to the sun?",
    "Give one word that means happy.",
    "How many legs does a spider have?",
    "Say something about the sea.",
];

/// One served request as the client saw it.
#[derive(Clone, Debug, Default)]
struct Served {
    status: u16,
    text: String,
    ids: Value,
    tokens: u64,
    /// Server-side decode milliseconds (first token excluded) and their token count.
    decode_ms: f64,
    decode_tokens: f64,
    ttft_ms: f64,
    latency_ms: f64,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(900)))
        .build()
        .into()
}

fn body(prompt: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// Sends one streaming chat request and reads it to the end.
fn stream_one(agent: &ureq::Agent, url: &str, prompt: &str, max_tokens: usize) -> Result<Served> {
    let t0 = Instant::now();
    let r = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body(prompt, max_tokens, true).to_string())
        .context("sending a request")?;
    let mut out = Served {
        status: r.status().as_u16(),
        ..Served::default()
    };
    if out.status != 200 {
        return Ok(out);
    }
    for line in BufReader::new(r.into_body().into_reader()).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).context("a chunk is not JSON")?;
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            if !t.is_empty() && out.text.is_empty() {
                out.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
            }
            out.text.push_str(t);
        }
        if chunk["choices"][0]["finish_reason"].is_string() {
            let d = &chunk["tutti"];
            out.ids = Value::Array(
                d["members"]
                    .as_array()
                    .map(|m| m.iter().map(|x| x["ids"].clone()).collect())
                    .unwrap_or_default(),
            );
            out.tokens = d["members"][0]["ids"]
                .as_array()
                .map_or(0, |a| a.len() as u64);
            let per = d["timing"]["ms_per_token"].as_f64().unwrap_or(0.0);
            out.decode_tokens = out.tokens.saturating_sub(1) as f64;
            out.decode_ms = per * out.decode_tokens;
        }
        if let Some(e) = chunk.get("error") {
            bail!("the server answered an error in the stream: {e}");
        }
    }
    out.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn tokens_per_s(served: &[Served]) -> f64 {
    let ms: f64 = served.iter().map(|s| s.decode_ms).sum();
    let n: f64 = served.iter().map(|s| s.decode_tokens).sum();
    if ms > 0.0 {
        n * 1e3 / ms
    } else {
        0.0
    }
}

pub fn run(args: ServeBenchArgs) -> Result<()> {
    if args.clients == 0 || args.requests == 0 {
        bail!("--clients and --requests must be at least 1");
    }
    let mut plan = ensemble_args::plan(&args.ens)?;
    plan.request.sampling = Sampling::Greedy;
    let max_tokens = args.ens.max_tokens.unwrap_or(16);
    plan.request.max_tokens = max_tokens;
    let mut ens = ensemble_args::build(&plan)?;

    // 1. Direct decoding: a warm-up pass (lazy vocabulary lookups), then the reference.
    let chat = |p: &str| plan.request(Prompt::Chat(vec![Message::user(p)]));
    for p in PROMPTS {
        ens.generate_quiet(&chat(p))?;
    }
    let mut direct = Vec::new();
    let (mut direct_ms, mut direct_n) = (0.0, 0.0);
    for p in PROMPTS {
        let g = ens.generate_quiet(&chat(p))?;
        let rest = g.steps.len().saturating_sub(1) as f64;
        direct_ms += g.timing.ms_per_token * rest;
        direct_n += rest;
        let ids: Vec<Value> = g.members.iter().map(|m| json!(m.ids)).collect();
        direct.push((g.text.clone(), Value::Array(ids)));
    }
    let direct_tps = if direct_ms > 0.0 {
        direct_n * 1e3 / direct_ms
    } else {
        0.0
    };

    // 2. The server, in this process.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = ServeOptions {
        port: 0,
        queue: args.queue,
        template: plan.request.clone(),
        ..ServeOptions::default()
    };
    let server = runtime.block_on(Server::bind(ens, options))?;
    let url = format!("http://{}/v1/chat/completions", server.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let agent = agent();

    // 3. Sequential.
    let mut sequential = Vec::new();
    for (p, (text, ids)) in PROMPTS.iter().zip(&direct) {
        let s = stream_one(&agent, &url, p, max_tokens)?;
        if s.status != 200 || &s.text != text || &s.ids != ids {
            bail!(
                "served output differs from direct decoding for {p:?}: {:?} vs {text:?}",
                s.text
            );
        }
        sequential.push(s);
    }
    let sequential_tps = tokens_per_s(&sequential);

    // 4. Concurrent clients.
    let started = Instant::now();
    let url = Arc::new(url);
    let handles: Vec<_> = (0..args.clients)
        .map(|c| {
            let (agent, url) = (agent.clone(), url.clone());
            let n = args.requests;
            std::thread::spawn(move || -> Result<Vec<(usize, Served)>> {
                (0..n)
                    .map(|r| {
                        let i = (c * n + r) % PROMPTS.len();
                        stream_one(&agent, &url, PROMPTS[i], max_tokens).map(|s| (i, s))
                    })
                    .collect()
            })
        })
        .collect();
    let mut concurrent = Vec::new();
    for h in handles {
        let rows = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        concurrent.extend(rows);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let mut mismatches = 0;
    let mut failed = 0;
    for (i, s) in &concurrent {
        if s.status != 200 {
            failed += 1;
        } else if s.text != sequential[*i].text || s.ids != sequential[*i].ids {
            mismatches += 1;
        }
    }
    let served: Vec<Served> = concurrent.iter().map(|(_, s)| s.clone()).collect();
    let tokens: u64 = served.iter().map(|s| s.tokens).sum();
    let latency: Vec<f64> = served.iter().map(|s| s.latency_ms).collect();
    let ttft: Vec<f64> = served.iter().map(|s| s.ttft_ms).collect();
    let concurrent_tps = tokens_per_s(&served);

    // 5. A burst past the queue: only 200s and 429s, and the 200s are right.
    let burst = args.queue + args.clients + 1;
    let handles: Vec<_> = (0..burst)
        .map(|k| {
            let (agent, url) = (agent.clone(), url.clone());
            std::thread::spawn(move || -> Result<(usize, Served)> {
                let i = k % PROMPTS.len();
                stream_one(&agent, &url, PROMPTS[i], 1).map(|s| (i, s))
            })
        })
        .collect();
    let (mut ok, mut refused, mut other) = (0, 0, 0);
    for h in handles {
        let (i, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a burst thread panicked"))??;
        match s.status {
            200 if sequential[i].text.starts_with(&s.text) => ok += 1,
            200 => mismatches += 1,
            429 => refused += 1,
            _ => other += 1,
        }
    }
    let _ = stop_tx.send(());
    runtime.block_on(serving)??;

    let report = json!({
        "members": plan.specs.iter().map(|s| s.model.clone()).collect::<Vec<_>>(),
        "clients": args.clients,
        "requests_per_client": args.requests,
        "max_tokens": max_tokens,
        "requests": served.len(),
        "failed": failed,
        "mismatches": mismatches,
        "wall_s": wall_s,
        "requests_per_s": served.len() as f64 / wall_s,
        "tokens_per_s_wall": tokens as f64 / wall_s,
        "latency_ms": {"p50": percentile(&latency, 50.0), "p99": percentile(&latency, 99.0)},
        "ttft_ms": {"p50": percentile(&ttft, 50.0), "p99": percentile(&ttft, 99.0)},
        "decode_tokens_per_s": {
            "direct": direct_tps,
            "server_sequential": sequential_tps,
            "server_concurrent": concurrent_tps,
            "ratio_concurrent_to_direct": if direct_tps > 0.0 { concurrent_tps / direct_tps } else { 0.0 },
        },
        "burst": {"sent": burst, "ok": ok, "rate_limited": refused, "other": other},
    });
    if args.json {
        println!("{report}");
    } else {
        let r = &report;
        println!(
            "tutti bench serve: {} clients × {} requests, {} tokens each, queue {}",
            args.clients, args.requests, max_tokens, args.queue
        );
        println!("| quantity | value |\n| --- | --- |");
        println!(
            "| requests (failed, mismatched) | {} ({failed}, {mismatches}) |",
            served.len()
        );
        println!("| wall time | {wall_s:.1} s |");
        println!(
            "| throughput | {:.2} requests/s, {:.1} tokens/s |",
            r["requests_per_s"].as_f64().unwrap_or(0.0),
            r["tokens_per_s_wall"].as_f64().unwrap_or(0.0)
        );
        println!(
            "| latency p50 / p99 | {:.0} / {:.0} ms |",
            percentile(&latency, 50.0),
            percentile(&latency, 99.0)
        );
        println!(
            "| time to first token p50 / p99 | {:.0} / {:.0} ms |",
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0)
        );
        println!("| decode tokens/s: direct / served in sequence / served concurrently | {direct_tps:.1} / {sequential_tps:.1} / {concurrent_tps:.1} |");
        println!(
            "| served concurrently / direct | {:.3} |",
            r["decode_tokens_per_s"]["ratio_concurrent_to_direct"]
                .as_f64()
                .unwrap_or(0.0)
        );
        println!("| burst of {burst}: 200 / 429 / other | {ok} / {refused} / {other} |");
    }
    if failed > 0 || mismatches > 0 || other > 0 || refused == 0 {
        bail!(
            "load test failed: {failed} failed, {mismatches} outputs differ, {other} unexpected statuses, {refused} 429s in the burst"
        );
    }
    Ok(())
}
