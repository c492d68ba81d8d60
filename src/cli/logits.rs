//! `tutti logits`: the top-N next-token ids and logits at the last prompt position, for
//! checking a model against a reference implementation.

use super::common::{load_model, prompt_ids, ModelArgs};
use anyhow::Result;
use serde_json::json;

#[derive(clap::Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// How many of the highest logits to print.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Apply the chat template (default: raw prompt).
    #[arg(long)]
    pub chat: bool,
    /// Encode the prompt as is, without a chat template (the default here).
    #[arg(long, conflicts_with = "chat")]
    pub raw: bool,
    /// The prompt.
    pub prompt: String,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let mut model = load_model(&args.model)?;
    let ids = prompt_ids(&model.tokenizer, &args.prompt, args.chat)?;
    let logits: Vec<f32> = model.lm.forward(&ids)?.to_vec1()?;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let n = args.top.min(order.len());
    order.select_nth_unstable_by(n.saturating_sub(1), |&a, &b| {
        logits[b].total_cmp(&logits[a])
    });
    order.truncate(n);
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if args.json {
        let top: Vec<_> = order
            .iter()
            .map(|&i| {
                json!({
                    "id": i,
                    "logit": logits[i],
                    "token": model.tokenizer.inner().id_to_token(i as u32),
                })
            })
            .collect();
        let out = json!({
            "model": model.info.name,
            "prompt_ids": ids,
            "vocab_size": logits.len(),
            "top": top,
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("prompt ids: {ids:?}");
        for &i in &order {
            let tok = model
                .tokenizer
                .inner()
                .id_to_token(i as u32)
                .unwrap_or_default();
            println!("{i:>8}  {:>10.4}  {tok:?}", logits[i]);
        }
    }
    Ok(())
}
