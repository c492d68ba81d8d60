//! Shared helpers of the server tests: the real `tutti serve` binary on an ephemeral
//! loopback port (its address read from the ready line on stderr) and a real HTTP
//! client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../ensemble_support/mod.rs"]
mod ensemble_support;
pub use ensemble_support::{demo, GEMMA, SMOL};

/// A running `tutti serve`; killed when dropped.
pub struct ServerProc {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl ServerProc {
    /// Starts `tutti serve --port 0 ARGS...` and waits for its ready line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> ServerProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tutti"));
        cmd.arg("serve")
            .args(["--port", "0"])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("TUTTI_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tutti serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("on http://").nth(1) {
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        let _ = tx.send(addr);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "tutti serve did not report its address; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        ServerProc {
            child,
            base: format!("http://{addr}"),
            stderr: lines,
        }
    }

    /// The demo pair with extra flags.
    pub fn pair(extra: &[&str]) -> ServerProc {
        let (a, b) = (demo(SMOL), demo(GEMMA));
        let mut args = vec!["-m", a.as_str(), "-m", b.as_str()];
        args.extend_from_slice(extra);
        ServerProc::start(&args, &[])
    }

    /// SmolLM2 alone with extra flags.
    pub fn solo(extra: &[&str]) -> ServerProc {
        let a = demo(SMOL);
        let mut args = vec!["-m", a.as_str()];
        args.extend_from_slice(extra);
        ServerProc::start(&args, &[])
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns every status as a response.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// A response: status, headers we look at, and the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub www_authenticate: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an OpenAI error object with this status; returns it.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

fn reply(mut r: ureq::http::Response<ureq::Body>) -> Reply {
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header("retry-after");
    let www_authenticate = header("www-authenticate");
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    Reply {
        status,
        retry_after,
        www_authenticate,
        body,
    }
}

pub fn post_raw(url: &str, body: &str, key: Option<&str>) -> Reply {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    reply(req.send(body).expect("request sent"))
}

pub fn post(url: &str, body: &Value) -> Reply {
    post_raw(url, &body.to_string(), None)
}

pub fn get(url: &str, key: Option<&str>) -> Reply {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    reply(req.call().expect("request sent"))
}

/// One server-sent event stream, read to its end.
#[derive(Debug)]
pub struct Sse {
    pub status: u16,
    /// The JSON of every `data:` frame before `[DONE]`.
    pub chunks: Vec<Value>,
    /// When each chunk arrived.
    pub times: Vec<Instant>,
    pub done: bool,
}

impl Sse {
    /// The concatenated text (completions) or delta content (chat) of all chunks.
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|ch| {
                ch["text"]
                    .as_str()
                    .or_else(|| ch["delta"]["content"].as_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    pub fn finish_reasons(&self) -> Vec<String> {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .filter_map(|ch| ch["finish_reason"].as_str().map(str::to_string))
            .collect()
    }
}

/// Reads `data:` lines from an SSE body.
pub fn read_sse(reader: impl Read, status: u16) -> Sse {
    let mut sse = Sse {
        status,
        chunks: Vec::new(),
        times: Vec::new(),
        done: false,
    };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            sse.done = true;
            break;
        }
        sse.chunks
            .push(serde_json::from_str(data).unwrap_or_else(|e| panic!("bad chunk ({e}): {data}")));
        sse.times.push(Instant::now());
    }
    sse
}

/// Posts a streaming request and reads the whole stream.
pub fn stream(url: &str, body: &Value) -> Sse {
    let r = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("request sent");
    let status = r.status().as_u16();
    assert_eq!(status, 200, "streaming request refused");
    read_sse(r.into_body().into_reader(), status)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}
