//! GSM8K: grade-school math word problems, few-shot chain of thought, scored by exact
//! match of the final number.
//!
//! Prompt format (the shots are `--shots N` rows of the train split drawn with a fixed
//! seed, their calculator annotations `<<48/2=24>>` removed):
//!
//! ```text
//! Question: {shot question}
//! Answer: {shot reasoning} The answer is {shot number}.
//!
//! ...
//!
//! Question: {test question}
//! Answer:
//! ```
//!
//! Chat models get the whole text as one user message through their chat template,
//! base models get it raw. Decoding stops at a blank line or a new `Question:`.
//! The extracted answer is the first number after the output's last "the answer is"
//! (any case), else the output's last number; numbers are compared after removing `$`
//! and thousands commas, a trailing `.`, and trailing zeros of a decimal part.

use std::collections::BTreeMap;

use super::data::{self, Row};
use super::PromptMode;
use super::{BenchError, BenchItem, Decode, Judge, Judgement, Reference, Task};

/// Default number of worked examples.
pub const DEFAULT_SHOTS: usize = 5;
/// Default new-token budget for the reasoning.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Options of a GSM8K run.
#[derive(Clone, Debug)]
pub struct Gsm8kOptions {
    /// Path or `hf:openai/gsm8k`.
    pub data: String,
    pub split: String,
    /// Train file for the shots; by default the `train` split next to the data (same
    /// folder, or the hub dataset).
    pub train: Option<String>,
    pub shots: usize,
    /// Seed for drawing the shots (and for `shuffle`).
    pub seed: u64,
    pub shuffle: bool,
    pub max_tokens: usize,
    pub mode: PromptMode,
}

/// A question with its reasoning and final number (one data row).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub question: String,
    /// The reasoning, annotations removed, without the `#### N` line.
    pub reasoning: String,
    pub answer: String,
}

/// Parses `{"question", "answer": "... #### N"}` rows.
pub fn parse_rows(rows: &[Row], path: &str) -> Result<Vec<Problem>, BenchError> {
    let err = |reason: String| BenchError::Data {
        path: path.into(),
        reason,
    };
    rows.iter()
        .enumerate()
        .map(|(n, r)| {
            let question = data::text_field(r, &["question"], n).map_err(err)?;
            let answer = data::text_field(r, &["answer"], n).map_err(err)?;
            let (reasoning, number) = answer
                .rsplit_once("####")
                .ok_or_else(|| err(format!("row {}: answer has no `#### N` line", n + 1)))?;
            let number = normalize_number(number.trim()).ok_or_else(|| {
                err(format!(
                    "row {}: `{}` is not a number",
                    n + 1,
                    number.trim()
                ))
            })?;
            Ok(Problem {
                question: question.trim().to_string(),
                reasoning: strip_annotations(reasoning.trim()),
                answer: number,
            })
        })
        .collect()
}

/// Removes calculator annotations `<<...>>`.
pub fn strip_annotations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("<<") {
        out += &rest[..start];
        match rest[start..].find(">>") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out += rest;
    out
}

/// The few-shot prefix.
pub fn shots_text(shots: &[Problem]) -> String {
    let mut s = String::new();
    for p in shots {
        s += &format!(
            "Question: {}\nAnswer: {} The answer is {}.\n\n",
            p.question, p.reasoning, p.answer
        );
    }
    s
}

/// `123`, `-4.5`: digits with an optional sign and decimal part; `$`, commas and a
/// trailing `.` removed; `2.50` → `2.5`, `3.0` → `3`. `None` when it is not a number.
pub fn normalize_number(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .trim_end_matches('.')
        .chars()
        .filter(|c| *c != ',' && *c != '$')
        .collect();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.as_str()),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    let all_digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if int.is_empty() && frac.is_empty() || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let mut out = String::new();
    if neg && !(int == "0" && frac.is_empty()) {
        out.push('-');
    }
    out += int;
    if !frac.is_empty() {
        out.push('.');
        out += frac;
    }
    Some(out)
}

/// Every number in `text`, in order, normalised. A `-` counts as a sign only when it
/// does not follow a letter or digit (so `10-3` is 10 and 3).
pub fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        // Extend over digits, and commas or one dot that sit between digits.
        let mut seen_dot = false;
        while i < chars.len() {
            let c = chars[i];
            let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
            if c.is_ascii_digit()
                || (c == ',' && next_digit)
                || (c == '.' && next_digit && !seen_dot)
            {
                seen_dot |= c == '.';
                i += 1;
            } else {
                break;
            }
        }
        let mut lit: String = chars[start..i].iter().collect();
        // A sign, possibly before a `$`: "-5", "-$5", "$-5".
        let mut j = start;
        if j > 0 && chars[j - 1] == '$' {
            j -= 1;
        }
        if j > 0 && chars[j - 1] == '-' {
            let before = if j >= 2 { Some(chars[j - 2]) } else { None };
            if !before.is_some_and(|b| b.is_alphanumeric()) {
                lit.insert(0, '-');
            }
        }
        if let Some(n) = normalize_number(&lit) {
            out.push(n);
        }
    }
    out
}

/// The model's answer: the first number after the last "the answer is", else the
/// last number of the text; `None` when there is no number.
pub fn extract_answer(output: &str) -> Option<String> {
    let lower = output.to_lowercase();
    const CUE: &str = "the answer is";
    if let Some(pos) = lower.rfind(CUE) {
        // Lowercasing can change byte offsets for some scripts; search the original
        // text from the same character position.
        let char_pos = lower[..pos].chars().count() + CUE.chars().count();
        let tail: String = output.chars().skip(char_pos).collect();
        if let Some(n) = numbers(&tail).into_iter().next() {
            return Some(n);
        }
    }
    numbers(output).pop()
}

struct Gsm8kJudge;

impl Judge for Gsm8kJudge {
    fn metric_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn judge(&mut self, item: &BenchItem, output: &str) -> Result<Judgement, BenchError> {
        let extracted = extract_answer(output).unwrap_or_default();
        let correct = match &item.reference {
            Reference::Number(n) => !extracted.is_empty() && &extracted == n,
            _ => false,
        };
        Ok(Judgement {
            extracted,
            correct: Some(correct),
            metrics: BTreeMap::new(),
        })
    }
}

/// The train split that goes with `data` when no `--train` is given.
fn default_train(data: &str) -> Option<String> {
    if data.starts_with("hf:") {
        return Some(data.to_string());
    }
    let p = std::path::Path::new(data);
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("jsonl");
    let train = p.with_file_name(format!("train.{ext}"));
    train.is_file().then(|| train.display().to_string())
}

/// Loads the split, draws the shots and builds the task.
pub fn task(opts: &Gsm8kOptions) -> Result<Task, BenchError> {
    let path = data::resolve(&opts.data, &opts.split)?;
    let mut problems = parse_rows(&data::read_rows(&path)?, &path.display().to_string())?;
    let mut shots = Vec::new();
    if opts.shots > 0 {
        let train_spec = opts
            .train
            .clone()
            .or_else(|| default_train(&opts.data))
            .ok_or_else(|| BenchError::Data {
                path: opts.data.clone(),
                reason: "no train.jsonl next to it for the few-shot examples: pass --train FILE or --shots 0".into(),
            })?;
        let train_path = data::resolve(&train_spec, "train")?;
        let mut pool = parse_rows(
            &data::read_rows(&train_path)?,
            &train_path.display().to_string(),
        )?;
        super::shuffle(&mut pool, opts.seed);
        if pool.len() < opts.shots {
            return Err(BenchError::Data {
                path: train_path.display().to_string(),
                reason: format!("{} rows, fewer than --shots {}", pool.len(), opts.shots),
            });
        }
        pool.truncate(opts.shots);
        shots = pool;
    }
    let prefix = shots_text(&shots);
    let mut ids: Vec<usize> = (0..problems.len()).collect();
    if opts.shuffle {
        super::shuffle(&mut ids, opts.seed);
    }
    let items = ids
        .into_iter()
        .map(|i| {
            let p = &mut problems[i];
            BenchItem {
                id: format!("{}-{i}", opts.split),
                prompt: format!("{prefix}Question: {}\nAnswer:", p.question),
                reference: Reference::Number(std::mem::take(&mut p.answer)),
            }
        })
        .collect();
    Ok(Task {
        name: "gsm8k".into(),
        items,
        decode: Decode {
            mode: opts.mode,
            max_tokens: opts.max_tokens,
            stop: vec!["\n\n".into(), "Question:".into()],
        },
        config: format!(
            "data={} split={} shots={} seed={}",
            opts.data, opts.split, opts.shots, opts.seed
        ),
        judge: Box::new(Gsm8kJudge),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Option<String> {
        extract_answer(s)
    }

    #[test]
    fn extraction_on_tricky_strings() {
        assert_eq!(
            ex("So she has 3 + 4 = 7 apples. The answer is 7.").as_deref(),
            Some("7")
        );
        // Thousands separators and dollars.
        assert_eq!(ex("The answer is $1,250.").as_deref(), Some("1250"));
        assert_eq!(
            ex("It costs $2,000,000 in total").as_deref(),
            Some("2000000")
        );
        // Negatives, also with a dollar sign; a hyphen between numbers is not a sign.
        assert_eq!(ex("The answer is -5").as_deref(), Some("-5"));
        assert_eq!(ex("The change is -$3.50").as_deref(), Some("-3.5"));
        assert_eq!(ex("10-3 = 7").as_deref(), Some("7"));
        assert_eq!(numbers("10-3"), vec!["10", "3"]);
        // Decimals: trailing zeros and a sentence-ending dot.
        assert_eq!(ex("The answer is 2.50.").as_deref(), Some("2.5"));
        assert_eq!(ex("The answer is 18.00").as_deref(), Some("18"));
        assert_eq!(ex("That is 0.5 of it").as_deref(), Some("0.5"));
        // Several numbers: the one after the last cue wins, else the last number.
        assert_eq!(
            ex("The answer is 4. Wait, 2 more: the answer is 6 apples and 3 pears.").as_deref(),
            Some("6")
        );
        assert_eq!(
            ex("She had 5, then 8, then 12 marbles").as_deref(),
            Some("12")
        );
        // A cue without a number falls back to the last number before it.
        assert_eq!(
            ex("We got 42. The answer is unclear").as_deref(),
            Some("42")
        );
        // No number at all.
        assert_eq!(ex("I do not know."), None);
        assert_eq!(ex(""), None);
        // Case of the cue does not matter.
        assert_eq!(ex("THE ANSWER IS 9").as_deref(), Some("9"));
    }

    #[test]
    fn number_normalisation() {
        assert_eq!(normalize_number("1,234").as_deref(), Some("1234"));
        assert_eq!(normalize_number("$5.").as_deref(), Some("5"));
        assert_eq!(normalize_number("007").as_deref(), Some("7"));
        assert_eq!(normalize_number("-0").as_deref(), Some("0"));
        assert_eq!(normalize_number(".5").as_deref(), Some("0.5"));
        assert_eq!(normalize_number("abc"), None);
        assert_eq!(normalize_number("1.2.3"), None);
        assert_eq!(normalize_number(""), None);
    }

    #[test]
    fn rows_shots_and_annotations() {
        let rows: Vec<Row> = vec![
            serde_json::from_str(
                r#"{"question": "Q1?", "answer": "She pays 2*3=<<2*3=6>>6 dollars.\n#### 6"}"#,
            )
            .unwrap(),
            serde_json::from_str(r#"{"question": "Q2?", "answer": "no marker"}"#).unwrap(),
        ];
        assert!(parse_rows(&rows, "x")
            .unwrap_err()
            .to_string()
            .contains("row 2"));
        let p = parse_rows(&rows[..1], "x").unwrap();
        assert_eq!(p[0].reasoning, "She pays 2*3=6 dollars.");
        assert_eq!(p[0].answer, "6");
        assert_eq!(
            shots_text(&p),
            "Question: Q1?\nAnswer: She pays 2*3=6 dollars. The answer is 6.\n\n"
        );
        assert_eq!(strip_annotations("a <<b>> c <<d"), "a  c <<d");
    }

    #[test]
    fn parquet_rows_equal_jsonl_rows() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gsm8k");
        let from_jsonl =
            parse_rows(&data::read_rows(&dir.join("test.jsonl")).unwrap(), "j").unwrap();
        let from_parquet =
            parse_rows(&data::read_rows(&dir.join("test.parquet")).unwrap(), "p").unwrap();
        assert_eq!(from_jsonl.len(), 3);
        assert_eq!(from_jsonl, from_parquet);
        assert_eq!(from_parquet[2].answer, "750");
    }

    #[test]
    fn judge_compares_normalised_numbers() {
        let item = BenchItem {
            id: "t".into(),
            prompt: String::new(),
            reference: Reference::Number("1250".into()),
        };
        let mut j = Gsm8kJudge;
        let v = j.judge(&item, "so the answer is $1,250.00.").unwrap();
        assert_eq!((v.extracted.as_str(), v.correct), ("1250", Some(true)));
        let v = j.judge(&item, "no idea").unwrap();
        assert_eq!((v.extracted.as_str(), v.correct), ("", Some(false)));
    }
}
