//! Batch-invariant numerics on the two demo models: the logits after a prompt are the
//! same bits whether the prompt is fed whole, in chunks, one id at a time, after a cached
//! prefix that diverged, or at another thread count. llama.cpp's own choice of kernels
//! by shape does not have this property; the last test shows it, so the others can fail.

mod common;

use common::*;
use tutti_models::{LoadOptions, Model, Numerics};

const TEXT: &str = "The old lighthouse keeper climbed the spiral stairs every evening at dusk, \
     counting the steps aloud as his father had taught him. From the lamp room he could see \
     the fishing boats returning to the harbour, their lanterns swaying on the dark water, \
     and the gulls settling on the breakwater for the night. He wound the clockwork, trimmed \
     the wick and wrote the weather in his";

fn load(file: &str, numerics: Numerics) -> Model {
    let opts = LoadOptions {
        numerics,
        ..LoadOptions::default()
    };
    Model::load(demo_model(file).to_str().unwrap(), &opts).unwrap()
}

fn prompt(model: &Model) -> Vec<u32> {
    let ids = model.tokenizer.encode_prompt(TEXT).unwrap();
    assert!(
        ids.len() > 64,
        "the prompt must span two 64-id chunks: {}",
        ids.len()
    );
    ids
}

/// The last logits after feeding `ids` from an empty cache in pieces of `chunk` ids.
fn fed_in_chunks(model: &mut Model, ids: &[u32], chunk: usize) -> Vec<u32> {
    model.lm.reset();
    let mut last = None;
    for piece in ids.chunks(chunk) {
        last = Some(model.lm.forward(piece).unwrap());
    }
    bits(&last.unwrap().to_vec1::<f32>().unwrap())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// FNV-1a of the bits: what a child process reports back.
fn digest(bits: &[u32]) -> u64 {
    bits.iter().fold(0xcbf29ce484222325, |h, b| {
        b.to_le_bytes()
            .iter()
            .fold(h, |h, &x| (h ^ x as u64).wrapping_mul(0x100000001b3))
    })
}

fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn check_model(file: &str) {
    let mut model = load(file, Numerics::default());
    let ids = prompt(&model);
    let whole = fed_in_chunks(&mut model, &ids, ids.len());
    for chunk in [1, 7, 64] {
        let got = fed_in_chunks(&mut model, &ids, chunk);
        assert_eq!(
            first_difference(&whole, &got),
            None,
            "{file}: chunks of {chunk} give other logits than the whole prompt"
        );
    }
    // A cached prefix: another text shares the first 40 ids, the cache is cut back to
    // them, and the rest of the prompt follows.
    let mut other = ids[..40].to_vec();
    other.extend(
        model
            .tokenizer
            .encode_prompt(" and then the storm came")
            .unwrap(),
    );
    model.lm.reset();
    model.lm.forward(&other).unwrap();
    model.lm.truncate(40);
    let got = bits(
        &model
            .lm
            .forward(&ids[40..])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
    );
    assert_eq!(
        first_difference(&whole, &got),
        None,
        "{file}: the prompt after a reused cached prefix gives other logits"
    );
    // The same ids once more on the same model, after all of the above.
    assert_eq!(whole, fed_in_chunks(&mut model, &ids, ids.len()));

    // Other thread counts, in child processes (the pool's size is fixed per process).
    let test = format!("{}_is_batch_invariant", file_key(file));
    for threads in [1, 2] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &test, "--nocapture", "--test-threads=1"])
            .env("TUTTI_INVARIANCE_CHILD", "1")
            .env("TUTTI_THREADS", threads.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "child at {threads} threads failed:\n{text}"
        );
        let line = text
            .lines()
            .find_map(|l| l.split("logits digest ").nth(1))
            .unwrap_or_else(|| panic!("no digest from the child at {threads} threads:\n{text}"));
        assert_eq!(
            line.trim(),
            digest(&whole).to_string(),
            "{file}: logits at {threads} threads differ from this process's ({} threads)",
            tutti_models::threads()
        );
    }
}

fn file_key(file: &str) -> &'static str {
    if file == GEMMA3 {
        "gemma3"
    } else {
        "smollm2"
    }
}

/// In a child process: the digest of the whole prompt's logits, and nothing else.
fn child(file: &str) -> bool {
    if std::env::var_os("TUTTI_INVARIANCE_CHILD").is_none() {
        return false;
    }
    let mut model = load(file, Numerics::default());
    let ids = prompt(&model);
    let whole = fed_in_chunks(&mut model, &ids, ids.len());
    println!("logits digest {}", digest(&whole));
    true
}

#[test]
fn smollm2_is_batch_invariant() {
    if !child(SMOLLM2) {
        check_model(SMOLLM2);
    }
}

#[test]
fn gemma3_is_batch_invariant() {
    if !child(GEMMA3) {
        check_model(GEMMA3);
    }
}

#[test]
fn llama_cpp_numerics_depend_on_how_the_prompt_is_fed() {
    // Gemma 3's K-quant projections take llama.cpp's prompt kernels from 8 and 16 rows,
    // so the same ids fed whole and by sevens give other logits.
    let mut model = load(GEMMA3, Numerics::LlamaCpp);
    let ids = prompt(&model);
    let whole = fed_in_chunks(&mut model, &ids, ids.len());
    let sevens = fed_in_chunks(&mut model, &ids, 7);
    assert!(
        first_difference(&whole, &sevens).is_some(),
        "llama.cpp's kernels gave the same bits whole and by sevens"
    );
    // Its decode steps are the one-row kernels, as under the default.
    let mut invariant = load(GEMMA3, Numerics::default());
    assert_eq!(
        fed_in_chunks(&mut invariant, &ids, 1),
        fed_in_chunks(&mut model, &ids, 1)
    );
}

/// Sequences of other lengths share each batched forward (a prompt chunk beside single
/// decode ids); every sequence's logits after every call are the bits its own forwards
/// give, at batch sizes 1, 2, 5 and 16.
fn check_batches(file: &str) {
    let mut lead = load(file, Numerics::default());
    let ids = prompt(&lead);
    for batch in [1usize, 2, 5, 16] {
        let mut forks: Vec<Box<dyn tutti_models::CausalLm>> =
            (0..batch).map(|_| lead.lm.fork().unwrap()).collect();
        let mut alone: Vec<Box<dyn tutti_models::CausalLm>> =
            (0..batch).map(|_| lead.lm.fork().unwrap()).collect();
        // Sequence b reads the prompt from offset b, in pieces whose sizes differ by
        // sequence and by call: 1, 7, a longer chunk.
        let mut fed = vec![0usize; batch];
        for call in 0..4 {
            let pieces: Vec<&[u32]> = (0..batch)
                .map(|b| {
                    let stream = &ids[b % 9..];
                    let len = [1, 7, 13 + b, 1][(call + b) % 4];
                    let start = fed[b].min(stream.len() - 1);
                    &stream[start..(start + len).min(stream.len())]
                })
                .collect();
            let mut rows: Vec<(&mut (dyn tutti_models::CausalLm + 'static), &[u32])> = forks
                .iter_mut()
                .zip(&pieces)
                .map(|(m, p)| (m.as_mut(), *p))
                .collect();
            let got = tutti_models::forward_batch(&mut rows).unwrap();
            drop(rows);
            for b in 0..batch {
                let want = bits(
                    &alone[b]
                        .forward(pieces[b])
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                );
                let have = bits(&got[b].to_vec1::<f32>().unwrap());
                assert_eq!(
                    first_difference(&want, &have),
                    None,
                    "{file}: batch of {batch}, call {call}, sequence {b} ({} ids)",
                    pieces[b].len()
                );
                assert_eq!(forks[b].position(), alone[b].position());
                fed[b] += pieces[b].len();
            }
        }
    }
    // Models that do not share weights are refused, and nothing moves.
    let mut other = load(file, Numerics::default());
    let mut a = lead.lm.fork().unwrap();
    let mut rows: Vec<(&mut (dyn tutti_models::CausalLm + 'static), &[u32])> =
        vec![(a.as_mut(), &ids[..3]), (other.lm.as_mut(), &ids[..3])];
    let err = tutti_models::forward_batch(&mut rows)
        .unwrap_err()
        .to_string();
    assert!(err.contains("share weights"), "{err}");
    assert_eq!((a.position(), other.lm.position()), (0, 0));
    lead.lm.reset();
}

#[test]
fn smollm2_batches_give_each_sequence_its_own_bits() {
    check_batches(SMOLLM2);
}

#[test]
fn gemma3_batches_give_each_sequence_its_own_bits() {
    check_batches(GEMMA3);
}

/// `forward_rows` (one forward, every position's logits) gives each row the bits of a
/// one-id step at that position, after a prompt and across the 64-row head calls.
fn check_rows(file: &str) {
    let mut model = load(file, Numerics::BatchInvariant);
    let ids = prompt(&model);
    let (head, rest) = ids.split_at(8);
    model.lm.reset();
    model.lm.forward(head).unwrap();
    let rows = model.lm.forward_rows(rest).unwrap();
    assert_eq!(rows.dims(), &[rest.len(), model.lm.vocab_size()]);
    assert_eq!(model.lm.position(), ids.len());
    model.lm.reset();
    model.lm.forward(head).unwrap();
    for (i, &id) in rest.iter().enumerate() {
        let step: Vec<f32> = model.lm.forward(&[id]).unwrap().to_vec1().unwrap();
        let row: Vec<f32> = rows.get(i).unwrap().to_vec1().unwrap();
        assert_eq!(bits(&row), bits(&step), "{file}: row {i}");
    }
}

#[test]
fn smollm2_rows_are_the_one_id_steps() {
    check_rows(SMOLLM2);
}

#[test]
fn gemma3_rows_are_the_one_id_steps() {
    check_rows(GEMMA3);
}
