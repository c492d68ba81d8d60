//! Served members on loopback against the all-local demo pair (harness-free bench).
//!
//! Greedy, 32 tokens per prompt, four prompts, release build. Configurations, measured
//! in one run and interleaved by prompt so that load drifts hit all of them alike:
//! all local; SmolLM2 on llama-server (native endpoint) with Gemma local; both on
//! llama-servers; each served configuration without lookahead, with lookahead 4 and
//! with `lookahead = auto` (up to 4, asked for when measured to pay). Prints
//! ms/token (the prefill step excluded), its ratio to all-local, round trips per
//! generated token and how many texts equal the all-local text.
//!
//! Then the estimate of ids outside a sparse top-N: over the all-local pair's steps,
//! each member's candidates that the other member lacks in its top-10 are scored by
//! each rule and compared with the member's true probability.
//!
//! `cargo bench --bench remote` (needs the demo models and `scripts/llama-server.sh`);
//! `-- --server-threads N` sets each llama-server's threads (default 2; on a 2-core
//! machine the served members compete with the local one for the same cores);
//! `-- sparse` runs only the tail-estimate comparison. `cargo test --bench remote`
//! (as `cargo test --all-targets` does) runs the same code at smoke size: 8 tokens, one
//! prompt, no warm-up, servers with one thread.

#[path = "../tests/remote_support/mod.rs"]
mod remote_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use remote_support::{demo, LlamaServer, GEMMA, PROMPTS, SMOL};
use tutti::engine::{Backend, Ensemble, Event, Flow, Generation, Logits, MemberSpec, Request};
use tutti::vocab::Vocab;
use tutti_models::{DeviceSpec, ModelTokenizer};

const LOOKAHEAD: usize = 4;

/// What one run measures: the full bench under `cargo bench`, a smoke-sized run of the
/// same code under `cargo test` (no `--bench` argument).
struct Plan {
    tokens: usize,
    prompts: usize,
    server_threads: usize,
    /// A warm-up generation per configuration before the timed ones.
    warm_up: bool,
}

impl Plan {
    fn from_args() -> Result<Plan, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        let mut plan = if full {
            Plan {
                tokens: 32,
                prompts: 4,
                server_threads: 2,
                warm_up: true,
            }
        } else {
            Plan {
                tokens: 8,
                prompts: 1,
                server_threads: 1,
                warm_up: false,
            }
        };
        if let Some(i) = args.iter().position(|a| a == "--server-threads") {
            plan.server_threads = args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .ok_or("--server-threads takes a positive number")?;
        }
        Ok(plan)
    }
}

#[derive(Default)]
struct Totals {
    tokens: usize,
    ms: f64,
    trips: usize,
    generated: usize,
    same: usize,
    texts: usize,
}

fn add(t: &mut Totals, g: &Generation, reference: Option<&str>) {
    for s in g.steps.iter().skip(1) {
        t.tokens += 1;
        t.ms += s.total_ms;
    }
    t.generated += g.steps.len();
    t.trips += g
        .members
        .iter()
        .filter_map(|m| m.round_trips)
        .sum::<usize>();
    if let Some(r) = reference {
        t.texts += 1;
        t.same += usize::from(g.text == r);
    }
}

fn local(name: &str) -> MemberSpec {
    MemberSpec::new(demo(name)).device(DeviceSpec::Cpu)
}

fn served(server: &LlamaServer, tokenizer: &str, lookahead: usize) -> MemberSpec {
    MemberSpec::new(server.native())
        .tokenizer(demo(tokenizer))
        .lookahead(lookahead)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `-- sparse`: only the tail-estimate comparison (no servers).
    let plan = Plan::from_args()?;
    if std::env::args().any(|a| a == "sparse") {
        return sparse_rules(&plan);
    }
    let smol_server = LlamaServer::start(SMOL, plan.server_threads);
    let gemma_server = LlamaServer::start(GEMMA, plan.server_threads);
    let build = |specs: Vec<MemberSpec>| {
        let mut b = Ensemble::builder();
        for s in specs {
            b = b.member(s);
        }
        b.build()
    };
    let mut configs: Vec<(String, Ensemble)> = vec![
        (
            "all local".into(),
            build(vec![local(SMOL), local(GEMMA).weight(0.5)])?,
        ),
        (
            "SmolLM2 served".into(),
            build(vec![
                served(&smol_server, SMOL, 0),
                local(GEMMA).weight(0.5),
            ])?,
        ),
        (
            format!("SmolLM2 served, lookahead {LOOKAHEAD}"),
            build(vec![
                served(&smol_server, SMOL, LOOKAHEAD),
                local(GEMMA).weight(0.5),
            ])?,
        ),
        (
            "SmolLM2 served, lookahead auto".into(),
            build(vec![
                served(&smol_server, SMOL, 0).lookahead_auto(LOOKAHEAD),
                local(GEMMA).weight(0.5),
            ])?,
        ),
        (
            "both served".into(),
            build(vec![
                served(&smol_server, SMOL, 0),
                served(&gemma_server, GEMMA, 0).weight(0.5),
            ])?,
        ),
        (
            format!("both served, lookahead {LOOKAHEAD}"),
            build(vec![
                served(&smol_server, SMOL, LOOKAHEAD),
                served(&gemma_server, GEMMA, LOOKAHEAD).weight(0.5),
            ])?,
        ),
        (
            "both served, lookahead auto".into(),
            build(vec![
                served(&smol_server, SMOL, 0).lookahead_auto(LOOKAHEAD),
                served(&gemma_server, GEMMA, 0)
                    .lookahead_auto(LOOKAHEAD)
                    .weight(0.5),
            ])?,
        ),
    ];
    let request = |p: &str| Request::raw(p).max_tokens(plan.tokens);
    // Warm-up: first forwards allocate buffers, servers load their caches.
    if plan.warm_up {
        for (_, ens) in configs.iter_mut() {
            ens.generate_quiet(&request(PROMPTS[0]))?;
        }
    }
    let mut totals: Vec<Totals> = configs.iter().map(|_| Totals::default()).collect();
    let mut reference: HashMap<&str, String> = HashMap::new();
    for p in &PROMPTS[..plan.prompts] {
        for (i, (_, ens)) in configs.iter_mut().enumerate() {
            let g = ens.generate_quiet(&request(p))?;
            if i == 0 {
                reference.insert(p, g.text.clone());
            }
            let r = reference.get(p).map(String::as_str);
            add(&mut totals[i], &g, (i > 0).then_some(r).flatten());
        }
    }
    let base = totals[0].ms / totals[0].tokens.max(1) as f64;
    println!("| configuration | ms/token | × all-local | round trips/token | same text |");
    println!("|---|---|---|---|---|");
    for ((name, _), t) in configs.iter().zip(&totals) {
        let ms = t.ms / t.tokens.max(1) as f64;
        let trips = if t.trips == 0 {
            "–".to_string()
        } else {
            format!("{:.2}", t.trips as f64 / t.generated.max(1) as f64)
        };
        let same = if t.texts == 0 {
            "–".to_string()
        } else {
            format!("{}/{}", t.same, t.texts)
        };
        println!("| {name} | {ms:.1} | {:.2} | {trips} | {same} |", ms / base);
    }
    drop(configs);
    drop((smol_server, gemma_server));
    println!(
        "(greedy, {} tokens × {} prompts, llama-server with {} thread(s) each)",
        plan.tokens, plan.prompts, plan.server_threads
    );
    sparse_rules(&plan)?;
    Ok(())
}

/// Ways to score an id outside the listed top-N, given the unlisted mass `rest` over
/// `n_rest` ids and the smallest listed probability `floor`.
/// An estimate from (unlisted mass, unlisted ids, smallest listed probability).
type Rule = fn(f64, f64, f64) -> f64;

const RULES: [(&str, Rule); 4] = [
    ("even share, capped at the floor", |rest, n, floor| {
        (rest / n).min(floor)
    }),
    ("even share", |rest, n, _| rest / n),
    ("the floor", |_, _, floor| floor),
    ("zero", |_, _, _| 0.0),
];

const TOP_N: usize = 10;

/// A local member that keeps its last dense row for the comparison.
struct Recording {
    inner: Box<dyn Backend>,
    last: Arc<Mutex<Option<Arc<[f32]>>>>,
}

impl Backend for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn tokenizer(&self) -> &ModelTokenizer {
        self.inner.tokenizer()
    }
    fn logit_width(&self) -> usize {
        self.inner.logit_width()
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn forward(&mut self, context: &[u32], cached: usize) -> tutti::engine::Result<Logits> {
        let out = self.inner.forward(context, cached)?;
        if let Logits::Host(row) = &out {
            *self.last.lock().unwrap() = Some(row.clone());
        }
        Ok(out)
    }
    fn uses_host_cpu(&self) -> bool {
        true
    }
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
}

/// Softmax probabilities of a row.
fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = row.iter().map(|&l| f64::from(l - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// At every step of the all-local pair, the union candidates (among the combined top
/// 20) that a member did not list in its top-10 but has as a token of the same bytes:
/// each rule's estimate of that token's probability against the member's true one.
fn sparse_rules(plan: &Plan) -> Result<(), Box<dyn std::error::Error>> {
    let mut lasts = Vec::new();
    let mut vocabs = Vec::new();
    let mut b = Ensemble::builder();
    for (name, w) in [(SMOL, 1.0), (GEMMA, 0.5)] {
        let inner = local(name).load()?;
        let t = inner.tokenizer();
        vocabs.push(Vocab::from_tokenizer(
            t.inner(),
            t.eos_ids(),
            Some(inner.logit_width()),
        )?);
        let last = Arc::new(Mutex::new(None));
        lasts.push(last.clone());
        b = b.backend(Box::new(Recording { inner, last }), w);
    }
    let mut ens = b.build()?;
    // (sum of |estimate − truth|, sum of |log ratio|) per rule, and the count.
    let mut err = [(0.0f64, 0.0f64); RULES.len()];
    let (mut cases, mut truth_sum) = (0usize, 0.0f64);
    let prompts = if plan.prompts < 4 { 2 } else { PROMPTS.len() };
    for p in &PROMPTS[..prompts] {
        let request = Request::raw(*p).max_tokens(plan.tokens).alternatives(20);
        let mut sink = |e: &Event| {
            let Event::Step(step) = e else {
                return Flow::Continue;
            };
            for (me, vocab) in vocabs.iter().enumerate() {
                let Some(row) = lasts[me].lock().unwrap().clone() else {
                    continue;
                };
                let probs = softmax(&row);
                let mut top: Vec<u32> = (0..probs.len() as u32)
                    .filter(|&i| vocab.is_candidate(i))
                    .collect();
                top.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
                top.truncate(TOP_N);
                let listed: f64 = top.iter().map(|&i| probs[i as usize]).sum();
                let floor = top.last().map_or(0.0, |&i| probs[i as usize]);
                let n_rest = (vocab.logit_width() - top.len()).max(1) as f64;
                for c in &step.alternatives {
                    if c.eos || c.proposers.iter().any(|&(s, _)| s == me) {
                        continue;
                    }
                    let Some(id) = vocab.id_of(&c.bytes) else {
                        continue;
                    };
                    if top.contains(&id) {
                        continue;
                    }
                    let truth = probs[id as usize];
                    cases += 1;
                    truth_sum += truth;
                    for (r, (_, rule)) in RULES.iter().enumerate() {
                        let est = rule(1.0 - listed, n_rest, floor);
                        err[r].0 += (est - truth).abs();
                        err[r].1 += (est.max(1e-12) / truth.max(1e-12)).ln().abs();
                    }
                }
            }
            Flow::Continue
        };
        ens.generate(&request, &mut sink)?;
    }
    let n = cases.max(1) as f64;
    println!();
    println!(
        "Union candidates outside a member's top-{TOP_N} ({cases} cases over {} prompts, mean \
         true probability {:.4}):",
        prompts,
        truth_sum / n
    );
    println!("| rule | mean abs error | mean abs log ratio |");
    println!("|---|---|---|");
    for ((name, _), (abs, log)) in RULES.iter().zip(err) {
        println!("| {name} | {:.5} | {:.2} |", abs / n, log / n);
    }
    Ok(())
}
