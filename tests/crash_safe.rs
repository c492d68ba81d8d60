//! `kill -9` at random moments during `tutti bench`: the `--out` rows and the report
//! survive every kill whole (rows appended and flushed one line at a time, a torn last
//! line cut on resume; reports written to a temporary file and renamed), and the
//! resumed run ends with exactly the rows of an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn smollm2() -> String {
    let p = repo().join("models-cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p.display().to_string()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-crash-safe-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bench(data: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tutti"));
    c.args(["bench", "qa", "--data"])
        .arg(data)
        .arg("--shots-file")
        .arg(repo().join("benches/data/qa-shots.jsonl"))
        .args(["-m", &smollm2(), "--out"])
        .arg(out)
        .arg("--report")
        .arg(out.with_extension("md"))
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The rows of a results file by (system, id), without timings; every line must be a
/// whole row except a torn last one (which a resume cuts).
fn rows(path: &Path) -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut out = BTreeMap::new();
    for line in whole.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: a damaged row {line:?}: {e}", path.display()));
        let key = (v["system"].to_string(), v["id"].to_string());
        let kept = format!(
            "{} {} {} {}",
            v["output"], v["extracted"], v["correct"], v["tokens"]
        );
        assert!(out.insert(key, kept).is_none(), "a row written twice");
    }
    out
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_results() {
    let dir = scratch("kills");
    let data = dir.join("qa.jsonl");
    let items: String = std::fs::read_to_string(repo().join("benches/data/qa.jsonl"))
        .unwrap()
        .lines()
        .take(5)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&data, items).unwrap();

    let reference = dir.join("reference.jsonl");
    let start = Instant::now();
    assert!(bench(&data, &reference).status().unwrap().success());
    let full = start.elapsed();
    let expected = rows(&reference);
    assert_eq!(expected.len(), 5);

    // Each run is killed at a random moment: while the model loads, or after zero or
    // one more row has landed plus a random part of one item's time (so also while a
    // row is being written). Fixed seed: the same moments on every run of the test.
    let per_item = full / 5;
    let out = dir.join("killed.jsonl");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut kills = 0;
    for _ in 0..12 {
        let have = rows(&out).len();
        if have == expected.len() {
            break;
        }
        let wait_rows = have + (next() % 2) as usize;
        let extra = per_item.mul_f64((next() % 1000) as f64 / 1000.0);
        let mut child = bench(&data, &out).spawn().unwrap();
        while rows(&out).len() < wait_rows && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(extra);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        // What a kill leaves is a part of the uninterrupted results.
        for (key, row) in rows(&out) {
            assert_eq!(expected.get(&key), Some(&row), "{key:?} after a kill");
        }
        let report = out.with_extension("md");
        if report.exists() {
            let text = std::fs::read_to_string(&report).unwrap();
            assert!(text.trim_end().ends_with(".svg)"), "a torn report:\n{text}");
        }
    }
    eprintln!("{kills} runs killed mid-way, then resumed");
    assert!(kills >= 3, "only {kills} runs were killed mid-way");
    let resumed = bench(&data, &out).output().unwrap();
    assert!(resumed.status.success());
    assert_eq!(rows(&out), expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_results_file_is_refused_not_trusted() {
    let dir = scratch("damaged");
    let data = dir.join("qa.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is the capital of France?\", \"answers\": [\"Paris\"]}\n",
    )
    .unwrap();
    let out = dir.join("out.jsonl");
    assert!(bench(&data, &out).status().unwrap().success());
    let mut text = std::fs::read_to_string(&out).unwrap();
    // A flipped byte inside a whole line (not a torn last line).
    text = text.replacen('{', "[", 1);
    std::fs::write(&out, &text).unwrap();
    let run = bench(&data, &out).stderr(Stdio::piped()).output().unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("another --out"), "{err}");
    // The file is left as it was.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    let _ = std::fs::remove_dir_all(&dir);
}
