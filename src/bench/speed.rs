//! Speed of members alone and of their ensemble: prefill tokens/s, decode ms/token, the
//! time split of a step, peak memory and the memory-bandwidth roofline of decoding.
//!
//! Members are real models or random-weight models of real shapes
//! ([`tutti_models::random`]), so a GPU can be measured without a download. Random
//! members need a tokenizer for the engine's feedback (re-encoding the chosen bytes): they
//! share one `tokenizer.json`, whose size must not exceed the shape's vocabulary. Every
//! row runs through the engine ([`Ensemble::generate`] with token-id prompts), greedy, with
//! the same synthetic prompt: one row per member alone (`members = [slot]`), then one for all of
//! them. The first step of a run is the prefill (the prompt's forward and the first
//! token); the decode figures are the means over the following steps.
//!
//! The roofline: decoding one token reads every weight once, so `bytes / bandwidth` is a
//! lower bound on a member's forward time; for an ensemble on one device, the sum over
//! members. `roofline_fraction = roofline_ms / measured ms per token` (1 = bandwidth
//! bound, every other cost gone).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use tutti_models::random::{parameter_count, random_transformer, shape_config, weight_bytes};
use tutti_models::{LoadOptions, Model, ModelInfo, ModelSource, ModelTokenizer, WeightFormat};

use crate::align::AlignMethod;
use crate::engine::{Ensemble, Gate, Generation, Request, Sampling};

/// Why a speed run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpeedError {
    #[error("no members: give -m MODEL, --shape NAME or --config FILE")]
    NoMembers,
    #[error("{0}")]
    BadArg(String),
    #[error("random member `{member}` needs a tokenizer.json: pass --tokenizer FILE")]
    NoTokenizer { member: String },
    #[error("the tokenizer has {tokens} entries but shape `{member}` only {vocab} logits; pass a --tokenizer with at most {vocab} entries")]
    TokenizerTooLarge {
        member: String,
        tokens: usize,
        vocab: usize,
    },
    #[error(transparent)]
    Model(#[from] tutti_models::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Kernel(#[from] tutti_kernels::KernelError),
}

pub type Result<T> = std::result::Result<T, SpeedError>;

/// Where a member comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberSource {
    /// A model spec as for `tutti generate -m`.
    Model(String),
    /// A named shape with random weights ([`tutti_models::random::SHAPES`]).
    Shape(String),
    /// An HF `config.json` with random weights.
    Config(PathBuf),
}

impl MemberSource {
    fn label(&self) -> String {
        match self {
            MemberSource::Model(s) => s.clone(),
            MemberSource::Shape(s) => format!("random:{s}"),
            MemberSource::Config(p) => format!("random:{}", p.display()),
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct SpeedConfig {
    pub members: Vec<MemberSource>,
    pub device: Device,
    /// Weights/activations of random members and dense checkpoints; `None`: bf16 on a
    /// GPU, f32 on the CPU.
    pub dtype: Option<DType>,
    /// Tokenizer shared by random members.
    pub tokenizer: Option<PathBuf>,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// Untimed tokens generated before each measured run.
    pub warmup: usize,
    pub top_k: usize,
    pub align: AlignMethod,
    /// Memory bandwidth in GB/s; `None`: by device name, else measured.
    pub bandwidth_gbs: Option<f64>,
    /// Seed of the random weights.
    pub seed: u64,
    /// Sequence counts of the batched decode rows (none: no such rows).
    pub batch: Vec<usize>,
}

impl SpeedConfig {
    pub fn new(members: Vec<MemberSource>, device: Device) -> Self {
        SpeedConfig {
            members,
            device,
            dtype: None,
            tokenizer: None,
            prompt_tokens: 512,
            decode_tokens: 128,
            warmup: 4,
            top_k: 10,
            align: AlignMethod::Exact,
            bandwidth_gbs: None,
            seed: 0x5eed,
            batch: Vec::new(),
        }
    }
}

/// One measured configuration (a member alone, or the ensemble).
#[derive(Clone, Debug, Serialize)]
pub struct SpeedRow {
    /// Member name, or `ensemble`.
    pub name: String,
    pub members: Vec<String>,
    pub prompt_tokens: usize,
    pub prefill_ms: f64,
    pub prefill_tokens_per_s: f64,
    /// Decode steps measured (fewer than asked when an EOS won).
    pub decode_tokens: usize,
    pub decode_ms_per_token: f64,
    /// Mean forward time per decode step, per member (in `members` order).
    pub forward_ms: Vec<f64>,
    /// Mean softmax/top-k/union/combine/choice time per decode step.
    pub align_combine_ms: f64,
    /// Mean feedback (commit, re-encode, rollback) time per decode step.
    pub feedback_ms: f64,
    /// Weight bytes read per decoded token (sum over members).
    pub weight_bytes: u64,
    /// `weight_bytes / bandwidth`, in ms.
    pub roofline_ms: f64,
    /// `roofline_ms / decode_ms_per_token`.
    pub roofline_fraction: f64,
    /// Device memory in use after loading (CUDA), or resident memory (CPU), in bytes.
    pub mem_after_load_bytes: Option<u64>,
    /// Peak during the run: sampled every 2 ms (CUDA) or the kernel's high-water mark
    /// (CPU, reset before the run when the system allows it).
    pub peak_mem_bytes: Option<u64>,
    pub stopped_at_eos: bool,
}

/// The per-step top-k on one logits row, on the device vs copied to the host.
#[derive(Clone, Debug, Serialize)]
pub struct TopKTiming {
    pub vocab: usize,
    pub k: usize,
    /// `tutti_kernels::softmax_topk_tensor` on the member's device (the CPU path on a CPU).
    pub tensor_us: f64,
    /// Copy of the row to the host and the CPU kernel (what the engine does today).
    pub host_us: f64,
    /// Whether both paths selected the same ids in the same order.
    pub same_ids: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpeedReport {
    pub device: String,
    pub device_name: String,
    pub dtype: String,
    pub bandwidth_gbs: f64,
    /// `flag`, `device name`, `measured (read, N threads)` (CPU) or `measured (copy)`.
    pub bandwidth_source: String,
    /// The CPU kernel set quantized matmuls ran on (`avx512-vnni`, `avx2`, ...) and why.
    pub cpu_kernels: String,
    /// Weights regrouped at load for the CPU kernel set (all members): MiB and seconds.
    pub repacked_mib: f64,
    pub repack_s: f64,
    pub rows: Vec<SpeedRow>,
    pub topk: Vec<TopKTiming>,
    /// Batched decoding of each member alone (`--batch`).
    pub batched: Vec<BatchRow>,
}

/// One member decoding `batch` sequences at once, each after its own copy of the
/// prompt (rotated by its index, so no two rows are equal), every step one batched
/// forward ([`tutti_models::forward_batch`]) of one id per sequence.
#[derive(Clone, Debug, Serialize)]
pub struct BatchRow {
    pub name: String,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub steps: usize,
    /// Mean wall time of one batched step (one new id per sequence).
    pub ms_per_step: f64,
    /// Ids decoded per second over all sequences.
    pub tokens_per_s: f64,
}

/// A few sentences of plain English, repeated to any length.
const PROMPT_TEXT: &str = "The quick brown fox jumps over the lazy dog while the river \
    runs quietly past the old mill. Seven engineers measured the bridge twice, wrote down \
    every number, and compared their notes at noon before the rain began. ";

/// The first `n` ids of the synthetic prompt in `tok` (cycled if the text is short).
pub fn synthetic_prompt(tok: &ModelTokenizer, n: usize) -> Result<Vec<u32>> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.len() < n {
        text.push_str(PROMPT_TEXT);
        ids = tok.encode(&text, false)?;
        if ids.is_empty() {
            return Err(SpeedError::BadArg(
                "the tokenizer encodes the prompt to nothing".into(),
            ));
        }
        if text.len() > 64 * n + 4096 {
            let base = ids.clone();
            ids = base.iter().copied().cycle().take(n).collect();
        }
    }
    ids.truncate(n);
    Ok(ids)
}

fn load_member(src: &MemberSource, cfg: &SpeedConfig, dtype: DType) -> Result<(Model, u64)> {
    let (tcfg, name) = match src {
        MemberSource::Model(spec) => {
            let opts = LoadOptions {
                device: cfg.device.clone(),
                dtype: Some(dtype),
                arch: None,
                ..LoadOptions::default()
            };
            let m = Model::load(spec, &opts)?;
            let bytes = m.info.weight_bytes;
            return Ok((m, bytes));
        }
        MemberSource::Shape(s) => (shape_config(s)?, src.label()),
        MemberSource::Config(p) => (
            tutti_models::TransformerConfig::from_hf_file(p, None)?,
            src.label(),
        ),
    };
    let tok_path = cfg
        .tokenizer
        .as_ref()
        .ok_or_else(|| SpeedError::NoTokenizer {
            member: name.clone(),
        })?;
    let model = random_model(tcfg, name, tok_path, &cfg.device, dtype, cfg.seed)?;
    let bytes = model.info.weight_bytes;
    Ok((model, bytes))
}

/// A model of shape `tcfg` with random weights (seeded) and the tokenizer at `tok_path`.
pub fn random_model(
    tcfg: tutti_models::TransformerConfig,
    name: String,
    tok_path: &std::path::Path,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Model> {
    let tokenizer = ModelTokenizer::from_tokenizer_json(tok_path, None, None, None)?;
    let tokens = tokenizer.inner().get_vocab_size(true);
    if tokens > tcfg.vocab_size {
        return Err(SpeedError::TokenizerTooLarge {
            member: name,
            tokens,
            vocab: tcfg.vocab_size,
        });
    }
    let bytes = weight_bytes(&tcfg, dtype);
    let info = ModelInfo {
        name,
        source: ModelSource::TokenizerFile(tok_path.to_path_buf()),
        arch: tcfg.arch,
        format: WeightFormat::HuggingFace,
        dtype,
        num_layers: tcfg.num_layers,
        hidden_size: tcfg.hidden_size,
        vocab_size: tcfg.vocab_size,
        context_length: tcfg.max_position_embeddings,
        weight_bytes: bytes,
        parameters: parameter_count(&tcfg),
        weights_fingerprint: format!("random-{seed:x}"),
    };
    let lm = random_transformer(tcfg, device, dtype, seed)?;
    Ok(Model {
        lm: Box::new(lm),
        tokenizer,
        info,
    })
}

/// Runs the whole measurement.
pub fn run(cfg: &SpeedConfig, progress: &mut dyn FnMut(&str)) -> Result<SpeedReport> {
    if cfg.members.is_empty() {
        return Err(SpeedError::NoMembers);
    }
    if cfg.prompt_tokens == 0 || cfg.decode_tokens == 0 {
        return Err(SpeedError::BadArg(
            "--prompt-tokens and --decode-tokens must be at least 1".into(),
        ));
    }
    let dtype = cfg
        .dtype
        .unwrap_or_else(|| tutti_models::default_dtype(&cfg.device));
    let mem0 = MemProbe::new(&cfg.device);
    let mut builder = Ensemble::builder();
    let mut bytes = Vec::new();
    let mut names = Vec::new();
    for src in &cfg.members {
        progress(&format!("loading {}", src.label()));
        let (model, b) = load_member(src, cfg, dtype)?;
        names.push(model.info.name.clone());
        bytes.push(b);
        builder = builder.model(model, 1.0);
    }
    let mem_after_load = mem0.current();
    let mut ens = builder.align(cfg.align).build()?;
    let prompts: Vec<Vec<u32>> = ens
        .members()
        .iter()
        .map(|m| synthetic_prompt(m.tokenizer(), cfg.prompt_tokens))
        .collect::<Result<_>>()?;
    let request = |members: &[usize], prompts: Vec<Vec<u32>>, tokens: usize| {
        Request::ids(prompts)
            .members(members.to_vec())
            .max_tokens(tokens)
            .top_k(cfg.top_k)
            .gate(Gate::Always)
            .sampling(Sampling::Greedy)
    };

    let (bandwidth_gbs, bandwidth_source) = match cfg.bandwidth_gbs {
        Some(b) if b > 0.0 => (b, "flag".to_string()),
        Some(b) => {
            return Err(SpeedError::BadArg(format!(
                "--bandwidth-gbs {b} must be > 0"
            )))
        }
        None => match known_bandwidth(&device_name(&cfg.device)) {
            Some(b) => (b, "device name".to_string()),
            None => {
                let how = match cfg.device.is_cpu() {
                    true => format!("measured (read, {} threads)", tutti_models::threads()),
                    false => "measured (copy)".to_string(),
                };
                progress(&format!("measuring memory bandwidth: {how}"));
                (measure_bandwidth(&cfg.device)?, how)
            }
        },
    };

    let n = ens.members().len();
    let mut plans: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    if n > 1 {
        plans.push((0..n).collect());
    }
    let mut rows = Vec::new();
    for active in plans {
        let label = if active.len() == 1 {
            names[active[0]].clone()
        } else {
            "ensemble".to_string()
        };
        progress(&format!("measuring {label}"));
        let ps: Vec<Vec<u32>> = active.iter().map(|&i| prompts[i].clone()).collect();
        if cfg.warmup > 0 {
            let short: Vec<Vec<u32>> = ps.iter().map(|p| p[..p.len().min(16)].to_vec()).collect();
            ens.generate_quiet(&request(&active, short, cfg.warmup + 1))?;
        }
        let probe = MemProbe::new(&cfg.device);
        let sampler = probe.start_sampling();
        let gen = ens.generate_quiet(&request(&active, ps, cfg.decode_tokens + 1))?;
        let peak = sampler.stop();
        let wb: u64 = active.iter().map(|&i| bytes[i]).sum();
        rows.push(row_from(
            label,
            active.iter().map(|&i| names[i].clone()).collect(),
            cfg.prompt_tokens,
            &gen,
            wb,
            bandwidth_gbs,
            mem_after_load,
            peak,
        ));
    }

    let mut topk = Vec::new();
    let mut vocabs: Vec<usize> = ens
        .members()
        .iter()
        .map(|m| m.backend().logit_width())
        .collect();
    vocabs.dedup();
    for v in vocabs {
        topk.push(time_topk(
            &cfg.device,
            v,
            cfg.top_k.min(tutti_kernels::DEVICE_MAX_K),
        )?);
    }

    let mut batched = Vec::new();
    for src in cfg
        .batch
        .iter()
        .flat_map(|&b| cfg.members.iter().map(move |m| (b, m)))
    {
        let (b, member) = src;
        progress(&format!("measuring {} at batch {b}", member.label()));
        let (model, _) = load_member(member, cfg, dtype)?;
        batched.push(batched_decode(&model, b, cfg)?);
    }

    Ok(SpeedReport {
        device: tutti_models::device_name(&cfg.device),
        device_name: device_name(&cfg.device),
        dtype: format!("{dtype:?}").to_lowercase(),
        bandwidth_gbs,
        bandwidth_source,
        cpu_kernels: tutti_models::kernel_choice().to_string(),
        repacked_mib: tutti_models::repack_totals().0 as f64 / (1u64 << 20) as f64,
        repack_s: tutti_models::repack_totals().1.as_secs_f64(),
        rows,
        topk,
        batched,
    })
}

/// A [`BatchRow`]: `batch` forks of `model` prefilled one by one (untimed), a few
/// untimed batched steps, then `decode_tokens` timed ones; each sequence takes its own
/// greedy id.
fn batched_decode(model: &Model, batch: usize, cfg: &SpeedConfig) -> Result<BatchRow> {
    if batch == 0 {
        return Err(SpeedError::BadArg(
            "--batch sizes must be at least 1".into(),
        ));
    }
    let prompt = synthetic_prompt(&model.tokenizer, cfg.prompt_tokens)?;
    let mut forks = Vec::with_capacity(batch);
    let mut next = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut lm = model.lm.fork().ok_or_else(|| {
            SpeedError::BadArg(format!("{} cannot fork its weights", model.info.name))
        })?;
        let mut p = prompt.clone();
        let shift = b % p.len();
        p.rotate_left(shift);
        next.push(argmax(&lm.forward(&p)?)?);
        forks.push(lm);
    }
    let step = |forks: &mut Vec<Box<dyn tutti_models::CausalLm>>, next: &mut Vec<u32>| {
        let ids: Vec<[u32; 1]> = next.iter().map(|&i| [i]).collect();
        let mut rows: Vec<(&mut (dyn tutti_models::CausalLm + 'static), &[u32])> = forks
            .iter_mut()
            .zip(&ids)
            .map(|(f, i)| (f.as_mut(), &i[..]))
            .collect();
        let logits = tutti_models::forward_batch(&mut rows)?;
        for (n, l) in next.iter_mut().zip(&logits) {
            *n = argmax(l)?;
        }
        Ok::<(), SpeedError>(())
    };
    for _ in 0..cfg.warmup {
        step(&mut forks, &mut next)?;
    }
    let t0 = Instant::now();
    for _ in 0..cfg.decode_tokens {
        step(&mut forks, &mut next)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(BatchRow {
        name: model.info.name.clone(),
        batch,
        prompt_tokens: cfg.prompt_tokens,
        steps: cfg.decode_tokens,
        ms_per_step: secs * 1e3 / cfg.decode_tokens as f64,
        tokens_per_s: (batch * cfg.decode_tokens) as f64 / secs,
    })
}

fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits.argmax(0)?.to_scalar::<u32>()?)
}

#[allow(clippy::too_many_arguments)]
fn row_from(
    name: String,
    members: Vec<String>,
    prompt_tokens: usize,
    gen: &Generation,
    weight_bytes: u64,
    bandwidth_gbs: f64,
    mem_after_load: Option<u64>,
    peak: Option<u64>,
) -> SpeedRow {
    let decode = &gen.steps[gen.steps.len().min(1)..];
    let nd = decode.len().max(1) as f64;
    let n_members = members.len();
    let forward_ms = (0..n_members)
        .map(|i| decode.iter().map(|s| s.forward_ms[i]).sum::<f64>() / nd)
        .collect();
    let prefill_ms = gen.timing.prefill_ms;
    let roofline_ms = weight_bytes as f64 / (bandwidth_gbs * 1e9) * 1e3;
    let ms = gen.timing.ms_per_token;
    SpeedRow {
        name,
        members,
        prompt_tokens,
        prefill_ms,
        prefill_tokens_per_s: if prefill_ms > 0.0 {
            prompt_tokens as f64 * 1e3 / prefill_ms
        } else {
            0.0
        },
        decode_tokens: decode.len(),
        decode_ms_per_token: ms,
        forward_ms,
        align_combine_ms: decode.iter().map(|s| s.align_combine_ms).sum::<f64>() / nd,
        feedback_ms: decode.iter().map(|s| s.feedback_ms).sum::<f64>() / nd,
        weight_bytes,
        roofline_ms,
        roofline_fraction: if ms > 0.0 { roofline_ms / ms } else { 0.0 },
        mem_after_load_bytes: mem_after_load,
        peak_mem_bytes: peak,
        stopped_at_eos: gen.stop_reason == crate::engine::StopReason::Eos,
    }
}

/// Times the top-k of one random logits row of width `vocab` both ways.
fn time_topk(device: &Device, vocab: usize, k: usize) -> Result<TopKTiming> {
    let row = Tensor::randn(0f32, 3f32, vocab, device)?;
    let reps = 20;
    let on_device = tutti_kernels::softmax_topk_tensor(&row, 1.0, k, None)?;
    let t0 = Instant::now();
    for _ in 0..reps {
        tutti_kernels::softmax_topk_tensor(&row, 1.0, k, None)?;
    }
    let tensor_us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
    let t0 = Instant::now();
    let mut host = None;
    for _ in 0..reps {
        let v: Vec<f32> = row.to_vec1()?;
        host = Some(tutti_kernels::softmax_topk(&v, 1.0, k, None)?);
    }
    let host_us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
    Ok(TopKTiming {
        vocab,
        k,
        tensor_us,
        host_us,
        same_ids: host.is_some_and(|h| h.ids == on_device.ids),
    })
}

/// Memory bandwidth of `device` from its name, for the GPUs whose figure is published.
pub fn known_bandwidth(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H200") {
        Some(4800.0)
    } else if n.contains("H100") && (n.contains("PCIE") || n.contains("NVL")) {
        Some(if n.contains("NVL") { 3900.0 } else { 2000.0 })
    } else if n.contains("H100") {
        Some(3350.0)
    } else {
        None
    }
}

/// Memory bandwidth in GB/s: on the CPU, bytes read per second streaming a 256 MiB
/// buffer on every compute thread (what a decode step does with the weights); on a GPU,
/// bytes read and written per second copying one.
pub fn measure_bandwidth(device: &Device) -> Result<f64> {
    if device.is_cpu() {
        return Ok(cpu_read_bandwidth(64 << 20, 5));
    }
    let n = 64 << 20; // f32 elements
    let t = Tensor::zeros(n, DType::F32, device)?;
    let _ = t.copy()?;
    device.synchronize()?;
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        let c = t.copy()?;
        drop(c);
    }
    device.synchronize()?;
    let s = t0.elapsed().as_secs_f64();
    Ok((2 * 4 * n * reps) as f64 / s / 1e9)
}

/// Reads `n` f32 values `reps` times, split over the compute threads, after one untimed
/// pass (the buffer is written first: untouched pages would time the kernel's page
/// faults, as a fresh copy target does).
fn cpu_read_bandwidth(n: usize, reps: usize) -> f64 {
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let threads = tutti_models::threads().max(1);
    let pass = || -> f32 {
        std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(n.div_ceil(threads))
                .map(|c| {
                    s.spawn(move || {
                        // Eight independent sums keep the loop bound by loads, not adds.
                        let mut acc = [0f32; 8];
                        for block in c.chunks_exact(8) {
                            for (a, x) in acc.iter_mut().zip(block) {
                                *a += x;
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        })
    };
    std::hint::black_box(pass());
    let t0 = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(pass());
    }
    let s = t0.elapsed().as_secs_f64();
    (4 * n * reps) as f64 / s / 1e9
}

/// A human name of the device: the GPU's marketing name, or the CPU model.
pub fn device_name(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        if let Ok(name) = d.cuda_stream().context().name() {
            return name;
        }
    }
    if device.is_cpu() {
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            if let Some(line) = info.lines().find(|l| l.starts_with("model name")) {
                if let Some((_, v)) = line.split_once(':') {
                    return v.trim().to_string();
                }
            }
        }
        return "cpu".into();
    }
    tutti_models::device_name(device)
}

/// Memory in use on a device: CUDA's used bytes, or this process's resident set.
struct MemProbe {
    device: Device,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Option<u64>>>,
    cpu: bool,
}

impl MemProbe {
    fn new(device: &Device) -> Self {
        MemProbe {
            device: device.clone(),
        }
    }

    fn current(&self) -> Option<u64> {
        if self.device.is_cpu() {
            return proc_status_kb("VmRSS:").map(|kb| kb * 1024);
        }
        cuda_used(&self.device)
    }

    /// Starts tracking the peak: on the CPU by resetting the kernel's high-water mark,
    /// on CUDA by a sampling thread.
    fn start_sampling(&self) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        if self.device.is_cpu() {
            // "5" resets VmHWM to the current RSS (Linux); ignored where not allowed.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            return Sampler {
                stop,
                handle: None,
                cpu: true,
            };
        }
        let device = self.device.clone();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak: Option<u64> = None;
            loop {
                if let Some(u) = cuda_used(&device) {
                    peak = Some(peak.map_or(u, |p| p.max(u)));
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        Sampler {
            stop,
            handle: Some(handle),
            cpu: false,
        }
    }
}

impl Sampler {
    fn stop(mut self) -> Option<u64> {
        if self.cpu {
            return proc_status_kb("VmHWM:").map(|kb| kb * 1024);
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).flatten()
    }
}

fn proc_status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[allow(unused_variables)]
fn cuda_used(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free) as u64);
    }
    None
}

/// The report as a fixed-width table.
pub fn format_table(r: &SpeedReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "device {} ({}), dtype {}, bandwidth {:.0} GB/s ({})",
        r.device, r.device_name, r.dtype, r.bandwidth_gbs, r.bandwidth_source
    );
    let _ = writeln!(
        s,
        "CPU kernels: {}; weights regrouped at load: {:.1} MiB in {:.3} s",
        r.cpu_kernels, r.repacked_mib, r.repack_s
    );
    let _ = writeln!(
        s,
        "{:<28} {:>8} {:>10} {:>9} {:>22} {:>9} {:>9} {:>10} {:>8} {:>10} {:>10}",
        "run",
        "prompt",
        "prefill/s",
        "ms/tok",
        "forward ms (per member)",
        "topk+comb",
        "feedback",
        "roofline",
        "of it",
        "load MiB",
        "peak MiB"
    );
    let mib =
        |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1048576.0));
    for row in &r.rows {
        let fwd = row
            .forward_ms
            .iter()
            .map(|f| format!("{f:.2}"))
            .collect::<Vec<_>>()
            .join("/");
        let chars: Vec<char> = row.name.chars().collect();
        let name: String = if chars.len() > 28 {
            std::iter::once('…')
                .chain(chars[chars.len() - 27..].iter().copied())
                .collect()
        } else {
            row.name.clone()
        };
        let _ = writeln!(
            s,
            "{:<28} {:>8} {:>10.1} {:>9.2} {:>22} {:>9.3} {:>9.3} {:>8.2}ms {:>7.0}% {:>10} {:>10}{}",
            name,
            row.prompt_tokens,
            row.prefill_tokens_per_s,
            row.decode_ms_per_token,
            fwd,
            row.align_combine_ms,
            row.feedback_ms,
            row.roofline_ms,
            100.0 * row.roofline_fraction,
            mib(row.mem_after_load_bytes),
            mib(row.peak_mem_bytes),
            if row.stopped_at_eos {
                format!("  (EOS after {} tokens)", row.decode_tokens)
            } else {
                String::new()
            }
        );
    }
    if !r.batched.is_empty() {
        let _ = writeln!(
            s,
            "{:<28} {:>6} {:>8} {:>12} {:>10}",
            "batched decode", "batch", "prompt", "ms/step", "tokens/s"
        );
    }
    for b in &r.batched {
        let _ = writeln!(
            s,
            "{:<28} {:>6} {:>8} {:>12.2} {:>10.1}",
            b.name, b.batch, b.prompt_tokens, b.ms_per_step, b.tokens_per_s
        );
    }
    for t in &r.topk {
        let _ = writeln!(
            s,
            "top-{} over {} logits: {:.1} µs on the tensor's device, {:.1} µs copied to the host; same ids: {}",
            t.k, t.vocab, t.tensor_us, t.host_us, t.same_ids
        );
    }
    s
}
