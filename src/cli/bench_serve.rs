//! `tutti bench serve`: a load test of the server in one run. The ensemble first decodes
//! the prompts directly (the `tutti generate` path: the reference outputs and decode
//! speed), then serves them on a loopback port, once per `--max-batch` setting: in
//! sequence, then from 1, 4, 8 and 16 concurrent streaming clients (every output must
//! equal the direct one; requests/s, generated tokens/s, latency and time to first
//! token at p50 and p99), then a burst larger than the queue (every answer must be 200
//! or 429). `--vs-llama-server` puts llama-server (`-np N`, the same GGUF and threads)
//! under the same clients.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tutti::engine::{BatchOptions, Message, Prompt, Sampling};
use tutti::serve::{ServeOptions, Server};

use super::ensemble_args::{self, EnsembleArgs};

#[derive(clap::Args, Debug)]
pub struct ServeBenchArgs {
    /// Members and settings (decoding is greedy; --max-tokens is the length of every
    /// answer, default 16).
    #[command(flatten)]
    pub ens: EnsembleArgs,
    /// Concurrent clients, one load per value.
    #[arg(long, alias = "clients", value_delimiter = ',', default_values_t = [1, 4, 8, 16])]
    pub concurrency: Vec<usize>,
    /// Requests per client, one after another.
    #[arg(long, default_value_t = 8)]
    pub requests: usize,
    /// The server's --max-batch, one server per value (`1,8` compares batching with
    /// one request at a time).
    #[arg(long, value_delimiter = ',', default_values_t = [8])]
    pub max_batch: Vec<usize>,
    /// Also load llama-server (`-np` the largest concurrency, the same GGUF and
    /// threads) with the same clients; needs a single-model ensemble.
    #[arg(long)]
    pub vs_llama_server: bool,
    /// The llama-server binary [default: $TUTTI_LLAMA_SERVER, else `llama-server` on
    /// the PATH; scripts/llama-server.sh builds one].
    #[arg(long, value_name = "PATH")]
    pub llama_server: Option<PathBuf>,
    /// The server's queue (the overflow burst sends this many plus the batch plus one).
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
    ttft_ms: f64,
    latency_ms: f64,
    /// Chunks with text.
    chunks: u64,
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
            if !t.is_empty() {
                // A server without tutti's report streams a token per chunk.
                out.chunks += 1;
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
        }
        if let Some(e) = chunk.get("error") {
            bail!("the server answered an error in the stream: {e}");
        }
    }
    out.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
    if out.tokens == 0 {
        out.tokens = out.chunks;
    }
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

/// One load: `clients` concurrent clients, each sending `requests` requests in turn.
struct Load {
    /// (prompt index, what the client saw), in no particular order.
    served: Vec<(usize, Served)>,
    wall_s: f64,
}

fn load(
    agent: &ureq::Agent,
    url: &str,
    clients: usize,
    requests: usize,
    max_tokens: usize,
) -> Result<Load> {
    let started = Instant::now();
    let url: Arc<str> = url.into();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (agent, url) = (agent.clone(), url.clone());
            std::thread::spawn(move || -> Result<Vec<(usize, Served)>> {
                (0..requests)
                    .map(|r| {
                        let i = (c * requests + r) % PROMPTS.len();
                        stream_one(&agent, &url, PROMPTS[i], max_tokens).map(|s| (i, s))
                    })
                    .collect()
            })
        })
        .collect();
    let mut served = Vec::new();
    for h in handles {
        let rows = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        served.extend(rows);
    }
    Ok(Load {
        served,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// The engine's time in batched forwards and in the requests' own steps so far, in
/// seconds, from the server's `/metrics`.
fn round_seconds(agent: &ureq::Agent, metrics_url: &str) -> Result<(f64, f64)> {
    let text = agent
        .get(metrics_url)
        .call()
        .context("reading /metrics")?
        .into_body()
        .read_to_string()
        .context("reading /metrics")?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .with_context(|| format!("no {name} in /metrics"))
    };
    Ok((
        value("tutti_round_forward_seconds_total")?,
        value("tutti_round_steps_seconds_total")?,
    ))
}

/// One line of the report: a server under one concurrency.
fn row(
    server: &str,
    max_batch: Option<usize>,
    clients: usize,
    load: &Load,
    reference: Option<&[(String, Value)]>,
) -> Value {
    let ok: Vec<&(usize, Served)> = load
        .served
        .iter()
        .filter(|(_, s)| s.status == 200)
        .collect();
    let failed = load.served.len() - ok.len();
    let mismatched = reference.map(|r| {
        ok.iter()
            .filter(|(i, s)| s.text != r[*i].0 || s.ids != r[*i].1)
            .count()
    });
    let tokens: u64 = ok.iter().map(|(_, s)| s.tokens).sum();
    let latency: Vec<f64> = ok.iter().map(|(_, s)| s.latency_ms).collect();
    let ttft: Vec<f64> = ok.iter().map(|(_, s)| s.ttft_ms).collect();
    json!({
        "server": server,
        "max_batch": max_batch,
        "clients": clients,
        "requests": load.served.len(),
        "failed": failed,
        "mismatched": mismatched,
        "wall_s": load.wall_s,
        "requests_per_s": load.served.len() as f64 / load.wall_s,
        "tokens_per_s": tokens as f64 / load.wall_s,
        "latency_ms": {"p50": percentile(&latency, 50.0), "p99": percentile(&latency, 99.0)},
        "ttft_ms": {"p50": percentile(&ttft, 50.0), "p99": percentile(&ttft, 99.0)},
    })
}

/// A llama-server serving one GGUF on a loopback port; killed when dropped.
struct LlamaServer {
    child: Child,
    url: String,
    repacked: bool,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn llama_server_bin(given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given
        .cloned()
        .or_else(|| std::env::var_os("TUTTI_LLAMA_SERVER").map(PathBuf::from))
    {
        if !p.exists() {
            bail!("llama-server {} does not exist: build it with scripts/llama-server.sh and pass --llama-server PATH", p.display());
        }
        return Ok(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("llama-server"))
            .find(|p| p.is_file())
    });
    found.context("no llama-server found: build one with scripts/llama-server.sh and pass --llama-server PATH (or set TUTTI_LLAMA_SERVER)")
}

impl LlamaServer {
    /// Starts llama-server with llama.cpp's defaults (weights repacked for this CPU);
    /// where that build crashes at start-up, once more with `--no-repack`, saying so.
    fn start(
        bin: &PathBuf,
        gguf: &str,
        slots: usize,
        threads: usize,
        ctx_per_slot: usize,
    ) -> Result<LlamaServer> {
        match Self::try_start(bin, gguf, slots, threads, ctx_per_slot, true) {
            Ok(s) => Ok(s),
            Err(e) => {
                eprintln!("llama-server did not start with weight repacking ({e:#}); starting it with --no-repack");
                Self::try_start(bin, gguf, slots, threads, ctx_per_slot, false)
            }
        }
    }

    fn try_start(
        bin: &PathBuf,
        gguf: &str,
        slots: usize,
        threads: usize,
        ctx_per_slot: usize,
        repack: bool,
    ) -> Result<LlamaServer> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "-m",
            gguf,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-webui",
        ])
        .args(["-np", &slots.to_string(), "-t", &threads.to_string()])
        .args(["-c", &(ctx_per_slot * slots).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if !repack {
            cmd.arg("--no-repack");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("llama-server's stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(Ok(addr));
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            let _ = tx.send(Err(tail.join("\n")));
        });
        let mut server = LlamaServer {
            child,
            url: String::new(),
            repacked: repack,
        };
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(tail)) => bail!("llama-server ended at start-up:\n{tail}"),
            Err(_) => bail!("llama-server did not report its address within 120 s"),
        };
        server.url = format!("http://{addr}/v1/chat/completions");
        let health = format!("http://{addr}/health");
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("llama-server ended while loading the model ({status})");
            }
            let ok = agent().get(&health).call().is_ok_and(|r| r.status() == 200);
            if ok {
                return Ok(server);
            }
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("llama-server's /health did not answer 200 within 300 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn print_table(rows: &[Value]) {
    println!("| server | clients | requests (failed, mismatched) | requests/s | tokens/s | latency p50 / p99 | TTFT p50 / p99 | steps' share |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        let name = match r["max_batch"].as_u64() {
            Some(b) => format!("{} --max-batch {b}", r["server"].as_str().unwrap_or("")),
            None => r["server"].as_str().unwrap_or("").to_string(),
        };
        let mismatched = match r["mismatched"].as_u64() {
            Some(m) => m.to_string(),
            None => "–".into(),
        };
        let share = match r["steps_share"].as_f64() {
            Some(x) => format!("{:.1}%", 100.0 * x),
            None => "–".into(),
        };
        println!(
            "| {name} | {} | {} ({}, {mismatched}) | {:.2} | {:.1} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {share} |",
            r["clients"], r["requests"], r["failed"],
            f(&r["requests_per_s"]), f(&r["tokens_per_s"]),
            f(&r["latency_ms"]["p50"]), f(&r["latency_ms"]["p99"]),
            f(&r["ttft_ms"]["p50"]), f(&r["ttft_ms"]["p99"]),
        );
    }
    if rows.iter().any(|r| r["steps_share"].is_number()) {
        println!(
            "steps' share: of the engine's round time, the part outside the batched forwards \
             (forwards the batch could not take, then each request's alignment, combination \
             and feedback)"
        );
    }
}

pub fn run(args: ServeBenchArgs) -> Result<()> {
    if args.concurrency.contains(&0) || args.concurrency.is_empty() || args.requests == 0 {
        bail!("--concurrency values and --requests must be at least 1");
    }
    if args.max_batch.contains(&0) || args.max_batch.is_empty() {
        bail!("--max-batch values must be at least 1");
    }
    let most_clients = args.concurrency.iter().copied().max().unwrap_or(1);
    let least_batch = args.max_batch.iter().copied().min().unwrap_or(1);
    if most_clients > args.queue + least_batch {
        bail!(
            "{most_clients} clients need --queue {} or more at --max-batch {least_batch} (else some get 429); raise --queue",
            most_clients - least_batch
        );
    }
    let mut plan = ensemble_args::plan(&args.ens)?;
    plan.request.sampling = Sampling::Greedy;
    let max_tokens = args.ens.max_tokens.unwrap_or(16);
    plan.request.max_tokens = max_tokens;
    if args.vs_llama_server && plan.specs.len() != 1 {
        bail!(
            "--vs-llama-server compares one model: give a single -m (llama-server serves one GGUF)"
        );
    }
    let llama_bin = match args.vs_llama_server {
        true => Some(llama_server_bin(args.llama_server.as_ref())?),
        false => None,
    };
    let mut first = Some(ensemble_args::build(&plan)?);

    // 1. Direct decoding: a warm-up pass (lazy vocabulary lookups), then the reference.
    let chat = |p: &str| plan.request(Prompt::Chat(vec![Message::user(p)]));
    let mut direct = Vec::new();
    let (mut direct_ms, mut direct_n) = (0.0, 0.0);
    if let Some(ens) = first.as_mut() {
        for p in PROMPTS {
            ens.generate_quiet(&chat(p))?;
        }
        for p in PROMPTS {
            let g = ens.generate_quiet(&chat(p))?;
            let rest = g.steps.len().saturating_sub(1) as f64;
            direct_ms += g.timing.ms_per_token * rest;
            direct_n += rest;
            let ids: Vec<Value> = g.members.iter().map(|m| json!(m.ids)).collect();
            direct.push((g.text.clone(), Value::Array(ids)));
        }
    }
    let direct_tps = if direct_ms > 0.0 {
        direct_n * 1e3 / direct_ms
    } else {
        0.0
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let agent = agent();
    let mut rows = Vec::new();
    let (mut bad, mut bursts) = (Vec::new(), Vec::new());
    for &max_batch in &args.max_batch {
        let ens = match first.take() {
            Some(e) => e,
            None => ensemble_args::build(&plan)?,
        };
        let defaults = ServeOptions::default();
        let options = ServeOptions {
            port: 0,
            queue: args.queue,
            template: plan.request.clone(),
            batch: BatchOptions {
                max_batch,
                ..defaults.batch.clone()
            },
            ..defaults
        };
        let server = runtime.block_on(Server::bind(ens, options))?;
        let url = format!("http://{}/v1/chat/completions", server.local_addr());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = runtime.spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        // In sequence: each answer equals direct decoding.
        for (p, (text, ids)) in PROMPTS.iter().zip(&direct) {
            let s = stream_one(&agent, &url, p, max_tokens)?;
            if s.status != 200 || &s.text != text || &s.ids != ids {
                bail!(
                    "served output (--max-batch {max_batch}) differs from direct decoding for {p:?}: {:?} vs {text:?}",
                    s.text
                );
            }
        }
        let metrics_url = url.replace("/v1/chat/completions", "/metrics");
        for &clients in &args.concurrency {
            eprintln!(
                "tutti --max-batch {max_batch}: {clients} clients × {} requests",
                args.requests
            );
            let before = round_seconds(&agent, &metrics_url)?;
            let l = load(&agent, &url, clients, args.requests, max_tokens)?;
            let after = round_seconds(&agent, &metrics_url)?;
            let mut r = row("tutti", Some(max_batch), clients, &l, Some(&direct));
            let (forward, steps) = (after.0 - before.0, after.1 - before.1);
            if forward + steps > 0.0 {
                r["steps_share"] = json!(steps / (forward + steps));
            }
            if r["failed"].as_u64() != Some(0) || r["mismatched"].as_u64() != Some(0) {
                bad.push(format!(
                    "--max-batch {max_batch}, {clients} clients: {} failed, {} mismatched",
                    r["failed"], r["mismatched"]
                ));
            }
            rows.push(r);
        }
        // A burst past the batch and the queue, all at once: only 200s and 429s, and
        // the 200s are right. Full-length answers keep the first ones running while
        // the last arrive.
        let burst = args.queue + max_batch + 1;
        let handles: Vec<_> = (0..burst)
            .map(|k| {
                let (agent, url) = (agent.clone(), url.clone());
                std::thread::spawn(move || -> Result<(usize, Served)> {
                    let i = k % PROMPTS.len();
                    stream_one(&agent, &url, PROMPTS[i], max_tokens).map(|s| (i, s))
                })
            })
            .collect();
        let (mut ok, mut refused, mut other) = (0, 0, 0);
        for h in handles {
            let (i, s) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a burst thread panicked"))??;
            match s.status {
                200 if direct[i].0 == s.text => ok += 1,
                200 => other += 1,
                429 => refused += 1,
                _ => other += 1,
            }
        }
        if other > 0 || refused == 0 {
            bad.push(format!("--max-batch {max_batch}: burst of {burst} gave {other} unexpected answers and {refused} 429s"));
        }
        bursts.push(json!({"max_batch": max_batch, "sent": burst, "ok": ok, "rate_limited": refused, "other": other}));
        let _ = stop_tx.send(());
        runtime.block_on(serving)??;
    }

    let mut llama = None;
    if let Some(bin) = &llama_bin {
        let largest = args.concurrency.iter().copied().max().unwrap_or(1);
        let threads = tutti::models::threads();
        let ctx = 512.max(max_tokens + 256);
        let server = LlamaServer::start(bin, &plan.specs[0].model, largest, threads, ctx)?;
        llama = Some(json!({"slots": largest, "threads": threads, "repacked": server.repacked}));
        for &clients in &args.concurrency {
            eprintln!(
                "llama-server -np {largest}: {clients} clients × {} requests",
                args.requests
            );
            let l = load(&agent, &server.url, clients, args.requests, max_tokens)?;
            let r = row(
                &format!("llama-server -np {largest}"),
                None,
                clients,
                &l,
                None,
            );
            if r["failed"].as_u64() != Some(0) {
                bad.push(format!(
                    "llama-server, {clients} clients: {} failed",
                    r["failed"]
                ));
            }
            rows.push(r);
        }
    }

    let report = json!({
        "members": plan.specs.iter().map(|s| s.model.clone()).collect::<Vec<_>>(),
        "threads": tutti::models::threads(),
        "requests_per_client": args.requests,
        "max_tokens": max_tokens,
        "direct_decode_tokens_per_s": direct_tps,
        "runs": rows,
        "bursts": bursts,
        "llama_server": llama,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "tutti bench serve: {} requests per client, {max_tokens} tokens each, {} threads; direct decoding {direct_tps:.1} tokens/s",
            args.requests,
            tutti::models::threads()
        );
        print_table(&rows);
        for b in &bursts {
            println!(
                "burst of {} at --max-batch {}: 200 / 429 / other = {} / {} / {}",
                b["sent"], b["max_batch"], b["ok"], b["rate_limited"], b["other"]
            );
        }
    }
    if !bad.is_empty() {
        bail!("load test failed: {}", bad.join("; "));
    }
    Ok(())
}
