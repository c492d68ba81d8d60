//! CUDA checks: the device top-k/gather kernels against the CPU twin, a random-weight
//! model and the two demo models on CUDA against the CPU, and `bench speed` on CUDA.
//!
//! Built only with `--features cuda` (scripts/build-cuda.sh builds and strips this test
//! binary as `gpu-tests`); every test needs a working GPU. Run with `--test-threads 1`
//! for readable output. The demo-model test is skipped (with a message) when
//! `models-cache/*.gguf` are absent.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use tutti_kernels::{
    gather_probs, gather_probs_tensor, softmax_topk, softmax_topk_tensor, KernelError,
};
use tutti_models::random::{random_transformer_host, shape_config};
use tutti_models::CausalLm;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU")
}

/// Deterministic logits: smooth values with many exact ties (quantised to 1/8).
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            ((u - 0.5) * 24.0 * 8.0).round() / 8.0
        })
        .collect()
}

fn rel_close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-30)
}

/// Checks one row on the GPU against the CPU twin on the same (dtype-rounded) values.
fn check_row(v: &[f32], dtype: DType, temperature: f32, k: usize, mask: Option<&[bool]>) {
    let dev = gpu();
    let t = Tensor::from_vec(v.to_vec(), v.len(), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    // The CPU twin sees exactly the values the kernel sees.
    let host: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    let want = softmax_topk(&host, temperature, k, mask).unwrap();
    let got = softmax_topk_tensor(&t, temperature, k, mask).unwrap();
    let ctx = format!(
        "n {} {dtype:?} T {temperature} k {k} mask {}",
        v.len(),
        mask.is_some()
    );
    assert_eq!(got.ids, want.ids, "{ctx}: ids");
    assert_eq!(got.norm.max_logit, want.norm.max_logit, "{ctx}: max");
    assert_eq!(got.norm.temperature, want.norm.temperature, "{ctx}: T");
    assert!(
        (got.norm.log_z - want.norm.log_z).abs() <= 2e-5 * want.norm.log_z.abs().max(1.0),
        "{ctx}: log_z {} vs {}",
        got.norm.log_z,
        want.norm.log_z
    );
    for (g, w) in got.probs.iter().zip(&want.probs) {
        assert!(rel_close(*g, *w, 5e-5), "{ctx}: prob {g} vs {w}");
    }
    // Gather under the same normaliser is the CPU formula on the device.
    let ids: Vec<u32> = (0..40u32)
        .map(|i| i * 7919 % (v.len() as u32 + 3))
        .collect();
    let g = gather_probs_tensor(&t, &got.norm, &ids).unwrap();
    let w = gather_probs(&host, &got.norm, &ids);
    for (a, b) in g.iter().zip(&w) {
        assert!(rel_close(*a, *b, 1e-6), "{ctx}: gather {a} vs {b}");
    }
}

#[test]
fn topk_kernel_matches_cpu_twin() {
    for &n in &[1usize, 31, 1000, 1024, 1025, 49_152, 151_936, 262_144] {
        let v = logits(n, n as u64);
        for &dtype in &[DType::F32, DType::BF16, DType::F16] {
            for &temperature in &[0.0f32, 0.3, 1.0, 2.0] {
                for &k in &[1usize, 5, 10, 64] {
                    check_row(&v, dtype, temperature, k, None);
                }
            }
        }
    }
}

#[test]
fn topk_kernel_masks_infinities_and_errors() {
    let n = 70_000;
    let mut v = logits(n, 3);
    for x in v.iter_mut().step_by(3) {
        *x = f32::NEG_INFINITY;
    }
    // Only ids below 60,000 and not multiples of 5 are allowed; the mask is shorter
    // than the row.
    let mask: Vec<bool> = (0..60_000).map(|i| i % 5 != 0).collect();
    for &k in &[1usize, 10, 64] {
        check_row(&v, DType::F32, 1.0, k, Some(&mask));
        check_row(&v, DType::F32, 0.0, k, Some(&mask));
    }
    // Fewer allowed ids than k, -inf ones included.
    let few = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 0.5];
    check_row(&few, DType::F32, 1.0, 10, None);
    let dev = gpu();
    let empty_mask = softmax_topk_tensor(
        &Tensor::new(&[1.0f32, 2.0], &dev).unwrap(),
        1.0,
        3,
        Some(&[]),
    )
    .unwrap();
    assert!(empty_mask.is_empty());
    for bad in [f32::NAN, f32::INFINITY] {
        let mut w = vec![0.0f32; 5000];
        w[4321] = bad;
        let t = Tensor::from_vec(w, 5000, &dev).unwrap();
        assert_eq!(
            softmax_topk_tensor(&t, 1.0, 4, None),
            Err(KernelError::NonFinite)
        );
    }
    let ninf = Tensor::from_vec(vec![f32::NEG_INFINITY; 7], 7, &dev).unwrap();
    assert_eq!(
        softmax_topk_tensor(&ninf, 0.0, 2, None),
        Err(KernelError::NonFinite)
    );
    // k above the kernel's limit falls back to the CPU path and still answers.
    let v = logits(5000, 9);
    let t = Tensor::from_vec(v.clone(), (1, 5000), &dev).unwrap();
    assert_eq!(
        softmax_topk_tensor(&t, 1.0, 100, None).unwrap(),
        softmax_topk(&v, 1.0, 100, None).unwrap()
    );
}

#[test]
fn random_model_cuda_matches_cpu() {
    let cfg = shape_config("tiny").unwrap();
    let mut cpu = random_transformer_host(cfg.clone(), &Device::Cpu, DType::F32, 11).unwrap();
    let mut cuda = random_transformer_host(cfg, &gpu(), DType::F32, 11).unwrap();
    let ids: Vec<u32> = (0..37).map(|i| (i * 131 + 7) % 49_000).collect();
    let a: Vec<f32> = cpu.forward(&ids).unwrap().to_vec1().unwrap();
    let b: Vec<f32> = cuda.forward(&ids).unwrap().to_vec1().unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "max |cpu - cuda| = {diff}");
    // Decode steps after a truncate agree too.
    cpu.truncate(30);
    cuda.truncate(30);
    let a: Vec<f32> = cpu.forward(&[5]).unwrap().to_vec1().unwrap();
    let b: Vec<f32> = cuda.forward(&[5]).unwrap().to_vec1().unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "after truncate: max |cpu - cuda| = {diff}");
}

/// Top ids of a row, ties by lower id.
fn top(v: &[f32], k: usize) -> Vec<u32> {
    softmax_topk(v, 1.0, k, None).unwrap().ids
}

#[test]
fn demo_models_cuda_match_cpu() {
    let files = [
        "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models-cache/gemma-3-270m-q4_k_m.gguf",
    ];
    let prompt = "The capital of France is";
    for f in files {
        if !std::path::Path::new(f).is_file() {
            eprintln!("skipping {f}: not present (scripts/fetch-models.sh)");
            continue;
        }
        let load = |device: Device| {
            tutti_models::Model::load(
                f,
                &tutti_models::LoadOptions {
                    device,
                    dtype: None,
                    arch: None,
                    ..tutti_models::LoadOptions::default()
                },
            )
            .unwrap()
        };
        let mut cpu = load(Device::Cpu);
        let mut cuda = load(gpu());
        let ids = cpu.tokenizer.encode_prompt(prompt).unwrap();
        let a: Vec<f32> = cpu.lm.forward(&ids).unwrap().to_vec1().unwrap();
        let b: Vec<f32> = cuda.lm.forward(&ids).unwrap().to_vec1().unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        let (ta, tb) = (top(&a, 10), top(&b, 10));
        let shared = ta.iter().filter(|i| tb.contains(i)).count();
        eprintln!(
            "{f}: max |cpu - cuda| logit {diff:.4}; top-1 {} vs {}; top-10 overlap {shared}/10",
            ta[0], tb[0]
        );
        assert_eq!(ta[0], tb[0], "{f}: top-1 differs");
        assert!(shared >= 8, "{f}: top-10 overlap {shared}");
        // Greedy continuation of 8 tokens agrees.
        let (mut x, mut y) = (ta[0], tb[0]);
        for step in 0..8 {
            let a: Vec<f32> = cpu.lm.forward(&[x]).unwrap().to_vec1().unwrap();
            let b: Vec<f32> = cuda.lm.forward(&[y]).unwrap().to_vec1().unwrap();
            x = top(&a, 1)[0];
            y = top(&b, 1)[0];
            assert_eq!(x, y, "{f}: greedy step {step} differs");
        }
    }
}

#[test]
fn auto_device_is_the_gpu() {
    let d = tutti_models::parse_device("auto").unwrap();
    assert!(d.is_cuda(), "--device auto did not pick the GPU");
}

#[test]
fn speed_bench_runs_on_cuda() {
    use tutti::bench::speed::{run, MemberSource, SpeedConfig};
    // Beside the binaries in the CUDA dist folder, or fetched in a checkout.
    let tok = [
        "smollm2-tokenizer.json",
        "models-cache/tokenizers/smollm2/tokenizer.json",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.is_file())
    .expect("SmolLM2's tokenizer: run from the dist folder or after scripts/fetch-tokenizers.sh");
    let mut cfg = SpeedConfig::new(
        vec![
            MemberSource::Shape("tiny".into()),
            MemberSource::Shape("tiny".into()),
        ],
        gpu(),
    );
    cfg.tokenizer = Some(tok);
    cfg.prompt_tokens = 64;
    cfg.decode_tokens = 8;
    let r = run(&cfg, &mut |_| {}).unwrap();
    assert_eq!(r.rows.len(), 3);
    for row in &r.rows {
        assert!(row.prefill_tokens_per_s > 0.0 && row.peak_mem_bytes.unwrap_or(0) > 0);
    }
    assert!(r.topk.iter().all(|t| t.same_ids));
}
