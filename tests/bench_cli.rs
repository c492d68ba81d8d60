//! `tutti bench` end to end on the demo models with tiny data sets: GSM8K (JSONL and
//! Parquet), QA in TriviaQA's layout, MixInstruct with a tiny BERT encoder; resumed
//! runs give the same final table; bad input is one clear error line.

use std::path::{Path, PathBuf};
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

fn smollm2() -> String {
    model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn gemma() -> String {
    model("gemma-3-270m-q4_k_m.gguf")
}

fn fixture(rel: &str) -> String {
    repo()
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-bench-cli-{}", std::process::id()));
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

fn rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The table's columns that do not depend on timing: system, score, items, tokens.
fn quality_columns(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            let (system, rest) = l.split_once("  ").unwrap();
            let cells: Vec<&str> = rest.split_whitespace().collect();
            // score, [lo, hi], items, tokens
            format!("{system} {}", cells[..5].join(" "))
        })
        .collect()
}

#[test]
fn gsm8k_runs_members_and_ensemble_and_resumes() {
    let out = tmp("gsm8k.jsonl");
    let report = tmp("gsm8k.md");
    let (s, g) = (smollm2(), gemma());
    let data = fixture("gsm8k/test.jsonl");
    let args = [
        "bench",
        "gsm8k",
        "--data",
        &data,
        "--shots",
        "1",
        "--limit",
        "2",
        "--max-tokens",
        "6",
        "-m",
        &s,
        "-m",
        &g,
        "--members-too",
        "--out",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    let first = ok(&args);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 4, "{first}");
    assert!(lines[0].contains("accuracy (95% CI)") && lines[0].contains("rollbacks"));
    assert!(lines[3].starts_with("ensemble") && lines[3].contains('%'));
    let r = rows(&out);
    assert_eq!(r.len(), 6, "2 items × 3 systems");
    for row in &r {
        for key in [
            "id",
            "system",
            "prompt_hash",
            "output",
            "extracted",
            "correct",
            "tokens",
            "time_ms",
        ] {
            assert!(row.get(key).is_some(), "row lacks {key}: {row}");
        }
        assert!(row["tokens"].as_u64().unwrap() <= 6);
    }
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("| ensemble |") && md.contains("gsm8k.svg"));
    assert!(std::fs::read_to_string(report.with_extension("svg"))
        .unwrap()
        .contains("<svg"));

    // A complete file: nothing is generated again and the table is identical.
    assert_eq!(ok(&args), first);

    // An interrupted run: the last row half written, the ensemble's second item lost.
    let text = std::fs::read_to_string(&out).unwrap();
    let keep: Vec<&str> = text.lines().take(5).collect();
    std::fs::write(&out, keep.join("\n") + "\n{\"task\": \"gsm8k\", \"id\": ").unwrap();
    let resumed = ok(&args);
    assert_eq!(quality_columns(&resumed), quality_columns(&first));
    assert_eq!(rows(&out).len(), 6);

    // Other settings must not reuse these rows.
    let mut other = args.to_vec();
    other.extend(["--top-k", "3"]);
    let o = tutti(&other);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("other settings"),
        "{err}"
    );
}

#[test]
fn gsm8k_reads_parquet_like_the_hub_serves_it() {
    let s = smollm2();
    let data = fixture("gsm8k/test.parquet");
    let train = fixture("gsm8k/train.jsonl");
    let t = ok(&[
        "bench",
        "gsm8k",
        "--data",
        &data,
        "--train",
        &train,
        "--shots",
        "2",
        "--limit",
        "1",
        "--max-tokens",
        "4",
        "-m",
        &s,
    ]);
    assert_eq!(t.lines().count(), 2, "{t}");
}

#[test]
fn qa_accepts_triviaqa_rows_and_a_shots_file() {
    let data = tmp("tqa.jsonl");
    std::fs::write(
        &data,
        concat!(
            "{\"question\": \"What is the capital of France?\", \"question_id\": \"q1\", \"answer\": {\"value\": \"Paris\", \"aliases\": [\"Paris\"]}}\n",
            "{\"question\": \"What is 2 plus 2?\", \"question_id\": \"q2\", \"answer\": {\"value\": \"4\", \"aliases\": [\"4\", \"four\"]}}\n",
        ),
    )
    .unwrap();
    let out = tmp("qa.jsonl");
    let s = smollm2();
    let shots = repo().join("benches/data/qa-shots.jsonl");
    let t = ok(&[
        "bench",
        "qa",
        "--data",
        data.to_str().unwrap(),
        "--shots-file",
        shots.to_str().unwrap(),
        "-m",
        &s,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(t.contains("SmolLM2"), "{t}");
    let r = rows(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["id"], "q1");
    // The answer is one line: generation stopped at the newline.
    assert!(!r[0]["output"].as_str().unwrap().contains('\n'));
}

#[test]
fn mixinstruct_scores_rouge_and_bertscore() {
    let out = tmp("mix.jsonl");
    let s = smollm2();
    let data = fixture("mixinstruct/mini.jsonl");
    let bert = fixture("tiny/bert");
    let t = ok(&[
        "bench",
        "mixinstruct",
        "--data",
        &data,
        "--bertscore-model",
        &bert,
        "--bertscore-layer",
        "2",
        "--max-tokens",
        "8",
        "-m",
        &s,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        t.contains("rouge_l (95% CI)") && t.contains("bertscore_f1 (95% CI)"),
        "{t}"
    );
    let r = rows(&out);
    assert_eq!(r.len(), 3);
    for row in &r {
        let m = &row["metrics"];
        let rouge = m["rouge_l"].as_f64().unwrap();
        let bs = m["bertscore_f1"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&rouge) && (-1.0..=1.0).contains(&bs),
            "{row}"
        );
    }
}

#[test]
fn bench_bad_input_is_one_clear_line() {
    let s = smollm2();
    // A Parquet file whose dictionary page claims more than it holds (the Parquet reader
    // would panic on it): refused by the page-header walk before the reader sees it.
    let damaged = tmp("damaged.parquet");
    let found =
        std::fs::read(repo().join("fuzz/regressions/bench_rows/parquet-dictionary-page-past-end"))
            .unwrap();
    std::fs::write(&damaged, &found[1..]).unwrap();
    let damaged = damaged.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["bench", "gsm8k", "--data", &damaged, "-m", &s],
            "a dictionary page claims 3 values in 0 bytes (the file is damaged",
        ),
        (
            vec![
                "bench",
                "gsm8k",
                "--data",
                "/nonexistent/test.jsonl",
                "-m",
                &s,
            ],
            "no such file",
        ),
        (
            vec!["bench", "qa", "--data", "hf:someone/unknown", "-m", &s],
            "name the file",
        ),
        (
            vec![
                "bench",
                "gsm8k",
                "--data",
                "benches/data/qa.jsonl",
                "--shots",
                "0",
                "-m",
                &s,
            ],
            "answer",
        ),
        (
            vec![
                "bench",
                "qa",
                "--data",
                "benches/data/qa.jsonl",
                "--temperature",
                "0.7",
                "-m",
                &s,
            ],
            "greedily",
        ),
        (
            vec![
                "bench",
                "mixinstruct",
                "--data",
                "tests/fixtures/mixinstruct/mini.jsonl",
                "--bertscore-model",
                "hf:nobody/no-encoder",
                "-m",
                &s,
            ],
            "BERTScore encoder",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
            .args(&args)
            .current_dir(repo())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", std::env::temp_dir().join("tutti-empty-hf-home"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!err.contains("panicked"), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(want), "{args:?}: {}", lines[0]);
    }
}

/// `--batch 2` decodes two items at once (each member's step one batched forward for
/// both) and writes the rows `--batch 1` writes, for the members and the ensemble.
#[test]
fn batched_items_give_the_rows_of_one_at_a_time() {
    let (s, g) = (smollm2(), gemma());
    let data = fixture("gsm8k/test.jsonl");
    let run = |batch: &str| {
        let out = tmp(&format!("gsm8k-batch{batch}.jsonl"));
        ok(&[
            "bench",
            "gsm8k",
            "--data",
            &data,
            "--shots",
            "1",
            "--limit",
            "3",
            "--max-tokens",
            "8",
            "-m",
            &s,
            "-m",
            &g,
            "--members-too",
            "--batch",
            batch,
            "--out",
            out.to_str().unwrap(),
        ]);
        rows(&out)
            .into_iter()
            .map(|mut r| {
                let o = r.as_object_mut().unwrap();
                for timing in ["time_ms", "decode_ms"] {
                    o.remove(timing);
                }
                r
            })
            .collect::<Vec<_>>()
    };
    let one = run("1");
    assert_eq!(one.len(), 9, "3 items × 3 systems");
    assert_eq!(run("2"), one);
}

/// The llama-server build `scripts/llama-server.sh` makes (and prints).
fn llama_server() -> String {
    if let Ok(p) = std::env::var("TUTTI_LLAMA_SERVER") {
        return p;
    }
    let out = Command::new("bash")
        .arg(repo().join("scripts/llama-server.sh"))
        .output()
        .expect("run scripts/llama-server.sh");
    assert!(out.status.success(), "scripts/llama-server.sh failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `tutti bench serve` at smoke scale: two --max-batch settings and two concurrencies
/// give every answer equal to direct decoding, the burst gets only 200s and 429s, and
/// llama-server takes the same clients.
#[test]
fn bench_serve_sweeps_batch_and_concurrency_beside_llama_server() {
    let bin = llama_server();
    let smol = smollm2();
    let out = ok(&[
        "bench",
        "serve",
        "-m",
        &smol,
        "--max-tokens",
        "4",
        "--concurrency",
        "1,3",
        "--requests",
        "2",
        "--max-batch",
        "1,3",
        "--queue",
        "4",
        "--vs-llama-server",
        "--llama-server",
        &bin,
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "{report}");
    for r in runs {
        assert_eq!(r["failed"], 0, "{r}");
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ttft_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
        let clients = r["clients"].as_u64().unwrap();
        assert_eq!(r["requests"].as_u64().unwrap(), clients * 2, "{r}");
        if r["server"] == "tutti" {
            assert_eq!(r["mismatched"], 0, "{r}");
        } else {
            assert_eq!(r["server"], "llama-server -np 3", "{r}");
        }
    }
    for b in report["bursts"].as_array().unwrap() {
        assert_eq!(b["other"], 0, "{b}");
        assert!(b["rate_limited"].as_u64().unwrap() > 0, "{b}");
    }
}

/// `bench mc` on hand-written items: every member, both ensembles, a resumed run that
/// scores nothing again and gives the same table, and a one-member run whose scores are
/// the member's row of the pair's run.
#[test]
fn mc_scores_members_and_both_ensembles_and_resumes() {
    let out = tmp("mc.jsonl");
    let _ = std::fs::remove_file(&out);
    let data = fixture("mc/tiny.jsonl");
    let (smol, gem) = (smollm2(), gemma());
    let args = [
        "bench",
        "mc",
        "--data",
        &data,
        "-m",
        &smol,
        "-m",
        &gem,
        "--json",
        "--out",
        out.to_str().unwrap(),
    ];
    let first: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let systems: Vec<&str> = first["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems.len(), 4, "{systems:?}");
    assert!(systems[2].contains("token level") && systems[3].contains("sequence level"));
    assert_eq!(first["items"], 6);
    let lines = rows(&out);
    assert_eq!(lines.len(), 6, "one row per item");
    for r in first["rows"].as_array().unwrap() {
        let acc = r["primary"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(acc >= 0.5, "the tiny items are easy: {r}");
    }
    // Resumed: nothing is scored again and the table is the same.
    let second: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(rows(&out).len(), 6);
    assert_eq!(first["rows"][2]["acc_raw"], second["rows"][2]["acc_raw"]);
    assert_eq!(
        first["rows"][0]["seconds_per_item"],
        second["rows"][0]["seconds_per_item"]
    );
    // A member alone gives the member's row of the pair.
    let solo: serde_json::Value =
        serde_json::from_str(&ok(&["bench", "mc", "--data", &data, "-m", &gem, "--json"])).unwrap();
    assert_eq!(solo["rows"].as_array().unwrap().len(), 1);
    assert_eq!(
        solo["rows"][0]["acc_per_char"],
        first["rows"][1]["acc_per_char"]
    );
    // Bad data is one clear error naming the fix.
    let bad = tutti(&[
        "bench",
        "mc",
        "--data",
        "olmes:no_such_task:rc_5shot",
        "-m",
        &smol,
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("fetch-olmes.sh"), "{err}");
}
