//! `tutti bench speed`: prefill and decode speed of members alone and of their ensemble,
//! with real models or random-weight models of real shapes (no download needed).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tutti::align::AlignMethod;
use tutti::bench::speed::{self, MemberSource, SpeedConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct SpeedArgs {
    /// Real model (folder, .gguf, hf:...), as for `tutti generate`. Repeatable.
    #[arg(short = 'm', long = "model")]
    pub models: Vec<String>,
    /// Random-weight member of a named shape: llama3-8b, qwen2.5-7b, mistral-7b or tiny.
    /// Repeatable.
    #[arg(long)]
    pub shape: Vec<String>,
    /// Random-weight member shaped by an HF config.json. Repeatable.
    #[arg(long)]
    pub config: Vec<PathBuf>,
    /// tokenizer.json shared by random members [default: SmolLM2's, from
    /// models-cache/tokenizers/ (scripts/fetch-tokenizers.sh)].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// auto, cpu, cuda:N or metal (all members on one device).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (bf16 on a GPU, f32 on the CPU), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Prompt length in tokens (per member, in its own tokenization).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Decode steps measured after the prefill.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Untimed decode steps before each measured run.
    #[arg(long, default_value_t = 4)]
    pub warmup: usize,
    /// Candidates per member.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Vocabulary alignment: exact, min-ed or relrep.
    #[arg(long, default_value = "exact")]
    pub align: String,
    /// Device memory bandwidth in GB/s for the roofline [default: by GPU name (H100 SXM
    /// 3350, H200 4800), else measured with a copy].
    #[arg(long)]
    pub bandwidth_gbs: Option<f64>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Also decode this many sequences of each member at once (batched forwards of
    /// one id per sequence), e.g. `--batch 1,4,8,16`; each size is one more row.
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: SpeedArgs) -> Result<()> {
    let mut members: Vec<MemberSource> = args
        .models
        .iter()
        .cloned()
        .map(MemberSource::Model)
        .collect();
    members.extend(args.shape.iter().cloned().map(MemberSource::Shape));
    members.extend(args.config.iter().cloned().map(MemberSource::Config));
    if members.is_empty() {
        bail!("no members: give -m MODEL, --shape NAME (llama3-8b, qwen2.5-7b, mistral-7b, tiny) or --config FILE");
    }
    let device = tutti::models::parse_device(&args.device)?;
    let mut cfg = SpeedConfig::new(members, device);
    cfg.dtype = tutti::models::parse_dtype(&args.dtype)?;
    cfg.tokenizer = match args.tokenizer {
        Some(p) => Some(p),
        None => default_tokenizer(&std::env::current_dir()?),
    };
    cfg.prompt_tokens = args.prompt_tokens;
    cfg.decode_tokens = args.decode_tokens;
    cfg.warmup = args.warmup;
    cfg.top_k = args.top_k;
    cfg.align = args
        .align
        .parse::<AlignMethod>()
        .map_err(|e| anyhow::anyhow!("--align: {e}"))?;
    cfg.bandwidth_gbs = args.bandwidth_gbs;
    cfg.seed = args.seed;
    cfg.batch = args.batch;
    let report = speed::run(&cfg, &mut |msg| tracing::info!("{msg}")).context("speed benchmark")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", speed::format_table(&report));
    }
    Ok(())
}

/// Default shared tokenizer for random members: SmolLM2's, as scripts/fetch-tokenizers.sh
/// puts it, or the copy scripts/build-cuda.sh leaves beside the CUDA binaries.
fn default_tokenizer(root: &std::path::Path) -> Option<PathBuf> {
    [
        "models-cache/tokenizers/smollm2/tokenizer.json",
        "target/cuda/dist/smollm2-tokenizer.json",
        "smollm2-tokenizer.json",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.is_file())
}
