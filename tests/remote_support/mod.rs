//! Shared helpers of the remote-member tests and bench: the real llama.cpp
//! `llama-server` (built by `scripts/llama-server.sh`) serving a demo GGUF on an
//! ephemeral loopback port, and the demo prompts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// Eight raw prompts of different kinds (facts, code, lists, numbers, prose).
pub const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Three reasons to learn a second language:\n1.",
    "Water boils at a temperature of",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Q: What is 12 times 7?\nA:",
    "The most important invention of the 20th century was",
];

/// Path of a demo model; fails with the fix when it is missing.
pub fn demo(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models-cache")
        .join(name);
    assert!(
        p.exists(),
        "demo model {} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p.display().to_string()
}

/// The llama-server binary: `scripts/llama-server.sh` builds it once and prints its path.
pub fn llama_server_bin() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/llama-server.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/llama-server.sh");
    assert!(
        out.status.success(),
        "scripts/llama-server.sh failed: build llama-server with it first"
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = PathBuf::from(path.lines().last().unwrap_or_default());
    assert!(p.exists(), "scripts/llama-server.sh printed no binary path");
    p
}

/// A running llama-server; killed when dropped.
pub struct LlamaServer {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl LlamaServer {
    /// Serves `model` (a demo GGUF name) on an ephemeral loopback port with `threads`
    /// CPU threads and waits until `/health` answers 200.
    pub fn start(model: &str, threads: usize) -> LlamaServer {
        let bin = llama_server_bin();
        let mut child = Command::new(bin)
            .args(["-m", &demo(model)])
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["-c", "4096", "-np", "1", "--no-webui"])
            // A sliding-window model (Gemma 3) otherwise re-evaluates its last tokens
            // on every request instead of reusing the cached prefix.
            .arg("--swa-full")
            .args(["-t", &threads.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start llama-server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "llama-server did not report its address; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let server = LlamaServer {
            child,
            base: format!("http://{addr}"),
            log,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = agent.get(&format!("{}/health", server.base)).call() {
                if r.status().as_u16() == 200 {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "llama-server never became healthy; log:\n{}",
                server.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The native-endpoint member spec.
    pub fn native(&self) -> String {
        format!("llamacpp+{}", self.base)
    }

    /// The OpenAI-endpoint member spec.
    pub fn openai(&self) -> String {
        format!("openai+{}/v1#served", self.base)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
