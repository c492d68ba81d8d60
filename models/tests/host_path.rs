//! The host path (forwards on host buffers) against the tensor path it replaces: the same
//! logits and prompt scores, bit for bit, on both demo models, for prompts, decode steps,
//! several-token chunks after a prefix, across a rollback, and at a context long enough
//! for Gemma 3's sliding window (512) to drop keys.
//!
//! One test in this binary: it switches the path with `TUTTI_NO_HOST_PATH`, which is read
//! when a model loads.

mod common;

use common::{argmax, demo_model, GEMMA3, SMOLLM2};
use tutti_models::{LoadOptions, Model};

fn load(file: &str, host: bool) -> Model {
    if host {
        std::env::remove_var("TUTTI_NO_HOST_PATH");
    } else {
        std::env::set_var("TUTTI_NO_HOST_PATH", "1");
    }
    let m = Model::load(demo_model(file).to_str().unwrap(), &LoadOptions::default())
        .expect("demo model loads");
    std::env::remove_var("TUTTI_NO_HOST_PATH");
    m
}

fn bits(m: &mut Model, ids: &[u32]) -> Vec<u32> {
    let logits = m.lm.forward(ids).expect("forward");
    logits
        .to_vec1::<f32>()
        .expect("f32 logits")
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Greedy steps from `prompt` on both paths; every step's logits must match exactly.
fn same_steps(host: &mut Model, tensor: &mut Model, prompt: &[u32], steps: usize, what: &str) {
    let a = bits(host, prompt);
    let b = bits(tensor, prompt);
    assert!(a == b, "{what}: prefill logits differ");
    let mut next = argmax(&a.iter().map(|&x| f32::from_bits(x)).collect::<Vec<_>>());
    for step in 0..steps {
        let a = bits(host, &[next]);
        let b = bits(tensor, &[next]);
        assert!(a == b, "{what}: step {step} logits differ");
        next = argmax(&a.iter().map(|&x| f32::from_bits(x)).collect::<Vec<_>>());
    }
}

/// A scored forward of `ids` on both paths: the same logits and the same scores.
fn same_scored(host: &mut Model, tensor: &mut Model, ids: &[u32], what: &str) {
    let (la, sa) = host.lm.forward_scored(ids).expect("scored forward");
    let (lb, sb) = tensor.lm.forward_scored(ids).expect("scored forward");
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        sa.len(),
        ids.len() - 1,
        "{what}: one score per following id"
    );
    assert!(bits(sa) == bits(sb), "{what}: prompt scores differ");
    let (la, lb) = (la.to_vec1::<f32>().unwrap(), lb.to_vec1::<f32>().unwrap());
    assert!(bits(la) == bits(lb), "{what}: scored logits differ");
}

#[test]
fn host_path_gives_the_tensor_paths_logits() {
    for file in [SMOLLM2, GEMMA3] {
        let mut host = load(file, true);
        let mut tensor = load(file, false);
        let text = "The history of the printing press begins in the fifteenth century, when \
                    movable metal type, oil-based ink and a wooden screw press came together. ";
        let short = host.tokenizer.encode(text, true).expect("encodes");
        same_steps(&mut host, &mut tensor, &short, 12, file);
        // Roll both back into the prompt and decode again from there.
        host.lm.truncate(short.len() - 3);
        tensor.lm.truncate(short.len() - 3);
        same_steps(&mut host, &mut tensor, &[short[short.len() - 3]], 6, file);
        // A several-token chunk after a prefix (a member catching up), then a scored one.
        same_steps(&mut host, &mut tensor, &short[5..12], 2, file);
        same_scored(&mut host, &mut tensor, &short[..9], file);
        host.lm.reset();
        tensor.lm.reset();
        same_scored(&mut host, &mut tensor, &short, file);
        if file != GEMMA3 {
            continue;
        }
        // Past 512 positions (Gemma 3's local layers see only the last 512 keys).
        host.lm.reset();
        tensor.lm.reset();
        let long: Vec<u32> = short.iter().copied().cycle().take(530).collect();
        same_steps(&mut host, &mut tensor, &long, 4, file);
    }
}
