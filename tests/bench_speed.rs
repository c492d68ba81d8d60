//! `tutti bench speed` end to end on the CPU with two random `tiny` members: the command
//! runs, the JSON report is complete and its numbers are positive and consistent with
//! each other. Timings are never pass criteria.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer() -> PathBuf {
    let p = repo().join("models-cache/tokenizers/smollm2/tokenizer.json");
    assert!(
        p.is_file(),
        "SmolLM2's tokenizer.json is missing: run scripts/fetch-tokenizers.sh"
    );
    p
}

fn tutti(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run tutti")
}

#[test]
fn speed_json_is_complete_and_consistent() {
    let tok = tokenizer();
    let out = tutti(&[
        "bench",
        "speed",
        "--shape",
        "tiny",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--prompt-tokens",
        "48",
        "--decode-tokens",
        "8",
        "--warmup",
        "1",
        "--bandwidth-gbs",
        "20",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench speed failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["dtype"], "f32");
    assert_eq!(r["bandwidth_gbs"], 20.0);
    assert_eq!(r["bandwidth_source"], "flag");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "two members alone and the ensemble");
    assert_eq!(rows[2]["name"], "ensemble");
    let mut member_bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let f = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k} in {row}"));
        assert_eq!(row["prompt_tokens"], 48);
        assert!(f("prefill_ms") > 0.0 && f("prefill_tokens_per_s") > 0.0);
        let prefill_rate = 48.0 * 1e3 / f("prefill_ms");
        assert!((prefill_rate - f("prefill_tokens_per_s")).abs() < 1e-6 * prefill_rate);
        let steps = row["decode_tokens"].as_u64().unwrap();
        assert!(
            steps == 8 || row["stopped_at_eos"] == true,
            "8 decode steps unless an EOS won: {row}"
        );
        assert!(steps > 0 && f("decode_ms_per_token") > 0.0);
        let fwd = row["forward_ms"].as_array().unwrap();
        assert_eq!(fwd.len(), if i < 2 { 1 } else { 2 });
        let fwd_sum: f64 = fwd.iter().map(|x| x.as_f64().unwrap()).sum();
        assert!(fwd.iter().all(|x| x.as_f64().unwrap() > 0.0));
        // The parts of a step fit in the step.
        let parts = fwd_sum + f("align_combine_ms") + f("feedback_ms");
        assert!(
            parts <= f("decode_ms_per_token") * 1.001 + 1e-3,
            "{parts} > {}",
            f("decode_ms_per_token")
        );
        let wb = row["weight_bytes"].as_u64().unwrap();
        assert!(wb > 0);
        if i < 2 {
            member_bytes += wb;
        } else {
            assert_eq!(wb, member_bytes, "ensemble reads both members' weights");
        }
        let roof = wb as f64 / 20e9 * 1e3;
        assert!((f("roofline_ms") - roof).abs() < 1e-9 + 1e-9 * roof);
        let frac = f("roofline_ms") / f("decode_ms_per_token");
        assert!((f("roofline_fraction") - frac).abs() < 1e-9 + 1e-9 * frac);
        assert!(row["peak_mem_bytes"].as_u64().unwrap() > 0);
        assert!(row["mem_after_load_bytes"].as_u64().unwrap() > 0);
    }
    // Both tiny members read the same bytes: 2 layers + tied 49,152 x 64 embeddings, f32.
    assert_eq!(rows[0]["weight_bytes"], rows[1]["weight_bytes"]);
    let topk = r["topk"].as_array().unwrap();
    assert_eq!(topk.len(), 1);
    assert_eq!(topk[0]["vocab"], 49152);
    assert_eq!(topk[0]["same_ids"], true);
}

#[test]
fn speed_table_and_errors() {
    let tok = tokenizer();
    let out = tutti(&[
        "bench",
        "speed",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--prompt-tokens",
        "16",
        "--decode-tokens",
        "4",
        "--warmup",
        "0",
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("random:tiny"), "{stdout}");
    // On the CPU the bandwidth is read on every compute thread, as decoding reads weights.
    assert!(stdout.contains("measured (read, "), "{stdout}");
    // The kernel set the matmuls ran on is named, with the way to force another.
    assert!(stdout.contains("CPU kernels: "), "{stdout}");
    assert!(
        !stdout.contains("ensemble"),
        "one member, no ensemble row: {stdout}"
    );

    for (args, needle) in [
        (vec!["bench", "speed", "--device", "cpu"], "no members"),
        (
            vec!["bench", "speed", "--shape", "gpt-17", "--device", "cpu"],
            "unknown shape",
        ),
        (
            vec![
                "bench",
                "speed",
                "--shape",
                "mistral-7b",
                "--device",
                "cpu",
                "--tokenizer",
                tok.to_str().unwrap(),
            ],
            "at most 32768 entries",
        ),
    ] {
        let out = tutti(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
