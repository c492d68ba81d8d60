//! `tutti align`: build (or load from the cache) a vocabulary map between two members
//! and print its statistics.
//!
//! `exact` and `min-ed` need only tokenizers: each `-m` may be a `tokenizer.json`, a
//! folder, a `.gguf` file (vocabulary rebuilt from its metadata) or `hf:ORG/NAME...`.
//! `relrep` loads both models for their embedding tables.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use tutti::align::cache::{MapCache, Source};
use tutti::align::lookup::{self, EmbeddingTable, MapSide, RelRepSettings};
use tutti::align::min_ed::{self, MinEdIndex};
use tutti::align::relrep::RelRepConfig;
use tutti::align::{AlignError, AlignMethod, MapStats};
use tutti::vocab::Vocab;

/// Which embedding table relrep compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbeddingChoice {
    /// The input embedding table.
    Input,
    /// The output projection where it is untied (else the input table).
    Output,
}

#[derive(clap::Args)]
pub struct AlignArgs {
    /// Member A, then member B: tokenizer.json, folder, .gguf or hf:ORG/NAME[@REV][/FILE]
    #[arg(short = 'm', long = "model", required = true)]
    models: Vec<String>,
    /// exact | min-ed | relrep
    #[arg(long = "align", default_value = "exact")]
    method: String,
    /// Rebuild even when a valid cached map exists (the new map is stored).
    #[arg(long)]
    no_cache: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Number of sample mappings to print.
    #[arg(long, default_value_t = 12)]
    sample: usize,
    /// relrep: maximum number of anchor tokens.
    #[arg(long, default_value_t = RelRepConfig::default().anchors)]
    anchors: usize,
    /// relrep: which embedding table to compare.
    #[arg(long, value_enum, default_value_t = EmbeddingChoice::Input)]
    embeddings: EmbeddingChoice,
    /// relrep: device for both models (auto, cpu, cuda:N, metal).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// min-ed: also time the brute-force reference on N random A candidates and
    /// extrapolate it to the full vocabulary.
    #[arg(long, value_name = "N")]
    brute_force_sample: Option<usize>,
}

/// One member as the alignment sees it.
struct Member {
    spec: String,
    vocab: Vocab,
    weights: Option<String>,
    embeddings: Option<candle_core::Tensor>,
}

fn load_tokenizer_member(spec: &str) -> Result<Member> {
    let tok = tutti_models::ModelTokenizer::from_source(spec)
        .with_context(|| format!("loading the tokenizer of {spec}"))?;
    let vocab = Vocab::from_tokenizer(tok.inner(), tok.eos_ids(), None)
        .with_context(|| format!("reading the vocabulary of {spec}"))?;
    Ok(Member {
        spec: spec.to_string(),
        vocab,
        weights: None,
        embeddings: None,
    })
}

fn load_model_member(
    spec: &str,
    device: &candle_core::Device,
    choice: EmbeddingChoice,
) -> Result<Member> {
    let opts = tutti_models::LoadOptions {
        device: device.clone(),
        ..Default::default()
    };
    let model =
        tutti_models::Model::load(spec, &opts).with_context(|| format!("loading model {spec}"))?;
    let width = model.lm.vocab_size();
    let vocab = Vocab::from_tokenizer(
        model.tokenizer.inner(),
        model.tokenizer.eos_ids(),
        Some(width),
    )
    .with_context(|| format!("reading the vocabulary of {spec}"))?;
    let emb = match choice {
        EmbeddingChoice::Input => model.lm.input_embeddings()?,
        EmbeddingChoice::Output => match model.lm.output_embeddings()? {
            Some(e) => e,
            None => model.lm.input_embeddings()?,
        },
    };
    Ok(Member {
        spec: spec.to_string(),
        vocab,
        weights: Some(model.info.weights_fingerprint.clone()),
        embeddings: Some(emb),
    })
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} tokens ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

fn show(bytes: Option<&[u8]>) -> String {
    match bytes {
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        None => "-".into(),
    }
}

pub fn run(args: AlignArgs) -> Result<()> {
    if args.models.len() != 2 {
        bail!(
            "tutti align needs exactly two members (-m A -m B), got {}",
            args.models.len()
        );
    }
    let method: AlignMethod = args.method.parse()?;
    let (a, b) = if method == AlignMethod::RelRep {
        let device = tutti_models::parse_device(&args.device)?;
        (
            load_model_member(&args.models[0], &device, args.embeddings)?,
            load_model_member(&args.models[1], &device, args.embeddings)?,
        )
    } else {
        (
            load_tokenizer_member(&args.models[0])?,
            load_tokenizer_member(&args.models[1])?,
        )
    };

    let relrep = RelRepSettings {
        config: RelRepConfig {
            anchors: args.anchors,
            ..RelRepConfig::default()
        },
        table: match args.embeddings {
            EmbeddingChoice::Input => EmbeddingTable::Input,
            EmbeddingChoice::Output => EmbeddingTable::Output,
        },
    };
    let embeddings = |m: &Member| -> Result<candle_core::Tensor, AlignError> {
        m.embeddings.clone().ok_or_else(|| {
            AlignError::BadEmbeddings(format!("{}: no embedding table loaded", m.spec))
        })
    };
    let (ea, eb) = (|| embeddings(&a), || embeddings(&b));
    let (wa, wb) = (
        a.weights.clone().unwrap_or_default(),
        b.weights.clone().unwrap_or_default(),
    );
    let side_a = MapSide {
        name: &a.spec,
        vocab: &a.vocab,
        weights: &wa,
        embeddings: &ea,
    };
    let side_b = MapSide {
        name: &b.spec,
        vocab: &b.vocab,
        weights: &wb,
        embeddings: &eb,
    };
    let key = lookup::map_key(method, &side_a, &side_b, &relrep);
    let cache = MapCache::from_env()?;

    let n_cands = a.vocab.candidates().count() as u64;
    let pb = progress_bar(n_cands, args.json);
    pb.set_message(format!("{method} {} → {}", a.spec, b.spec));
    let started = Instant::now();
    let inc = |n: u64| pb.inc(n);
    let (map, source) = lookup::load_or_build(
        method,
        &side_a,
        &side_b,
        &relrep,
        Some(&cache),
        args.no_cache,
        &inc,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let stats = MapStats::compute(&map, &a.vocab, &b.vocab);

    let brute = match (method, args.brute_force_sample) {
        (AlignMethod::MinEd, Some(n)) if n > 0 => {
            let mut ids: Vec<u32> = a.vocab.candidates().collect();
            ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(1));
            ids.truncate(n);
            let t = Instant::now();
            let slow = min_ed::brute_force(&a.vocab, &b.vocab, &ids);
            let bf = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let fast = min_ed::map_ids(&MinEdIndex::new(&b.vocab), &a.vocab, &ids, &|_| {});
            let fs = t.elapsed().as_secs_f64();
            let agree = slow.iter().zip(&fast).filter(|(x, y)| x == y).count();
            Some(json!({
                "sample": ids.len(),
                "brute_force_s": bf,
                "indexed_s": fs,
                "agree": agree,
                "brute_force_extrapolated_s": bf * n_cands as f64 / ids.len().max(1) as f64,
            }))
        }
        _ => None,
    };

    // Sample: evenly spaced A candidates, plus non-identical mappings (the interesting ones).
    let cands: Vec<u32> = a.vocab.candidates().collect();
    let mut sample: Vec<u32> = Vec::new();
    if args.sample > 0 && !cands.is_empty() {
        let step = (cands.len() / args.sample.div_ceil(2)).max(1);
        sample.extend(cands.iter().step_by(step).take(args.sample.div_ceil(2)));
        sample.extend(
            cands
                .iter()
                .copied()
                .filter(|&id| {
                    map.map(id)
                        .is_some_and(|t| b.vocab.bytes(t) != a.vocab.bytes(id))
                })
                .step_by(997)
                .take(args.sample / 2),
        );
    }
    let rows: Vec<serde_json::Value> = sample
        .iter()
        .map(|&id| {
            let t = map.map(id);
            json!({
                "a_id": id,
                "a": show(a.vocab.bytes(id)),
                "b_id": t,
                "b": show(t.and_then(|t| b.vocab.bytes(t))),
                "score": map.score(id),
            })
        })
        .collect();
    let source_str = match &source {
        Source::Cached => "cache".to_string(),
        Source::Built => "built".to_string(),
        Source::Rebuilt(why) => format!("rebuilt (cache file invalid: {why})"),
    };
    let path = cache.path(&key);

    if args.json {
        let out = json!({
            "a": {"spec": a.spec, "ids": a.vocab.len(), "tokenizer_size": a.vocab.tokenizer_size(),
                  "logit_width": a.vocab.logit_width(), "scheme": a.vocab.scheme().name(),
                  "candidates": stats.a_candidates, "fingerprint": a.vocab.fingerprint_hex()},
            "b": {"spec": b.spec, "ids": b.vocab.len(), "tokenizer_size": b.vocab.tokenizer_size(),
                  "logit_width": b.vocab.logit_width(), "scheme": b.vocab.scheme().name(),
                  "candidates": stats.b_candidates, "fingerprint": b.vocab.fingerprint_hex()},
            "method": method.name(),
            "stats": stats,
            "seconds": seconds,
            "source": source_str,
            "cache_path": path.display().to_string(),
            "brute_force": brute,
            "sample": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (tag, m, c) in [("A", &a, stats.a_candidates), ("B", &b, stats.b_candidates)] {
        println!(
            "{tag}: {} — {} ids ({} in tokenizer, {} logits), {} candidates, {}",
            m.spec,
            m.vocab.len(),
            m.vocab.tokenizer_size(),
            m.vocab.logit_width(),
            c,
            m.vocab.scheme().name()
        );
    }
    let pct = |x: usize| 100.0 * x as f64 / stats.a_candidates.max(1) as f64;
    println!(
        "exact overlap: {} of A's candidates ({:.1}%)",
        stats.exact_overlap,
        pct(stats.exact_overlap)
    );
    println!(
        "{method}: {} mapped ({:.1}%), {} to an identical surface, mean score {:.3}",
        stats.mapped,
        100.0 * stats.mapped_share,
        stats.mapped_identical,
        stats.mean_score
    );
    println!("time: {seconds:.2} s ({source_str})");
    println!("cache: {}", path.display());
    if let Some(b) = &brute {
        println!("brute force: {b}");
    }
    println!("sample:");
    for r in &rows {
        println!(
            "  {:>7} {:<24} → {:>7} {:<24} {}",
            r["a_id"],
            r["a"].as_str().unwrap_or(""),
            r["b_id"],
            r["b"].as_str().unwrap_or(""),
            r["score"]
        );
    }
    Ok(())
}
