//! The official `openai` Python SDK (pinned, in the `.venv-openai` venv that
//! `scripts/test.sh` creates) runs `tests/openai_sdk_check.py` against `tutti serve` with
//! the demo pair: completion, chat, streaming with usage, logprobs and errors, every
//! response validated by the SDK's own models.

mod serve_support;

use std::path::PathBuf;
use std::process::Command;

use serve_support::ServerProc;

#[test]
fn the_openai_python_sdk_accepts_every_response() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-openai/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (it creates the venv with the pinned openai SDK), \
         or scripts/openai-venv.sh alone",
        python.display()
    );
    let s = ServerProc::pair(&["--name", "pair"]);
    let out = Command::new(&python)
        .arg(root.join("tests/openai_sdk_check.py"))
        .arg(s.url("/v1"))
        .arg("pair")
        .output()
        .expect("run the SDK check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the openai SDK check failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        s.stderr_text()
    );
    assert!(stdout.contains("SDK checks: all passed"), "{stdout}");
}
