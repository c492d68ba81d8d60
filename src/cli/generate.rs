//! `tutti generate`: text from one model or an ensemble, streamed to stdout or as one
//! JSON object.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tutti::align::AlignMethod;
use tutti::engine::{
    Combine, Ensemble, EnsembleFile, Gate, Generation, MemberSpec, PromptMode, Sampling, Settings,
    StopRules,
};

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub ens: EnsembleArgs,
    /// The prompt; read from stdin when absent.
    pub prompt: Option<String>,
    /// Use the prompt as is, without a chat template.
    #[arg(long)]
    pub raw: bool,
    /// Use each member's chat template (the default; members without one get the raw prompt).
    #[arg(long, conflicts_with = "raw")]
    pub chat: bool,
    /// Print one JSON object (text, ids per member, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// Members and decoding settings (shared by `generate` and `bench`).
#[derive(clap::Args, Debug, Clone)]
pub struct EnsembleArgs {
    /// Model: folder, .gguf file or hf:ORG/NAME[@REV][/FILE.gguf], with an optional
    /// `:w=WEIGHT` suffix. Repeat for an ensemble.
    #[arg(short = 'm', long = "model")]
    pub models: Vec<String>,
    /// Ensemble file (TOML) with [[member]] tables and settings; flags override it.
    #[arg(long)]
    pub ensemble: Option<PathBuf>,
    /// Greedy decoding (the default unless --temperature is given).
    #[arg(long, conflicts_with = "temperature")]
    pub greedy: bool,
    /// Sampling temperature (> 0); 0 means greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the sampler (sampling is reproducible for a given seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate [default: 256].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// auto, cpu, cuda:N or metal; once for all members or once per -m member, in order.
    #[arg(long)]
    pub device: Vec<String>,
    /// auto, f32, f16 or bf16; once for all members or once per -m member.
    #[arg(long)]
    pub dtype: Vec<String>,
    /// Architecture override; once for all members or once per -m member.
    #[arg(long)]
    pub arch: Vec<String>,
    /// Vocabulary alignment: exact, min-ed or relrep [default: min-ed].
    #[arg(long)]
    pub align: Option<String>,
    /// Candidates per member [default: 10].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// always, or uncertain:T (consult the others only when the first member's top
    /// probability is below T) [default: always].
    #[arg(long)]
    pub gate: Option<String>,
    /// mean (weights only) or confidence (each member's weight times its top
    /// probability at the step) [default: mean].
    #[arg(long)]
    pub combine: Option<String>,
    /// Stop when the text contains this string (repeatable; `\n` and `\t` are escapes).
    #[arg(long)]
    pub stop: Vec<String>,
}

/// Replaces `\n`, `\t`, `\r` and `\\` escapes (shells make real newlines awkward).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Picks the i-th of a per-member list given once (for all) or once per member.
fn per_member<'a>(
    values: &'a [String],
    i: usize,
    n: usize,
    flag: &str,
    default: &'a str,
) -> Result<&'a str> {
    match values.len() {
        0 => Ok(default),
        1 => Ok(&values[0]),
        len if len == n => Ok(&values[i]),
        len => bail!("{flag} was given {len} times for {n} -m members; give it once for all or once per member"),
    }
}

/// Member specs and settings from the ensemble file and the flags (flags win).
pub fn ensemble_plan(args: &EnsembleArgs) -> Result<(Vec<MemberSpec>, Settings)> {
    let file = match &args.ensemble {
        Some(p) => EnsembleFile::load(p)?,
        None => EnsembleFile::default(),
    };
    let mut specs = Vec::new();
    let default_device = if args.device.len() == 1 {
        args.device[0].as_str()
    } else {
        "auto"
    };
    let default_dtype = if args.dtype.len() == 1 {
        args.dtype[0].as_str()
    } else {
        "auto"
    };
    for m in &file.members {
        specs.push(m.to_spec(default_device, default_dtype));
    }
    let n = args.models.len();
    for (i, m) in args.models.iter().enumerate() {
        let arch = match args.arch.len() {
            0 => None,
            _ => Some(per_member(&args.arch, i, n, "--arch", "")?.to_string()),
        };
        specs.push(
            MemberSpec::parse(m)?
                .device(per_member(&args.device, i, n, "--device", "auto")?)
                .dtype(per_member(&args.dtype, i, n, "--dtype", "auto")?)
                .arch(arch),
        );
    }
    if specs.is_empty() {
        bail!("no model given: pass -m MODEL (repeat for an ensemble) or --ensemble FILE.toml");
    }
    let mut settings = Settings::default();
    if let Some(a) = args.align.as_deref().or(file.align.as_deref()) {
        settings.align = a.parse::<AlignMethod>()?;
    }
    if let Some(k) = args.top_k.or(file.top_k) {
        settings.top_k = k;
    }
    if let Some(g) = args.gate.as_deref().or(file.gate.as_deref()) {
        settings.gate = g.parse::<Gate>()?;
    }
    if let Some(c) = args.combine.as_deref().or(file.combine.as_deref()) {
        settings.combine = c.parse::<Combine>()?;
    }
    let temperature = if args.greedy {
        None
    } else {
        args.temperature.or(file.temperature)
    };
    settings.sampling = match temperature {
        Some(t) if t != 0.0 => Sampling::Sample {
            temperature: t,
            top_p: args.top_p.or(file.top_p).unwrap_or(1.0),
            seed: args.seed.or(file.seed).unwrap_or(0),
        },
        _ => Sampling::Greedy,
    };
    let mut stops: Vec<String> = file.stop.clone().unwrap_or_default();
    stops.extend(args.stop.iter().map(|s| unescape(s)));
    settings.stop = StopRules {
        max_tokens: args.max_tokens.or(file.max_tokens).unwrap_or(256),
        stop_strings: stops,
    };
    settings.validate()?;
    Ok((specs, settings))
}

fn read_prompt(arg: Option<&str>) -> Result<String> {
    let prompt = match arg {
        Some(p) => p.to_string(),
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("tutti: reading the prompt from stdin (end with Ctrl-D)");
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

/// Loads the members with progress lines on stderr.
pub fn build_ensemble(specs: Vec<MemberSpec>, settings: Settings) -> Result<Ensemble> {
    let mut b = Ensemble::builder().settings(settings);
    for s in specs {
        b = b.member(s);
    }
    let ens = b.build_with_progress(&mut |m| eprintln!("tutti: loading {m}"))?;
    for m in ens.members() {
        let info = &m.model().info;
        eprintln!(
            "tutti: {} ({}, {} layers, vocab {}, {} on {}, weight {})",
            info.name,
            info.arch,
            info.num_layers,
            info.vocab_size,
            format!("{:?}", info.dtype).to_lowercase(),
            tutti_models::device_name(m.model().lm.device()),
            m.weight()
        );
    }
    Ok(ens)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (specs, settings) = ensemble_plan(&args.ens)?;
    let prompt = read_prompt(args.prompt.as_deref())?;
    let mut ens = build_ensemble(specs, settings)?;
    let mode = if args.raw {
        PromptMode::Raw
    } else {
        PromptMode::Chat
    };
    for note in ens.prompt_notes(mode) {
        eprintln!("tutti: {note}");
    }
    let out = if args.json {
        ens.generate(&prompt, mode, &mut |_| {})?
    } else {
        let mut stdout = std::io::stdout().lock();
        let out = ens.generate(&prompt, mode, &mut |t| {
            // A closed pipe (e.g. `| head`) is not an error of generation.
            let _ = stdout.write_all(t.as_bytes());
            let _ = stdout.flush();
        })?;
        let _ = writeln!(stdout);
        out
    };
    if args.json {
        println!("{}", serde_json::to_string(&json_report(&ens, &out))?);
    } else {
        eprintln!("tutti: {}", summary(&out));
    }
    Ok(())
}

/// One line of numbers for stderr.
pub fn summary(out: &Generation) -> String {
    let mut s = format!(
        "{} tokens, stop: {:?}, {:.1} tokens/s, {:.1} ms/token, prefill {:.0} ms, load {:.0} ms",
        out.tokens,
        out.stop_reason,
        out.timing.tokens_per_s,
        out.timing.ms_per_token,
        out.timing.prefill_ms,
        out.timing.load_ms
    );
    if out.members.len() > 1 {
        s += &format!(
            ", ensembled {:.0}% of steps, rollbacks {}",
            100.0 * out.ensembled_share,
            out.rollbacks()
        );
    }
    s
}

/// The `--json` object.
pub fn json_report(ens: &Ensemble, out: &Generation) -> serde_json::Value {
    let n = out.steps.len().max(1) as f64;
    let per_member_forward: Vec<f64> = out.members.iter().map(|m| m.forward_ms / n).collect();
    json!({
        "text": out.text,
        "prompt_tokens": out.members.first().map_or(0, |m| m.prompt_tokens),
        "ids": out.members.iter().map(|m| m.ids.clone()).collect::<Vec<_>>(),
        "tokens": out.tokens,
        "stop_reason": out.stop_reason,
        "rollbacks": out.rollbacks(),
        "ensembled_share": out.ensembled_share,
        "settings": {
            "align": ens.settings().align.name(),
            "top_k": ens.settings().top_k,
            "gate": ens.settings().gate.to_string(),
            "combine": ens.settings().combine.to_string(),
            "sampling": format!("{:?}", ens.settings().sampling),
        },
        "members": out.members,
        "timing": {
            "load_ms": out.timing.load_ms,
            "prefill_ms": out.timing.prefill_ms,
            "total_ms": out.timing.total_ms,
            "tokens_per_s": out.timing.tokens_per_s,
            "ms_per_token": out.timing.ms_per_token,
            "mean_step_ms": {
                "forward_per_member": per_member_forward,
                "align_combine": out.timing.align_combine_ms / n,
                "feedback": out.timing.feedback_ms / n,
            },
        },
        "steps": out.steps,
    })
}
