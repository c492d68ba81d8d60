//! Short-answer QA: a JSONL file of `{"question": ..., "answers": [aliases...]}` rows,
//! a fixed 5-shot `Q:/A:` prompt (raw, no chat template), greedy decoding stopped at the
//! end of the first line, scored by normalised exact match against any alias
//! (lowercase, punctuation and articles removed, spaces collapsed).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, Ensemble, Generation, PromptMode};

/// Errors of the QA harness.
#[derive(Debug, thiserror::Error)]
pub enum QaError {
    #[error("{path}: {reason}")]
    Data { path: String, reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One question with its accepted answers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QaItem {
    pub question: String,
    pub answers: Vec<String>,
}

/// The worked examples in front of every question (none of them is in the data set).
pub const SHOTS: [(&str, &str); 5] = [
    ("What is the capital of Kazakhstan?", "Astana"),
    ("What is 3 plus 4?", "7"),
    ("What is the opposite of \"near\"?", "far"),
    ("How many legs does a dog have?", "4"),
    ("What color is snow?", "white"),
];

/// Longest answer in tokens; answers are a few words.
pub const MAX_ANSWER_TOKENS: usize = 16;

/// Reads a JSONL file (blank lines ignored).
pub fn load_jsonl(path: &Path) -> Result<Vec<QaItem>, QaError> {
    let err = |reason: String| QaError::Data {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: QaItem =
            serde_json::from_str(line).map_err(|e| err(format!("line {}: {e}", n + 1)))?;
        if item.question.trim().is_empty() || item.answers.is_empty() {
            return Err(err(format!(
                "line {}: needs a question and at least one answer",
                n + 1
            )));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(err("no items".into()));
    }
    Ok(items)
}

/// The 5-shot prompt for `question`; the model continues after `A:`.
pub fn prompt(question: &str) -> String {
    let mut p = String::new();
    for (q, a) in SHOTS {
        p += &format!("Q: {q}\nA: {a}\n\n");
    }
    p += &format!("Q: {}\nA:", question.trim());
    p
}

/// Lowercase, punctuation to spaces, articles dropped, whitespace collapsed.
pub fn normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let cleaned: String = lower
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `prediction` matches one of `answers` after normalisation.
pub fn is_correct(prediction: &str, answers: &[String]) -> bool {
    let p = normalize(prediction);
    !p.is_empty() && answers.iter().any(|a| normalize(a) == p)
}

/// Which members answer: one alone, or all together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    Solo(usize),
    Ensemble,
}

/// Scores and speed of one runner over the items.
#[derive(Clone, Debug, Serialize)]
pub struct QaScore {
    pub name: String,
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
    /// Generated tokens per second, each answer's first token excluded.
    pub tokens_per_s: f64,
    pub ms_per_token: f64,
    /// Share of steps where more than one member was consulted.
    pub ensembled_share: f64,
    pub rollbacks: usize,
    /// Mean time share of alignment + combination + feedback in a step.
    pub overhead_share: f64,
    pub wall_s: f64,
    /// Per item: the answer given and whether it was right.
    pub predictions: Vec<(String, bool)>,
}

/// Runs `runner` over `items` (greedy, stop at the end of the line); the ensemble's
/// other settings (alignment, top-k, gate, weights) are used as they are.
pub fn run(
    ens: &mut Ensemble,
    runner: Runner,
    items: &[QaItem],
    progress: &mut dyn FnMut(usize),
) -> Result<QaScore, QaError> {
    let saved = ens.settings().clone();
    let mut s = saved.clone();
    s.sampling = crate::engine::Sampling::Greedy;
    s.stop.max_tokens = MAX_ANSWER_TOKENS;
    s.stop.stop_strings = vec!["\n".into()];
    ens.set_settings(s)?;
    let result = run_items(ens, runner, items, progress);
    ens.set_settings(saved)?;
    result
}

fn run_items(
    ens: &mut Ensemble,
    runner: Runner,
    items: &[QaItem],
    progress: &mut dyn FnMut(usize),
) -> Result<QaScore, QaError> {
    let name = match runner {
        Runner::Solo(i) => ens.members()[i].name().to_string(),
        Runner::Ensemble => "ensemble".to_string(),
    };
    let t0 = Instant::now();
    let (mut correct, mut rest_tokens, mut rest_ms) = (0usize, 0usize, 0.0f64);
    let (mut steps, mut ensembled, mut rollbacks) = (0usize, 0usize, 0usize);
    let (mut overhead_ms, mut step_ms) = (0.0f64, 0.0f64);
    let mut predictions = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let p = prompt(&item.question);
        let out: Generation = match runner {
            Runner::Solo(i) => ens.generate_solo(i, &p, PromptMode::Raw, &mut |_| {})?,
            Runner::Ensemble => ens.generate(&p, PromptMode::Raw, &mut |_| {})?,
        };
        let answer = out.text.trim().to_string();
        let ok = is_correct(&answer, &item.answers);
        correct += usize::from(ok);
        predictions.push((answer, ok));
        let rest = out.steps.len().saturating_sub(1);
        rest_tokens += rest;
        rest_ms += out.timing.ms_per_token * rest as f64;
        steps += out.steps.len();
        ensembled += out.ensembled_steps;
        rollbacks += out.rollbacks();
        for st in out.steps.iter().skip(1) {
            overhead_ms += st.align_combine_ms + st.feedback_ms;
            step_ms += st.total_ms;
        }
        progress(n + 1);
    }
    let total = items.len();
    Ok(QaScore {
        name,
        correct,
        total,
        accuracy: correct as f64 / total.max(1) as f64,
        tokens_per_s: if rest_ms > 0.0 {
            rest_tokens as f64 * 1e3 / rest_ms
        } else {
            0.0
        },
        ms_per_token: if rest_tokens > 0 {
            rest_ms / rest_tokens as f64
        } else {
            0.0
        },
        ensembled_share: if steps > 0 {
            ensembled as f64 / steps as f64
        } else {
            0.0
        },
        rollbacks,
        overhead_share: if step_ms > 0.0 {
            overhead_ms / step_ms
        } else {
            0.0
        },
        wall_s: t0.elapsed().as_secs_f64(),
        predictions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_matching() {
        assert_eq!(normalize("  The Pacific-Ocean. "), "pacific ocean");
        assert!(is_correct("the Nile.", &["Nile".into()]));
        assert!(is_correct("Seven", &["7".into(), "seven".into()]));
        assert!(!is_correct("Paris, France", &["Paris".into()]));
        assert!(!is_correct("", &["".into()]));
    }

    #[test]
    fn prompt_ends_with_the_question() {
        let p = prompt("What is 2 plus 2?");
        assert!(p.ends_with("Q: What is 2 plus 2?\nA:"));
        assert_eq!(p.matches("Q: ").count(), 6);
    }
}
