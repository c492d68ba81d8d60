//! The fused CPU softmax + top-k against the straightforward path (full softmax with the
//! standard `exp`, then a full sort) on a 262,144-entry vocabulary.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tutti_kernels::{gather_probs, log_norm, select_topk, softmax_topk, softmax_topk_tensor};

const VOCAB: usize = 262_144;

fn logits() -> Vec<f32> {
    // xorshift: deterministic, roughly logit-shaped values.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..VOCAB)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0
        })
        .collect()
}

/// Softmax over everything, then sort every id by probability (ties by lower id).
fn sort_based(logits: &[f32], temperature: f32, k: usize) -> (Vec<u32>, Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits
        .iter()
        .map(|&l| ((l - max) / temperature).exp())
        .collect();
    let z: f32 = e.iter().sum();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| e[b as usize].total_cmp(&e[a as usize]).then(a.cmp(&b)));
    ids.truncate(k);
    let probs = ids.iter().map(|&i| e[i as usize] / z).collect();
    (ids, probs)
}

fn bench(c: &mut Criterion) {
    let l = logits();
    let union: Vec<u32> = (0..192).map(|i| (i * 1361) as u32).collect();
    let mut g = c.benchmark_group("topk_262144");
    for k in [1usize, 64] {
        g.bench_function(format!("fused_k{k}"), |b| {
            b.iter(|| softmax_topk(black_box(&l), 1.0, k, None).unwrap())
        });
        g.bench_function(format!("split_k{k}"), |b| {
            b.iter(|| {
                let n = log_norm(black_box(&l), 1.0).unwrap();
                select_topk(&l, &n, k, None).unwrap()
            })
        });
        g.bench_function(format!("sort_k{k}"), |b| {
            b.iter(|| sort_based(black_box(&l), 1.0, k))
        });
    }
    let t = softmax_topk(&l, 1.0, 64, None).unwrap();
    g.bench_function("gather_192", |b| {
        b.iter(|| gather_probs(black_box(&l), &t.norm, &union))
    });
    // The device dispatch on a CPU tensor: one copy of the row out of the tensor, then
    // the fused pass (what `tutti bench speed` reports as the CPU "tensor" path).
    let dev = candle_core::Device::Cpu;
    for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
        let t = candle_core::Tensor::from_vec(l.clone(), l.len(), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        g.bench_function(format!("tensor_{dtype:?}_k64").to_lowercase(), |b| {
            b.iter(|| softmax_topk_tensor(black_box(&t), 1.0, 64, None).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
