//! `tutti align` end to end: stats output, the map cache across runs, and clear errors
//! on bad input.

mod align_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use align_support::tokenizer_path;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-align-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tutti(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .env("TUTTI_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .expect("run tutti")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

#[test]
fn builds_caches_and_rebuilds() {
    let cache = temp_dir("cache");
    let a = tokenizer_path("smollm2");
    let b = tokenizer_path("gpt2");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let args = ["align", "-m", a, "-m", b, "--align", "min-ed", "--json"];
    let first = json_of(&tutti(&cache, &args));
    assert_eq!(first["source"], "built");
    assert_eq!(first["a"]["ids"], 49_152);
    assert_eq!(first["b"]["ids"], 50_257);
    assert_eq!(first["stats"]["mapped_share"], 1.0);
    assert!(first["stats"]["exact_overlap"].as_u64().unwrap() > 20_000);
    let path = first["cache_path"].as_str().unwrap().to_string();
    assert!(Path::new(&path).is_file());

    let second = json_of(&tutti(&cache, &args));
    assert_eq!(second["source"], "cache");
    assert_eq!(
        second["stats"]["mapped_identical"],
        first["stats"]["mapped_identical"]
    );

    let mut forced = args.to_vec();
    forced.push("--no-cache");
    assert_eq!(json_of(&tutti(&cache, &forced))["source"], "built");

    // A damaged cache file is detected and rebuilt.
    std::fs::write(&path, b"TUTTIMAP garbage").unwrap();
    let third = json_of(&tutti(&cache, &args));
    assert!(
        third["source"].as_str().unwrap().starts_with("rebuilt"),
        "{}",
        third["source"]
    );

    // Text output names the method, the overlap and the cache file.
    let text = tutti(&cache, &["align", "-m", a, "-m", b, "--align", "exact"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("exact overlap") && text.contains("cache:"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

/// Two processes building the same map into one cache at once both succeed, and
/// processes killed (`kill -9`) while building or writing leave nothing a later run
/// trusts wrongly: it loads a whole map or builds one, and the map is the same.
#[test]
fn concurrent_and_killed_writers_leave_a_valid_cache() {
    let a = tokenizer_path("smollm2");
    let b = tokenizer_path("gpt2");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let args = ["align", "-m", a, "-m", b, "--align", "min-ed", "--json"];
    let spawn = |cache: &Path| {
        Command::new(env!("CARGO_BIN_EXE_tutti"))
            .env("TUTTI_CACHE", cache)
            .env("HF_HUB_OFFLINE", "1")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run tutti")
    };
    let shared = temp_dir("concurrent");
    let start = std::time::Instant::now();
    let (one, two) = (spawn(&shared), spawn(&shared));
    let one = json_of(&one.wait_with_output().unwrap());
    let two = json_of(&two.wait_with_output().unwrap());
    let both = start.elapsed();
    assert_eq!(one["stats"], two["stats"]);
    let after = json_of(&tutti(&shared, &args));
    assert_eq!(after["source"], "cache");
    assert_eq!(after["stats"], one["stats"]);

    let killed = temp_dir("killed");
    for fraction in [0.15, 0.45, 0.7, 0.95] {
        let mut child = spawn(&killed);
        std::thread::sleep(both.mul_f64(fraction / 2.0));
        let _ = child.kill();
        child.wait().unwrap();
        let next = json_of(&tutti(&killed, &args));
        let source = next["source"].as_str().unwrap();
        assert!(source == "built" || source == "cache", "{source}");
        assert_eq!(next["stats"], one["stats"]);
        std::fs::remove_dir_all(&killed).unwrap();
    }
    let _ = std::fs::remove_dir_all(&shared);
}

#[test]
fn bad_inputs_fail_clearly() {
    let dir = temp_dir("bad");
    let good = tokenizer_path("gpt2");
    let good = good.to_str().unwrap();

    let not_json = dir.join("tokenizer.json");
    std::fs::write(&not_json, b"definitely { not json").unwrap();
    let out = tutti(
        &dir,
        &["align", "-m", not_json.to_str().unwrap(), "-m", good],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokenizer") && err.contains("tokenizer.json"),
        "{err}"
    );

    // A GGUF file whose metadata has no tokenizer.
    let gguf = dir.join("novocab.gguf");
    write_gguf_without_vocab(&gguf);
    let out = tutti(&dir, &["align", "-m", gguf.to_str().unwrap(), "-m", good]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("novocab.gguf") && err.contains("tokenizer"),
        "{err}"
    );

    let out = tutti(
        &dir,
        &["align", "-m", good, "-m", good, "--align", "cosine"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown alignment method"));

    // relrep needs weights, not just a tokenizer.
    let out = tutti(
        &dir,
        &["align", "-m", good, "-m", good, "--align", "relrep"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no weights"));

    let out = tutti(&dir, &["align", "-m", good]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly two"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn write_gguf_without_vocab(path: &Path) {
    use candle_core::quantized::{gguf_file, QTensor};
    use candle_core::{Device, Tensor};
    let t = Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32).unwrap();
    let arch = gguf_file::Value::String("llama".into());
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
}
