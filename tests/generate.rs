//! Single-model generation: the one-member ensemble against a plain greedy loop over
//! `CausalLm`, seeded sampling, and the `tutti generate` command line.

mod ensemble_support;

use std::process::Command;

use ensemble_support::{demo, load, plain_greedy, GEMMA, SMOL};
use tutti::engine::{Ensemble, PromptMode, Sampling};

const PROMPT: &str = "The capital of France is";

fn solo_ids(name: &str, max: usize) -> (Vec<u32>, Vec<u32>) {
    let mut reference = load(name);
    let prompt = reference.tokenizer.encode_prompt(PROMPT).unwrap();
    let expected = plain_greedy(&mut reference, &prompt, max);
    let mut ens = Ensemble::builder()
        .model(reference, 1.0)
        .max_tokens(max)
        .build()
        .unwrap();
    let out = ens.generate(PROMPT, PromptMode::Raw, &mut |_| {}).unwrap();
    assert_eq!(out.members[0].prompt_tokens, prompt.len());
    (out.members[0].ids.clone(), expected)
}

#[test]
fn one_member_matches_plain_greedy_smollm2() {
    let (got, expected) = solo_ids(SMOL, 24);
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn one_member_matches_plain_greedy_gemma3() {
    let (got, expected) = solo_ids(GEMMA, 24);
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut ens = Ensemble::builder()
        .model(load(SMOL), 1.0)
        .max_tokens(16)
        .sampling(Sampling::Sample {
            temperature: 1.2,
            top_p: 0.95,
            seed: 11,
        })
        .build()
        .unwrap();
    let a = ens.generate(PROMPT, PromptMode::Raw, &mut |_| {}).unwrap();
    let b = ens.generate(PROMPT, PromptMode::Raw, &mut |_| {}).unwrap();
    assert_eq!(a.members[0].ids, b.members[0].ids);
    assert_eq!(a.text, b.text);
    let mut s = ens.settings().clone();
    s.sampling = Sampling::Sample {
        temperature: 1.2,
        top_p: 0.95,
        seed: 12,
    };
    ens.set_settings(s).unwrap();
    let c = ens.generate(PROMPT, PromptMode::Raw, &mut |_| {}).unwrap();
    assert_ne!(
        a.members[0].ids, c.members[0].ids,
        "another seed gives another text"
    );
}

#[test]
fn streamed_text_equals_the_result_and_stop_strings_cut() {
    let mut ens = Ensemble::builder()
        .model(load(SMOL), 1.0)
        .max_tokens(24)
        .build()
        .unwrap();
    let mut streamed = String::new();
    let full = ens
        .generate(PROMPT, PromptMode::Raw, &mut |t| streamed.push_str(t))
        .unwrap();
    assert_eq!(streamed, full.text);
    assert!(full.text.contains('.'), "{:?}", full.text);
    let mut s = ens.settings().clone();
    s.stop.stop_strings = vec![".".into()];
    ens.set_settings(s).unwrap();
    let mut streamed = String::new();
    let cut = ens
        .generate(PROMPT, PromptMode::Raw, &mut |t| streamed.push_str(t))
        .unwrap();
    assert_eq!(cut.stop_reason, tutti::engine::StopReason::StopString);
    assert_eq!(cut.text, full.text[..full.text.find('.').unwrap()]);
    assert_eq!(streamed, cut.text);
}

fn tutti(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_json_reports_ids_and_timings() {
    let smol = demo(SMOL);
    let out = tutti(&[
        "generate",
        "-m",
        &smol,
        "--raw",
        "--greedy",
        "--max-tokens",
        "8",
        "--json",
        PROMPT,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let ids: Vec<u32> = serde_json::from_value(v["ids"][0].clone()).unwrap();
    let mut reference = load(SMOL);
    let prompt = reference.tokenizer.encode_prompt(PROMPT).unwrap();
    assert_eq!(ids, plain_greedy(&mut reference, &prompt, 8));
    assert_eq!(v["prompt_tokens"], prompt.len());
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"), "{v}");
    assert!(v["timing"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["timing"]["prefill_ms"].as_f64().unwrap() > 0.0);
    assert!(["eos", "max_tokens"].contains(&v["stop_reason"].as_str().unwrap()));
}

#[test]
fn cli_empty_prompt_and_bad_device_are_clear_errors() {
    let smol = demo(SMOL);
    let out = tutti(&["generate", "-m", &smol, ""]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt is empty"));
    #[cfg(not(feature = "cuda"))]
    {
        let out = tutti(&["generate", "-m", &smol, "--device", "cuda:0", "hi"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features cuda"), "{err}");
    }
}
