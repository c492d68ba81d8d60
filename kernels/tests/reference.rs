//! The fused CPU path against a straightforward reference (full softmax in f64, full
//! sort) on vocabulary-sized random logits: plain, with many ties, masked, at several
//! temperatures and in the greedy limit; and gather against top-k.

use tutti_kernels::{gather_probs, log_norm, select_topk, softmax_topk, TopK};

const VOCAB: usize = 262_144;

/// xorshift64*: deterministic logits without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly logit-shaped: a normal body (sum of uniforms) and a few large outliers.
    fn logit(&mut self) -> f32 {
        let body: f64 = (0..4).map(|_| self.unit()).sum::<f64>() - 2.0;
        let spike = if self.next().is_multiple_of(5000) {
            12.0
        } else {
            0.0
        };
        (body * 4.0 + spike) as f32
    }
}

fn random_logits(seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..VOCAB).map(|_| r.logit()).collect()
}

/// Full softmax in f64 (`None`: greedy limit) and a full sort of the allowed ids.
struct Reference {
    probs: Vec<f64>,
    lse: f64,
    order: Vec<u32>,
}

fn reference(logits: &[f32], temperature: f32, mask: Option<&[bool]>) -> Reference {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let (probs, lse) = if temperature == 0.0 {
        let m = logits.iter().filter(|&&l| l as f64 == max).count() as f64;
        let p = logits
            .iter()
            .map(|&l| if l as f64 == max { 1.0 / m } else { 0.0 })
            .collect();
        (p, f64::INFINITY)
    } else {
        let t = temperature as f64;
        let e: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) / t).exp())
            .collect();
        let z: f64 = e.iter().sum();
        (e.iter().map(|x| x / z).collect(), max / t + z.ln())
    };
    let mut order: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| mask.is_none_or(|m| m.get(i as usize).copied().unwrap_or(false)))
        .collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    Reference { probs, lse, order }
}

fn check(logits: &[f32], temperature: f32, k: usize, mask: Option<&[bool]>, what: &str) {
    let got = softmax_topk(logits, temperature, k, mask).unwrap();
    let want = reference(logits, temperature, mask);
    let n = k.min(want.order.len());
    assert_eq!(
        got.ids,
        want.order[..n],
        "{what}: ids, T={temperature} k={k}"
    );
    for (id, p) in got.iter() {
        let r = want.probs[id as usize];
        assert!(
            (p as f64 - r).abs() <= 2e-6 * r + 1e-30,
            "{what}: p({id}) = {p} vs {r}, T={temperature} k={k}"
        );
    }
    if temperature > 0.0 {
        assert!(
            (got.norm.lse() - want.lse).abs() <= 1e-6 * want.lse.abs().max(1.0),
            "{what}: lse {} vs {}",
            got.norm.lse(),
            want.lse
        );
    } else {
        assert!(got.norm.lse().is_infinite());
    }
    // Gather over the top-k ids and some others agrees with top-k and the reference.
    let extra: Vec<u32> = (0..50).map(|i| (i * 5231) as u32 % VOCAB as u32).collect();
    let ids: Vec<u32> = got.ids.iter().copied().chain(extra).collect();
    let gathered = gather_probs(logits, &got.norm, &ids);
    assert_eq!(
        gathered[..got.len()],
        got.probs[..],
        "{what}: gather vs top-k"
    );
    for (&id, &p) in ids.iter().zip(&gathered) {
        let r = want.probs[id as usize];
        assert!(
            (p as f64 - r).abs() <= 2e-6 * r + 1e-30,
            "{what}: gathered p({id}) = {p} vs {r}"
        );
    }
    // The split path (normaliser, then selection) gives the same answer bit for bit.
    let norm = log_norm(logits, temperature).unwrap();
    assert_eq!(norm, got.norm);
    assert_eq!(select_topk(logits, &norm, k, mask).unwrap(), got);
}

const TEMPERATURES: [f32; 4] = [0.5, 1.0, 2.0, 0.0];
const KS: [usize; 3] = [1, 5, 64];

#[test]
fn random_logits_match_reference() {
    let logits = random_logits(0x9e37_79b9_7f4a_7c15);
    for t in TEMPERATURES {
        for k in KS {
            check(&logits, t, k, None, "random");
        }
    }
    // Probabilities over the whole vocabulary sum to 1.
    let norm = log_norm(&logits, 1.0).unwrap();
    let all: Vec<u32> = (0..VOCAB as u32).collect();
    let s: f64 = gather_probs(&logits, &norm, &all)
        .iter()
        .map(|&p| p as f64)
        .sum();
    assert!((s - 1.0).abs() < 1e-5, "sum {s}");
}

#[test]
fn ties_break_by_lower_id() {
    // Logits on a coarse grid: thousands of ids share each value, the top one included.
    let mut r = Rng(7);
    let logits: Vec<f32> = (0..VOCAB).map(|_| (r.logit() * 0.5).round()).collect();
    for t in TEMPERATURES {
        for k in KS {
            check(&logits, t, k, None, "ties");
        }
    }
    // All equal: the first k ids, uniform probabilities.
    let flat = vec![1.5f32; VOCAB];
    let got = softmax_topk(&flat, 1.0, 64, None).unwrap();
    assert_eq!(got.ids, (0..64).collect::<Vec<u32>>());
    for p in &got.probs {
        assert!((p * VOCAB as f32 - 1.0).abs() < 1e-5);
    }
    let greedy = softmax_topk(&flat, 0.0, 5, None).unwrap();
    assert_eq!(greedy.ids, vec![0, 1, 2, 3, 4]);
}

#[test]
fn masked_vocabulary() {
    let logits = random_logits(42);
    let mut r = Rng(99);
    // About half the ids allowed, and the mask shorter than the logits (padding rows).
    let mask: Vec<bool> = (0..VOCAB - 1000)
        .map(|_| r.next().is_multiple_of(2))
        .collect();
    for t in TEMPERATURES {
        for k in KS {
            check(&logits, t, k, Some(&mask), "masked");
        }
    }
    // Mask out the global maximum: top-1 is the best allowed id, and its probability is
    // still taken over the whole vocabulary.
    let top = softmax_topk(&logits, 1.0, 1, None).unwrap().ids[0] as usize;
    let mut no_top = vec![true; VOCAB];
    no_top[top] = false;
    check(&logits, 1.0, 5, Some(&no_top), "no top");
    let got = softmax_topk(&logits, 1.0, 1, Some(&no_top)).unwrap();
    assert_ne!(got.ids[0] as usize, top);
    // A mask allowing fewer than k ids gives fewer entries.
    let mut few = vec![false; VOCAB];
    for i in [3usize, 100_000, 262_000] {
        few[i] = true;
    }
    check(&logits, 1.0, 64, Some(&few), "few");
    assert_eq!(softmax_topk(&logits, 1.0, 64, Some(&few)).unwrap().len(), 3);
}

#[test]
fn adversarial_orders() {
    // Ascending logits make every id enter the top-k; descending ones none after the first k.
    let up: Vec<f32> = (0..VOCAB).map(|i| i as f32 * 1e-4).collect();
    let down: Vec<f32> = up.iter().rev().copied().collect();
    for l in [&up, &down] {
        for k in KS {
            check(l, 1.0, k, None, "monotone");
        }
    }
    // Odd length (not a multiple of the block or lane width).
    let odd = random_logits(5)[..VOCAB - 13].to_vec();
    check(&odd, 1.0, 64, None, "odd length");
}

#[test]
fn packed_round_trip_on_vocab_logits() {
    let logits = random_logits(11);
    let got = softmax_topk(&logits, 1.0, 64, None).unwrap();
    let bytes = got.to_packed(64);
    assert_eq!(bytes.len(), 544);
    assert_eq!(TopK::from_packed(&bytes).unwrap(), got);
}
