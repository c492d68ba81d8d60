//! Multiple-choice benchmarks scored by log-likelihood (`tutti bench mc`): the items and
//! the metrics. No generation: every choice is a (context, continuation) pair, a system
//! scores the continuation's log-probability after its context, and its answer is the
//! best choice under the task's [`Metric`].
//!
//! Item sources ([`load`]):
//!
//! - `olmes:TASK:REGIME`: OLMES request files (AI2's evaluation standard), e.g.
//!   `olmes:arc_easy:rc_5shot` or `olmes:hellaswag:mc_5shot`, as fetched by
//!   `scripts/fetch-olmes.sh` into `$TUTTI_OLMES_DIR/TASK/REGIME/` (default
//!   `data-cache/olmes/`, relative to the working directory): `requests.jsonl.gz` holds
//!   the exact contexts and continuations (few-shot examples included), `config.json`
//!   the primary metric. Lines are grouped by `doc_id` into items, choices ordered by
//!   `idx`, gold from `label`; the unconditional requests OLMES adds for its
//!   `acc_uncond` (context `Answer:`, `doc_id` from the config's
//!   `uncond_docid_offset` up) are dropped. The item id is the `doc_id` (OLMES's
//!   `native_id` is missing or repeated in some files).
//! - `mmlu:SUBJECT` or `mmlu:all`: MMLU's test split (same script, under
//!   `$TUTTI_OLMES_DIR/mmlu/`), subjects sorted by name, rows in file order, with
//!   lm-evaluation-harness's 5-shot prompt (its `mmlu` task, default template, after
//!   Hendrycks et al.): the first 5 rows of the subject's dev split as examples,
//!
//!   ```text
//!   The following are multiple choice questions (with answers) about {subject}.\n\n
//!   {question}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer: {letter}\n\n   (5 examples)
//!   {question}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:
//!   ```
//!
//!   with the subject's underscores as spaces and questions stripped of surrounding
//!   white space (choices as they are); continuations `" A"` to `" D"`, metric
//!   `acc_raw`. Hendrycks's own code differs in two details: `about  {subject}` (its
//!   subject formatter adds a leading space) and unstripped questions.
//! - a `.jsonl` file (or `.jsonl.gz`) in tutti's own format, one item per line:
//!   `{"id"?: str | int, "context": str | "contexts": [str, ...], "continuations":
//!   [str, ...], "gold": int, "metric"?: str}` (`contexts` gives one per choice; the
//!   id defaults to the line number, the metric to `acc_raw`); or OLMES request lines
//!   (recognised by their `request` key), read as for `olmes:`, with the
//!   `config.json` beside the file when there is one.
//!
//! `limit` keeps the first N items in that order. OLMES's subsampled regimes (`rc_5shot`
//! and `mc_5shot` of the larger tasks: at most 1000 items, drawn with a fixed seed) are
//! already in random order, so a prefix is a random sample; files that hold a whole
//! split, and `mmlu:all` (first subjects only), are not.
//!
//! Metrics ([`predict`]), as OLMES and lm-evaluation-harness define them: the argmax
//! over choices of the summed log-probability (`acc_raw`), of that sum divided by the
//! continuation's length in characters, leading space included (`acc_per_char`,
//! OLMES), by its length in the scoring model's tokens (`acc_per_token`), or by the
//! length in characters of the choice text, that is the continuation without its
//! leading space (`acc_norm`, lm-evaluation-harness, which divides by Python's
//! `len(choice)` of the answer string; `target_delimiter + choice` is what it scores).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};

use super::metrics::{self, Estimate};
use super::BenchError;

/// The environment variable naming the folder `scripts/fetch-olmes.sh` filled.
pub const OLMES_DIR_ENV: &str = "TUTTI_OLMES_DIR";
/// Where that folder is without the variable (relative: the repo root when run there,
/// which is where the script puts it by default).
pub const DEFAULT_OLMES_DIR: &str = "data-cache/olmes";
/// The few-shot examples of an MMLU prompt (the first rows of the subject's dev split).
pub const MMLU_SHOTS: usize = 5;
/// The doc id offset OLMES gives its unconditional ("Answer:" only) requests, assumed
/// for a request file that has no `config.json` beside it.
const OLMES_UNCOND_OFFSET: u64 = 1_000_000;
const FETCH_HINT: &str = "run scripts/fetch-olmes.sh (it writes data-cache/olmes/ at the repo \
                          root, or the folder named by TUTTI_OLMES_DIR)";

/// How a system's choice is picked from the choices' log-probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Summed log-probability of the continuation.
    AccRaw,
    /// Sum divided by the continuation's characters, leading space included (OLMES).
    AccPerChar,
    /// Sum divided by the continuation's tokens (the scoring model's tokenizer).
    AccPerToken,
    /// Sum divided by the characters of the continuation without its leading space
    /// (lm-evaluation-harness's `acc_norm`).
    AccNorm,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::AccRaw,
        Metric::AccPerChar,
        Metric::AccPerToken,
        Metric::AccNorm,
    ];

    /// The name in results and configs (`acc_raw`, `acc_per_char`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Metric::AccRaw => "acc_raw",
            Metric::AccPerChar => "acc_per_char",
            Metric::AccPerToken => "acc_per_token",
            Metric::AccNorm => "acc_norm",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                format!("unknown metric `{s}` (known: {})", names.join(", "))
            })
    }
}

/// One question: choice `i` is `continuations[i]` scored after `contexts[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct McItem {
    /// Stable within its source: the OLMES `doc_id`, `SUBJECT/ROW` for MMLU, the
    /// line's `id` (else its line number) for a tutti file.
    pub id: String,
    /// One per choice. Usually all equal; Winogrande-style items put the choice in
    /// the context and share the continuation.
    pub contexts: Vec<String>,
    pub continuations: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
}

impl McItem {
    /// The context of every choice, when they all have the same one (the scorer can
    /// then run the context once).
    pub fn shared_context(&self) -> Option<&str> {
        let first = self.contexts.first()?;
        self.contexts
            .iter()
            .all(|c| c == first)
            .then_some(first.as_str())
    }

    /// Number of choices.
    pub fn choices(&self) -> usize {
        self.continuations.len()
    }
}

/// A loaded benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct McTask {
    /// `arc_easy`, `mmlu`, `mmlu_anatomy`, or a file's stem.
    pub name: String,
    /// The OLMES regime (`rc_5shot`, `mc_5shot`...), `5shot` for MMLU, `custom` for a
    /// file without one.
    pub regime: String,
    /// The metric the task's accuracy is reported by.
    pub primary: Metric,
    pub items: Vec<McItem>,
}

/// The OLMES data folder: `$TUTTI_OLMES_DIR` when set and not empty, else
/// [`DEFAULT_OLMES_DIR`].
pub fn olmes_dir() -> PathBuf {
    std::env::var_os(OLMES_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OLMES_DIR))
}

/// Loads `spec` (`olmes:TASK:REGIME`, `mmlu:SUBJECT`, `mmlu:all` or a `.jsonl` path;
/// see the module docs), keeping the first `limit` items.
pub fn load(spec: &str, limit: Option<usize>) -> Result<McTask, BenchError> {
    load_from(spec, limit, &olmes_dir())
}

/// [`load`] with the OLMES data folder given.
pub fn load_from(spec: &str, limit: Option<usize>, olmes_dir: &Path) -> Result<McTask, BenchError> {
    let mut task = if let Some(rest) = spec.strip_prefix("olmes:") {
        load_olmes(rest, olmes_dir)?
    } else if let Some(subject) = spec.strip_prefix("mmlu:") {
        load_mmlu(subject, olmes_dir, limit)?
    } else {
        load_file(Path::new(spec))?
    };
    if let Some(n) = limit {
        task.items.truncate(n);
    }
    Ok(task)
}

fn data_err(path: &Path, reason: impl Into<String>) -> BenchError {
    BenchError::Data {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A file's text, gunzipped when its name ends in `.gz`.
fn read_text(path: &Path) -> Result<String, BenchError> {
    let bytes = std::fs::read(path).map_err(|e| data_err(path, e.to_string()))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                data_err(
                    path,
                    format!(
                        "not a valid gzip file ({e}); fetch it again with \
                         scripts/fetch-olmes.sh, or gunzip it"
                    ),
                )
            })?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|e| data_err(path, format!("not UTF-8 text: {e}")))
}

/// A JSON object read from a line, with the line's 1-based number.
type Line = (usize, Map<String, Value>);

/// The non-blank lines of a JSON Lines text as objects.
fn json_lines(path: &Path, text: &str) -> Result<Vec<Line>, BenchError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => rows.push((i + 1, m)),
            Ok(_) => {
                return Err(data_err(
                    path,
                    format!(
                        "line {}: not a JSON object (write one object per line)",
                        i + 1
                    ),
                ))
            }
            Err(e) => {
                return Err(data_err(
                    path,
                    format!(
                        "line {}: not valid JSON: {e} (write one object per line)",
                        i + 1
                    ),
                ))
            }
        }
    }
    if rows.is_empty() {
        return Err(data_err(path, "no items (the file has no JSON lines)"));
    }
    Ok(rows)
}

/// `obj[key]` for a dotted path like `request.context`.
fn field<'a>(row: &'a Map<String, Value>, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut v = row.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// Reads tutti lines or OLMES request lines, whichever the first line is.
fn load_file(path: &Path) -> Result<McTask, BenchError> {
    if !path.is_file() {
        return Err(data_err(
            path,
            "no such file (pass a .jsonl file, olmes:TASK:REGIME, mmlu:SUBJECT or mmlu:all)",
        ));
    }
    let text = read_text(path)?;
    let rows = json_lines(path, &text)?;
    let stem = file_stem(path);
    if rows[0].1.contains_key("request") {
        let config = path.with_file_name("config.json");
        let (primary, offset, regime) = if config.is_file() {
            let (primary, offset) = read_olmes_config(&config)?;
            let regime = path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "custom".into());
            (primary, offset, regime)
        } else {
            (Metric::AccRaw, Some(OLMES_UNCOND_OFFSET), "custom".into())
        };
        let name = match field(&rows[0].1, "task_name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => stem,
        };
        let items = olmes_items(path, &rows, offset)?;
        Ok(McTask {
            name,
            regime,
            primary,
            items,
        })
    } else {
        let (items, metric) = tutti_items(path, &rows)?;
        Ok(McTask {
            name: stem,
            regime: "custom".into(),
            primary: metric.unwrap_or(Metric::AccRaw),
            items,
        })
    }
}

/// `tiny` for `tiny.jsonl`, `requests` for `requests.jsonl.gz`.
fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let name = name.strip_suffix(".jsonl").unwrap_or(name);
    name.to_string()
}

const TUTTI_FORMAT: &str = "each line is {\"id\"?: str, \"context\": str (or \"contexts\": \
                            [str, one per choice]), \"continuations\": [str, ...], \"gold\": \
                            int, \"metric\"?: str}";

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// Items of tutti's line format, and the metric the lines name (all must agree).
fn tutti_items(path: &Path, rows: &[Line]) -> Result<(Vec<McItem>, Option<Metric>), BenchError> {
    const KEYS: [&str; 6] = [
        "id",
        "context",
        "contexts",
        "continuations",
        "gold",
        "metric",
    ];
    let mut items = Vec::with_capacity(rows.len());
    let mut metric: Option<(Metric, usize)> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, row) in rows {
        let err = |f: &str, what: String| {
            data_err(
                path,
                format!("line {line}: field `{f}`: {what} ({TUTTI_FORMAT})"),
            )
        };
        if let Some(k) = row.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(err(k, "unknown field (a typo?)".into()));
        }
        let continuations = match row.get("continuations") {
            None => return Err(err("continuations", "missing".into())),
            Some(v) => string_list(v)
                .ok_or_else(|| err("continuations", "expected a list of strings".into()))?,
        };
        if continuations.len() < 2 {
            return Err(err(
                "continuations",
                format!("{} choice(s); give at least 2", continuations.len()),
            ));
        }
        let n = continuations.len();
        let contexts = match (row.get("context"), row.get("contexts")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "contexts",
                    "give `context` or `contexts`, not both".into(),
                ))
            }
            (None, None) => return Err(err("context", "missing".into())),
            (Some(v), None) => {
                let c = v
                    .as_str()
                    .ok_or_else(|| err("context", "expected a string".into()))?;
                vec![c.to_string(); n]
            }
            (None, Some(v)) => {
                let cs = string_list(v)
                    .ok_or_else(|| err("contexts", "expected a list of strings".into()))?;
                if cs.len() != n {
                    return Err(err(
                        "contexts",
                        format!(
                            "{} contexts for {n} continuations; give one per choice",
                            cs.len()
                        ),
                    ));
                }
                cs
            }
        };
        let gold = match row.get("gold") {
            None => return Err(err("gold", "missing".into())),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| err("gold", format!("{v} is not a non-negative integer")))?,
        };
        let gold = usize::try_from(gold)
            .ok()
            .filter(|&g| g < n)
            .ok_or_else(|| {
                err(
                    "gold",
                    format!(
                        "{gold} is out of range for {n} choices (the right choice's index, from 0)"
                    ),
                )
            })?;
        let id = match row.get("id") {
            None => line.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(x)) => x.to_string(),
            Some(v) => return Err(err("id", format!("{v} is not a string or a number"))),
        };
        if let Some(first) = seen.insert(id.clone(), *line) {
            return Err(err(
                "id",
                format!("`{id}` is also the id of line {first}; ids must be unique"),
            ));
        }
        if let Some(v) = row.get("metric") {
            let m = v
                .as_str()
                .ok_or_else(|| err("metric", "expected a string".into()))
                .and_then(|s| s.parse::<Metric>().map_err(|e| err("metric", e)))?;
            match metric {
                Some((prev, at)) if prev != m => {
                    return Err(err(
                        "metric",
                        format!("`{m}` but line {at} says `{prev}`; a file has one metric"),
                    ))
                }
                None => metric = Some((m, *line)),
                Some(_) => {}
            }
        }
        items.push(McItem {
            id,
            contexts,
            continuations,
            gold,
        });
    }
    Ok((items, metric.map(|(m, _)| m)))
}

/// The primary metric and the unconditional requests' doc id offset of an OLMES
/// `config.json` (`task_config.primary_metric`,
/// `task_config.metric_kwargs.uncond_docid_offset`).
fn read_olmes_config(path: &Path) -> Result<(Metric, Option<u64>), BenchError> {
    let text = read_text(path)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        data_err(
            path,
            format!("not valid JSON: {e}; fetch it again with scripts/fetch-olmes.sh"),
        )
    })?;
    let metric = match v.pointer("/task_config/primary_metric") {
        Some(Value::String(s)) => s.parse::<Metric>().map_err(|e| {
            data_err(
                path,
                format!("field `task_config.primary_metric`: {e}; tutti scores only these"),
            )
        })?,
        _ => {
            return Err(data_err(
                path,
                "field `task_config.primary_metric`: missing or not a string (an OLMES task \
                 config names its primary metric; fetch it again with scripts/fetch-olmes.sh)",
            ))
        }
    };
    let offset = match v.pointer("/task_config/metric_kwargs/uncond_docid_offset") {
        None | Some(Value::Null) => None,
        Some(x) => Some(x.as_u64().ok_or_else(|| {
            data_err(
                path,
                format!(
                    "field `task_config.metric_kwargs.uncond_docid_offset`: {x} is not a \
                     non-negative integer or null"
                ),
            )
        })?),
    };
    Ok((metric, offset))
}

const OLMES_FORMAT: &str = "an OLMES request line is {\"doc_id\": int, \"idx\": int, \"label\": \
                            int, \"request\": {\"context\": str, \"continuation\": str}, ...}";

/// One OLMES request line.
struct Request {
    line: usize,
    doc_id: u64,
    idx: u64,
    label: u64,
    context: String,
    continuation: String,
}

/// Items of OLMES request lines: grouped by `doc_id` (in order of first appearance),
/// choices ordered by `idx`, gold from `label`; lines with `doc_id >= uncond_offset`
/// (the unconditional "Answer:" requests of OLMES's `acc_uncond`) are skipped.
fn olmes_items(
    path: &Path,
    rows: &[Line],
    uncond_offset: Option<u64>,
) -> Result<Vec<McItem>, BenchError> {
    let mut groups: Vec<Vec<Request>> = Vec::new();
    let mut by_doc: HashMap<u64, usize> = HashMap::new();
    for (line, row) in rows {
        let line = *line;
        let err = |f: &str, what: &str| {
            data_err(
                path,
                format!("line {line}: field `{f}`: {what} ({OLMES_FORMAT})"),
            )
        };
        let int = |f: &str| match field(row, f) {
            None => Err(err(f, "missing")),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| err(f, &format!("{v} is not a non-negative integer"))),
        };
        let text = |f: &str| match field(row, f) {
            None => Err(err(f, "missing")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(err(f, "expected a string")),
        };
        let doc_id = int("doc_id")?;
        if uncond_offset.is_some_and(|o| doc_id >= o) {
            continue;
        }
        let r = Request {
            line,
            doc_id,
            idx: int("idx")?,
            label: int("label")?,
            context: text("request.context")?,
            continuation: text("request.continuation")?,
        };
        match by_doc.get(&doc_id) {
            Some(&g) => groups[g].push(r),
            None => {
                by_doc.insert(doc_id, groups.len());
                groups.push(vec![r]);
            }
        }
    }
    let mut items = Vec::with_capacity(groups.len());
    for mut g in groups {
        g.sort_by_key(|r| r.idx);
        let first = &g[0];
        let (line, doc_id, label) = (first.line, first.doc_id, first.label);
        let at = |r: &Request, what: String| {
            data_err(path, format!("line {}: doc_id {doc_id}: {what}", r.line))
        };
        for (i, r) in g.iter().enumerate() {
            if r.idx != i as u64 {
                return Err(at(
                    r,
                    format!(
                        "field `idx`: {} where {i} was expected; a doc's choices are numbered \
                         0, 1, ... once each (is the file cut or merged?)",
                        r.idx
                    ),
                ));
            }
            if r.label != label {
                return Err(at(
                    r,
                    format!(
                        "field `label`: {} but line {line} says {label}; every line of a doc \
                         names the same gold choice",
                        r.label
                    ),
                ));
            }
        }
        if g.len() < 2 {
            return Err(at(
                first,
                "only one choice; a doc needs a line per choice (is the file cut?)".into(),
            ));
        }
        let gold = usize::try_from(label)
            .ok()
            .filter(|&l| l < g.len())
            .ok_or_else(|| {
                at(
                    first,
                    format!(
                        "field `label`: {label} is out of range for {} choices",
                        g.len()
                    ),
                )
            })?;
        let (contexts, continuations) = g.into_iter().map(|r| (r.context, r.continuation)).unzip();
        items.push(McItem {
            id: doc_id.to_string(),
            contexts,
            continuations,
            gold,
        });
    }
    if items.is_empty() {
        return Err(data_err(
            path,
            "no items (every line is an unconditional request)",
        ));
    }
    Ok(items)
}

/// Names of the sub-folders of `dir` (sorted), empty when it cannot be read.
fn subdirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A name that stays inside its folder.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn load_olmes(rest: &str, dir: &Path) -> Result<McTask, BenchError> {
    let (task, regime) = rest
        .split_once(':')
        .filter(|(t, r)| plain_name(t) && plain_name(r))
        .ok_or_else(|| BenchError::Data {
            path: format!("olmes:{rest}"),
            reason: "expected olmes:TASK:REGIME, e.g. olmes:arc_easy:rc_5shot or \
                     olmes:hellaswag:mc_5shot"
                .into(),
        })?;
    let file = dir.join(task).join(regime).join("requests.jsonl.gz");
    if !file.is_file() {
        let tasks: Vec<String> = subdirs(dir).into_iter().filter(|t| t != "mmlu").collect();
        let reason = if tasks.is_empty() {
            format!("no OLMES data in {}: {FETCH_HINT}", dir.display())
        } else if !tasks.iter().any(|t| t == task) {
            format!(
                "no task `{task}` in {} (present: {}); {FETCH_HINT}",
                dir.display(),
                tasks.join(", ")
            )
        } else {
            format!(
                "no regime `{regime}` for {task} in {} (present: {}); {FETCH_HINT}",
                dir.display(),
                subdirs(&dir.join(task)).join(", ")
            )
        };
        return Err(data_err(&file, reason));
    }
    let config = file.with_file_name("config.json");
    if !config.is_file() {
        return Err(data_err(&config, format!("missing; {FETCH_HINT}")));
    }
    let (primary, offset) = read_olmes_config(&config)?;
    let text = read_text(&file)?;
    let rows = json_lines(&file, &text)?;
    let items = olmes_items(&file, &rows, offset)?;
    Ok(McTask {
        name: task.to_string(),
        regime: regime.to_string(),
        primary,
        items,
    })
}

/// One MMLU row.
struct MmluRow {
    question: String,
    choices: [String; 4],
    answer: usize,
}

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Python's `str.strip()`: also strips U+001C..U+001F, which Rust does not count as
/// white space (the prompt must match lm-evaluation-harness's byte for byte).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// `{question}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:`, the question stripped.
fn mmlu_block(r: &MmluRow) -> String {
    let mut s = py_strip(&r.question).to_string();
    for (letter, choice) in LETTERS.iter().zip(&r.choices) {
        s.push('\n');
        s.push_str(letter);
        s.push_str(". ");
        s.push_str(choice);
    }
    s.push_str("\nAnswer:");
    s
}

/// The 5-shot MMLU context of `question` (the template is in the module docs).
fn mmlu_context(subject: &str, shots: &[MmluRow], question: &MmluRow) -> String {
    let mut s = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    );
    for shot in shots {
        s.push_str(&mmlu_block(shot));
        s.push(' ');
        s.push_str(LETTERS[shot.answer]);
        s.push_str("\n\n");
    }
    s.push_str(&mmlu_block(question));
    s
}

const MMLU_FORMAT: &str =
    "each line is {\"question\": str, \"choices\": [4 str], \"answer\": 0-3, \
                           \"subject\": str}, as scripts/fetch-olmes.sh writes it";

fn read_mmlu(path: &Path) -> Result<Vec<MmluRow>, BenchError> {
    if !path.is_file() {
        return Err(data_err(path, format!("missing; {FETCH_HINT}")));
    }
    let text = read_text(path)?;
    let rows = json_lines(path, &text)?;
    rows.iter()
        .map(|(line, row)| {
            let err = |f: &str, what: &str| {
                data_err(
                    path,
                    format!("line {line}: field `{f}`: {what} ({MMLU_FORMAT})"),
                )
            };
            let question = match row.get("question") {
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(err("question", "expected a string")),
                None => return Err(err("question", "missing")),
            };
            let choices: [String; 4] = row
                .get("choices")
                .and_then(string_list)
                .and_then(|c| c.try_into().ok())
                .ok_or_else(|| err("choices", "missing or not a list of 4 strings"))?;
            let answer = row
                .get("answer")
                .and_then(Value::as_u64)
                .and_then(|a| usize::try_from(a).ok())
                .filter(|&a| a < 4)
                .ok_or_else(|| err("answer", "missing or not an integer from 0 to 3"))?;
            Ok(MmluRow {
                question,
                choices,
                answer,
            })
        })
        .collect()
}

/// `mmlu:SUBJECT` / `mmlu:all`. With a limit, stops reading subjects once it has
/// enough items.
fn load_mmlu(which: &str, dir: &Path, limit: Option<usize>) -> Result<McTask, BenchError> {
    let root = dir.join("mmlu");
    let known = subdirs(&root);
    if known.is_empty() {
        return Err(data_err(&root, format!("no MMLU data: {FETCH_HINT}")));
    }
    let subjects = if which == "all" {
        known
    } else if plain_name(which) && known.iter().any(|s| s == which) {
        vec![which.to_string()]
    } else {
        return Err(data_err(
            &root,
            format!(
                "unknown MMLU subject `{which}`: use mmlu:all or mmlu:SUBJECT with one of {}",
                known.join(", ")
            ),
        ));
    };
    let mut items = Vec::new();
    for subject in &subjects {
        if limit.is_some_and(|n| items.len() >= n) {
            break;
        }
        let dev_path = root.join(subject).join("dev.jsonl");
        let dev = read_mmlu(&dev_path)?;
        if dev.len() < MMLU_SHOTS {
            return Err(data_err(
                &dev_path,
                format!(
                    "{} rows, {MMLU_SHOTS} needed for the few-shot examples; {FETCH_HINT}",
                    dev.len()
                ),
            ));
        }
        let shots = &dev[..MMLU_SHOTS];
        for (row, q) in read_mmlu(&root.join(subject).join("test.jsonl"))?
            .iter()
            .enumerate()
        {
            let context = mmlu_context(subject, shots, q);
            items.push(McItem {
                id: format!("{subject}/{row}"),
                contexts: vec![context; LETTERS.len()],
                continuations: LETTERS.iter().map(|l| format!(" {l}")).collect(),
                gold: q.answer,
            });
        }
    }
    Ok(McTask {
        name: if which == "all" {
            "mmlu".into()
        } else {
            format!("mmlu_{which}")
        },
        regime: format!("{MMLU_SHOTS}shot"),
        primary: Metric::AccRaw,
        items,
    })
}

/// A system's score of one choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChoiceScore {
    /// Summed log-probability (natural log) of the continuation's tokens.
    pub logprob: f64,
    /// The continuation's length in the scoring model's tokens.
    pub tokens: usize,
    /// The continuation's length in UTF-8 bytes (for bits per byte in reports).
    pub bytes: usize,
    /// The continuation's length in characters (Unicode scalar values, as Python's
    /// `len`).
    pub chars: usize,
}

impl ChoiceScore {
    /// A score with `bytes` and `chars` measured on `continuation`.
    pub fn new(logprob: f64, tokens: usize, continuation: &str) -> Self {
        ChoiceScore {
            logprob,
            tokens,
            bytes: continuation.len(),
            chars: continuation.chars().count(),
        }
    }
}

/// Index of the largest score: ties go to the lowest index, NaN never wins; `None`
/// when there is none (empty, or every score NaN).
pub fn argmax(scores: impl IntoIterator<Item = f64>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in scores.into_iter().enumerate() {
        if s.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// The choice `metric` picks (see the module docs). `tokens` comes from `choices`;
/// character counts are measured on `continuations`, the texts that were scored, so
/// that they cannot disagree with them. A zero length gives -inf (or NaN for a zero
/// sum), which does not win; when no choice has a number, choice 0.
///
/// # Panics
/// When `choices` and `continuations` differ in length (a caller's bug: both come
/// from the same item).
pub fn predict(metric: Metric, choices: &[ChoiceScore], continuations: &[String]) -> usize {
    assert_eq!(
        choices.len(),
        continuations.len(),
        "one score per continuation"
    );
    let scores = choices.iter().zip(continuations).map(|(c, text)| {
        let len = match metric {
            Metric::AccRaw => return c.logprob,
            Metric::AccPerChar => text.chars().count(),
            Metric::AccPerToken => c.tokens,
            // lm-evaluation-harness scores `target_delimiter + choice` (delimiter " ")
            // and divides by `len(choice)`.
            Metric::AccNorm => text.strip_prefix(' ').unwrap_or(text).chars().count(),
        };
        c.logprob / len as f64
    });
    argmax(scores).unwrap_or(0)
}

/// Accuracy over items, with its 95% Wilson interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Accuracy {
    pub correct: usize,
    pub n: usize,
    pub estimate: Estimate,
}

impl Accuracy {
    pub fn new(correct: usize, n: usize) -> Self {
        Accuracy {
            correct,
            n,
            estimate: metrics::wilson(correct, n),
        }
    }

    /// From per-item outcomes (right or wrong).
    pub fn of(outcomes: &[bool]) -> Self {
        Accuracy::new(outcomes.iter().filter(|&&c| c).count(), outcomes.len())
    }
}

/// Per-item comparison of two systems on the same items: `(wins, losses)`, the items
/// `a` gets right and `b` wrong, and the reverse (ties, both right or both wrong, are
/// neither). The input of a sign test on the difference.
///
/// # Panics
/// When the two lists differ in length (they must cover the same items).
pub fn paired(a: &[bool], b: &[bool]) -> (usize, usize) {
    assert_eq!(a.len(), b.len(), "paired outcomes cover the same items");
    a.iter()
        .zip(b)
        .fold((0, 0), |(w, l), (&x, &y)| match (x, y) {
            (true, false) => (w + 1, l),
            (false, true) => (w, l + 1),
            _ => (w, l),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system temp dir for one test.
    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tutti-mc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn write_gz(path: &Path, text: &str) {
        use std::io::Write;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(path).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
    }

    fn req(doc_id: u64, idx: u64, label: u64, ctx: &str, cont: &str) -> String {
        serde_json::json!({
            "request_type": "loglikelihood",
            "doc": {"query": ctx},
            "request": {"context": ctx, "continuation": cont},
            "idx": idx, "task_name": "toy", "doc_id": doc_id, "native_id": null, "label": label,
        })
        .to_string()
    }

    const CONFIG: &str = r#"{"task_name": "toy", "task_config": {"primary_metric": "acc_per_char",
        "metric_kwargs": {"uncond_docid_offset": 1000000}}}"#;

    /// Two docs, choices out of order, the unconditional requests OLMES adds, and a
    /// Winogrande-style doc whose choices differ in context.
    fn olmes_fixture(dir: &Path) {
        let lines = [
            req(0, 1, 0, "Q: sky?\nA:", " green"),
            req(0, 0, 0, "Q: sky?\nA:", " blue"),
            req(1_000_000, 0, 0, "Answer:", " blue"),
            req(1_000_000, 1, 0, "Answer:", " green"),
            req(1, 0, 1, "Ann helped Bea because Ann", " was kind."),
            req(1, 1, 1, "Ann helped Bea because Bea", " was kind."),
            req(1, 2, 1, "Ann helped Bea because they", " was kind."),
        ];
        write_gz(
            &dir.join("toy/rc_0shot/requests.jsonl.gz"),
            &(lines.join("\n") + "\n"),
        );
        write(&dir.join("toy/rc_0shot/config.json"), CONFIG);
    }

    #[test]
    fn olmes_requests_group_by_doc_skip_uncond_and_keep_per_choice_contexts() {
        let dir = temp_dir("olmes");
        olmes_fixture(&dir);
        let task = load_from("olmes:toy:rc_0shot", None, &dir).unwrap();
        assert_eq!(
            (task.name.as_str(), task.regime.as_str(), task.primary),
            ("toy", "rc_0shot", Metric::AccPerChar)
        );
        assert_eq!(task.items.len(), 2, "the unconditional doc is skipped");
        let a = &task.items[0];
        assert_eq!(a.id, "0");
        assert_eq!(a.continuations, [" blue", " green"], "ordered by idx");
        assert_eq!(a.shared_context(), Some("Q: sky?\nA:"));
        assert_eq!(a.gold, 0);
        let b = &task.items[1];
        assert_eq!(b.id, "1");
        assert_eq!(b.shared_context(), None);
        assert_eq!(
            b.contexts,
            [
                "Ann helped Bea because Ann",
                "Ann helped Bea because Bea",
                "Ann helped Bea because they"
            ]
        );
        assert_eq!(b.continuations, [" was kind."; 3]);
        assert_eq!(b.gold, 1);
        assert_eq!(b.choices(), 3);

        // The same file passed by path reads the config beside it.
        let path = dir.join("toy/rc_0shot/requests.jsonl.gz");
        let by_path = load_from(path.to_str().unwrap(), Some(1), &dir).unwrap();
        assert_eq!(by_path.items, task.items[..1]);
        assert_eq!(
            (by_path.regime.as_str(), by_path.primary),
            ("rc_0shot", Metric::AccPerChar)
        );

        // Without a config, OLMES's usual offset still drops the unconditional doc.
        let bare = dir.join("bare.jsonl");
        write(&bare, &zcat(&path));
        let t = load_from(bare.to_str().unwrap(), None, &dir).unwrap();
        assert_eq!(t.items, task.items);
        assert_eq!((t.name.as_str(), t.primary), ("toy", Metric::AccRaw));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn zcat(path: &Path) -> String {
        read_text(path).unwrap()
    }

    #[test]
    fn olmes_without_an_offset_keeps_every_doc() {
        let dir = temp_dir("olmes-null");
        let lines = [req(0, 0, 1, "c", " x"), req(0, 1, 1, "c", " y")];
        write_gz(&dir.join("t/r/requests.jsonl.gz"), &lines.join("\n"));
        write(
            &dir.join("t/r/config.json"),
            r#"{"task_config": {"primary_metric": "acc_raw", "metric_kwargs": {"uncond_docid_offset": null}}}"#,
        );
        let task = load_from("olmes:t:r", None, &dir).unwrap();
        assert_eq!(task.items.len(), 1);
        assert_eq!(task.items[0].gold, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn reason(e: BenchError) -> String {
        e.to_string()
    }

    #[test]
    fn olmes_errors_name_the_line_field_and_fix() {
        let dir = temp_dir("olmes-err");
        write(&dir.join("t/r/config.json"), CONFIG);
        let cases: [(&[String], &str); 5] = [
            (
                &[
                    req(0, 0, 0, "c", " x"),
                    r#"{"doc_id": 0, "idx": 1, "label": 0}"#.into(),
                ],
                "line 2: field `request.context`: missing",
            ),
            (
                &[req(0, 0, 0, "c", " x"), req(0, 1, 1, "c", " y")],
                "line 2: doc_id 0: field `label`: 1 but line 1 says 0",
            ),
            (
                &[req(3, 0, 0, "c", " x"), req(3, 2, 0, "c", " y")],
                "line 2: doc_id 3: field `idx`: 2 where 1 was expected",
            ),
            (
                &[req(0, 0, 5, "c", " x"), req(0, 1, 5, "c", " y")],
                "line 1: doc_id 0: field `label`: 5 is out of range for 2 choices",
            ),
            (
                &[req(0, 0, 0, "c", " x"), "{not json".into()],
                "line 2: not valid JSON",
            ),
        ];
        for (lines, want) in cases {
            write_gz(&dir.join("t/r/requests.jsonl.gz"), &lines.join("\n"));
            let e = reason(load_from("olmes:t:r", None, &dir).unwrap_err());
            assert!(e.contains(want), "{e}\nshould contain: {want}");
            assert!(e.contains("requests.jsonl.gz"), "{e} names the file");
        }
        // A missing field's message shows the expected layout.
        write_gz(
            &dir.join("t/r/requests.jsonl.gz"),
            r#"{"request": {}, "idx": 0, "label": 0}"#,
        );
        let e = reason(load_from("olmes:t:r", None, &dir).unwrap_err());
        assert!(
            e.contains("line 1: field `doc_id`: missing") && e.contains("\"doc_id\": int"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_olmes_data_names_the_fetch_script() {
        let dir = temp_dir("olmes-missing");
        let e = reason(load_from("olmes:arc_easy:rc_5shot", None, &dir).unwrap_err());
        assert!(
            e.contains("scripts/fetch-olmes.sh") && e.contains("no OLMES data"),
            "{e}"
        );
        olmes_fixture(&dir);
        let e = reason(load_from("olmes:toy:mc_5shot", None, &dir).unwrap_err());
        assert!(
            e.contains("no regime `mc_5shot`") && e.contains("present: rc_0shot"),
            "{e}"
        );
        let e = reason(load_from("olmes:piqa:rc_5shot", None, &dir).unwrap_err());
        assert!(
            e.contains("no task `piqa`") && e.contains("scripts/fetch-olmes.sh"),
            "{e}"
        );
        let e = reason(load_from("olmes:toy", None, &dir).unwrap_err());
        assert!(e.contains("expected olmes:TASK:REGIME"), "{e}");
        let e = reason(load_from("olmes:../x:y", None, &dir).unwrap_err());
        assert!(e.contains("expected olmes:TASK:REGIME"), "{e}");
        let e = reason(load_from("mmlu:all", None, &dir).unwrap_err());
        assert!(
            e.contains("no MMLU data") && e.contains("scripts/fetch-olmes.sh"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tutti_lines_read_shared_or_per_choice_contexts() {
        let dir = temp_dir("tutti");
        let path = dir.join("mine.jsonl");
        write(
            &path,
            concat!(
                r#"{"id": "cap", "context": "The capital of France is", "continuations": [" Paris", " Rome"], "gold": 0, "metric": "acc_norm"}"#,
                "\n\n",
                r#"{"contexts": ["I fed the cat", "I fed the rock"], "continuations": [".", "."], "gold": 0}"#,
                "\n",
                r#"{"id": 7, "context": "2 + 2 =", "continuations": [" 3", " 4", " 5"], "gold": 1}"#,
                "\n"
            ),
        );
        let task = load_from(path.to_str().unwrap(), None, &dir).unwrap();
        assert_eq!(
            (task.name.as_str(), task.regime.as_str(), task.primary),
            ("mine", "custom", Metric::AccNorm)
        );
        let ids: Vec<&str> = task.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            ["cap", "3", "7"],
            "an item without an id gets its line number"
        );
        assert_eq!(task.items[0].contexts, ["The capital of France is"; 2]);
        assert_eq!(task.items[1].shared_context(), None);
        assert_eq!(task.items[2].gold, 1);
        let limited = load_from(path.to_str().unwrap(), Some(2), &dir).unwrap();
        assert_eq!(limited.items, task.items[..2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tutti_line_errors_name_the_line_field_and_fix() {
        let dir = temp_dir("tutti-err");
        let path = dir.join("bad.jsonl");
        let ok = r#"{"context": "c", "continuations": [" a", " b"], "gold": 0}"#;
        let cases = [
            (r#"{"context": "c", "continuations": [" a", " b"], "gold": 2}"#, "line 2: field `gold`: 2 is out of range for 2 choices"),
            (r#"{"context": "c", "continuations": [" a"], "gold": 0}"#, "line 2: field `continuations`: 1 choice(s); give at least 2"),
            (r#"{"context": "c", "continuations": [" a", 3], "gold": 0}"#, "line 2: field `continuations`: expected a list of strings"),
            (r#"{"contexts": ["c"], "continuations": [" a", " b"], "gold": 0}"#, "line 2: field `contexts`: 1 contexts for 2 continuations"),
            (r#"{"context": "c", "contexts": ["c", "d"], "continuations": [" a", " b"], "gold": 0}"#, "line 2: field `contexts`: give `context` or `contexts`, not both"),
            (r#"{"continuations": [" a", " b"], "gold": 0}"#, "line 2: field `context`: missing"),
            (r#"{"context": "c", "continuations": [" a", " b"], "gold": -1}"#, "line 2: field `gold`: -1 is not a non-negative integer"),
            (r#"{"context": "c", "continuation": [" a", " b"], "gold": 0}"#, "line 2: field `continuation`: unknown field"),
            (r#"{"context": "c", "continuations": [" a", " b"], "gold": 0, "metric": "acc"}"#, "line 2: field `metric`: unknown metric `acc` (known: acc_raw, acc_per_char, acc_per_token, acc_norm)"),
            (r#"{"id": "1", "context": "c", "continuations": [" a", " b"], "gold": 0}"#, "line 2: field `id`: `1` is also the id of line 1"),
            ("[1, 2]", "line 2: not a JSON object"),
        ];
        for (bad, want) in cases {
            write(&path, &format!("{ok}\n{bad}\n"));
            let e = reason(load_from(path.to_str().unwrap(), None, &dir).unwrap_err());
            assert!(e.contains(want), "{e}\nshould contain: {want}");
            assert!(e.contains("bad.jsonl"), "{e} names the file");
        }
        // Field errors also show the expected line.
        write(&path, r#"{"context": "c", "continuations": [" a", " b"]}"#);
        let e = reason(load_from(path.to_str().unwrap(), None, &dir).unwrap_err());
        assert!(
            e.contains("line 1: field `gold`: missing") && e.contains("\"gold\": int"),
            "{e}"
        );
        let with = |m: &str| ok.replace(r#""gold": 0"#, &format!(r#""gold": 0, "metric": "{m}""#));
        write(
            &path,
            &format!("{}\n{}\n", with("acc_norm"), with("acc_raw")),
        );
        let e = reason(load_from(path.to_str().unwrap(), None, &dir).unwrap_err());
        assert!(
            e.contains("line 2: field `metric`: `acc_raw` but line 1 says `acc_norm`"),
            "{e}"
        );
        write(&path, "\n\n");
        let e = reason(load_from(path.to_str().unwrap(), None, &dir).unwrap_err());
        assert!(e.contains("no items"), "{e}");
        let e = reason(load_from("nope.jsonl", None, &dir).unwrap_err());
        assert!(
            e.contains("no such file") && e.contains("olmes:TASK:REGIME"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn mmlu_line(q: &str, choices: [&str; 4], answer: usize, subject: &str) -> String {
        serde_json::json!({"question": q, "choices": choices, "answer": answer, "subject": subject})
            .to_string()
    }

    /// Two subjects with 5 dev rows and 1-2 test rows each.
    fn mmlu_fixture(dir: &Path) {
        for (subject, tests) in [("college_physics", 2), ("astronomy", 1)] {
            let dev: Vec<String> = (0..6)
                .map(|i| mmlu_line(&format!("Dev {i}?"), ["w", "x", "y", "z"], i % 4, subject))
                .collect();
            write(
                &dir.join(format!("mmlu/{subject}/dev.jsonl")),
                &dev.join("\n"),
            );
            let test: Vec<String> = (0..tests)
                .map(|i| {
                    mmlu_line(
                        &format!("  Test {i}?\n"),
                        ["1", "2", " 3", "4"],
                        3 - i,
                        subject,
                    )
                })
                .collect();
            write(
                &dir.join(format!("mmlu/{subject}/test.jsonl")),
                &test.join("\n"),
            );
        }
    }

    #[test]
    fn mmlu_prompt_is_lm_eval_harness_five_shot() {
        let dir = temp_dir("mmlu");
        mmlu_fixture(&dir);
        let task = load_from("mmlu:all", None, &dir).unwrap();
        assert_eq!(
            (task.name.as_str(), task.regime.as_str(), task.primary),
            ("mmlu", "5shot", Metric::AccRaw)
        );
        let ids: Vec<&str> = task.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            ["astronomy/0", "college_physics/0", "college_physics/1"],
            "subjects sorted, rows in order"
        );
        let item = &task.items[2];
        let want =
            "The following are multiple choice questions (with answers) about college physics.\n\n\
                    Dev 0?\nA. w\nB. x\nC. y\nD. z\nAnswer: A\n\n\
                    Dev 1?\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\n\
                    Dev 2?\nA. w\nB. x\nC. y\nD. z\nAnswer: C\n\n\
                    Dev 3?\nA. w\nB. x\nC. y\nD. z\nAnswer: D\n\n\
                    Dev 4?\nA. w\nB. x\nC. y\nD. z\nAnswer: A\n\n\
                    Test 1?\nA. 1\nB. 2\nC.  3\nD. 4\nAnswer:";
        assert_eq!(item.shared_context(), Some(want));
        assert_eq!(item.continuations, [" A", " B", " C", " D"]);
        assert_eq!(item.gold, 2);
        assert_eq!(task.items[0].gold, 3);
        assert!(task.items[0].contexts[0].starts_with(
            "The following are multiple choice questions (with answers) about astronomy.\n\nDev 0?"
        ));

        let one = load_from("mmlu:college_physics", Some(1), &dir).unwrap();
        assert_eq!(one.name, "mmlu_college_physics");
        assert_eq!(one.items, task.items[1..2]);
        let e = reason(load_from("mmlu:anatomy", None, &dir).unwrap_err());
        assert!(
            e.contains("unknown MMLU subject `anatomy`")
                && e.contains("astronomy, college_physics"),
            "{e}"
        );

        write(
            &dir.join("mmlu/astronomy/test.jsonl"),
            &mmlu_line("q", ["a", "b", "c", "d"], 4, "astronomy"),
        );
        let e = reason(load_from("mmlu:astronomy", None, &dir).unwrap_err());
        assert!(
            e.contains("test.jsonl") && e.contains("line 1: field `answer`"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn python_strip_also_strips_information_separators() {
        assert_eq!(py_strip("\u{1f} q \u{a0}\n"), "q");
        assert_eq!(py_strip("a b"), "a b");
    }

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.name())
            );
        }
        assert!("acc"
            .parse::<Metric>()
            .unwrap_err()
            .contains("known: acc_raw"));
    }

    fn conts(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn score(logprob: f64, tokens: usize, text: &str) -> ChoiceScore {
        ChoiceScore::new(logprob, tokens, text)
    }

    #[test]
    fn each_metric_normalises_by_its_length() {
        // " a" (2 chars, 1 after the space), " bbbb" (5 / 4), 1 and 4 tokens.
        let c = conts(&[" a", " bbbb"]);
        let s = [score(-2.0, 1, " a"), score(-6.0, 4, " bbbb")];
        assert_eq!(predict(Metric::AccRaw, &s, &c), 0); // -2 > -6
        assert_eq!(predict(Metric::AccPerChar, &s, &c), 0); // -2/2 = -1 > -6/5 = -1.2
        assert_eq!(predict(Metric::AccPerToken, &s, &c), 1); // -2/1 < -6/4
        assert_eq!(predict(Metric::AccNorm, &s, &c), 1); // -2/1 < -6/4
                                                         // per char vs norm differ on the leading space: -3/4 vs -5/6 with the space,
                                                         // -3/3 vs -5/5 without.
        let c = conts(&[" abc", " abcde"]);
        let s = [score(-3.0, 1, " abc"), score(-5.0, 1, " abcde")];
        assert_eq!(predict(Metric::AccPerChar, &s, &c), 0);
        assert_eq!(
            predict(Metric::AccNorm, &s, &c),
            0,
            "a tie goes to the lowest index"
        );
        let s = [score(-3.0, 1, " abc"), score(-4.9, 1, " abcde")];
        assert_eq!(predict(Metric::AccNorm, &s, &c), 1);
        assert_eq!(predict(Metric::AccPerChar, &s, &c), 0); // -0.75 > -0.8167
                                                            // Characters, not bytes: "é" is one (by bytes, -3.3/5 would beat -4/4).
        let c = conts(&[" éé", " abc"]);
        let s = [score(-3.3, 1, " éé"), score(-4.0, 1, " abc")];
        assert_eq!((s[0].bytes, s[0].chars), (5, 3));
        assert_eq!(predict(Metric::AccPerChar, &s, &c), 1); // -3.3/3 < -4/4
                                                            // A continuation without a leading space keeps all its characters.
        let c = conts(&["ab", "abcd"]);
        let s = [score(-2.0, 1, "ab"), score(-3.0, 1, "abcd")];
        assert_eq!(predict(Metric::AccNorm, &s, &c), 1); // -1 < -0.75
    }

    #[test]
    fn ties_go_low_and_nan_never_wins() {
        let c = conts(&[" x", " y", " z"]);
        for m in Metric::ALL {
            let s = [
                score(-1.0, 1, " x"),
                score(-1.0, 1, " y"),
                score(-1.0, 1, " z"),
            ];
            assert_eq!(predict(m, &s, &c), 0, "{m}");
            let s = [
                score(f64::NAN, 1, " x"),
                score(-5.0, 1, " y"),
                score(-5.0, 1, " z"),
            ];
            assert_eq!(predict(m, &s, &c), 1, "{m}");
            let s = [
                score(-9.0, 1, " x"),
                score(f64::NAN, 1, " y"),
                score(-5.0, 1, " z"),
            ];
            assert_eq!(predict(m, &s, &c), 2, "{m}");
            let s = [score(f64::NAN, 1, " x"); 3];
            assert_eq!(predict(m, &s, &c), 0, "{m}: nothing to pick");
        }
        // A zero-token score divides to -inf (or NaN for 0/0): it never wins.
        let s = [
            score(-1.0, 0, " x"),
            score(0.0, 0, " y"),
            score(-50.0, 1, " z"),
        ];
        assert_eq!(predict(Metric::AccPerToken, &s, &c), 2);
        assert_eq!(argmax([f64::NEG_INFINITY, f64::NEG_INFINITY]), Some(0));
        assert_eq!(argmax([f64::NAN, f64::NAN]), None);
        assert_eq!(argmax([]), None);
        assert_eq!(argmax([1.0, f64::INFINITY, f64::NAN]), Some(1));
    }

    #[test]
    fn accuracy_and_paired_counts() {
        let a = [true, true, false, false, true];
        let b = [true, false, true, false, false];
        let acc = Accuracy::of(&a);
        assert_eq!((acc.correct, acc.n), (3, 5));
        assert_eq!(acc.estimate, metrics::wilson(3, 5));
        assert_eq!(paired(&a, &b), (2, 1));
        assert_eq!(paired(&b, &a), (1, 2));
        assert_eq!(paired(&[], &[]), (0, 0));
        assert_eq!(Accuracy::of(&[]).estimate.mean, 0.0);
    }

    #[test]
    fn checked_in_tiny_fixture_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mc/tiny.jsonl");
        let task = load_from(path.to_str().unwrap(), None, Path::new("unused")).unwrap();
        assert_eq!(task.name, "tiny");
        assert_eq!(task.items.len(), 6);
        assert!(task.items.iter().all(|i| (2..=4).contains(&i.choices())));
    }
}
