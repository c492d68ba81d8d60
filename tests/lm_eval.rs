//! lm-evaluation-harness (pinned, in the `.venv-lmeval` venv that `scripts/test.sh`
//! creates) against `tutti serve` with the demo pair, `--model local-completions`: a
//! log-likelihood task and a `generate_until` task defined on small local files (no hub).
//! For SmolLM2 alone and for the ensemble, every choice's log-likelihood lm-eval reads
//! from the server's `echo` equals, bit for bit, what `tutti bench mc` gives the same
//! items, and so do the accuracies.

mod serve_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use serve_support::ServerProc;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-lm-eval-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The items of the hand-written multiple-choice fixture that share one context (lm-eval
/// builds a choice's request as the document's text followed by the choice).
fn shared_context_items(dir: &Path) -> PathBuf {
    let all = std::fs::read_to_string(root().join("tests/fixtures/mc/tiny.jsonl")).unwrap();
    let kept: Vec<&str> = all
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v.get("context").is_some())
                .unwrap_or(false)
        })
        .collect();
    assert!(kept.len() >= 4);
    let path = dir.join("mc.jsonl");
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    path
}

/// Task definitions on local JSON Lines files.
fn tasks(dir: &Path, mc: &Path) -> PathBuf {
    let gen = dir.join("gen.jsonl");
    std::fs::write(
        &gen,
        concat!(
            r#"{"question": "Q: What is the capital of France?\nA:", "answer": " Paris"}"#,
            "\n",
            r#"{"question": "Q: How many legs does a spider have?\nA:", "answer": " Eight"}"#,
            "\n"
        ),
    )
    .unwrap();
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(
        tasks.join("mc.yaml"),
        format!(
            "task: tutti_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\n\
             test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{{{context}}}}\"\n\
             doc_to_choice: \"{{{{continuations}}}}\"\ndoc_to_target: \"{{{{gold}}}}\"\n\
             target_delimiter: \"\"\nmetric_list:\n  - metric: acc\n",
            mc.display()
        ),
    )
    .unwrap();
    std::fs::write(
        tasks.join("gen.yaml"),
        format!(
            "task: tutti_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\n\
             test_split: test\noutput_type: generate_until\ndoc_to_text: \"{{{{question}}}}\"\n\
             doc_to_target: \"{{{{answer}}}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n  \
             max_gen_toks: 8\n  do_sample: false\n  temperature: 0\nmetric_list:\n  \
             - metric: exact_match\n    higher_is_better: true\n",
            gen.display()
        ),
    )
    .unwrap();
    tasks
}

/// Runs lm-eval against `model` on the server; returns its output folder.
fn lm_eval(server: &ServerProc, model: &str, tasks: &Path, out: &Path) -> PathBuf {
    let python_bin = root().join(".venv-lmeval/bin");
    assert!(
        python_bin.join("lm_eval").exists(),
        "{} is missing: run scripts/test.sh (it creates the venv with the pinned lm-eval), \
         or scripts/lmeval-venv.sh alone",
        python_bin.display()
    );
    let tokenizer = root().join("models-cache/tokenizers/smollm2");
    assert!(
        tokenizer.join("tokenizer.json").exists(),
        "{} is missing: run scripts/fetch-tokenizers.sh",
        tokenizer.display()
    );
    let args = format!(
        "base_url={},model={model},tokenizer_backend=huggingface,tokenizer={},\
         tokenized_requests=False,num_concurrent=1,max_retries=1",
        server.url("/v1/completions"),
        tokenizer.display()
    );
    let res = Command::new(python_bin.join("lm_eval"))
        .args(["--model", "local-completions", "--model_args", &args])
        .arg("--include_path")
        .arg(tasks)
        .args(["--tasks", "tutti_mc,tutti_gen", "--log_samples"])
        .arg("--output_path")
        .arg(out)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HOME", out.join("hf-home"))
        .output()
        .expect("run lm_eval");
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "lm_eval failed on {model}:\n{stderr}\nserver log:\n{}",
        server.stderr_text()
    );
    out.join(model)
}

/// The file of lm-eval's output folder `dir` whose name starts with `prefix`.
fn file_starting(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {prefix}* file in {}", dir.display()))
}

/// The log-likelihood lm-eval read for each choice, by item id.
fn lm_eval_loglikelihoods(dir: &Path, task: &str) -> HashMap<String, Vec<f64>> {
    let file = file_starting(dir, &format!("samples_{task}_"));
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(file).unwrap().lines() {
        let s: Value = serde_json::from_str(line).unwrap();
        let id = s["doc"]["id"].as_str().unwrap().to_string();
        let lls = s["resps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0][0].as_str().unwrap().parse::<f64>().unwrap())
            .collect();
        out.insert(id, lls);
    }
    out
}

fn lm_eval_metric(dir: &Path, task: &str, metric: &str) -> f64 {
    let file = file_starting(dir, "results_");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    v["results"][task][format!("{metric},none")]
        .as_f64()
        .unwrap_or_else(|| panic!("{metric} of {task} in {v}"))
}

#[test]
fn lm_eval_through_the_server_scores_as_bench_mc() {
    let dir = tmp();
    let mc = shared_context_items(&dir);
    let tasks = tasks(&dir, &mc);
    // `tutti bench mc` on the same items, every system's scores kept per item.
    let rows = dir.join("bench.jsonl");
    let (smol, gemma) = (
        root().join("models-cache").join(SMOL),
        root().join("models-cache").join(GEMMA),
    );
    let bench = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(["bench", "mc", "--json", "--data"])
        .arg(&mc)
        .arg("-m")
        .arg(&smol)
        .arg("-m")
        .arg(&gemma)
        .arg("--out")
        .arg(&rows)
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let table: Value = serde_json::from_slice(&bench.stdout).unwrap();
    let rows: Vec<Value> = std::fs::read_to_string(&rows)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let server = ServerProc::pair(&["--name", "pair"]);
    for (model, system, row) in [(SMOL, SMOL, 0), ("pair", "ensemble (token level)", 2)] {
        let out = lm_eval(&server, model, &tasks, &dir.join(format!("out-{model}")));
        let theirs = lm_eval_loglikelihoods(&out, "tutti_mc");
        assert_eq!(theirs.len(), rows.len());
        for r in &rows {
            let id = r["id"].as_str().unwrap();
            let ours: Vec<f64> = r["scores"][system]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["logprob"].as_f64().unwrap())
                .collect();
            assert_eq!(
                theirs[id], ours,
                "{model}, item {id}: lm-eval against bench mc"
            );
        }
        let acc = lm_eval_metric(&out, "tutti_mc", "acc");
        let bench_acc = table["rows"][row]["acc_raw"]["mean"].as_f64().unwrap();
        assert_eq!(table["rows"][row]["system"], system);
        assert_eq!(
            acc, bench_acc,
            "{model}: lm-eval's acc against bench mc's acc_raw"
        );
        // The generation task ran through the same server.
        let em = lm_eval_metric(&out, "tutti_gen", "exact_match");
        assert!((0.0..=1.0).contains(&em));
    }
}
