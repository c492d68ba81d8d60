//! Counters of the server and their Prometheus text exposition (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::engine::{Generation, Round, StepTime, StopReason};

/// Upper bounds (seconds) of the step-time histogram buckets.
const STEP_BUCKETS: [f64; 10] = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56];

/// Upper bounds of the batch-size histogram buckets (requests per round).
const BATCH_BUCKETS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Everything `/metrics` reports. Updated by the HTTP handlers (requests, queue) and
/// the engine thread (steps, tokens, generations).
#[derive(Default)]
pub struct Metrics {
    /// Responses by (endpoint, HTTP status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Generations by how they ended.
    finished: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests waiting in the queue now, and those holding a place while being read.
    pub queue_depth: AtomicUsize,
    /// Requests the engine skipped because their client had left while they waited.
    pub skipped: AtomicU64,
    /// Requests decoding now.
    pub busy: AtomicUsize,
    /// Bytes of the KV budget taken now.
    pub kv_used: AtomicU64,
    /// The KV budget in bytes (0: none) and the most requests per round.
    kv_budget: AtomicU64,
    max_batch: AtomicUsize,
    rounds: AtomicU64,
    round_requests: AtomicU64,
    /// Microseconds of rounds in batched forwards, and in the requests' own steps.
    round_forward_us: AtomicU64,
    round_steps_us: AtomicU64,
    batch_buckets: [AtomicU64; BATCH_BUCKETS.len()],
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    steps: AtomicU64,
    ensembled_steps: AtomicU64,
    /// Sum of step times in microseconds.
    step_us: AtomicU64,
    step_buckets: [AtomicU64; STEP_BUCKETS.len()],
    rollbacks: AtomicU64,
    rolled_back_tokens: AtomicU64,
}

fn reason_name(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos => "eos",
        StopReason::StopString => "stop_string",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextLength => "context_length",
        StopReason::Cancelled => "cancelled",
    }
}

impl Metrics {
    pub fn count_response(&self, endpoint: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }

    /// One decoding step (called by the engine thread).
    pub fn observe_step(&self, time: &StepTime) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        if time.ensembled {
            self.ensembled_steps.fetch_add(1, Ordering::Relaxed);
        }
        self.step_us
            .fetch_add((time.total_ms * 1e3) as u64, Ordering::Relaxed);
        let s = time.total_ms / 1e3;
        if let Some(i) = STEP_BUCKETS.iter().position(|&b| s <= b) {
            self.step_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The batch's limits, once at start.
    pub fn set_batch_limits(&self, max_batch: usize, kv_budget: Option<u64>) {
        self.max_batch.store(max_batch, Ordering::Relaxed);
        self.kv_budget
            .store(kv_budget.unwrap_or(0), Ordering::Relaxed);
    }

    /// One round of the batch (called by the engine thread).
    pub fn observe_round(&self, round: &Round) {
        let requests = round.stepped + round.prefilling;
        self.round_forward_us
            .fetch_add((round.forward_ms * 1e3) as u64, Ordering::Relaxed);
        self.round_steps_us
            .fetch_add((round.steps_ms * 1e3) as u64, Ordering::Relaxed);
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.round_requests
            .fetch_add(requests as u64, Ordering::Relaxed);
        if let Some(i) = BATCH_BUCKETS.iter().position(|&b| requests <= b) {
            self.batch_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A finished generation (called by the engine thread).
    pub fn observe_generation(&self, g: &Generation) {
        let usage = g.usage();
        self.prompt_tokens
            .fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(usage.completion_tokens as u64, Ordering::Relaxed);
        self.rollbacks
            .fetch_add(g.rollbacks() as u64, Ordering::Relaxed);
        let rolled: usize = g.members.iter().map(|m| m.rolled_back_tokens).sum();
        self.rolled_back_tokens
            .fetch_add(rolled as u64, Ordering::Relaxed);
        if let Ok(mut m) = self.finished.lock() {
            *m.entry(reason_name(g.stop_reason)).or_default() += 1;
        }
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self, queue_capacity: usize) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let requests: Vec<(String, String)> = self
            .requests
            .lock()
            .map(|m| {
                m.iter()
                    .map(|((e, s), n)| {
                        (
                            format!("{{endpoint=\"{e}\",status=\"{s}\"}}"),
                            n.to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "tutti_requests_total",
            "counter",
            "HTTP responses by endpoint and status.",
            requests,
        );
        let finished: Vec<(String, String)> = self
            .finished
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "tutti_generations_total",
            "counter",
            "Generations by how they ended.",
            finished,
        );
        let plain = |v: String| vec![(String::new(), v)];
        metric(
            "tutti_prompt_tokens_total",
            "counter",
            "Prompt tokens (first taking-part member's tokenization).",
            plain(load(&self.prompt_tokens).to_string()),
        );
        metric(
            "tutti_completion_tokens_total",
            "counter",
            "Generated tokens.",
            plain(load(&self.completion_tokens).to_string()),
        );
        metric(
            "tutti_queue_depth",
            "gauge",
            "Requests waiting for the engine (or being read and tokenized to wait).",
            plain(self.queue_depth.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "tutti_queue_capacity",
            "gauge",
            "Most requests that can wait (--queue).",
            plain(queue_capacity.to_string()),
        );
        let running = self.busy.load(Ordering::Relaxed);
        metric(
            "tutti_engine_busy",
            "gauge",
            "Whether the engine is decoding a request (1) or idle (0).",
            plain(usize::from(running > 0).to_string()),
        );
        metric(
            "tutti_running_requests",
            "gauge",
            "Requests decoding now (at most --max-batch).",
            plain(running.to_string()),
        );
        metric(
            "tutti_max_batch",
            "gauge",
            "Most requests decoding together (--max-batch).",
            plain(self.max_batch.load(Ordering::Relaxed).to_string()),
        );
        let buckets = histogram(
            &BATCH_BUCKETS,
            &self.batch_buckets,
            load(&self.round_requests).to_string(),
            load(&self.rounds),
        );
        metric(
            "tutti_batch_size",
            "histogram",
            "Requests per engine round (decoding a step or feeding a prompt chunk).",
            buckets,
        );
        metric(
            "tutti_round_forward_seconds_total",
            "counter",
            "Time of engine rounds in batched forwards (every running request's members together).",
            plain(format!("{}", load(&self.round_forward_us) as f64 / 1e6)),
        );
        metric(
            "tutti_round_steps_seconds_total",
            "counter",
            "Time of engine rounds in the requests' own steps (unbatched forwards, alignment, combination, feedback).",
            plain(format!("{}", load(&self.round_steps_us) as f64 / 1e6)),
        );
        metric(
            "tutti_kv_budget_bytes",
            "gauge",
            "The KV-cache budget (--kv-budget; 0: none).",
            plain(load(&self.kv_budget).to_string()),
        );
        metric(
            "tutti_kv_used_bytes",
            "gauge",
            "KV cache reserved by running requests and member sets kept for prefix reuse.",
            plain(load(&self.kv_used).to_string()),
        );
        metric(
            "tutti_skipped_total",
            "counter",
            "Queued requests dropped because their client left before they started.",
            plain(load(&self.skipped).to_string()),
        );
        let steps = load(&self.steps);
        let ensembled = load(&self.ensembled_steps);
        let buckets = histogram(
            &STEP_BUCKETS,
            &self.step_buckets,
            format!("{}", load(&self.step_us) as f64 / 1e6),
            steps,
        );
        metric(
            "tutti_step_seconds",
            "histogram",
            "Wall time of one decoding step.",
            buckets,
        );
        metric(
            "tutti_ensembled_steps_total",
            "counter",
            "Steps that combined more than one member.",
            plain(ensembled.to_string()),
        );
        metric(
            "tutti_ensembled_share",
            "gauge",
            "Ensembled steps over all steps since the start.",
            plain(if steps == 0 {
                "0".into()
            } else {
                format!("{}", ensembled as f64 / steps as f64)
            }),
        );
        metric(
            "tutti_rollbacks_total",
            "counter",
            "KV-cache rollbacks of members (re-tokenization changed their tail).",
            plain(load(&self.rollbacks).to_string()),
        );
        metric(
            "tutti_rolled_back_tokens_total",
            "counter",
            "Tokens replaced by rollbacks.",
            plain(load(&self.rolled_back_tokens).to_string()),
        );
        out
    }
}

/// A histogram's sample lines: cumulative `_bucket`s by upper bound, `+Inf`, `_sum`
/// and `_count`.
fn histogram<B: std::fmt::Display>(
    bounds: &[B],
    counts: &[AtomicU64],
    sum: String,
    count: u64,
) -> Vec<(String, String)> {
    let mut lines = Vec::with_capacity(bounds.len() + 3);
    let mut cumulative = 0;
    for (b, c) in bounds.iter().zip(counts) {
        cumulative += c.load(Ordering::Relaxed);
        lines.push((format!("_bucket{{le=\"{b}\"}}"), cumulative.to_string()));
    }
    lines.push(("_bucket{le=\"+Inf\"}".into(), count.to_string()));
    lines.push(("_sum".into(), sum));
    lines.push(("_count".into(), count.to_string()));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_cumulative_buckets() {
        let m = Metrics::default();
        m.count_response("/v1/completions", 200);
        m.count_response("/v1/completions", 200);
        m.count_response("/v1/chat/completions", 429);
        for ms in [3.0, 30.0, 3000.0] {
            m.observe_step(&StepTime {
                total_ms: ms,
                ensembled: ms > 10.0,
                ..StepTime::default()
            });
        }
        let text = m.render(64);
        assert!(
            text.contains("tutti_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2")
        );
        assert!(text.contains("status=\"429\"} 1"));
        assert!(text.contains("tutti_step_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("tutti_step_seconds_bucket{le=\"0.04\"} 2"));
        assert!(text.contains("tutti_step_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("tutti_step_seconds_count 3"));
        assert!(text.contains("tutti_queue_capacity 64"));
        m.set_batch_limits(8, Some(1 << 20));
        for n in [1, 3, 3, 9] {
            m.observe_round(&Round {
                stepped: n,
                forward_ms: 2.0,
                steps_ms: 0.5,
                ..Round::default()
            });
        }
        let text = m.render(64);
        assert!(
            text.contains("tutti_batch_size_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("tutti_batch_size_bucket{le=\"4\"} 3"));
        assert!(text.contains("tutti_batch_size_bucket{le=\"16\"} 4"));
        assert!(text.contains("tutti_batch_size_sum 16"));
        assert!(text.contains("tutti_max_batch 8"));
        assert!(text.contains("tutti_kv_budget_bytes 1048576"));
        assert!(
            text.contains("tutti_round_forward_seconds_total 0.008"),
            "{text}"
        );
        assert!(text.contains("tutti_round_steps_seconds_total 0.002"));
        let share = text
            .lines()
            .find_map(|l| l.strip_prefix("tutti_ensembled_share "))
            .unwrap();
        assert!((share.parse::<f64>().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }
}
