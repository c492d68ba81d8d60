//! `tutti route`: DER's route mode from the command line — answer a question along a
//! route of members (`tutti route`, `tutti generate --mode route`) and train a learned
//! policy on a task's questions (`tutti route train`). The bench runs routes with
//! `tutti bench … --mode route` (see `bench.rs`).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tutti::bench::report::SystemSummary;
use tutti::bench::runner::{row_score, ItemRow, ResultsFile};
use tutti::bench::{gsm8k, qa, PromptMode, Task};
use tutti::route::reward::RewardParams;
use tutti::route::{
    train, Policy, PolicySpec, RouteContext, RouteQuestion, RouteSettings, StateEncoder,
    TrainProgress, TrainReport, TrainSettings,
};

use super::ensemble_args::{self, EnsembleArgs, Plan};

/// Route settings shared by `route`, `generate --mode route` and `bench --mode route`.
#[derive(clap::Args, Debug, Clone)]
pub struct RouteOptions {
    /// Who answers next: fixed:A,B,… (member indices from 0 or names), random,
    /// best:POLICY.safetensors (the best member of its calibration, alone) or
    /// learned:POLICY.safetensors (PPO actor and terminator). The bench takes several.
    #[arg(long)]
    pub policy: Vec<String>,
    /// State encoder of learned policies: a local model [default: the first member's].
    #[arg(long)]
    pub encoder: Option<String>,
    /// Longest route.
    #[arg(long, default_value_t = 4)]
    pub max_steps: usize,
    /// A learned route stops when its terminator's probability reaches this.
    #[arg(long, default_value_t = 0.5)]
    pub stop_at: f32,
}

impl RouteOptions {
    pub fn settings(&self) -> RouteSettings {
        RouteSettings {
            max_steps: self.max_steps,
            stop_at: self.stop_at,
        }
    }

    pub fn specs(&self) -> Result<Vec<PolicySpec>> {
        if self.policy.is_empty() {
            bail!("route mode needs --policy (fixed:0,1, random, best:POLICY.safetensors or learned:POLICY.safetensors)");
        }
        Ok(self
            .policy
            .iter()
            .map(|p| PolicySpec::parse(p))
            .collect::<Result<_, _>>()?)
    }

    /// The state encoder when one of `specs` needs it.
    pub fn encoder(&self, plan: &Plan, specs: &[PolicySpec]) -> Result<Option<StateEncoder>> {
        if !specs.iter().any(PolicySpec::needs_encoder) {
            return Ok(None);
        }
        load_encoder(self.encoder.as_deref(), plan).map(Some)
    }
}

fn load_encoder(spec: Option<&str>, plan: &Plan) -> Result<StateEncoder> {
    let spec = match spec {
        Some(s) => s.to_string(),
        None => match plan.specs.first() {
            Some(m) if m.remote().is_none() => m.model.clone(),
            _ => bail!("the first member is served, not loaded: pass --encoder MODEL (a local model) for the state encoder"),
        },
    };
    tracing::info!("state encoder {spec}");
    Ok(StateEncoder::load(&spec)?)
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub command: Option<RouteCommand>,
    #[command(flatten)]
    pub ask: AskArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum RouteCommand {
    /// Train a learned policy (actor, critic, terminator) with PPO on a task's questions.
    Train(Box<TrainArgs>),
}

#[derive(clap::Args, Debug, Clone)]
pub struct AskArgs {
    #[command(flatten)]
    pub ens: EnsembleArgs,
    #[command(flatten)]
    pub route: RouteOptions,
    /// The question; read from stdin when absent.
    pub prompt: Option<String>,
    /// Send the Knowledge Transfer Prompt raw instead of through each member's chat
    /// template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object (answer, steps, cost) instead of the answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Questions with answers: the QA formats of `tutti bench qa`, or GSM8K rows with
    /// --task gsm8k.
    #[arg(long)]
    pub data: String,
    /// qa or gsm8k.
    #[arg(long, default_value = "qa")]
    pub task: String,
    /// Worked examples from this file instead of the first rows of --data (qa).
    #[arg(long)]
    pub shots_file: Option<String>,
    /// Worked examples in front of every question.
    #[arg(long)]
    pub shots: Option<usize>,
    /// Train rows for GSM8K's worked examples.
    #[arg(long)]
    pub train: Option<String>,
    /// Shuffle the items with --seed before --skip and --limit (as `tutti bench
    /// --shuffle` does, so that a bench with the same seed and --skip scores the others).
    #[arg(long)]
    pub shuffle: bool,
    /// Skip the first N items (keep them for evaluation).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Train on at most N items (after --skip).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Passes over the questions.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Transitions collected before each PPO update round (the paper's M).
    #[arg(long, default_value_t = 64)]
    pub buffer: usize,
    /// Score at which an answer is good enough [default: 1 for exact-match tasks].
    #[arg(long)]
    pub p0: Option<f32>,
    /// Cost weight per billion parameters (paper: 0.001).
    #[arg(long, default_value_t = 0.001)]
    pub alpha: f32,
    /// State encoder: a local model [default: the first member's].
    #[arg(long)]
    pub encoder: Option<String>,
    /// Longest route (paper: 4).
    #[arg(long, default_value_t = 4)]
    pub max_steps: usize,
    /// Where to write the policy (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Write a Markdown training report with the reward curve (and an SVG beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub ens: EnsembleArgs,
}

pub fn run(args: RouteArgs) -> Result<()> {
    match args.command {
        Some(RouteCommand::Train(t)) => run_train(*t),
        None => ask(args.ask),
    }
}

/// Answers one question along a route.
pub fn ask(args: AskArgs) -> Result<()> {
    let specs = args.route.specs()?;
    if specs.len() != 1 {
        bail!("give one --policy to answer a question (the bench compares several)");
    }
    let settings = args.route.settings();
    settings.validate()?;
    let plan = ensemble_args::plan(&args.ens)?;
    let text = super::common::read_prompt(args.prompt.as_deref())?;
    let q = if args.raw {
        RouteQuestion::from_prompt(&text, false)
    } else {
        RouteQuestion::chat(text)
    };
    let encoder = args.route.encoder(&plan, &specs)?;
    let mut ens = ensemble_args::build(&plan)?;
    let names: Vec<String> = ens.members().iter().map(|m| m.name().to_string()).collect();
    let mut policy = Policy::resolve(&specs[0], &names, None, args.ens.seed.unwrap_or(0))?;
    if let (Policy::Learned(p), Some(enc)) = (&policy, &encoder) {
        p.check(&names, enc.fingerprint())?;
    }
    let mut ctx = RouteContext::new(&mut ens, plan.request.clone(), encoder)?;
    let out = ctx.run(&mut policy, &q, &settings, &mut |s| {
        let stop = s
            .stop_prob
            .map(|p| format!(" (terminator {p:.2} < {})", settings.stop_at))
            .unwrap_or_default();
        tracing::info!("{}{stop}: {}", s.name, s.answer.replace('\n', " "));
    })?;
    if args.json {
        let steps: Vec<_> = out
            .steps
            .iter()
            .map(|s| {
                json!({"member": s.name, "answer": s.answer, "ms": s.ms,
                       "parameters": s.parameters, "stop_prob": s.stop_prob})
            })
            .collect();
        println!(
            "{}",
            json!({"answer": out.answer, "policy": specs[0].to_string(), "steps": steps,
                   "parameters": out.parameters, "ms": out.ms, "policy_ms": out.policy_ms})
        );
    } else {
        println!("{}", out.answer);
        tracing::info!(
            "{} steps, {:.3}B parameters invoked, {:.1} s",
            out.steps.len(),
            out.parameters as f64 / 1e9,
            out.ms / 1e3
        );
    }
    Ok(())
}

fn train_task(a: &TrainArgs) -> Result<Task> {
    let seed = a.ens.seed.unwrap_or(1234);
    let mut task = match a.task.as_str() {
        "qa" => {
            if a.ens.max_tokens.is_some() {
                bail!("the qa task stops at the end of the answer line; drop --max-tokens");
            }
            qa::task(&qa::QaOptions {
                data: a.data.clone(),
                shots_file: a.shots_file.clone(),
                shots: a.shots.unwrap_or(qa::DEFAULT_SHOTS),
                seed,
                shuffle: a.shuffle,
            })?
        }
        "gsm8k" => gsm8k::task(&gsm8k::Gsm8kOptions {
            data: a.data.clone(),
            split: "test".into(),
            train: a.train.clone(),
            shots: a.shots.unwrap_or(gsm8k::DEFAULT_SHOTS),
            seed,
            shuffle: a.shuffle,
            max_tokens: a.ens.max_tokens.unwrap_or(gsm8k::DEFAULT_MAX_TOKENS),
            mode: PromptMode::Chat,
        })?,
        other => bail!("--task {other}: expected qa or gsm8k"),
    };
    task.skip(a.skip);
    task.limit(a.limit);
    if task.items.is_empty() {
        bail!("no items to train on (check --data, --skip and --limit)");
    }
    Ok(task)
}

fn run_train(a: TrainArgs) -> Result<()> {
    if a.ens.temperature.is_some_and(|t| t != 0.0) || a.ens.top_p.is_some() {
        bail!("route training decodes greedily (answers are asked once each); drop --temperature/--top-p");
    }
    let mut task = train_task(&a)?;
    let exact = task.judge.metric_names().is_empty();
    let p0 = a.p0.unwrap_or(if exact { 1.0 } else { 0.73 });
    let settings = TrainSettings {
        epochs: a.epochs,
        buffer: a.buffer,
        seed: a.ens.seed.unwrap_or(0),
        reward: RewardParams {
            alpha: a.alpha,
            p0,
            t_max: a.max_steps,
            ..RewardParams::default()
        },
        ..TrainSettings::default()
    };
    RouteSettings {
        max_steps: a.max_steps,
        stop_at: 0.5,
    }
    .validate()?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "--out {}: the folder {} does not exist",
                a.out.display(),
                dir.display()
            );
        }
    }
    let plan = ensemble_args::plan(&a.ens)?;
    let encoder = load_encoder(a.encoder.as_deref(), &plan)?;
    let mut ens = ensemble_args::build(&plan)?;
    let mut base = plan.request.clone();
    base.max_tokens = task.decode.max_tokens;
    base.stop = task.decode.stop.clone();
    let questions = tutti::bench::route::questions(&task);
    let items = task.items.clone();
    tracing::info!(
        "training a route policy on {} {} items: {} epochs, p0 {p0}, at most {} steps, encoder {} ({} wide)",
        items.len(),
        task.name,
        settings.epochs,
        settings.reward.t_max,
        encoder.name(),
        encoder.dim()
    );
    let mut ctx = RouteContext::new(&mut ens, base, Some(encoder))?;
    let judge = &mut task.judge;
    let mut score = |i: usize, answer: &str| -> Result<f32, tutti::route::RouteError> {
        let v = judge
            .judge(&items[i], answer)
            .map_err(|e| tutti::route::RouteError::Train(e.to_string()))?;
        Ok(match (v.correct, v.metrics.values().next()) {
            (Some(ok), _) => f32::from(u8::from(ok)),
            (None, Some(m)) => *m as f32,
            (None, None) => 0.0,
        })
    };
    let bar = TrainBar::new();
    let (policy, report) = train(&mut ctx, &questions, &mut score, &settings, &mut |p| {
        bar.update(p)
    })?;
    bar.finish();
    policy
        .save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    print!("{}", report_text(&ctx.member_names(), &report));
    tracing::info!("policy written to {}", a.out.display());
    if let Some(path) = &a.report {
        write_train_report(path, &a, &ctx.member_names(), &report)?;
        tracing::info!("report written to {}", path.display());
    }
    Ok(())
}

/// Training progress on stderr: a bar on a terminal, a line per epoch otherwise.
struct TrainBar {
    bar: Option<indicatif::ProgressBar>,
}

impl TrainBar {
    fn new() -> TrainBar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>14} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        TrainBar { bar }
    }

    fn update(&self, p: &TrainProgress) {
        match p {
            TrainProgress::Calibrating { done, total } => {
                if let Some(b) = &self.bar {
                    b.set_prefix("calibration");
                    b.set_length(*total as u64);
                    b.set_position(*done as u64);
                } else if *done == *total || done % (total / 10).max(1) == 0 {
                    tracing::info!("calibration: {done}/{total} answers");
                }
            }
            TrainProgress::Route {
                epoch,
                epochs,
                done,
                total,
            } => {
                if let Some(b) = &self.bar {
                    b.set_prefix(format!("epoch {epoch}/{epochs}"));
                    b.set_length(*total as u64);
                    b.set_position(*done as u64);
                }
            }
            TrainProgress::Epoch(s) => {
                let line = format!(
                    "epoch {}: mean return {:.3}, final score {:.3}, {:.2} steps, actions {:?}, {} new answers, {:.0} s",
                    s.epoch,
                    s.mean_return,
                    s.mean_final_score,
                    s.mean_steps,
                    s.action_share
                        .iter()
                        .map(|a| format!("{:.0}%", 100.0 * a))
                        .collect::<Vec<_>>(),
                    s.generated,
                    s.seconds
                );
                match &self.bar {
                    Some(b) => b.println(line),
                    None => tracing::info!("{line}"),
                }
            }
            TrainProgress::Terminator => tracing::info!("training the terminator"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The training summary: calibration, the reward curve, the terminator.
fn report_text(members: &[String], r: &TrainReport) -> String {
    let mut s = String::from("calibration (each member alone on the training items):\n");
    for (m, c) in members.iter().zip(&r.calibration) {
        let _ = writeln!(s, "  {m}: {c:.3}");
    }
    s += "epoch  mean return  final score  steps  actions\n";
    for e in &r.epochs {
        let _ = writeln!(
            s,
            "{:>5}  {:>11.3}  {:>11.3}  {:>5.2}  {}",
            e.epoch,
            e.mean_return,
            e.mean_final_score,
            e.mean_steps,
            e.action_share
                .iter()
                .map(|a| format!("{:.0}%", 100.0 * a))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let _ = writeln!(
        s,
        "terminator: {} states ({} good enough), loss {:.3}, accuracy {:.1}% on them\n{} answers generated, {:.0} s",
        r.terminator_examples,
        r.terminator_positives,
        r.terminator_loss,
        100.0 * r.terminator_accuracy,
        r.generated,
        r.seconds
    );
    s
}

/// The reward curve: mean return and final score per epoch.
fn reward_svg(r: &TrainReport) -> String {
    let (w, h, pad) = (560.0f64, 300.0f64, 45.0f64);
    let ys: Vec<f64> = r
        .epochs
        .iter()
        .flat_map(|e| [e.mean_return as f64, e.mean_final_score as f64])
        .collect();
    let lo = ys.iter().copied().fold(0.0f64, f64::min);
    let hi = ys.iter().copied().fold(1.0f64, f64::max);
    let n = r.epochs.len().max(2) - 1;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / n as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * (v - lo) / (hi - lo).max(1e-9);
    let line = |f: &dyn Fn(&tutti::route::train::EpochStats) -> f64| {
        r.epochs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{:.1},{:.1}", x(i), y(f(e))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{cx}\" y=\"{lx}\" text-anchor=\"middle\">epoch (1–{ne})</text>\n\
         <text x=\"5\" y=\"{t}\">{hi:.2}</text><text x=\"5\" y=\"{b}\">{lo:.2}</text>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{ret}\"/>\n\
         <polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"5,3\" points=\"{fin}\"/>\n\
         <text x=\"{lg}\" y=\"20\" fill=\"#1f77b4\">mean return</text>\n\
         <text x=\"{lg2}\" y=\"20\" fill=\"#d62728\">final score</text>\n</svg>\n",
        b = h - pad,
        r = w - pad,
        cx = w / 2.0,
        lx = h - 10.0,
        ne = r.epochs.len(),
        t = pad + 4.0,
        ret = line(&|e| e.mean_return as f64),
        fin = line(&|e| e.mean_final_score as f64),
        lg = pad,
        lg2 = pad + 110.0,
    )
}

fn write_train_report(
    path: &Path,
    a: &TrainArgs,
    members: &[String],
    r: &TrainReport,
) -> Result<()> {
    let svg_path = path.with_extension("svg");
    let svg_name = svg_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut md = format!(
        "# tutti route train\n\n- data: {} ({}), {} items after skipping {}\n- members: {}\n- epochs: {}, buffer {}, at most {} steps, α {}, seed {}\n\n```\n",
        a.data,
        a.task,
        r.items,
        a.skip,
        members.join(", "),
        a.epochs,
        a.buffer,
        a.max_steps,
        a.alpha,
        a.ens.seed.unwrap_or(0)
    );
    md += &report_text(members, r);
    let _ = write!(md, "```\n\n![reward curve]({svg_name})\n");
    tutti::durable::write_atomic(&svg_path, reward_svg(r).as_bytes())?;
    tutti::durable::write_atomic(path, md.as_bytes())?;
    Ok(())
}

/// The route systems of `tutti bench --mode route`: one per policy, after the members
/// (whose answers are the routes' first steps, reused) and the ensemble.
#[allow(clippy::too_many_arguments)]
pub fn bench_routes(
    ens: &mut tutti::engine::Ensemble,
    base: &tutti::engine::Request,
    task: &mut Task,
    policies: &[PolicySpec],
    encoder: Option<StateEncoder>,
    settings: &RouteSettings,
    member_rows: &[(usize, Vec<ItemRow>)],
    mut results: Option<&mut ResultsFile>,
    metric_names: &[String],
    seed: u64,
) -> Result<Vec<SystemSummary>> {
    let names: Vec<String> = ens.members().iter().map(|m| m.name().to_string()).collect();
    let first_metric = metric_names.first().map(String::as_str);
    let mut calibration = vec![0.0f32; names.len()];
    for (i, rows) in member_rows {
        let sum: f64 = rows.iter().map(|r| row_score(r, first_metric)).sum();
        calibration[*i] = (sum / rows.len().max(1) as f64) as f32;
    }
    let mut route_base = base.clone();
    route_base.sampling = tutti::engine::Sampling::Greedy;
    route_base.max_tokens = task.decode.max_tokens;
    route_base.stop = task.decode.stop.clone();
    let mut ctx = RouteContext::new(ens, route_base, encoder)?;
    let questions = tutti::bench::route::questions(task);
    for (slot, rows) in member_rows {
        for ((item, row), q) in task.items.iter().zip(rows).zip(&questions) {
            if q.prompt(None) == task.decode.mode.prompt(&item.prompt) {
                let answer = tutti::route::run::Answer {
                    text: row.output.trim().to_string(),
                    ms: row.time_ms,
                };
                ctx.remember(q, None, *slot, answer);
            }
        }
    }
    let score_name = metric_names
        .first()
        .cloned()
        .unwrap_or_else(|| "accuracy".into());
    let mut summaries = Vec::new();
    for spec in policies {
        let mut policy = Policy::resolve(spec, &names, Some(&calibration), seed)?;
        match (&policy, ctx.encoder()) {
            (Policy::Learned(p), Some(enc)) => p.check(&names, enc.fingerprint())?,
            (Policy::Best(slot), _) if *spec == PolicySpec::Best(None) => tracing::info!(
                "route best: {} (best alone on these items: an oracle choice)",
                names[*slot]
            ),
            _ => {}
        }
        let name = tutti::bench::route::system_name(spec);
        let reporter = super::progress::Reporter::new(&name, task.items.len());
        let rows = tutti::bench::route::run_policy(
            &mut ctx,
            spec,
            &mut policy,
            settings,
            task,
            results.as_deref_mut(),
            &mut |p| reporter.update(p, &score_name),
        )?;
        reporter.finish();
        summaries.push(SystemSummary::from_rows(&name, &rows, metric_names));
    }
    Ok(summaries)
}
