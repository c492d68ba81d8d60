//! `tutti tokenize`: a model's token ids for a text, or its tokenizer written out as an
//! HF tokenizer folder (for a model known only as a GGUF file). Only the tokenizer is
//! read, never the weights.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tutti_models::ModelTokenizer;

use super::common::prompt_ids;

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Model or tokenizer: a folder, a .gguf file, a tokenizer.json or
    /// hf:ORG/NAME[@REV][/FILE.gguf].
    #[arg(short = 'm', long = "model")]
    pub model: String,
    /// Render TEXT through the chat template as one user message first.
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object (ids and token texts) instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Write tokenizer.json, tokenizer_config.json and generation_config.json into DIR
    /// instead of tokenizing a text.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["text", "chat"])]
    pub export: Option<PathBuf>,
    /// The text to tokenize (raw, with the model's BOS rule, unless --chat).
    pub text: Option<String>,
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let tok = ModelTokenizer::from_source(&args.model)
        .with_context(|| format!("loading the tokenizer of `{}`", args.model))?;
    if let Some(dir) = &args.export {
        tok.save(dir)?;
        let out = json!({
            "model": args.model,
            "dir": dir.display().to_string(),
            "vocab_size": tok.vocab_size(),
            "bos": tok.bos_id(),
            "eos": tok.eos_ids(),
            "add_bos": tok.add_bos(),
            "chat_template": tok.chat_template().is_some(),
        });
        if args.json {
            println!("{out}");
        } else {
            println!(
                "wrote tokenizer.json, tokenizer_config.json and generation_config.json \
                 ({} ids) to {}",
                tok.vocab_size(),
                dir.display()
            );
        }
        return Ok(());
    }
    let Some(text) = &args.text else {
        bail!("nothing to do: pass a TEXT to tokenize or --export DIR");
    };
    let ids = prompt_ids(&tok, text, args.chat)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| tok.inner().id_to_token(id).unwrap_or_default())
        .collect();
    if args.json {
        println!(
            "{}",
            json!({"model": args.model, "ids": ids, "tokens": pieces})
        );
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id:>8}  {piece:?}");
        }
    }
    Ok(())
}
