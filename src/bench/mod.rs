//! `tutti bench`: run every member alone and the ensemble on the same items, with the
//! same settings, in one run, and report quality and speed side by side.
//!
//! A [`Task`] is a list of [`BenchItem`]s (prompt text and reference), decoding rules
//! ([`Decode`]) and a [`Judge`] that scores one output. [`runner`] generates every item
//! for each system (a member alone, or the ensemble), appends one [`runner::ItemRow`]
//! per item to the `--out` JSONL file (so an interrupted run resumes where it stopped),
//! and [`report`] turns rows into the final table, a Markdown report and an SVG plot.
//!
//! Tasks: [`gsm8k`] (few-shot chain of thought, numeric exact match), [`qa`] (short
//! open-domain answers, normalised exact match against aliases) and [`mixinstruct`]
//! (instruction following, ROUGE-L and BERTScore). [`mc`] holds the items and metrics
//! of multiple-choice benchmarks (OLMES tasks, MMLU), which are scored by
//! log-likelihood rather than generated.

use std::collections::BTreeMap;

use crate::engine::{EngineError, Message, Prompt};

pub mod bert;
pub mod data;
pub mod gsm8k;
pub mod mc;
pub mod metrics;
pub mod mixinstruct;
pub mod qa;
pub mod report;
#[cfg(feature = "route")]
pub mod route;
pub mod runner;
pub mod speed;

/// Errors of the bench harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("{path}: {reason}")]
    Data { path: String, reason: String },
    #[error("results file {path}: {reason}")]
    Out { path: String, reason: String },
    #[error("BERTScore encoder: {0}")]
    Encoder(String),
    #[error("route: {0}")]
    Route(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One item to generate for.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchItem {
    /// Stable id (from the data when it has one, else the row number).
    pub id: String,
    /// The full prompt text (few-shot examples included).
    pub prompt: String,
    pub reference: Reference,
}

/// What an output is scored against.
#[derive(Clone, Debug, PartialEq)]
pub enum Reference {
    /// A normalised number (GSM8K).
    Number(String),
    /// Accepted answers (QA).
    Aliases(Vec<String>),
    /// A reference text (MixInstruct).
    Text(String),
}

/// Whether prompts go through each member's chat template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptMode {
    /// The member's chat template when it has one, else the raw text.
    Chat,
    /// The text as is, with the member's BOS rule.
    Raw,
}

impl PromptMode {
    /// The engine prompt for `text`.
    pub fn prompt(self, text: &str) -> Prompt {
        match self {
            PromptMode::Chat => Prompt::Chat(vec![Message::user(text)]),
            PromptMode::Raw => Prompt::Raw(text.to_string()),
        }
    }
}

/// How each item is decoded (always greedy: benches compare systems, not samples).
#[derive(Clone, Debug, PartialEq)]
pub struct Decode {
    pub mode: PromptMode,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

/// The score of one output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    /// What was compared with the reference (the extracted answer, or the text).
    pub extracted: String,
    /// Right or wrong, for exact-match tasks.
    pub correct: Option<bool>,
    /// Continuous metrics by name (e.g. `rouge_l`, `bertscore_f1`).
    pub metrics: BTreeMap<String, f64>,
}

/// Scores outputs of one task.
pub trait Judge {
    /// Names of the continuous metrics it reports (empty for exact-match tasks).
    fn metric_names(&self) -> Vec<String>;
    fn judge(&mut self, item: &BenchItem, output: &str) -> Result<Judgement, BenchError>;
}

/// A benchmark ready to run.
pub struct Task {
    /// `gsm8k`, `qa`, `mixinstruct`.
    pub name: String,
    pub items: Vec<BenchItem>,
    pub decode: Decode,
    /// Everything besides the members that changes the outputs (shots, seed, split,
    /// data file...); part of the configuration hash stored in every row.
    pub config: String,
    pub judge: Box<dyn Judge>,
}

impl Task {
    /// Drops the first `n` items (kept for another use, e.g. training a route policy).
    pub fn skip(&mut self, n: usize) {
        self.items.drain(..n.min(self.items.len()));
    }

    /// Keeps the first `limit` items.
    pub fn limit(&mut self, limit: Option<usize>) {
        if let Some(n) = limit {
            self.items.truncate(n);
        }
    }
}

/// Shuffles `items` deterministically (Fisher–Yates with a seeded generator).
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
}
