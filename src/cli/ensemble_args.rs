//! Members and decoding settings from the command line and the ensemble TOML (shared by
//! `generate`, `bench` and `serve`): turned into member specs, an alignment method and
//! a request template whose settings every call starts from.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tutti::align::AlignMethod;
use tutti::engine::{
    parse_auto_weights, BuildEvent, Combine, Ensemble, Gate, MapEvent, MemberSpec, Prompt, Request,
    Sampling,
};
use tutti::EnsembleFile;
use tutti_models::{Architecture, DTypeSpec, DeviceSpec};

/// Members and decoding settings.
#[derive(clap::Args, Debug, Clone)]
pub struct EnsembleArgs {
    /// Model: folder, .gguf file or hf:ORG/NAME[@REV][/FILE.gguf], with optional
    /// `:w=WEIGHT` and `:t=TEMPERATURE` (the member's own softmax temperature, applied
    /// before combining) suffixes; or a server, `openai+http://HOST:PORT/v1#MODEL` or
    /// `llamacpp+http://HOST:PORT`, with `:tok=TOKENIZER` (its tokenizer, required) and
    /// optional `:key=ENV_VAR` (bearer key), `:lookahead=L|auto`, `:timeout=SECONDS`.
    /// Repeat for an ensemble.
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
    /// always; uncertain:T (consult the others only when the first member's top
    /// probability is below T); or disagree (combine only when the members' top
    /// candidates differ) [default: always].
    #[arg(long)]
    pub gate: Option<String>,
    /// mean (weighted mean), confidence (weight times the member's top probability at
    /// the step), product (weighted geometric mean: a member's near-zero vetoes), max
    /// (largest weighted member probability) or entropy (weight times one minus the
    /// normalised entropy of the member's top-k) [default: mean].
    #[arg(long)]
    pub combine: Option<String>,
    /// auto (or auto:TAU): weights from each member's perplexity on the prompt, once per
    /// request, times the `:w=` weights [default: the `:w=` weights alone].
    #[arg(long)]
    pub weights: Option<String>,
    /// Stop when the text contains this string (repeatable; `\n` and `\t` are escapes).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Build and cache the full vocabulary maps that are not cached yet (minutes for
    /// relrep on a small CPU), so that later runs start without preparing alignments.
    #[arg(long)]
    pub build_maps: bool,
    /// When a member fails mid-generation (a server that disappears or stalls): `fail`
    /// the request, or `drop` the member and go on with the others [default: fail].
    #[arg(long)]
    pub on_member_failure: Option<String>,
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
fn per_member<'a>(values: &'a [String], i: usize, n: usize, flag: &str) -> Result<Option<&'a str>> {
    match values.len() {
        0 => Ok(None),
        1 => Ok(Some(&values[0])),
        len if len == n => Ok(Some(&values[i])),
        len => bail!("{flag} was given {len} times for {n} -m members; give it once for all or once per member"),
    }
}

/// What the flags and the file ask for.
pub struct Plan {
    pub specs: Vec<MemberSpec>,
    pub align: AlignMethod,
    /// Build the missing full vocabulary maps at load time.
    pub build_maps: bool,
    /// Every setting of a call; the prompt is filled in per call.
    pub request: Request,
}

impl Plan {
    /// The template with `prompt`.
    pub fn request(&self, prompt: Prompt) -> Request {
        let mut r = self.request.clone();
        r.prompt = prompt;
        r
    }
}

/// Member specs and settings from the ensemble file and the flags (flags win).
pub fn plan(args: &EnsembleArgs) -> Result<Plan> {
    let (file, origin) = match &args.ensemble {
        Some(p) => (EnsembleFile::load(p)?, p.display().to_string()),
        None => (EnsembleFile::default(), String::new()),
    };
    let one = |v: &[String]| (v.len() == 1).then(|| v[0].clone());
    let default_device: DeviceSpec = match one(&args.device) {
        Some(d) => d.parse()?,
        None => DeviceSpec::Auto,
    };
    let default_dtype: DTypeSpec = match one(&args.dtype) {
        Some(d) => d.parse()?,
        None => DTypeSpec::Auto,
    };
    let mut specs = Vec::new();
    for m in &file.members {
        specs.push(m.to_spec(default_device, default_dtype, &origin)?);
    }
    let n = args.models.len();
    for (i, m) in args.models.iter().enumerate() {
        let mut spec = MemberSpec::parse(m)?;
        if let Some(d) = per_member(&args.device, i, n, "--device")? {
            spec = spec.device(d.parse()?);
        }
        if let Some(d) = per_member(&args.dtype, i, n, "--dtype")? {
            spec = spec.dtype(d.parse()?);
        }
        if let Some(a) = per_member(&args.arch, i, n, "--arch")? {
            spec = spec.arch(Some(Architecture::parse(a)?));
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        bail!("no model given: pass -m MODEL (repeat for an ensemble) or --ensemble FILE.toml");
    }
    let align = match args.align.as_deref().or(file.align.as_deref()) {
        Some(a) => a.parse::<AlignMethod>()?,
        None => AlignMethod::MinEd,
    };
    let mut request = file.apply(Request::raw(String::new()), &origin)?;
    if let Some(k) = args.top_k {
        request.top_k = k;
    }
    if let Some(g) = &args.gate {
        request.gate = g.parse::<Gate>()?;
    }
    if let Some(c) = &args.combine {
        request.combine = c.parse::<Combine>()?;
    }
    if let Some(w) = &args.weights {
        request.auto_weights = Some(parse_auto_weights(w)?);
    }
    if let Some(n) = args.max_tokens {
        request.max_tokens = n;
    }
    if let Some(p) = &args.on_member_failure {
        request.on_member_failure = p.parse()?;
    }
    request.stop.extend(args.stop.iter().map(|s| unescape(s)));
    if args.greedy {
        request.sampling = Sampling::Greedy;
    } else if let Some(t) = args.temperature {
        request.sampling = if t == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature: t,
                top_p: args.top_p.or(file.top_p).unwrap_or(1.0),
                seed: args.seed.or(file.seed).unwrap_or(0),
            }
        };
    } else if let Sampling::Sample {
        temperature, seed, ..
    } = request.sampling
    {
        request.sampling = Sampling::Sample {
            temperature,
            top_p: args.top_p.or(file.top_p).unwrap_or(1.0),
            seed: args.seed.unwrap_or(seed),
        };
    }
    // Everything but the prompt is checked now, before any model loads.
    let mut probe = request.clone();
    probe.prompt = Prompt::Raw("x".into());
    probe.validate()?;
    Ok(Plan {
        specs,
        align,
        build_maps: args.build_maps,
        request,
    })
}

/// Loads the members; building a full vocabulary map shows a progress bar on stderr.
pub fn build(plan: &Plan) -> Result<Ensemble> {
    build_with(plan, Vec::new())
}

/// [`build`], with already loaded models (weight 1) after the planned members.
pub fn build_with(plan: &Plan, extra: Vec<tutti_models::Model>) -> Result<Ensemble> {
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let mut b = Ensemble::builder()
        .align(plan.align)
        .full_maps(plan.build_maps)
        .on_progress(move |e| match e {
            BuildEvent::Loading { spec, .. } => tracing::info!("loading {spec}"),
            BuildEvent::Map(MapEvent::Building {
                from, to, total, ..
            }) => {
                let pb = ProgressBar::new(*total);
                pb.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {pos}/{len} tokens ({elapsed}, eta {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                pb.set_message(format!("map {from} → {to}"));
                if let Ok(mut g) = bar.lock() {
                    *g = Some(pb);
                }
            }
            BuildEvent::Map(MapEvent::Progress(n)) => {
                if let Ok(g) = bar.lock() {
                    if let Some(pb) = g.as_ref() {
                        pb.inc(*n);
                    }
                }
            }
            BuildEvent::Map(MapEvent::Ready { .. }) => {
                if let Ok(mut g) = bar.lock() {
                    if let Some(pb) = g.take() {
                        pb.finish_and_clear();
                    }
                }
            }
            _ => {}
        });
    for s in &plan.specs {
        b = b.member(s.clone());
    }
    for m in extra {
        b = b.model(m, 1.0);
    }
    Ok(b.build()?)
}

/// Keeps what the run mapped for a later one ([`Ensemble::save_maps`]); a cache that
/// cannot be written costs the next run time, never this one's result.
pub fn save_maps(ens: &mut Ensemble) {
    if let Err(e) = ens.save_maps() {
        tracing::warn!("the mapped candidates are not cached: {e}");
    }
}
