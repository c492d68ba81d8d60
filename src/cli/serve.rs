//! `tutti serve`: the ensemble behind an OpenAI-compatible HTTP API (see `tutti::serve`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tutti::engine::BatchOptions;
use tutti::serve::{ServeOptions, Server};

use super::ensemble_args::{self, EnsembleArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Members and the settings every request starts from (a request's own
    /// temperature, top_p, seed, stop and max_tokens override them).
    #[command(flatten)]
    pub ens: EnsembleArgs,
    /// Address to listen on; anything but loopback exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the log line says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY`. A key given here shows in the process list
    /// of every user of the machine: prefer --api-key-file or the TUTTI_API_KEY
    /// environment variable (used when neither flag is given).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Require `Authorization: Bearer KEY` with the key read from FILE (surrounding
    /// whitespace and the final newline are not part of it).
    #[arg(long, value_name = "FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// Model name clients use [default: the members' names joined by `+`].
    #[arg(long)]
    pub name: Option<String>,
    /// Requests that may wait for room in the batch; more get 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Most requests decoding together (1: one at a time). Each round feeds every
    /// member once over the new tokens of all of them.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_batch: u64,
    /// Prompt tokens fed per member and round while other requests decode, so that a
    /// long prompt never stalls running streams (0: whole prompts).
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// KV-cache budget: positions of the whole ensemble (`8192`), or a size (`512MiB`,
    /// `2GiB`). A request that does not fit waits; one that never can gets 503.
    /// [default: a quarter of the memory available at start]
    #[arg(long, value_parser = parse_kv_budget)]
    pub kv_budget: Option<KvBudget>,
    /// Most tokens one request may ask for.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_cap: usize,
    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// Seconds accepted requests may still run after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,
}

/// `--kv-budget`: ensemble positions or bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvBudget {
    Tokens(u64),
    Bytes(u64),
}

impl KvBudget {
    /// Bytes, with `per_token` bytes per position of the whole ensemble.
    pub fn bytes(self, per_token: u64) -> u64 {
        match self {
            KvBudget::Tokens(t) => t.saturating_mul(per_token),
            KvBudget::Bytes(b) => b,
        }
    }
}

fn parse_kv_budget(s: &str) -> std::result::Result<KvBudget, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("`{s}` is not a KV budget: give tokens (8192) or a size (512MiB, 2GiB)")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => return Ok(KvBudget::Tokens(n)),
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use KiB, MiB or GiB, or no unit for tokens"
            ))
        }
    };
    if n == 0 {
        return Err("the KV budget must be above 0".into());
    }
    Ok(KvBudget::Bytes(n.saturating_mul(scale)))
}

/// Completes on the first SIGINT or SIGTERM, and from then on a second one ends the
/// process at once (status 128 + the signal), without waiting for the drain.
async fn shutdown_signal() {
    let _ = next_signal().await;
    tokio::spawn(async {
        let signal = next_signal().await;
        tracing::warn!("second signal: exiting now, without waiting for the running requests");
        std::process::exit(128 + signal);
    });
}

/// Waits for SIGINT or SIGTERM; returns the signal's number.
async fn next_signal() -> i32 {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => 2,
        _ = term => 15,
    }
}

/// The API key: `--api-key-file`, `--api-key` (with a warning: it shows in `ps`), or the
/// TUTTI_API_KEY environment variable; none when none is given.
fn api_key(args: &ServeArgs) -> Result<Option<String>> {
    if let Some(path) = &args.api_key_file {
        return read_key_file(path).map(Some);
    }
    if let Some(key) = args.api_key.as_deref().filter(|k| !k.is_empty()) {
        tracing::warn!(
            "the key given with --api-key shows in the process list (ps) to every user of \
             this machine; pass it with --api-key-file FILE or the TUTTI_API_KEY variable"
        );
        return Ok(Some(key.to_string()));
    }
    Ok(std::env::var("TUTTI_API_KEY")
        .ok()
        .filter(|k| !k.is_empty()))
}

fn read_key_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--api-key-file {}: cannot read the key", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        bail!(
            "--api-key-file {}: the file is empty; write the key into it",
            path.display()
        );
    }
    Ok(key.to_string())
}

pub fn run(args: ServeArgs) -> Result<()> {
    let host: IpAddr = args.host.parse().with_context(|| {
        format!(
            "--host `{}` is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)",
            args.host
        )
    })?;
    let api_key = api_key(&args)?;
    if args.max_tokens_cap == 0 {
        bail!("--max-tokens-cap must be at least 1");
    }
    let plan = ensemble_args::plan(&args.ens)?;
    let mut template = plan.request.clone();
    template.max_tokens = template.max_tokens.min(args.max_tokens_cap);
    let ens = ensemble_args::build(&plan)?;
    let per_token: u64 = ens.members().iter().map(|m| m.kv_bytes_per_token()).sum();
    // Served members keep their caches on their servers: with no local member there is
    // nothing for a budget to bound.
    let kv_budget = (per_token > 0).then(|| match args.kv_budget {
        Some(b) => b.bytes(per_token),
        None => tutti::serve::default_kv_budget(),
    });
    if kv_budget == Some(0) {
        bail!("--kv-budget must be above 0");
    }
    if let Some((budget, positions)) = kv_budget.and_then(|b| Some((b, b.checked_div(per_token)?)))
    {
        tracing::info!(
            "KV budget {:.0} MiB: {positions} positions of the whole ensemble ({per_token} bytes each){}",
            budget as f64 / 1048576.0,
            if args.kv_budget.is_none() {
                " (a quarter of the memory available; --kv-budget sets it)"
            } else {
                ""
            }
        );
    }
    let options = ServeOptions {
        host,
        port: args.port,
        name: args.name.clone(),
        api_key: api_key.clone(),
        queue: args.queue,
        batch: BatchOptions {
            max_batch: args.max_batch as usize,
            prefill_chunk: (args.prefill_chunk > 0).then_some(args.prefill_chunk),
            kv_budget,
        },
        max_tokens_cap: args.max_tokens_cap,
        max_body_bytes: args.max_body_bytes,
        drain: Duration::from_secs(args.drain_seconds),
        seed: args.ens.seed,
        template,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The HTTP side only parses, tokenizes and copies bytes; the cores belong to
        // the engine thread.
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async move {
        let server = Server::bind(ens, options).await?;
        let addr = server.local_addr();
        if !host.is_loopback() && api_key.is_none() {
            tracing::warn!(
                "listening on {host} without an API key: anyone who can reach this address can use the server (--api-key-file)"
            );
        }
        tracing::info!(
            "serving `{}` on http://{addr} (OpenAI API at http://{addr}/v1; batch {}, queue {}, max_tokens cap {}{})",
            server.model_name(),
            args.max_batch,
            args.queue,
            args.max_tokens_cap,
            if api_key.is_some() { ", API key required" } else { "" }
        );
        server.run(shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok::<(), anyhow::Error>(())
    });
    // The server has given up waiting for an engine thread stuck in a step; dropping
    // the runtime would wait for it again.
    runtime.shutdown_background();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_budgets_parse_as_tokens_or_sizes() {
        assert_eq!(parse_kv_budget("8192"), Ok(KvBudget::Tokens(8192)));
        assert_eq!(parse_kv_budget("512MiB"), Ok(KvBudget::Bytes(512 << 20)));
        assert_eq!(parse_kv_budget("2GiB"), Ok(KvBudget::Bytes(2 << 30)));
        assert_eq!(parse_kv_budget("2g"), Ok(KvBudget::Bytes(2 << 30)));
        assert!(parse_kv_budget("2TB").unwrap_err().contains("unknown unit"));
        assert!(parse_kv_budget("lots")
            .unwrap_err()
            .contains("not a KV budget"));
        assert!(parse_kv_budget("0MiB").is_err());
        assert_eq!(KvBudget::Tokens(10).bytes(7), 70);
    }
}
