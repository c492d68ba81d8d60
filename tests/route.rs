//! Route mode end to end on the demo pair: a fixed route answers through the Knowledge
//! Transfer Prompt, a policy trains on a few QA items and is read back, the bench runs
//! routes next to the members and the ensemble with their cost, and bad policies or
//! mismatched members are one clear error.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model(file: &str) -> String {
    let p = repo().join("models-cache").join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p.display().to_string()
}

fn data(file: &str) -> String {
    repo().join("benches/data").join(file).display().to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-route-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn tutti(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run tutti")
}

fn ok(args: &[&str]) -> String {
    let out = tutti(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str], needle: &str) {
    let out = tutti(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(needle),
        "{args:?}: wanted `{needle}` in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn fixed_route_answers_through_the_transfer_prompt() {
    let (smol, gemma) = (
        model("SmolLM2-135M-Instruct.Q4_1.gguf"),
        model("gemma-3-270m-q4_k_m.gguf"),
    );
    let question = "What is the capital of France? Answer in one word.";
    let out = ok(&[
        "route",
        "-m",
        &smol,
        "-m",
        &gemma,
        "--policy",
        "fixed:0,1",
        "--max-tokens",
        "12",
        "--json",
        question,
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps[0]["member"].as_str().unwrap().starts_with("SmolLM2"));
    assert!(steps[1]["member"].as_str().unwrap().starts_with("gemma"));
    assert_eq!(v["answer"], steps[1]["answer"]);
    let p: Vec<u64> = steps
        .iter()
        .map(|s| s["parameters"].as_u64().unwrap())
        .collect();
    // SmolLM2-135M and Gemma 3 270M, counted from their tensors.
    assert!((130_000_000..140_000_000).contains(&p[0]), "{p:?}");
    assert!((260_000_000..280_000_000).contains(&p[1]), "{p:?}");
    assert_eq!(v["parameters"].as_u64().unwrap(), p[0] + p[1]);

    // The first step is the member alone on the question: the same text as generate.
    let alone = ok(&[
        "generate",
        "-m",
        &smol,
        "--max-tokens",
        "12",
        "--json",
        question,
    ]);
    let alone: serde_json::Value = serde_json::from_str(alone.trim()).unwrap();
    assert_eq!(
        steps[0]["answer"].as_str().unwrap(),
        alone["text"].as_str().unwrap().trim()
    );
    // generate --mode route is the same command.
    let again = ok(&[
        "generate",
        "--mode",
        "route",
        "-m",
        &smol,
        "-m",
        &gemma,
        "--policy",
        "fixed:0,1",
        "--max-tokens",
        "12",
        "--json",
        question,
    ]);
    let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["answer"], v["answer"]);
}

#[test]
fn a_policy_trains_loads_and_runs_in_the_bench() {
    let (smol, gemma) = (
        model("SmolLM2-135M-Instruct.Q4_1.gguf"),
        model("gemma-3-270m-q4_k_m.gguf"),
    );
    let (qa, shots) = (data("qa.jsonl"), data("qa-shots.jsonl"));
    let policy = tmp("policy.safetensors");
    let report = tmp("train.md");
    let p = policy.display().to_string();
    let out = ok(&[
        "route",
        "train",
        "--data",
        &qa,
        "--shots-file",
        &shots,
        "--limit",
        "4",
        "--epochs",
        "2",
        "--max-steps",
        "2",
        "--seed",
        "3",
        "-m",
        &smol,
        "-m",
        &gemma,
        "--out",
        &p,
        "--report",
        &report.display().to_string(),
    ]);
    assert!(
        out.contains("calibration") && out.contains("terminator:"),
        "{out}"
    );
    let curve: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("epoch"))
        .skip(1)
        .take_while(|l| !l.starts_with("terminator"))
        .collect();
    assert_eq!(curve.len(), 2, "one line per epoch: {out}");
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("![reward curve](train.svg)"), "{md}");
    let svg = std::fs::read_to_string(tmp("train.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);

    // Same seed, same policy.
    let p2 = tmp("policy2.safetensors").display().to_string();
    ok(&[
        "route",
        "train",
        "--data",
        &qa,
        "--shots-file",
        &shots,
        "--limit",
        "4",
        "--epochs",
        "2",
        "--max-steps",
        "2",
        "--seed",
        "3",
        "-m",
        &smol,
        "-m",
        &gemma,
        "--out",
        &p2,
    ]);
    assert_eq!(std::fs::read(&policy).unwrap(), std::fs::read(&p2).unwrap());

    // The bench: members, ensemble and three routes on the next items, with their cost.
    let results = tmp("results.jsonl");
    let learned = format!("learned:{p}");
    let table = ok(&[
        "bench",
        "qa",
        "--data",
        &qa,
        "--shots-file",
        &shots,
        "--skip",
        "4",
        "--limit",
        "3",
        "--mode",
        "route",
        "--policy",
        &learned,
        "--policy",
        "fixed:1,0",
        "--policy",
        "best",
        "--max-steps",
        "2",
        "-m",
        &smol,
        "-m",
        &gemma,
        "--out",
        &results.display().to_string(),
    ]);
    for system in [
        "SmolLM2",
        "gemma",
        "ensemble",
        "route learned:policy.safetensors",
        "route fixed:1,0",
        "route best",
    ] {
        assert!(table.contains(system), "{system} missing in:\n{table}");
    }
    assert!(
        table.contains("params/item") && table.contains("s/item"),
        "{table}"
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fixed: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["system"] == "route fixed:1,0")
        .collect();
    assert_eq!(fixed.len(), 3);
    for r in &fixed {
        assert_eq!(r["route"].as_array().unwrap().len(), 2);
        assert!(r["parameters"].as_u64().unwrap() > 390_000_000);
    }
    // A learned route takes 1 or 2 steps, never more than --max-steps.
    for r in rows
        .iter()
        .filter(|r| r["system"].as_str().unwrap().starts_with("route learned"))
    {
        let n = r["route"].as_array().unwrap().len();
        assert!((1..=2).contains(&n), "{r}");
    }

    // The policy refuses another member list.
    fails(
        &[
            "route", "-m", &gemma, "-m", &smol, "--policy", &learned, "hi",
        ],
        "same -m list",
    );
}

#[test]
fn bad_policies_are_one_clear_error() {
    let smol = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    fails(
        &[
            "route", "-m", &smol, "-m", &smol, "--policy", "greedy", "hi",
        ],
        "expected fixed:A,B",
    );
    fails(
        &[
            "route",
            "-m",
            &smol,
            "-m",
            &smol,
            "--policy",
            "fixed:0,2",
            "hi",
        ],
        "counted from 0",
    );
    fails(
        &[
            "route",
            "-m",
            &smol,
            "-m",
            &smol,
            "--policy",
            "learned:/nonexistent/p.safetensors",
            "hi",
        ],
        "tutti route train",
    );
    fails(&["route", "-m", &smol, "hi"], "needs --policy");
    fails(
        &["route", "-m", &smol, "--policy", "best", "hi"],
        "calibration",
    );
    fails(
        &[
            "route",
            "-m",
            &smol,
            "--policy",
            "fixed:0",
            "--max-steps",
            "0",
            "hi",
        ],
        "--max-steps",
    );
    fails(
        &["generate", "-m", &smol, "--policy", "random", "hi"],
        "--mode route",
    );
}

/// Under sampling, each answer of a route draws with its own seed: the same question
/// asked twice gives two draws, not one draw repeated; and a rerun with the same base
/// seed gives the same answers again.
#[test]
fn sampled_route_answers_draw_their_own_seeds() {
    use tutti::engine::{Ensemble, MemberSpec, Request};
    use tutti::route::{RouteContext, RouteQuestion};
    let mut ens = Ensemble::builder()
        .member(MemberSpec::new(model("SmolLM2-135M-Instruct.Q4_1.gguf")))
        .build()
        .unwrap();
    let mut base = Request::raw("").sample(1.5, 1.0, 11);
    base.max_tokens = 16;
    let q = RouteQuestion::chat("Write a sentence about the sea.");
    let answers = |ens: &mut Ensemble| {
        let mut ctx = RouteContext::new(ens, base.clone(), None).unwrap();
        let a = ctx.answer(&q, None, 0).unwrap().text;
        let b = ctx.answer(&q, None, 0).unwrap().text;
        (a, b)
    };
    let (a, b) = answers(&mut ens);
    assert_ne!(a, b, "two sampled answers to one question were one draw");
    assert_eq!(
        answers(&mut ens),
        (a, b),
        "the same base seed gives the same route"
    );
}
