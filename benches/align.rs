//! Criterion benches of vocabulary alignment: building a min-ed map on a sample of
//! real tokens (the full maps are timed with `tutti align --no-cache`), the brute-force
//! reference on a smaller sample for the ratio, and per-candidate lookups.
//!
//! Tokenizers come from `models-cache/tokenizers/` (`scripts/fetch-tokenizers.sh`).

use std::path::PathBuf;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tokenizers::Tokenizer;
use tutti::align::exact_map;
use tutti::align::min_ed::{brute_force, map_ids, MinEdIndex, Scratch};
use tutti::vocab::Vocab;

fn vocab(name: &str, width: usize) -> Vocab {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = root
        .join("models-cache/tokenizers")
        .join(name)
        .join("tokenizer.json");
    if !path.is_file() {
        panic!("tokenizer {name} not found; run scripts/fetch-tokenizers.sh");
    }
    let tok = Tokenizer::from_file(&path).expect("tokenizer");
    Vocab::from_tokenizer(&tok, &[], Some(width)).expect("vocab")
}

/// Every `step`-th candidate of `a`: a deterministic spread over the vocabulary.
fn spread(a: &Vocab, n: usize) -> Vec<u32> {
    let c: Vec<u32> = a.candidates().collect();
    let step = (c.len() / n).max(1);
    c.into_iter().step_by(step).take(n).collect()
}

fn bench(c: &mut Criterion) {
    let llama = vocab("llama3", 128_256);
    let qwen = vocab("qwen3", 151_936);
    let gemma = vocab("gemma3", 262_144);
    let smol = vocab("smollm2", 49_152);

    let mut g = c.benchmark_group("align");
    g.sample_size(10);
    g.bench_function("index_build/qwen3", |b| {
        b.iter(|| MinEdIndex::new(black_box(&qwen)))
    });
    g.bench_function("exact_map/llama3->qwen3", |b| {
        b.iter(|| exact_map(black_box(&llama), &qwen))
    });

    let idx_qwen = MinEdIndex::new(&qwen);
    let idx_smol = MinEdIndex::new(&smol);
    let s_llama = spread(&llama, 4096);
    let s_gemma = spread(&gemma, 4096);
    g.bench_function("min_ed/llama3->qwen3/4096 tokens", |b| {
        b.iter(|| map_ids(&idx_qwen, &llama, black_box(&s_llama), &|_| {}))
    });
    g.bench_function("min_ed/gemma3->smollm2/4096 tokens", |b| {
        b.iter(|| map_ids(&idx_smol, &gemma, black_box(&s_gemma), &|_| {}))
    });
    let s_small = spread(&gemma, 64);
    g.bench_function("brute_force/gemma3->smollm2/64 tokens", |b| {
        b.iter(|| brute_force(&gemma, &smol, black_box(&s_small)))
    });

    // Per-candidate lookups as decoding does them: one query, warm scratch buffers.
    let mut scratch = Scratch::default();
    let word = gemma
        .bytes(s_gemma[1000])
        .unwrap_or(b" tokenization")
        .to_vec();
    g.bench_function("min_ed_lookup/one gemma3 token in smollm2", |b| {
        b.iter(|| idx_smol.nearest(black_box(&word), &mut scratch))
    });
    let map = exact_map(&llama, &qwen);
    g.bench_function("token_map_lookup/4096", |b| {
        b.iter(|| {
            s_llama
                .iter()
                .filter_map(|&id| map.map(black_box(id)))
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
