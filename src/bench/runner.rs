//! The bench loop: every item of a task, for one system (a member alone or the
//! ensemble), greedy, one JSONL row per item appended and flushed as soon as it is
//! scored. Rows already in the results file for the same system, item and
//! configuration are reused, so an interrupted run resumes where it stopped and ends
//! with the same numbers as an uninterrupted one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BenchError, BenchItem, Task};
use crate::engine::{BatchOptions, Combine, Ensemble, Generation, Request, Sampling};

/// Who answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum System {
    /// Member `i` alone.
    Member(usize),
    /// Every member together.
    Ensemble,
}

/// One scored output: a line of the results file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ItemRow {
    pub task: String,
    pub id: String,
    /// A member's name, or `ensemble`.
    pub system: String,
    /// Hash of everything that shapes the output (task settings, members, weights,
    /// alignment, gate...): rows of another configuration are never mixed in.
    pub config: String,
    /// sha256 of the prompt text (first 16 hex digits).
    pub prompt_hash: String,
    pub output: String,
    pub extracted: String,
    #[serde(default)]
    pub correct: Option<bool>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Generated tokens.
    pub tokens: usize,
    /// Wall time of the generation (prompt processing included), ms.
    pub time_ms: f64,
    /// Time of the tokens after the first (pure decoding), ms, and their count.
    pub decode_ms: f64,
    pub decode_tokens: usize,
    pub steps: usize,
    /// Steps where more than one member was consulted (0 for a member alone).
    pub ensembled_steps: usize,
    pub rollbacks: usize,
    /// Parameters invoked for the item: the member's, the sum of the ensemble's members,
    /// or the sum over a route's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// The members a route asked, in order (route systems only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Vec<String>>,
}

/// Progress of one system's pass.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    pub system: &'a str,
    pub done: usize,
    pub total: usize,
    /// Rows that came from the results file instead of being generated.
    pub reused: usize,
    pub row: &'a ItemRow,
    /// Running exact-match accuracy (or mean of the first metric) over `done` items.
    pub running: f64,
}

/// The results file: rows found at start, and an appender.
pub struct ResultsFile {
    path: PathBuf,
    rows: HashMap<(String, String), ItemRow>,
    file: std::fs::File,
}

impl ResultsFile {
    /// Opens (or creates) `path`; an unfinished last line (a run killed while writing)
    /// is cut off, any other unreadable line is an error.
    pub fn open(path: &Path) -> Result<ResultsFile, BenchError> {
        let err = |reason: String| BenchError::Out {
            path: path.display().to_string(),
            reason,
        };
        let mut rows = HashMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let mut keep = text.len();
            if !text.is_empty() && !text.ends_with('\n') {
                keep = text.rfind('\n').map_or(0, |i| i + 1);
                tracing::warn!(
                    "{}: dropping an unfinished last line (interrupted run)",
                    path.display()
                );
            }
            for (n, line) in text[..keep].lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row: ItemRow = serde_json::from_str(line).map_err(|e| {
                    err(format!(
                        "line {}: {e}; not a tutti results file? pass another --out",
                        n + 1
                    ))
                })?;
                rows.insert((row.system.clone(), row.id.clone()), row);
            }
            if keep < text.len() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| err(e.to_string()))?;
                f.set_len(keep as u64).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
            }
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        Ok(ResultsFile {
            path: path.to_path_buf(),
            rows,
            file,
        })
    }

    /// Rows found when the file was opened.
    pub fn existing(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn find(
        &self,
        system: &str,
        id: &str,
        config: &str,
    ) -> Result<Option<ItemRow>, BenchError> {
        match self.rows.get(&(system.to_string(), id.to_string())) {
            Some(r) if r.config == config => Ok(Some(r.clone())),
            Some(_) => Err(BenchError::Out {
                path: self.path.display().to_string(),
                reason: format!(
                    "holds results of `{system}` with other settings (item {id}); \
                     resume with the same flags or pass another --out"
                ),
            }),
            None => Ok(None),
        }
    }

    pub(crate) fn append(&mut self, row: &ItemRow) -> Result<(), BenchError> {
        let err = |e: std::io::Error| BenchError::Out {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let mut line = serde_json::to_string(row).map_err(|e| BenchError::Out {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        line.push('\n');
        // One write per row, then flush and sync: a kill leaves at most one partial
        // line, and a power loss keeps every row written before it.
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.flush().map_err(err)?;
        crate::durable::sync_appended(&self.file).map_err(err)
    }
}

/// The display name of a system.
pub fn system_name(ens: &Ensemble, system: System) -> String {
    match system {
        System::Member(i) => ens
            .members()
            .get(i)
            .map_or_else(|| format!("member {i}"), |m| m.name().to_string()),
        System::Ensemble => "ensemble".to_string(),
    }
}

/// Hash of the configuration that shapes `system`'s outputs on `task` under the
/// settings of `base`.
pub fn config_hash(ens: &Ensemble, base: &Request, task: &Task, system: System) -> String {
    let mut h = Sha256::new();
    h.update(task.name.as_bytes());
    h.update(b"\0");
    h.update(task.config.as_bytes());
    h.update(format!("\0{:?}\0", task.decode).as_bytes());
    let slots: Vec<usize> = match system {
        System::Member(i) => vec![i],
        System::Ensemble => (0..ens.members().len()).collect(),
    };
    for (n, i) in slots.into_iter().enumerate() {
        if let Some(m) = ens.members().get(i) {
            match m.info() {
                Some(info) => h.update(format!(
                    "{}\0{}\0{:?}\0",
                    info.name, info.weights_fingerprint, info.dtype
                )),
                None => h.update(format!("{}\0", m.name())),
            }
            if system == System::Ensemble {
                let w = base.weights.as_ref().map_or(m.weight(), |w| w[n]);
                h.update(format!("w={w}\0"));
            }
            // Only a non-default setting enters the hash, so older results files stay valid.
            if m.temperature() != 1.0 {
                h.update(format!("t={}\0", m.temperature()));
            }
        }
    }
    if system == System::Ensemble {
        h.update(format!("{}\0{}\0{}", ens.align().name(), base.top_k, base.gate).as_bytes());
        // Only a non-default rule enters the hash, so older results files stay valid.
        if base.combine != Combine::Mean {
            h.update(format!("\0combine={}", base.combine).as_bytes());
        }
        if let Some(tau) = base.auto_weights {
            h.update(format!("\0auto-weights={tau}").as_bytes());
        }
    }
    tutti_models::hex(&h.finalize()[..8])
}

/// sha256 of a prompt, 16 hex digits.
pub fn prompt_hash(prompt: &str) -> String {
    tutti_models::hex(&Sha256::digest(prompt.as_bytes())[..8])
}

/// The headline score of a row: correctness for exact-match tasks, else `metric`.
pub fn row_score(row: &ItemRow, metric: Option<&str>) -> f64 {
    match (metric, row.correct) {
        (None, Some(ok)) => f64::from(u8::from(ok)),
        (Some(m), _) => row.metrics.get(m).copied().unwrap_or(0.0),
        (None, None) => 0.0,
    }
}

/// Runs `system` over every item of `task` with the ensemble settings of `base`
/// (decoding is greedy, with the task's token budget and stop strings); returns one
/// row per item, in item order.
pub fn run_system(
    ens: &mut Ensemble,
    base: &Request,
    task: &mut Task,
    system: System,
    batch: usize,
    results: Option<&mut ResultsFile>,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<ItemRow>, BenchError> {
    let name = system_name(ens, system);
    let config = config_hash(ens, base, task, system);
    let slots: Vec<usize> = match system {
        System::Member(i) => vec![i],
        System::Ensemble => (0..ens.members().len()).collect(),
    };
    let parameters: Option<u64> = slots
        .iter()
        .map(|&i| ens.members().get(i).and_then(|m| m.parameters()))
        .sum();
    let decode = task.decode.clone();
    let pass = Pass {
        name: &name,
        config: &config,
        results,
        reuse: &|row: &mut ItemRow| row.parameters = row.parameters.or(parameters),
        on_progress,
    };
    let request_of = |item: &BenchItem| {
        let mut request = base.clone();
        request.prompt = decode.mode.prompt(&item.prompt);
        request.sampling = Sampling::Greedy;
        request.max_tokens = decode.max_tokens;
        request.stop = decode.stop.clone();
        if let System::Member(i) = system {
            request.members = Some(vec![i]);
            request.weights = None;
        }
        request
    };
    // Several batches' worth of items per call: a finished item's place goes to the
    // next one at once instead of waiting for the slowest of its batch.
    let per_call = if batch > 1 { batch * 4 } else { 1 };
    run_item_batches(task, pass, per_call, &mut |items, rows| {
        let requests: Vec<Request> = items.iter().map(|(_, item)| request_of(item)).collect();
        let t0 = std::time::Instant::now();
        let outs: Vec<Generation> = if requests.len() == 1 {
            vec![ens.generate_quiet(&requests[0])?]
        } else {
            ens.generate_batch_with(
                &requests,
                BatchOptions {
                    max_batch: batch,
                    prefill_chunk: None,
                    kv_budget: None,
                },
            )?
        };
        // Items decoded together share the call's time, each in proportion to its own
        // span, so that the rows' times add up to the run's and s/item and ms/token say
        // what it cost per item.
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
        let spans: f64 = outs.iter().map(|o| o.timing.total_ms).sum();
        let share = if outs.len() > 1 && spans > 0.0 {
            wall_ms / spans
        } else {
            1.0
        };
        for (out, row) in outs.into_iter().zip(rows.iter_mut()) {
            row.decode_tokens = out.steps.len().saturating_sub(1);
            row.tokens = out.tokens;
            row.time_ms = out.timing.total_ms * share;
            row.decode_ms = out.timing.ms_per_token * row.decode_tokens as f64 * share;
            row.steps = out.steps.len();
            if system == System::Ensemble {
                row.ensembled_steps = out.ensembled_steps;
            }
            row.rollbacks = out.rollbacks();
            row.parameters = parameters;
            row.output = out.text;
        }
        Ok(())
    })
}

/// One system's pass over a task: its name and configuration hash (stored in every
/// row), the results file to resume from and append to, and who hears of progress.
pub struct Pass<'a> {
    pub name: &'a str,
    pub config: &'a str,
    pub results: Option<&'a mut ResultsFile>,
    /// Completes a reused row (fields older rows lack).
    pub reuse: &'a dyn Fn(&mut ItemRow),
    pub on_progress: &'a mut dyn FnMut(&Progress),
}

/// The item loop every bench system runs: rows already in the results file for the
/// same configuration are reused; for the others `answer` (given the item's index,
/// the item and its row) fills in the output and what it measured, then the row is
/// judged, appended to the file durably, and reported.
pub fn run_items(
    task: &mut Task,
    pass: Pass<'_>,
    answer: &mut dyn FnMut(usize, &BenchItem, &mut ItemRow) -> Result<(), BenchError>,
) -> Result<Vec<ItemRow>, BenchError> {
    run_item_batches(task, pass, 1, &mut |items, rows| {
        for ((n, item), row) in items.iter().zip(rows.iter_mut()) {
            answer(*n, item, row)?;
        }
        Ok(())
    })
}

/// The items to answer in one call: (index, item), in item order.
pub type ItemBatch<'t> = [(usize, &'t BenchItem)];

/// Fills in one row per item of a batch.
pub type AnswerBatch<'a> = dyn FnMut(&ItemBatch<'_>, &mut [ItemRow]) -> Result<(), BenchError> + 'a;

/// [`run_items`] answering up to `batch` consecutive items per call of `answer` (which
/// fills in one row per item given); rows are still judged, written and reported one
/// by one, in item order.
pub fn run_item_batches(
    task: &mut Task,
    mut pass: Pass<'_>,
    batch: usize,
    answer: &mut AnswerBatch<'_>,
) -> Result<Vec<ItemRow>, BenchError> {
    let first_metric = task.judge.metric_names().into_iter().next();
    let total = task.items.len();
    let mut rows = Vec::with_capacity(total);
    let (mut reused, mut running_sum) = (0usize, 0.0f64);
    let mut n = 0;
    for chunk in task.items.chunks(batch.max(1)) {
        let mut known = Vec::with_capacity(chunk.len());
        for item in chunk {
            known.push(match pass.results.as_deref() {
                Some(r) => r.find(pass.name, &item.id, pass.config)?,
                None => None,
            });
        }
        let fresh: Vec<(usize, &BenchItem)> = chunk
            .iter()
            .enumerate()
            .filter(|(i, _)| known[*i].is_none())
            .map(|(i, item)| (n + i, item))
            .collect();
        let mut answered: Vec<ItemRow> = fresh
            .iter()
            .map(|(_, item)| ItemRow {
                task: task.name.clone(),
                id: item.id.clone(),
                system: pass.name.to_string(),
                config: pass.config.to_string(),
                prompt_hash: prompt_hash(&item.prompt),
                output: String::new(),
                extracted: String::new(),
                correct: None,
                metrics: BTreeMap::new(),
                tokens: 0,
                time_ms: 0.0,
                decode_ms: 0.0,
                decode_tokens: 0,
                steps: 0,
                ensembled_steps: 0,
                rollbacks: 0,
                parameters: None,
                route: None,
            })
            .collect();
        if !fresh.is_empty() {
            answer(&fresh, &mut answered)?;
        }
        let mut answered = answered.into_iter();
        for (item, known) in chunk.iter().zip(known) {
            let row = match known {
                Some(mut row) => {
                    reused += 1;
                    (pass.reuse)(&mut row);
                    row
                }
                None => {
                    // `answer` fills a slice of exactly one row per fresh item.
                    let mut row = answered.next().expect("one row per fresh item");
                    let verdict = task.judge.judge(item, &row.output)?;
                    row.extracted = verdict.extracted;
                    row.correct = verdict.correct;
                    row.metrics = verdict.metrics;
                    if let Some(r) = pass.results.as_deref_mut() {
                        r.append(&row)?;
                    }
                    row
                }
            };
            n += 1;
            running_sum += row_score(&row, first_metric.as_deref());
            rows.push(row);
            (pass.on_progress)(&Progress {
                system: pass.name,
                done: n,
                total,
                reused,
                row: rows.last().expect("just pushed"),
                running: running_sum / n as f64,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, id: &str, config: &str) -> ItemRow {
        ItemRow {
            task: "qa".into(),
            id: id.into(),
            system: system.into(),
            config: config.into(),
            prompt_hash: prompt_hash("p"),
            output: "out".into(),
            extracted: "out".into(),
            correct: Some(true),
            metrics: BTreeMap::new(),
            tokens: 3,
            time_ms: 10.0,
            decode_ms: 4.0,
            decode_tokens: 2,
            steps: 3,
            ensembled_steps: 0,
            rollbacks: 0,
            parameters: None,
            route: None,
        }
    }

    #[test]
    fn results_file_resumes_and_cuts_a_partial_line() {
        let dir = std::env::temp_dir().join(format!("tutti-results-{}", std::process::id()));
        let path = dir.join("sub").join("r.jsonl");
        {
            let mut f = ResultsFile::open(&path).unwrap();
            f.append(&row("a", "1", "c")).unwrap();
            f.append(&row("a", "2", "c")).unwrap();
        }
        // A kill in the middle of a write.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text += "{\"task\": \"qa\", \"id\"";
        std::fs::write(&path, &text).unwrap();
        let mut f = ResultsFile::open(&path).unwrap();
        assert_eq!(f.existing(), 2);
        assert_eq!(f.find("a", "2", "c").unwrap(), Some(row("a", "2", "c")));
        assert_eq!(f.find("a", "3", "c").unwrap(), None);
        assert!(f
            .find("a", "1", "other")
            .unwrap_err()
            .to_string()
            .contains("other settings"));
        f.append(&row("b", "1", "c")).unwrap();
        drop(f);
        let f = ResultsFile::open(&path).unwrap();
        assert_eq!(f.existing(), 3);
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(ResultsFile::open(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
