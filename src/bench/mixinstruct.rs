//! MixInstruct (the LLM-Blender instruction-following set): rows
//! `{"id", "instruction", "input", "output", "candidates": [...]}` in JSONL. The prompt
//! is the instruction, a blank line and the input (either may be empty), given to chat
//! models through their chat template; outputs are scored against `output` with
//! ROUGE-L F1 and, unless disabled, BERTScore F1 ([`super::bert`]).

use std::collections::BTreeMap;

use super::bert::BertScorer;
use super::data;
use super::metrics::rouge_l;
use super::PromptMode;
use super::{BenchError, BenchItem, Decode, Judge, Judgement, Reference, Task};

/// Options of a MixInstruct run.
#[derive(Clone, Debug)]
pub struct MixOptions {
    pub data: String,
    pub split: String,
    pub max_tokens: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub mode: PromptMode,
}

/// The prompt of one row.
pub fn prompt(instruction: &str, input: &str) -> String {
    match (instruction.trim(), input.trim()) {
        ("", i) => i.to_string(),
        (ins, "") => ins.to_string(),
        (ins, i) => format!("{ins}\n\n{i}"),
    }
}

struct MixJudge {
    bertscore: Option<BertScorer>,
}

impl Judge for MixJudge {
    fn metric_names(&self) -> Vec<String> {
        let mut m = vec!["rouge_l".to_string()];
        if self.bertscore.is_some() {
            m.push("bertscore_f1".into());
        }
        m
    }

    fn judge(&mut self, item: &BenchItem, output: &str) -> Result<Judgement, BenchError> {
        let Reference::Text(reference) = &item.reference else {
            return Ok(Judgement::default());
        };
        let mut metrics = BTreeMap::new();
        metrics.insert("rouge_l".to_string(), rouge_l(output, reference).f1);
        if let Some(b) = &self.bertscore {
            metrics.insert("bertscore_f1".to_string(), b.score(output, reference)?.f1);
        }
        Ok(Judgement {
            extracted: output.trim().to_string(),
            correct: None,
            metrics,
        })
    }
}

/// Loads the rows and builds the task; `bertscore` scores with an encoder when given.
pub fn task(opts: &MixOptions, bertscore: Option<BertScorer>) -> Result<Task, BenchError> {
    let path = data::resolve(&opts.data, &opts.split)?;
    let shown = path.display().to_string();
    let rows = data::read_rows(&path)?;
    let mut items = Vec::with_capacity(rows.len());
    for (n, r) in rows.iter().enumerate() {
        let e = |reason: String| BenchError::Data {
            path: shown.clone(),
            reason,
        };
        let instruction = data::text_field(r, &["instruction"], n).unwrap_or_default();
        let input = data::text_field(r, &["input"], n).unwrap_or_default();
        let output = data::text_field(r, &["output"], n).map_err(e)?;
        let p = prompt(&instruction, &input);
        if p.is_empty() {
            return Err(BenchError::Data {
                path: shown.clone(),
                reason: format!("row {}: empty instruction and input", n + 1),
            });
        }
        let id = data::text_field(r, &["id"], n).unwrap_or_else(|_| n.to_string());
        items.push(BenchItem {
            id,
            prompt: p,
            reference: Reference::Text(output),
        });
    }
    if opts.shuffle {
        super::shuffle(&mut items, opts.seed);
    }
    let bert_tag = bertscore
        .as_ref()
        .map_or("none".to_string(), |b| format!("layer{}", b.layer()));
    Ok(Task {
        name: "mixinstruct".into(),
        items,
        decode: Decode {
            mode: opts.mode,
            max_tokens: opts.max_tokens,
            stop: Vec::new(),
        },
        config: format!(
            "data={} split={} bertscore={bert_tag}",
            opts.data, opts.split
        ),
        judge: Box::new(MixJudge { bertscore }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_join_instruction_and_input() {
        assert_eq!(prompt("Translate.", "Hello"), "Translate.\n\nHello");
        assert_eq!(prompt("", " Hi "), "Hi");
        assert_eq!(prompt("Do it", ""), "Do it");
    }
}
