//! Arguments and helpers shared by subcommands: loading a single model, reading the
//! prompt.

use std::io::{IsTerminal, Read};

use anyhow::{bail, Context, Result};
use tutti_models::{LoadOptions, Model, ModelTokenizer};

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a folder (config.json + *.safetensors + tokenizer.json), a .gguf file,
    /// or hf:ORG/NAME[@REV][/FILE.gguf].
    #[arg(short = 'm', long = "model")]
    pub model: String,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto, f32, f16 or bf16 (dense checkpoints; GGUF computes in f32).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Override the architecture named by the checkpoint.
    #[arg(long)]
    pub arch: Option<String>,
}

pub fn load_model(args: &ModelArgs) -> Result<Model> {
    let device = args.device.parse::<tutti_models::DeviceSpec>()?.open()?;
    let dtype = args.dtype.parse::<tutti_models::DTypeSpec>()?.dtype();
    let arch = args
        .arch
        .as_deref()
        .map(tutti_models::Architecture::parse)
        .transpose()?;
    let opts = LoadOptions {
        device,
        dtype,
        arch,
        ..LoadOptions::default()
    };
    Model::load(&args.model, &opts).with_context(|| format!("loading model `{}`", args.model))
}

/// Token ids for a prompt: through the chat template when `chat`, else raw with the
/// model's BOS rule.
pub fn prompt_ids(tok: &ModelTokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("the prompt is empty; pass a prompt argument");
    }
    let ids = if chat {
        let text = tok.apply_chat_template(&[("user".to_string(), prompt.to_string())])?;
        tok.encode(&text, true)?
    } else {
        tok.encode_prompt(prompt)?
    };
    Ok(ids)
}

/// The prompt argument, else stdin (without the newline that ends a piped line).
pub fn read_prompt(arg: Option<&str>) -> Result<String> {
    let prompt = match arg {
        Some(p) => p.to_string(),
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                tracing::info!("reading the prompt from stdin (end with Ctrl-D)");
            }
            let mut s = String::new();
            stdin
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            // The newline that ends a piped line is not part of the prompt.
            if s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            s
        }
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty; pass a prompt argument or pipe text on stdin");
    }
    Ok(prompt)
}
