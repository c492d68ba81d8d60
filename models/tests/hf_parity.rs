//! Logit parity with `transformers` on tiny random models of every family, and KV-cache
//! truncation correctness on the same models in f32 and bf16.
//!
//! Fixtures: `tests/fixtures/tiny/<family>/` from `scripts/gen-tiny-fixtures.sh` (see the
//! README there): an HF checkpoint plus the logits `transformers` computes at every
//! position for a few id sequences.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use tutti_models::weights::Weights;
use tutti_models::{CausalLm, Transformer, TransformerConfig, WeightFormat};

const FAMILIES: &[&str] = &[
    "llama3",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3",
    "gemma3_default_rope",
    "phi3",
];

fn load(family: &str, dtype: DType) -> Transformer {
    let dir = fixture(&format!("tiny/{family}"));
    let cfg = TransformerConfig::from_hf_file(&dir.join("config.json"), None).unwrap();
    let w =
        Weights::from_safetensors(&[dir.join("model.safetensors")], &Device::Cpu, dtype).unwrap();
    Transformer::load(&w, cfg, WeightFormat::HuggingFace).unwrap()
}

/// (ids, logits `[seq, vocab]`) per case.
fn cases(family: &str) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let path = fixture(&format!("tiny/{family}/cases.safetensors"));
    let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut out = Vec::new();
    for i in 0.. {
        let (Some(ids), Some(logits)) = (t.get(&format!("ids.{i}")), t.get(&format!("logits.{i}")))
        else {
            break;
        };
        let ids: Vec<u32> = ids.to_dtype(DType::U32).unwrap().to_vec1().unwrap();
        let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        out.push((ids, logits));
    }
    assert!(out.len() >= 3, "{family}: expected at least 3 cases");
    out
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn vec(t: Tensor) -> Vec<f32> {
    t.to_vec1().unwrap()
}

#[test]
fn prefill_and_decode_match_transformers() {
    for family in FAMILIES {
        let mut m = load(family, DType::F32);
        let mut worst = 0f32;
        for (ids, reference) in cases(family) {
            // One forward over the whole sequence.
            m.reset();
            let last = vec(m.forward(&ids).unwrap());
            worst = worst.max(max_abs(&last, &reference[ids.len() - 1]));
            // Token by token through the KV cache: every position is checked.
            m.reset();
            for (pos, id) in ids.iter().enumerate() {
                let l = vec(m.forward(&[*id]).unwrap());
                let d = max_abs(&l, &reference[pos]);
                assert!(d <= 1e-4, "{family}: position {pos} differs by {d}");
                worst = worst.max(d);
            }
            // Prefill a prefix, then the rest in one chunk (offset > 0, several queries).
            m.reset();
            let half = ids.len() / 2;
            m.forward(&ids[..half]).unwrap();
            let l = vec(m.forward(&ids[half..]).unwrap());
            worst = worst.max(max_abs(&l, &reference[ids.len() - 1]));
        }
        eprintln!("{family}: max |Δlogit| vs transformers = {worst:.2e}");
        assert!(worst <= 1e-4, "{family}: max difference {worst} > 1e-4");
    }
}

/// Prefill N, decode, truncate to M < N, re-feed: the logits must equal those of a fresh
/// prefill of the same ids, and the model must go on to match from there.
///
/// "Equal" up to summation order: the cached entries below M were computed in a batch of
/// N rows on one side and M rows on the other, which changes the matmul blocking. The
/// tolerance is far below what a stale or misplaced cache entry produces (≥ 1e-2 here).
#[test]
fn truncate_then_refeed_equals_fresh_prefill() {
    for dtype in [DType::F32, DType::BF16] {
        for family in FAMILIES {
            let mut m = load(family, dtype);
            let mut fresh = load(family, dtype);
            let mut worst = 0f32;
            for (ids, _) in cases(family) {
                let n = ids.len() * 2 / 3;
                let m_len = n / 2;
                m.reset();
                m.forward(&ids[..n]).unwrap();
                for id in &ids[n..] {
                    m.forward(&[*id]).unwrap();
                }
                m.truncate(m_len);
                assert_eq!(m.position(), m_len);
                let got = vec(m.forward(&ids[m_len..]).unwrap());
                fresh.reset();
                fresh.forward(&ids[..m_len]).unwrap();
                let want = vec(fresh.forward(&ids[m_len..]).unwrap());
                let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
                let d = max_abs(&got, &want);
                worst = worst.max(d);
                assert!(
                    d <= tol,
                    "{family} {dtype:?}: truncated state differs by {d}"
                );
                // And one more decode step from both states agrees too.
                let a = vec(m.forward(&ids[..1]).unwrap());
                let b = vec(fresh.forward(&ids[..1]).unwrap());
                let d = max_abs(&a, &b);
                worst = worst.max(d);
                assert!(d <= tol, "{family} {dtype:?}: next step differs by {d}");
            }
            eprintln!("{family} {dtype:?}: truncate+refeed vs fresh prefill max |Δ| = {worst:.2e}");
        }
    }
}
