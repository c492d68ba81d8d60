//! `tutti bench`: run every member alone and the ensemble on the same items and print
//! them side by side.

use std::path::PathBuf;

use anyhow::Result;
use tutti::bench::qa::{self, QaScore, Runner};

use super::generate::{build_ensemble, ensemble_plan, EnsembleArgs};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub task: BenchTask,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchTask {
    /// Short-answer QA (JSONL rows {"question", "answers": [...]}), 5-shot, greedy,
    /// normalised exact match.
    Qa(QaArgs),
    /// Prefill/decode speed of members alone and as an ensemble (real or random weights).
    Speed(super::bench_speed::SpeedArgs),
}

#[derive(clap::Args, Debug)]
pub struct QaArgs {
    /// JSONL file of {"question": ..., "answers": [...]} rows.
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also run every member alone on the same items.
    #[arg(long)]
    pub members_too: bool,
    /// Also write one JSON object with all scores and predictions to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Members and ensemble settings, as for `tutti generate`.
    #[command(flatten)]
    pub ens: EnsembleArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.task {
        BenchTask::Qa(a) => run_qa(a),
        BenchTask::Speed(a) => super::bench_speed::run(a),
    }
}

fn run_qa(args: QaArgs) -> Result<()> {
    let mut items = qa::load_jsonl(&args.data)?;
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    let (specs, settings) = ensemble_plan(&args.ens)?;
    let mut ens = build_ensemble(specs, settings)?;
    let n_members = ens.members().len();
    let mut runners = Vec::new();
    if args.members_too || n_members == 1 {
        runners.extend((0..n_members).map(Runner::Solo));
    }
    if n_members > 1 {
        runners.push(Runner::Ensemble);
    }
    let s = ens.settings();
    eprintln!(
        "tutti: {} items; align {}, top-k {}, gate {}, weights {:?}",
        items.len(),
        s.align,
        s.top_k,
        s.gate,
        ens.members().iter().map(|m| m.weight()).collect::<Vec<_>>()
    );
    let mut scores: Vec<QaScore> = Vec::new();
    for r in runners {
        let total = items.len();
        let score = qa::run(&mut ens, r, &items, &mut |done| {
            if done % 25 == 0 || done == total {
                eprintln!("tutti: {r:?}: {done}/{total}");
            }
        })?;
        scores.push(score);
    }
    println!(
        "{:<36} {:>9} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "runner", "accuracy", "correct", "tokens/s", "ms/token", "gate%", "rollbacks", "overhead%"
    );
    for s in &scores {
        println!(
            "{:<36} {:>9.3} {:>8} {:>9.1} {:>9.2} {:>7.1} {:>9} {:>9.2}",
            s.name,
            s.accuracy,
            format!("{}/{}", s.correct, s.total),
            s.tokens_per_s,
            s.ms_per_token,
            100.0 * s.ensembled_share,
            s.rollbacks,
            100.0 * s.overhead_share
        );
    }
    if let Some(path) = &args.out {
        let v = serde_json::json!({
            "data": args.data,
            "items": items.len(),
            "settings": {
                "align": ens.settings().align.name(),
                "top_k": ens.settings().top_k,
                "gate": ens.settings().gate.to_string(),
                "weights": ens.members().iter().map(|m| m.weight()).collect::<Vec<_>>(),
            },
            "scores": scores,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
