//! Shared helpers of the remote-member tests and bench: the real llama.cpp
//! `llama-server` (built by `scripts/llama-server.sh`) serving a demo GGUF on an
//! ephemeral loopback port, and the demo prompts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a healthy start may take (loading a GGUF and warming up): a process still
/// running without serving after this is reported as hung.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// Log lines quoted in a start-up failure.
const LOG_TAIL: usize = 25;

// Each support module stands alone (a bench includes only this one); a test that also
// includes `serve_support` loads these helpers twice, harmlessly.
#[allow(clippy::duplicate_mod)]
#[path = "../ensemble_support/mod.rs"]
mod ensemble_support;
pub use ensemble_support::{demo, GEMMA, SMOL};

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

/// The llama-server binary: `scripts/llama-server.sh` builds it once and prints its path
/// (`TUTTI_LLAMA_SERVER=PATH` picks another build, e.g. one for AVX2 only).
pub fn llama_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TUTTI_LLAMA_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "TUTTI_LLAMA_SERVER={} does not exist",
            p.display()
        );
        return p;
    }
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

/// Why a llama-server did not come up: how it ended (or that it hung), its last log
/// lines, and the likely cause with its fix.
#[derive(Debug)]
pub struct StartError {
    pub args: Vec<String>,
    /// `None` when the process was still running at the deadline.
    pub status: Option<ExitStatus>,
    pub log_tail: Vec<String>,
    pub cause: Option<String>,
}

impl StartError {
    /// "exit status 1", "killed by signal 11 (SIGSEGV)", or "still running".
    pub fn how(&self) -> String {
        match self.status {
            None => "no address reported before the deadline (still running)".into(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
                _ => format!("ended: {s}"),
            },
        }
    }

    /// Whether it crashed (a signal from the CPU, not a kill) during start-up.
    pub fn crashed(&self) -> bool {
        self.status
            .and_then(|s| s.signal())
            .is_some_and(|sig| matches!(sig, 4 | 6 | 7 | 8 | 11))
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "llama-server {} during start-up", self.how())?;
        writeln!(f, "  command: llama-server {}", self.args.join(" "))?;
        if let Some(cause) = &self.cause {
            writeln!(f, "  likely cause: {cause}")?;
        }
        writeln!(f, "  last {} log lines:", self.log_tail.len())?;
        for line in &self.log_tail {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// The likely cause of a start-up failure, read from how it ended and its log.
pub fn likely_cause(status: Option<ExitStatus>, log: &[String], repack: bool) -> Option<String> {
    let has = |needle: &str| log.iter().any(|l| l.contains(needle));
    let crashed = status.and_then(|s| s.signal()).is_some();
    if crashed && repack {
        return Some(
            "a crash while the CPU backend repacks weights: the llama.cpp in llama-cpp-python \
             0.3.36 does this on some AVX-512 CPUs; start llama-server with --no-repack \
             (docs/remote.md)"
                .into(),
        );
    }
    if crashed {
        return Some("llama-server crashed; see its log above".into());
    }
    if has("failed to load model") || has("failed to open") || has("No such file") {
        return Some("the model file could not be loaded: check the -m path".into());
    }
    if has("couldn't bind") || has("Address already in use") {
        return Some("the address is in use: pick another --port".into());
    }
    if has("invalid argument") || has("error: ") {
        return Some("llama-server refused its arguments (this build's --help lists them)".into());
    }
    None
}

/// Whether weight repacking works for a model with this llama-server build, decided by
/// the first start of that model in this process and kept for the others.
/// `TUTTI_LLAMA_SERVER_REPACK=on|off` forces a choice (for numerics comparisons).
static REPACK: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());

fn forced_repack() -> Option<bool> {
    match std::env::var("TUTTI_LLAMA_SERVER_REPACK").ok()?.as_str() {
        "on" | "1" => Some(true),
        "off" | "0" => Some(false),
        _ => None,
    }
}

impl LlamaServer {
    /// Serves `model` (a demo GGUF name) on an ephemeral loopback port with `threads`
    /// CPU threads and waits until `/health` answers 200.
    ///
    /// The first start of a model tries llama.cpp's default (weights repacked for this
    /// CPU). When that crashes during start-up, the crash is logged with its reason and
    /// this start and every later one of the model use `--no-repack`.
    pub fn start(model: &str, threads: usize) -> LlamaServer {
        let path = demo(model);
        if let Some(repack) = forced_repack() {
            return Self::try_start(&path, threads, repack, &[]).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut known = REPACK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(_, repack)) = known.iter().find(|(m, _)| m == model) {
            drop(known);
            return Self::try_start(&path, threads, repack, &[]).unwrap_or_else(|e| panic!("{e}"));
        }
        // The lock is held through the probe so that parallel tests wait for its verdict.
        match Self::try_start(&path, threads, true, &[]) {
            Ok(server) => {
                known.push((model.to_string(), true));
                server
            }
            Err(e) if e.crashed() => {
                eprintln!(
                    "[llama-server] {model}: {} with weight repacking (llama.cpp's default); \
                     starting it with --no-repack from now on. Its last log lines:\n    {}",
                    e.how(),
                    e.log_tail.join("\n    ")
                );
                known.push((model.to_string(), false));
                Self::try_start(&path, threads, false, &[]).unwrap_or_else(|e| panic!("{e}"))
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts llama-server on `model_path` (with `--no-repack` unless `repack`, plus
    /// `extra` arguments) and waits for it to serve. A process that ends during start-up
    /// is reported at once with how it ended, its last log lines and the likely cause.
    pub fn try_start(
        model_path: &str,
        threads: usize,
        repack: bool,
        extra: &[&str],
    ) -> Result<LlamaServer, StartError> {
        let bin = llama_server_bin();
        let mut args: Vec<String> = ["-m", model_path, "--host", "127.0.0.1", "--port", "0"]
            .iter()
            .chain(&["-c", "4096", "-np", "1", "--no-webui"])
            // A sliding-window model (Gemma 3) otherwise re-evaluates its last tokens
            // on every request instead of reusing the cached prefix.
            .chain(&["--swa-full"])
            .map(|s| s.to_string())
            .collect();
        args.extend(["-t".to_string(), threads.to_string()]);
        if !repack {
            args.push("--no-repack".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
        };
        let fail =
            |child: &mut Child, status: Option<ExitStatus>, reader: Option<JoinHandle<()>>| {
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                // The reader ends at the pipe's end: every line the process wrote is in.
                if let Some(r) = reader {
                    let _ = r.join();
                }
                let lines = log.lock().unwrap_or_else(|e| e.into_inner());
                StartError {
                    args: args.clone(),
                    status,
                    log_tail: lines[lines.len().saturating_sub(LOG_TAIL)..].to_vec(),
                    cause: likely_cause(status, &lines, repack),
                }
            };
        let t0 = Instant::now();
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(a) => break a,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The pipe closed without an address: the process is ending.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    return Err(fail(&mut child, status, Some(reader)));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(&mut child, Some(status), Some(reader)));
            }
            if t0.elapsed() > START_DEADLINE {
                return Err(fail(&mut child, None, None));
            }
        };
        let mut server = LlamaServer {
            child,
            base: format!("http://{addr}"),
            log: log.clone(),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        loop {
            if let Ok(r) = agent.get(&format!("{}/health", server.base)).call() {
                if r.status().as_u16() == 200 {
                    return Ok(server);
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(fail(&mut server.child, Some(status), Some(reader)));
            }
            if t0.elapsed() > START_DEADLINE {
                return Err(fail(&mut server.child, None, None));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
