//! Relrep set-up at growing hidden sizes (harness-free bench).
//!
//! `RelRep::new` with the default configuration (16,384 shared anchors, CSLS sample
//! 16,384) on random embeddings over two synthetic byte-level vocabularies of 32,000
//! tokens each (24,000 surfaces shared), with the time of each stage
//! ([`SetupTimes`]). Then, on the same run, the two dense decompositions against the
//! hand-written Cholesky and cyclic Jacobi routines they replaced, on random
//! symmetric positive semi-definite matrices (`Rᵀ R` of a `2n × n` normal `R`), at
//! the sizes where the hand-written ones finish in reasonable time.
//!
//! ```sh
//! cargo bench --bench relrep                          # 576 … 4096 (minutes on 2 cores)
//! cargo bench --bench relrep -- 576x4096 1024 --old-max 2048
//! ```
//!
//! A size is `H` (both sides) or `HAxHB`; `--old-max N` (default 1024) is the largest
//! matrix the hand-written routines are timed on. Without `--bench` (as `cargo test`
//! runs benches) it runs one small size and checks the new decompositions against the
//! old ones.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;
use tutti::align::relrep::{sym_eigen, whitening, RelRep, RelRepConfig, SetupTimes};
use tutti::vocab::Vocab;

/// A byte-level BPE vocabulary with the given pieces (ASCII, so each piece's bytes
/// are its characters) and no merges.
fn vocab(pieces: &[String]) -> Vocab {
    let map: serde_json::Map<String, serde_json::Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                    "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": map, "merges": []}
    });
    let tok = Tokenizer::from_bytes(json.to_string().as_bytes()).expect("tokenizer");
    Vocab::from_tokenizer(&tok, &[], None).expect("vocab")
}

/// Two vocabularies of `size` tokens sharing `shared` surfaces, listed in opposite
/// orders so that a shared token's ids differ between them.
fn vocab_pair(size: usize, shared: usize) -> (Vocab, Vocab) {
    let common: Vec<String> = (0..shared).map(|i| format!("s{i:x}")).collect();
    let own = |tag: char| (0..size - shared).map(move |i| format!("{tag}{i:x}"));
    let a: Vec<String> = common.iter().cloned().chain(own('a')).collect();
    let b: Vec<String> = common.iter().rev().cloned().chain(own('b')).collect();
    (vocab(&a), vocab(&b))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `Rᵀ R / 2n` for a normal `2n × n` `R`, row-major.
fn wishart(n: usize) -> Vec<f64> {
    let r = Tensor::randn(0f32, 1.0, (2 * n, n), &Device::Cpu).expect("randn");
    let c = (r.t().expect("t").matmul(&r).expect("matmul") / (2 * n) as f64).expect("scale");
    c.flatten_all()
        .and_then(|c| c.to_vec1::<f32>())
        .expect("to host")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The hand-written whitening that faer replaced: `W = L⁻ᵀ` for the Cholesky factor
/// of `C + 1e-6·max(diag C)·I`, unblocked, then `L⁻¹` by forward substitution.
fn old_whitening(c: &[f64], n: usize) -> Vec<f64> {
    let max_diag = (0..n).map(|i| c[i * n + i]).fold(0.0f64, f64::max);
    let ridge = (1e-6 * max_diag).max(1e-30);
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = c[i * n + j] + if i == j { ridge } else { 0.0 };
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            l[i * n + j] = if i == j {
                s.max(ridge).sqrt()
            } else {
                s / l[j * n + j]
            };
        }
    }
    let mut inv = vec![0.0f64; n * n];
    for col in 0..n {
        for i in col..n {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for k in col..i {
                s -= l[i * n + k] * inv[k * n + col];
            }
            inv[i * n + col] = s / l[i * n + i];
        }
    }
    (0..n * n).map(|k| inv[(k % n) * n + k / n]).collect()
}

/// The hand-written cyclic Jacobi eigen-decomposition that faer replaced: eigenvalues
/// (unordered) and eigenvectors as rows.
fn old_jacobi(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut vt = vec![0.0f64; n * n];
    for i in 0..n {
        vt[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|v| v * v).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let mut off = 0.0f64;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off <= 1e-28 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                if apq.abs() <= 1e-300 || apq.abs() <= 1e-17 * (app.abs() + aqq.abs()) {
                    continue;
                }
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (x, y) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * x - s * y;
                    a[k * n + q] = s * x + c * y;
                }
                for k in 0..n {
                    let (x, y) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * x - s * y;
                    a[q * n + k] = s * x + c * y;
                }
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
                for k in 0..n {
                    let (x, y) = (vt[p * n + k], vt[q * n + k]);
                    vt[p * n + k] = c * x - s * y;
                    vt[q * n + k] = s * x + c * y;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), vt)
}

struct Args {
    full: bool,
    sizes: Vec<(usize, usize)>,
    old_max: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        full: false,
        sizes: Vec::new(),
        old_max: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => args.full = true,
            "--old-max" => {
                let v = it.next().ok_or("--old-max needs a number")?;
                args.old_max = v.parse().map_err(|_| format!("bad --old-max {v:?}"))?;
            }
            s if s.starts_with('-') => {}
            s => {
                let size = |t: &str| t.parse::<usize>().ok().filter(|&h| h > 0);
                let pair = match s.split_once('x') {
                    Some((x, y)) => size(x).zip(size(y)),
                    None => size(s).map(|h| (h, h)),
                };
                args.sizes
                    .push(pair.ok_or(format!("bad size {s:?}: expected H or HAxHB"))?);
            }
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = parse_args()?;
    let (tokens, shared, cfg) = if args.full {
        (32_000, 24_000, RelRepConfig::default())
    } else {
        let cfg = RelRepConfig {
            anchors: 1024,
            csls_sample: 1024,
            ..RelRepConfig::default()
        };
        (3_000, 2_000, cfg)
    };
    if args.sizes.is_empty() {
        args.sizes = if args.full {
            vec![
                (576, 576),
                (1024, 1024),
                (2048, 2048),
                (576, 4096),
                (4096, 4096),
            ]
        } else {
            vec![(64, 96)]
        };
    }
    if !args.full {
        args.old_max = 96;
    }
    let (va, vb) = vocab_pair(tokens, shared);
    println!(
        "relrep set-up: {tokens} tokens per side, {shared} shared, {} anchors, CSLS sample {}; \
         seconds; load average {}",
        cfg.anchors,
        cfg.csls_sample,
        load()
    );
    println!();
    println!(
        "| hidden A × B | select | covariance | whiten | cross | gram | eigen | project | total |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &(ha, hb) in &args.sizes {
        let ea = Tensor::randn(0f32, 1.0, (tokens, ha), &Device::Cpu)?;
        let eb = Tensor::randn(0f32, 1.0, (tokens, hb), &Device::Cpu)?;
        let t = Instant::now();
        let rr = RelRep::new(&va, &ea, &vb, &eb, &cfg)?;
        let wall = t.elapsed();
        let SetupTimes {
            select,
            covariance,
            whiten,
            cross,
            gram,
            eigen,
            project,
        } = rr.setup_times().clone();
        println!(
            "| {ha} × {hb} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |",
            secs(select),
            secs(covariance),
            secs(whiten),
            secs(cross),
            secs(gram),
            secs(eigen),
            secs(project),
            secs(wall)
        );
        if rr.anchors().len() != cfg.anchors.min(shared) {
            return Err(format!(
                "expected {} anchors, got {}",
                cfg.anchors,
                rr.anchors().len()
            )
            .into());
        }
    }

    let mut sizes: Vec<usize> = args.sizes.iter().flat_map(|&(a, b)| [a, b]).collect();
    sizes.sort_unstable();
    sizes.dedup();
    println!();
    println!(
        "decompositions of an n × n Rᵀ R (seconds; ratio = hand-written / faer; load average {})",
        load()
    );
    println!();
    println!(
        "| n | Cholesky + inverse, hand-written | faer | ratio | eigen, Jacobi | faer | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for n in sizes {
        let c = wishart(n);
        let t = Instant::now();
        let w = whitening(&c, n)?;
        let new_w = t.elapsed();
        let t = Instant::now();
        let (values, _) = sym_eigen(&c, n)?;
        let new_e = t.elapsed();
        if n > args.old_max {
            println!(
                "| {n} | – | {:.3} | – | – | {:.3} | – |",
                secs(new_w),
                secs(new_e)
            );
            continue;
        }
        let t = Instant::now();
        let w_old = old_whitening(&c, n);
        let old_w = t.elapsed();
        let t = Instant::now();
        let (mut values_old, _) = old_jacobi(c.clone(), n);
        let old_e = t.elapsed();
        println!(
            "| {n} | {:.3} | {:.3} | {:.0}× | {:.2} | {:.3} | {:.0}× |",
            secs(old_w),
            secs(new_w),
            secs(old_w) / secs(new_w),
            secs(old_e),
            secs(new_e),
            secs(old_e) / secs(new_e)
        );
        // Both whitenings are L⁻ᵀ of the same (unique) Cholesky factor, and the
        // spectra must agree.
        values_old.sort_by(f64::total_cmp);
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let dw = w
            .iter()
            .zip(&w_old)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        let top = values.last().copied().unwrap_or(0.0).abs().max(1.0);
        let de = values
            .iter()
            .zip(&values_old)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        if dw > 1e-8 * scale || de > 1e-9 * top {
            return Err(format!(
                "n = {n}: faer and hand-written results differ (W {dw:e}, λ {de:e})"
            )
            .into());
        }
    }
    Ok(())
}
