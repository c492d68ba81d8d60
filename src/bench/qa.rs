//! Short-answer open QA in the TriviaQA / Natural Questions style: a few-shot
//! `Q: ... / A: ...` prompt (raw, no chat template), greedy, stopped at the end of the
//! first line, scored by normalised exact match against any accepted answer
//! (lowercase, punctuation and the articles a/an/the removed, spaces collapsed).
//!
//! Rows: `{"question": ..., "answers": [aliases...]}` (tutti's own format),
//! TriviaQA's `{"question", "answer": {"value", "aliases", "normalized_aliases"}}`
//! (also with capitalised keys, as in the original JSON), or NQ-open's
//! `{"question", "answer": [...]}`. The shots come from `--shots-file` (same formats),
//! else from the first rows of the data, which are then not scored.

use std::collections::BTreeMap;

use serde_json::Value;

use super::data::{self, Row};
use super::PromptMode;
use super::{BenchError, BenchItem, Decode, Judge, Judgement, Reference, Task};

/// Default number of worked examples.
pub const DEFAULT_SHOTS: usize = 5;
/// Longest answer in tokens; answers are a few words.
pub const MAX_ANSWER_TOKENS: usize = 16;

/// One question with its accepted answers.
#[derive(Clone, Debug, PartialEq)]
pub struct QaRow {
    pub id: Option<String>,
    pub question: String,
    pub answers: Vec<String>,
}

/// Options of a QA run.
#[derive(Clone, Debug)]
pub struct QaOptions {
    pub data: String,
    pub shots_file: Option<String>,
    pub shots: usize,
    pub seed: u64,
    pub shuffle: bool,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(xs) => xs.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Reads one row in any of the accepted layouts.
pub fn parse_row(row: &Row, n: usize) -> Result<QaRow, String> {
    let question = data::text_field(row, &["question", "Question"], n)?;
    let mut answers = Vec::new();
    if let Some(a) = row.get("answers") {
        answers = strings(a);
    } else if let Some(a) = row.get("answer").or_else(|| row.get("Answer")) {
        match a {
            Value::Object(m) => {
                for key in [
                    "value",
                    "Value",
                    "aliases",
                    "Aliases",
                    "normalized_aliases",
                    "NormalizedAliases",
                ] {
                    if let Some(v) = m.get(key) {
                        answers.extend(strings(v));
                    }
                }
            }
            other => answers = strings(other),
        }
    }
    answers.retain(|a| !a.trim().is_empty());
    answers.dedup();
    if question.trim().is_empty() || answers.is_empty() {
        return Err(format!(
            "row {}: needs a question and at least one answer (`answers`, `answer` or TriviaQA's `answer.aliases`)",
            n + 1
        ));
    }
    let id = ["id", "question_id", "QuestionId"]
        .iter()
        .find_map(|k| row.get(*k))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    Ok(QaRow {
        id,
        question: question.trim().to_string(),
        answers,
    })
}

/// Reads every row of a QA file.
pub fn load(spec: &str) -> Result<Vec<QaRow>, BenchError> {
    let path = data::resolve(spec, "validation")?;
    let shown = path.display().to_string();
    data::read_rows(&path)?
        .iter()
        .enumerate()
        .map(|(n, r)| {
            parse_row(r, n).map_err(|reason| BenchError::Data {
                path: shown.clone(),
                reason,
            })
        })
        .collect()
}

/// The few-shot prompt for `question`; the model continues after `A:`.
pub fn prompt(shots: &[QaRow], question: &str) -> String {
    let mut p = String::new();
    for s in shots {
        p += &format!("Q: {}\nA: {}\n\n", s.question, s.answers[0]);
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

struct QaJudge;

impl Judge for QaJudge {
    fn metric_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn judge(&mut self, item: &BenchItem, output: &str) -> Result<Judgement, BenchError> {
        let extracted = output.trim().to_string();
        let correct = match &item.reference {
            Reference::Aliases(a) => is_correct(&extracted, a),
            _ => false,
        };
        Ok(Judgement {
            extracted,
            correct: Some(correct),
            metrics: BTreeMap::new(),
        })
    }
}

/// Builds the task: shots from the shots file or the first rows, the rest scored.
pub fn task(opts: &QaOptions) -> Result<Task, BenchError> {
    let mut rows = load(&opts.data)?;
    let shots: Vec<QaRow> = match &opts.shots_file {
        Some(f) => {
            let mut s = load(f)?;
            s.truncate(opts.shots);
            s
        }
        None => {
            let n = opts.shots.min(rows.len().saturating_sub(1));
            rows.drain(..n).collect()
        }
    };
    let offset = if opts.shots_file.is_some() {
        0
    } else {
        shots.len()
    };
    let mut items: Vec<BenchItem> = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| BenchItem {
            id: r.id.unwrap_or_else(|| (i + offset).to_string()),
            prompt: prompt(&shots, &r.question),
            reference: Reference::Aliases(r.answers),
        })
        .collect();
    if opts.shuffle {
        super::shuffle(&mut items, opts.seed);
    }
    Ok(Task {
        name: "qa".into(),
        items,
        decode: Decode {
            mode: PromptMode::Raw,
            max_tokens: MAX_ANSWER_TOKENS,
            stop: vec!["\n".into()],
        },
        config: format!(
            "data={} shots_file={:?} shots={}",
            opts.data, opts.shots_file, opts.shots
        ),
        judge: Box::new(QaJudge),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> Row {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn normalisation_and_matching() {
        assert_eq!(normalize("  The Pacific-Ocean. "), "pacific ocean");
        assert_eq!(normalize("An  apple, a PEAR!"), "apple pear");
        assert_eq!(normalize("Théâtre"), "théâtre");
        assert!(is_correct("the Nile.", &["Nile".into()]));
        assert!(is_correct("Seven", &["7".into(), "seven".into()]));
        assert!(!is_correct("Paris, France", &["Paris".into()]));
        assert!(!is_correct("", &["".into()]));
        assert!(!is_correct("The", &["a".into()]));
    }

    #[test]
    fn accepts_triviaqa_and_nq_layouts() {
        let ours = parse_row(&row(r#"{"question": "Q?", "answers": ["x", "y"]}"#), 0).unwrap();
        assert_eq!(ours.answers, vec!["x", "y"]);
        let tqa = parse_row(
            &row(r#"{"question": "Q?", "question_id": "tc_1", "answer": {"value": "Paris", "aliases": ["Paris", "Paree"], "normalized_aliases": ["paris"]}}"#),
            0,
        )
        .unwrap();
        assert_eq!(tqa.id.as_deref(), Some("tc_1"));
        assert!(tqa.answers.contains(&"Paree".to_string()));
        let orig = parse_row(
            &row(r#"{"Question": "Q?", "QuestionId": "q9", "Answer": {"Value": "V", "Aliases": ["V", "W"]}}"#),
            0,
        )
        .unwrap();
        assert_eq!(orig.answers[0], "V");
        let nq = parse_row(&row(r#"{"question": "Q?", "answer": ["a1", "a2"]}"#), 0).unwrap();
        assert_eq!(nq.answers, vec!["a1", "a2"]);
        let err = parse_row(&row(r#"{"question": "Q?", "answers": []}"#), 4).unwrap_err();
        assert!(err.contains("row 5"));
    }

    #[test]
    fn prompt_ends_with_the_question() {
        let shots = vec![QaRow {
            id: None,
            question: "What color is snow?".into(),
            answers: vec!["white".into()],
        }];
        let p = prompt(&shots, "What is 2 plus 2?");
        assert_eq!(
            p,
            "Q: What color is snow?\nA: white\n\nQ: What is 2 plus 2?\nA:"
        );
    }
}
