//! Bad input to the `tutti` binary gives one clear line on stderr, a non-zero exit code
//! and no panic.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn smollm2() -> PathBuf {
    let p = repo().join("models-cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

/// Runs tutti and returns its stderr, asserting failure without a panic.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run tutti");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{args:?} should fail; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        error_lines.len(),
        1,
        "{args:?}: expected one error line, got: {stderr}"
    );
    error_lines[0].to_string()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-cli-errors-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn missing_model_file() {
    let e = fails(&["generate", "-m", "/no/such/model.gguf", "hi"]);
    assert!(
        e.contains("not found") && e.contains("fetch-models.sh"),
        "{e}"
    );
}

#[test]
fn truncated_gguf() {
    let bytes = std::fs::read(smollm2()).unwrap();
    let p = tmpdir("trunc").join("truncated.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let e = fails(&["logits", "-m", p.to_str().unwrap(), "--top", "3", "hi"]);
    assert!(e.contains("truncated or corrupt"), "{e}");
    // Through the engine the member is named, and each cause appears once.
    let e = fails(&["generate", "-m", p.to_str().unwrap(), "hi"]);
    assert!(e.contains("member `truncated.gguf`"), "{e}");
    assert_eq!(e.matches("truncated or corrupt").count(), 1, "{e}");
    assert_eq!(e.matches("not a valid GGUF").count(), 1, "{e}");
    // A file that is not GGUF at all.
    let q = tmpdir("garbage").join("garbage.gguf");
    std::fs::write(&q, b"definitely not a gguf file").unwrap();
    let e = fails(&["logits", "-m", q.to_str().unwrap(), "hi"]);
    assert!(e.contains("not a valid GGUF"), "{e}");
}

#[test]
fn unknown_architecture() {
    let d = tmpdir("arch");
    std::fs::write(
        d.join("config.json"),
        r#"{"architectures": ["MambaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}"#,
    )
    .unwrap();
    std::fs::write(d.join("model.safetensors"), b"").unwrap();
    let e = fails(&["logits", "-m", d.to_str().unwrap(), "hi"]);
    assert!(
        e.contains("MambaForCausalLM") && e.contains("llama") && e.contains("gemma3"),
        "{e}"
    );
}

#[test]
fn empty_prompt() {
    let m = smollm2();
    let e = fails(&["generate", "-m", m.to_str().unwrap(), "--raw", ""]);
    assert!(e.contains("empty"), "{e}");
    let e = fails(&["logits", "-m", m.to_str().unwrap(), ""]);
    assert!(e.contains("empty"), "{e}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_on_cpu_build() {
    let m = smollm2();
    let e = fails(&[
        "generate",
        "-m",
        m.to_str().unwrap(),
        "--device",
        "cuda",
        "hi",
    ]);
    assert!(e.contains("--features cuda"), "{e}");
}

#[test]
fn offline_hub_model_not_cached() {
    let e = fails(&["logits", "-m", "hf:nobody-at-all/not-a-model", "hi"]);
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
}

#[test]
fn info_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .arg("info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("architectures:") && s.contains("cuda:"), "{s}");
}

/// `tutti info` names the CPU kernel set; `TUTTI_KERNELS` forces a lower one, and a name
/// that is no set keeps the best one with a message that lists the choices.
#[test]
fn info_names_the_cpu_kernels_and_takes_a_forced_set() {
    let kernels = |forced: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tutti"));
        cmd.arg("info");
        match forced {
            Some(v) => cmd.env("TUTTI_KERNELS", v),
            None => cmd.env_remove("TUTTI_KERNELS"),
        };
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = s
            .lines()
            .find(|l| l.starts_with("cpu kernels: "))
            .unwrap_or_else(|| panic!("{s}"));
        line["cpu kernels: ".len()..].to_string()
    };
    let best = kernels(None);
    let best_set = best.split(' ').next().unwrap().to_string();
    assert!(
        tutti_models::KernelSet::parse(&best_set).is_some(),
        "{best}"
    );
    assert!(best.contains("the best this CPU has"), "{best}");
    let floor = tutti_models::KernelSet::floor().name();
    let forced = kernels(Some(floor));
    assert!(forced.starts_with(&format!("{floor} (")), "{forced}");
    let bogus = kernels(Some("sse9"));
    assert!(bogus.starts_with(&format!("{best_set} (")), "{bogus}");
    assert!(
        bogus.contains("not a kernel set") && bogus.contains(floor),
        "{bogus}"
    );
}
