//! `tutti bench mc`: multiple-choice tasks scored by log-likelihood. Every item's
//! choices are scored by each member alone, by the token-level ensemble and by the
//! sequence-level ensemble (`Ensemble::score`), and one table puts them side by side:
//! the task's primary metric, `acc_raw` and `acc_per_char` with 95% intervals, paired
//! wins and losses against the best member, and seconds per item.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tutti::bench::mc::{self, ChoiceScore, McItem, McTask, Metric};
use tutti::bench::metrics::wilson;
use tutti::engine::{
    sequence_log_prob, ContinuationScore, Ensemble, Prompt, Request, ScoreRequest,
};

use super::ensemble_args::{self, EnsembleArgs};

#[derive(clap::Args, Debug)]
pub struct McArgs {
    /// `olmes:TASK:REGIME` (after scripts/fetch-olmes.sh; e.g. olmes:arc_easy:rc_5shot),
    /// `mmlu:SUBJECT` or `mmlu:all` (5-shot), or a JSONL file (tutti's item lines or
    /// OLMES request lines).
    #[arg(long)]
    pub data: String,
    /// Score only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Append one JSON row per item to this file; rerunning with the same file and
    /// settings skips the items it already holds (resume).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the table as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Members and ensemble settings, as for `tutti generate` (the rule, weights,
    /// alignment and top-k apply to the token-level ensemble).
    #[command(flatten)]
    pub ens: EnsembleArgs,
}

/// One item's scores by every system, as kept in `--out`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct McRow {
    id: String,
    config: String,
    gold: usize,
    /// By system name: one score per choice.
    scores: BTreeMap<String, Vec<ChoiceScore>>,
    /// By system name: seconds this item took.
    seconds: BTreeMap<String, f64>,
}

/// The systems of the table, in order: each member, then the two ensembles.
fn system_names(ens: &Ensemble, slots: &[usize]) -> Vec<String> {
    let mut names: Vec<String> = slots
        .iter()
        .map(|&s| ens.members()[s].name().to_string())
        .collect();
    if slots.len() > 1 {
        names.push(TOKEN_LEVEL.into());
        names.push(SEQUENCE_LEVEL.into());
    }
    names
}

const TOKEN_LEVEL: &str = "ensemble (token level)";
const SEQUENCE_LEVEL: &str = "ensemble (sequence level)";

pub fn run(args: McArgs) -> Result<()> {
    let task = mc::load(&args.data, args.limit)?;
    if task.items.is_empty() {
        bail!(
            "{}: no items to score (check --data and --limit)",
            args.data
        );
    }
    let plan = ensemble_args::plan(&args.ens)?;
    let mut ens = ensemble_args::build(&plan)?;
    let base = plan.request.clone();
    let slots: Vec<usize> = base
        .members
        .clone()
        .unwrap_or_else(|| (0..ens.members().len()).collect());
    let config = config_hash(&ens, &base, &args.data);
    let mut out = match &args.out {
        Some(p) => Some(McResults::open(p, &config)?),
        None => None,
    };
    tracing::info!(
        "{} ({}), {} items; primary metric {}; combine {}, top-k {}, align {}",
        task.name,
        task.regime,
        task.items.len(),
        task.primary,
        base.combine,
        base.top_k,
        ens.align()
    );
    let names = system_names(&ens, &slots);
    let mut rows = Vec::with_capacity(task.items.len());
    let progress = Progress::new(task.items.len());
    let mut reused = 0;
    for (n, item) in task.items.iter().enumerate() {
        let row = match out.as_ref().and_then(|o| o.get(&item.id)) {
            Some(r) => {
                reused += 1;
                r.clone()
            }
            None => {
                let row = score_item(&mut ens, &base, &slots, &names, item, &config)
                    .with_context(|| format!("item {}", item.id))?;
                if let Some(o) = out.as_mut() {
                    o.append(&row)?;
                }
                row
            }
        };
        rows.push(row);
        progress.update(n + 1, reused, &rows, &names, &task);
    }
    ensemble_args::save_maps(&mut ens);
    let table = Table::new(&task, &names, &rows, slots.len());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
    } else {
        print!("{}", table.render());
    }
    Ok(())
}

/// Scores one item's choices with every system. Choices that share a context are
/// scored in one call (their context is prefilled once).
fn score_item(
    ens: &mut Ensemble,
    base: &Request,
    slots: &[usize],
    names: &[String],
    item: &McItem,
    config: &str,
) -> Result<McRow> {
    let k = item.continuations.len();
    let mut scores: BTreeMap<String, Vec<Option<ChoiceScore>>> =
        names.iter().map(|n| (n.clone(), vec![None; k])).collect();
    let mut seconds: BTreeMap<String, f64> = names.iter().map(|n| (n.clone(), 0.0)).collect();
    // Choices grouped by context, in first-seen order.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (c, ctx) in item.contexts.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| g == ctx) {
            Some((_, v)) => v.push(c),
            None => groups.push((ctx.clone(), vec![c])),
        }
    }
    for (ctx, choices) in &groups {
        let conts: Vec<String> = choices
            .iter()
            .map(|&c| item.continuations[c].clone())
            .collect();
        let mut request = base.clone();
        request.prompt = Prompt::Raw(ctx.clone());
        let mut alone = Vec::with_capacity(slots.len());
        for (i, &slot) in slots.iter().enumerate() {
            let t0 = Instant::now();
            let mut solo = request.clone().solo(slot);
            solo.weights = None;
            solo.auto_weights = None;
            let s = ens.score(&ScoreRequest::new(solo, conts.clone()).ensemble_only())?;
            *seconds.get_mut(&names[i]).unwrap_or(&mut 0.0) += t0.elapsed().as_secs_f64();
            put(&mut scores, &names[i], choices, &s.ensemble);
            alone.push(s.ensemble);
        }
        if slots.len() > 1 {
            let t0 = Instant::now();
            let s =
                ens.score(&ScoreRequest::new(request.clone(), conts.clone()).ensemble_only())?;
            *seconds.get_mut(TOKEN_LEVEL).unwrap_or(&mut 0.0) += t0.elapsed().as_secs_f64();
            put(&mut scores, TOKEN_LEVEL, choices, &s.ensemble);
            let seq: Vec<ContinuationScore> = (0..conts.len())
                .map(|c| {
                    let lps: Vec<f64> = alone.iter().map(|a| a[c].logprob).collect();
                    let mut x = alone[0][c].clone();
                    x.logprob = sequence_log_prob(&lps, &s.weights);
                    x.tokens = 0;
                    x.greedy = None;
                    x.steps.clear();
                    x
                })
                .collect();
            put(&mut scores, SEQUENCE_LEVEL, choices, &seq);
            // The sequence level costs what its members alone cost.
            let members: f64 = names[..slots.len()].iter().map(|n| seconds[n]).sum();
            seconds.insert(SEQUENCE_LEVEL.into(), members);
        }
    }
    let scores = scores
        .into_iter()
        .map(|(n, v)| {
            let all: Option<Vec<ChoiceScore>> = v.into_iter().collect();
            (n, all.unwrap_or_default())
        })
        .collect();
    Ok(McRow {
        id: item.id.clone(),
        config: config.to_string(),
        gold: item.gold,
        scores,
        seconds,
    })
}

fn put(
    scores: &mut BTreeMap<String, Vec<Option<ChoiceScore>>>,
    name: &str,
    choices: &[usize],
    got: &[ContinuationScore],
) {
    if let Some(v) = scores.get_mut(name) {
        for (&c, s) in choices.iter().zip(got) {
            v[c] = Some(ChoiceScore {
                logprob: s.logprob,
                tokens: s.tokens,
                bytes: s.bytes,
                chars: s.chars,
            });
        }
    }
}

/// What makes rows comparable: the data, the members (by weights fingerprint) and
/// every setting of the request.
fn config_hash(ens: &Ensemble, base: &Request, data: &str) -> String {
    let mut key = format!("mc\0{data}\0{:?}\0{}", base, ens.align());
    for m in ens.members() {
        key.push('\0');
        key.push_str(m.name());
        if let Some(i) = m.info() {
            key.push_str(&i.weights_fingerprint);
        }
    }
    tutti::bench::runner::prompt_hash(&key)
}

/// The `--out` file: rows of earlier runs with the same settings, and an appender.
struct McResults {
    path: PathBuf,
    rows: HashMap<String, McRow>,
    file: std::fs::File,
}

impl McResults {
    fn open(path: &Path, config: &str) -> Result<McResults> {
        let mut rows = HashMap::new();
        let mut other = 0;
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            // A run killed while writing leaves an unfinished last line: cut it off.
            let keep = match text.ends_with('\n') || text.is_empty() {
                true => text.len(),
                false => text.rfind('\n').map_or(0, |i| i + 1),
            };
            for (n, line) in text[..keep].lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row: McRow = serde_json::from_str(line).with_context(|| {
                    format!(
                        "{} line {}: not a `tutti bench mc` results file; pass another --out",
                        path.display(),
                        n + 1
                    )
                })?;
                if row.config == config {
                    rows.insert(row.id.clone(), row);
                } else {
                    other += 1;
                }
            }
            if keep < text.len() {
                let f = std::fs::OpenOptions::new().write(true).open(path)?;
                f.set_len(keep as u64)?;
                f.sync_all()?;
            }
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if !rows.is_empty() {
            tracing::info!(
                "{}: {} items already scored, resuming",
                path.display(),
                rows.len()
            );
        }
        if other > 0 {
            tracing::warn!(
                "{}: {other} rows from other settings are kept but not used",
                path.display()
            );
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(McResults {
            path: path.to_path_buf(),
            rows,
            file,
        })
    }

    fn get(&self, id: &str) -> Option<&McRow> {
        self.rows.get(id)
    }

    /// Appends a row and syncs it, so that an interrupted run loses at most the item
    /// in progress.
    fn append(&mut self, row: &McRow) -> Result<()> {
        let mut line = serde_json::to_string(row)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Progress on stderr: a bar on a terminal, else a line per tenth of the items.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    started: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta} {msg}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Progress {
            bar,
            total,
            started: Instant::now(),
        }
    }

    fn update(&self, done: usize, reused: usize, rows: &[McRow], names: &[String], task: &McTask) {
        let accs: Vec<String> = names
            .iter()
            .map(|n| {
                let ok = rows
                    .iter()
                    .filter(|r| correct(r, n, task.primary, task).unwrap_or(false))
                    .count();
                format!("{} {:.3}", short(n), ok as f64 / rows.len().max(1) as f64)
            })
            .collect();
        let msg = accs.join(", ");
        match &self.bar {
            Some(b) => {
                b.set_position(done as u64);
                b.set_message(msg);
                if done == self.total {
                    b.finish();
                }
            }
            None => {
                let step = (self.total / 10).max(1);
                if done.is_multiple_of(step) || done == self.total {
                    let el = self.started.elapsed().as_secs_f64();
                    let fresh = done - reused;
                    let eta = match fresh {
                        0 => 0.0,
                        f => el / f as f64 * (self.total - done) as f64,
                    };
                    tracing::info!(
                        "{done}/{} ({reused} resumed), {} {msg}, {el:.0} s, ETA {eta:.0} s",
                        self.total,
                        task.primary
                    );
                }
            }
        }
    }
}

fn short(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Whether `system` picked the gold choice of `row` under `metric`.
fn correct(row: &McRow, system: &str, metric: Metric, task: &McTask) -> Option<bool> {
    let scores = row.scores.get(system)?;
    let item = task.items.iter().find(|i| i.id == row.id)?;
    if scores.len() != item.continuations.len() {
        return None;
    }
    Some(mc::predict(metric, scores, &item.continuations) == row.gold)
}

/// The final table.
#[derive(Serialize)]
struct Table {
    task: String,
    regime: String,
    items: usize,
    primary: String,
    rows: Vec<TableRow>,
}

#[derive(Serialize)]
struct TableRow {
    system: String,
    primary: tutti::bench::metrics::Estimate,
    acc_raw: tutti::bench::metrics::Estimate,
    acc_per_char: tutti::bench::metrics::Estimate,
    /// Items this system gets right and the best member wrong, and the reverse
    /// (under the primary metric; `None` for members).
    wins: Option<usize>,
    losses: Option<usize>,
    seconds_per_item: f64,
}

impl Table {
    fn new(task: &McTask, names: &[String], rows: &[McRow], n_members: usize) -> Table {
        let right = |n: &str, m: Metric| -> Vec<bool> {
            rows.iter()
                .map(|r| correct(r, n, m, task).unwrap_or(false))
                .collect()
        };
        let acc = |v: &[bool]| wilson(v.iter().filter(|&&x| x).count(), v.len());
        let best = names[..n_members]
            .iter()
            .max_by(|a, b| {
                acc(&right(a, task.primary))
                    .mean
                    .total_cmp(&acc(&right(b, task.primary)).mean)
            })
            .cloned()
            .unwrap_or_default();
        let best_right = right(&best, task.primary);
        let table_rows = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let prim = right(n, task.primary);
                let (wins, losses) = match i >= n_members {
                    true => {
                        let (w, l) = mc::paired(&prim, &best_right);
                        (Some(w), Some(l))
                    }
                    false => (None, None),
                };
                TableRow {
                    system: n.clone(),
                    primary: acc(&prim),
                    acc_raw: acc(&right(n, Metric::AccRaw)),
                    acc_per_char: acc(&right(n, Metric::AccPerChar)),
                    wins,
                    losses,
                    seconds_per_item: rows
                        .iter()
                        .map(|r| r.seconds.get(n).copied().unwrap_or(0.0))
                        .sum::<f64>()
                        / rows.len().max(1) as f64,
                }
            })
            .collect();
        Table {
            task: task.name.clone(),
            regime: task.regime.clone(),
            items: rows.len(),
            primary: task.primary.to_string(),
            rows: table_rows,
        }
    }

    fn render(&self) -> String {
        let pct = |e: &tutti::bench::metrics::Estimate| {
            format!(
                "{:5.1} [{:4.1}, {:4.1}]",
                100.0 * e.mean,
                100.0 * e.lo,
                100.0 * e.hi
            )
        };
        let mut s = format!(
            "{} ({}), {} items; primary metric {} (95% Wilson intervals)\n",
            self.task, self.regime, self.items, self.primary
        );
        s.push_str(&format!(
            "{:<34} {:>20} {:>20} {:>20} {:>11} {:>8}\n",
            "system", "primary", "acc_raw", "acc_per_char", "vs best +/-", "s/item"
        ));
        for r in &self.rows {
            let wl = match (r.wins, r.losses) {
                (Some(w), Some(l)) => format!("+{w}/-{l}"),
                _ => "".into(),
            };
            s.push_str(&format!(
                "{:<34} {:>20} {:>20} {:>20} {:>11} {:>8.2}\n",
                r.system,
                pct(&r.primary),
                pct(&r.acc_raw),
                pct(&r.acc_per_char),
                wl,
                r.seconds_per_item
            ));
        }
        s
    }
}
