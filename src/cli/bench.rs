//! `tutti bench`: run every member alone and the ensemble on the same items and print
//! them side by side (see `tutti::bench`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use tutti::bench::bert::{BertScorer, Encoder, DEFAULT_LAYER, DEFAULT_MODEL};
use tutti::bench::report::{self, SystemSummary};
use tutti::bench::runner::{self, ResultsFile, System};
use tutti::bench::{gsm8k, mixinstruct, qa, PromptMode, Task};
use tutti::engine::{Ensemble, Request};

use super::ensemble_args::{self, EnsembleArgs};
use super::progress::Reporter;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub task: BenchTask,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchTask {
    /// GSM8K math word problems: few-shot chain of thought, exact match of the final number.
    Gsm8k(Gsm8kArgs),
    /// MixInstruct instructions: ROUGE-L and BERTScore against the reference output.
    Mixinstruct(MixArgs),
    /// Short-answer open QA (TriviaQA / NQ style): few-shot, normalised exact match.
    Qa(QaArgs),
    /// Multiple choice scored by log-likelihood (OLMES tasks, MMLU, or a JSONL file):
    /// each member, the token-level and the sequence-level ensemble side by side.
    Mc(super::bench_mc::McArgs),
    /// Prefill/decode speed of members alone and as an ensemble (real or random weights).
    Speed(super::bench_speed::SpeedArgs),
    /// Load test of `tutti serve`: concurrent clients, latency, throughput, queue overflow.
    Serve(super::bench_serve::ServeBenchArgs),
}

/// Options every task shares.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Score only the first N items (after --shuffle).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Shuffle the items with --seed before --limit.
    #[arg(long)]
    pub shuffle: bool,
    /// Also run every member alone on the same items (a single -m always runs alone).
    #[arg(long)]
    pub members_too: bool,
    /// Append one JSON row per item and system to this file; rerunning with the same
    /// file skips what it already holds (resume).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a Markdown report with the table and an SVG plot (same name, .svg).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Adds a weak member: the `tiny` shape with random weights (seed 1) and this
    /// tokenizer.json (its vocabulary widened to the tokenizer's), after the -m members.
    #[arg(long, value_name = "TOKENIZER")]
    pub weak_member: Option<PathBuf>,
    /// Skip the first N items (after --shuffle; e.g. those a route policy trained on).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Decode this many items at once (one batched forward per member and step for all
    /// of them); the rows are the ones --batch 1 gives.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub batch: u64,
    /// ensemble: members and the token-level ensemble; route: also one route system per
    /// --policy, in the same table, with every member alone.
    #[arg(long, default_value = "ensemble", value_parser = ["ensemble", "route"])]
    pub mode: String,
    #[command(flatten)]
    pub route: super::route::RouteOptions,
    /// Members and ensemble settings, as for `tutti generate` (decoding is greedy;
    /// --seed seeds the shot draw and --shuffle).
    #[command(flatten)]
    pub ens: EnsembleArgs,
}

#[derive(clap::Args, Debug)]
pub struct Gsm8kArgs {
    /// A JSONL/Parquet file of {"question", "answer": "... #### N"} rows, or hf:openai/gsm8k.
    #[arg(long)]
    pub data: String,
    /// Split to read from a hub dataset (and the id prefix).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Train rows for the worked examples [default: train.jsonl beside --data, or the
    /// hub dataset's train split].
    #[arg(long)]
    pub train: Option<String>,
    /// Worked examples in front of every question.
    #[arg(long, default_value_t = gsm8k::DEFAULT_SHOTS)]
    pub shots: usize,
    /// Give every member the prompt raw, even chat models.
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct MixArgs {
    /// A JSONL file in MixInstruct's format, or hf:llm-blender/mix-instruct.
    #[arg(long)]
    pub data: String,
    /// Split to read from the hub dataset (train, val, test).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// BERTScore encoder: a folder (config.json, model.safetensors, tokenizer.json) or
    /// hf:ORG/NAME; offline it must be a local folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub bertscore_model: String,
    /// Encoder layer whose token states are compared.
    #[arg(long, default_value_t = DEFAULT_LAYER)]
    pub bertscore_layer: usize,
    /// Score with ROUGE-L only.
    #[arg(long)]
    pub no_bertscore: bool,
    /// Give every member the prompt raw, even chat models.
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct QaArgs {
    /// JSONL/JSON/Parquet rows: {"question", "answers": [...]}, TriviaQA or NQ-open fields.
    #[arg(long)]
    pub data: String,
    /// Worked examples from this file instead of the first rows of --data.
    #[arg(long)]
    pub shots_file: Option<String>,
    /// Number of worked examples.
    #[arg(long, default_value_t = qa::DEFAULT_SHOTS)]
    pub shots: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.task {
        BenchTask::Speed(a) => super::bench_speed::run(a),
        BenchTask::Mc(a) => super::bench_mc::run(a),
        BenchTask::Serve(a) => super::bench_serve::run(a),
        BenchTask::Gsm8k(a) => {
            check(&a.run)?;
            let task = gsm8k::task(&gsm8k::Gsm8kOptions {
                data: a.data.clone(),
                split: a.split.clone(),
                train: a.train.clone(),
                shots: a.shots,
                seed: seed(&a.run),
                shuffle: a.run.shuffle,
                max_tokens: a.run.ens.max_tokens.unwrap_or(gsm8k::DEFAULT_MAX_TOKENS),
                mode: mode(a.raw),
            })?;
            run_task(task, &a.run, &a.data)
        }
        BenchTask::Mixinstruct(a) => {
            check(&a.run)?;
            let scorer = if a.no_bertscore {
                None
            } else {
                tracing::info!("loading BERTScore encoder {}", a.bertscore_model);
                let enc = Encoder::load(&a.bertscore_model, &candle_core::Device::Cpu)?;
                Some(BertScorer::new(enc, a.bertscore_layer)?)
            };
            let task = mixinstruct::task(
                &mixinstruct::MixOptions {
                    data: a.data.clone(),
                    split: a.split.clone(),
                    max_tokens: a.run.ens.max_tokens.unwrap_or(256),
                    seed: seed(&a.run),
                    shuffle: a.run.shuffle,
                    mode: mode(a.raw),
                },
                scorer,
            )?;
            run_task(task, &a.run, &a.data)
        }
        BenchTask::Qa(a) => {
            check(&a.run)?;
            if a.run.ens.max_tokens.is_some() {
                bail!("bench qa stops at the end of the answer line ({} tokens at most); drop --max-tokens", qa::MAX_ANSWER_TOKENS);
            }
            let task = qa::task(&qa::QaOptions {
                data: a.data.clone(),
                shots_file: a.shots_file.clone(),
                shots: a.shots,
                seed: seed(&a.run),
                shuffle: a.run.shuffle,
            })?;
            run_task(task, &a.run, &a.data)
        }
    }
}

fn check(run: &RunArgs) -> Result<()> {
    if run.ens.temperature.is_some_and(|t| t != 0.0) || run.ens.top_p.is_some() {
        bail!("bench decodes greedily so that systems are compared on the same footing; drop --temperature/--top-p");
    }
    if !run.ens.stop.is_empty() {
        bail!("bench sets its own stop rules per task; drop --stop");
    }
    Ok(())
}

fn seed(run: &RunArgs) -> u64 {
    run.ens.seed.unwrap_or(1234)
}

fn mode(raw: bool) -> PromptMode {
    if raw {
        PromptMode::Raw
    } else {
        PromptMode::Chat
    }
}

/// The ensemble's weights under `base`.
fn weights(ens: &Ensemble, base: &Request) -> Vec<f32> {
    base.weights
        .clone()
        .unwrap_or_else(|| ens.members().iter().map(|m| m.weight()).collect())
}

fn systems(ens: &Ensemble, members_too: bool) -> Vec<System> {
    let n = ens.members().len();
    let mut s = Vec::new();
    if members_too || n == 1 {
        s.extend((0..n).map(System::Member));
    }
    if n > 1 {
        s.push(System::Ensemble);
    }
    s
}

fn run_task(mut task: Task, run: &RunArgs, data: &str) -> Result<()> {
    task.skip(run.skip);
    task.limit(run.limit);
    let route_mode = run.mode == "route";
    let policies = if route_mode {
        run.route.specs()?
    } else {
        if !run.route.policy.is_empty() {
            bail!("--policy runs route systems; add --mode route");
        }
        Vec::new()
    };
    run.route.settings().validate()?;
    if task.items.is_empty() {
        bail!("no items to score (check --data and --limit)");
    }
    let t0 = Instant::now();
    let plan = ensemble_args::plan(&run.ens)?;
    let mut extra = Vec::new();
    if let Some(tok) = &run.weak_member {
        extra.push(weak_member(tok)?);
    }
    let encoder = run.route.encoder(&plan, &policies)?;
    let mut ens = ensemble_args::build_with(&plan, extra)?;
    for note in ens.prompt_notes(&task.decode.mode.prompt("x")) {
        tracing::info!("{note}");
    }
    let mut results = match &run.out {
        Some(p) => {
            let f = ResultsFile::open(p)?;
            if f.existing() > 0 {
                tracing::info!(
                    "{}: {} rows already there, resuming",
                    p.display(),
                    f.existing()
                );
            }
            Some(f)
        }
        None => None,
    };
    let base = &plan.request;
    tracing::info!(
        "{} on {} items; align {}, top-k {}, gate {}, combine {}, weights {:?}{}",
        task.name,
        task.items.len(),
        ens.align(),
        base.top_k,
        base.gate,
        base.combine,
        weights(&ens, base),
        base.auto_weights
            .map(|t| format!(" × auto (τ = {t})"))
            .unwrap_or_default()
    );
    let metric_names = task.judge.metric_names();
    let score_name = metric_names
        .first()
        .cloned()
        .unwrap_or_else(|| "accuracy".into());
    let mut summaries = Vec::new();
    let mut member_rows = Vec::new();
    for system in systems(&ens, run.members_too || route_mode) {
        let name = runner::system_name(&ens, system);
        let reporter = Reporter::new(&name, task.items.len());
        let rows = runner::run_system(
            &mut ens,
            base,
            &mut task,
            system,
            run.batch as usize,
            results.as_mut(),
            &mut |p| reporter.update(p, &score_name),
        )?;
        reporter.finish();
        ensemble_args::save_maps(&mut ens);
        summaries.push(SystemSummary::from_rows(&name, &rows, &metric_names));
        if let System::Member(i) = system {
            member_rows.push((i, rows));
        }
    }
    if route_mode {
        let routes = super::route::bench_routes(
            &mut ens,
            base,
            &mut task,
            &policies,
            encoder,
            &run.route.settings(),
            &member_rows,
            results.as_mut(),
            &metric_names,
            seed(run),
        )?;
        summaries.extend(routes);
    }
    let wall = t0.elapsed().as_secs_f64();
    print!("{}", report::text_table(&summaries));
    tracing::info!("wall time {wall:.1} s");
    if let Some(path) = &run.report {
        let facts = vec![
            ("task".to_string(), task.name.clone()),
            ("data".to_string(), data.to_string()),
            ("items".to_string(), task.items.len().to_string()),
            (
                "members".to_string(),
                ens.members()
                    .iter()
                    .zip(weights(&ens, base))
                    .map(|(m, w)| format!("{} (weight {w})", m.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "ensemble".to_string(),
                format!(
                    "align {}, top-k {}, gate {}, combine {}, weights {}, greedy",
                    ens.align(),
                    base.top_k,
                    base.gate,
                    base.combine,
                    base.auto_weights
                        .map_or("fixed".to_string(), |t| format!("auto (τ = {t})"))
                ),
            ),
            ("settings".to_string(), task.config.clone()),
            ("wall time".to_string(), format!("{wall:.1} s")),
        ];
        report::write_report(
            path,
            &format!("tutti bench {}", task.name),
            &facts,
            &summaries,
        )?;
        tracing::info!("report written to {}", path.display());
    }
    Ok(())
}

/// The random-weight member of `--weak-member`.
fn weak_member(tokenizer: &std::path::Path) -> Result<tutti_models::Model> {
    let mut cfg = tutti_models::random::shape_config("tiny")?;
    let tok = tutti_models::ModelTokenizer::from_tokenizer_json(tokenizer, None, None, None)?;
    cfg.vocab_size = cfg.vocab_size.max(tok.inner().get_vocab_size(true));
    Ok(tutti::bench::speed::random_model(
        cfg,
        "random-tiny".to_string(),
        tokenizer,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        1,
    )?)
}
