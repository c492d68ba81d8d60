//! A headless Chromium driven over the DevTools protocol, for the web view's tests.
//!
//! The protocol runs over a pipe (`--remote-debugging-pipe`: JSON messages ended by a
//! NUL byte, commands on the browser's fd 3, answers on its fd 4), so the tests need
//! no websocket client and no open port. A shell maps the child's stdin and stdout to
//! those descriptors. Every wait has a deadline; the browser is killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The script that installs Chromium; named by the failure when none is found.
pub const INSTALL_SCRIPT: &str = "scripts/chromium.sh";

/// The Chromium binary: `TUTTI_CHROMIUM`, else the first of the usual names on `PATH`.
/// Fails, naming the script that installs it, when there is none: a test that cannot
/// run a browser must not pass.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("TUTTI_CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "TUTTI_CHROMIUM={} does not exist; unset it or run {INSTALL_SCRIPT}",
            p.display()
        );
        return p;
    }
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
        "chrome",
        "chrome-headless-shell",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no Chromium found on PATH (looked for {}): run {INSTALL_SCRIPT} to install it, \
         or set TUTTI_CHROMIUM to a Chromium or Chrome binary",
        names.join(", ")
    );
}

/// One tab, attached with its own protocol session.
pub struct Tab {
    session: String,
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    messages: Receiver<Value>,
    next_id: u64,
    /// Exceptions thrown and errors logged by pages, as text.
    pub page_errors: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    profile: PathBuf,
}

impl Browser {
    pub fn launch() -> Browser {
        let bin = chromium();
        let profile = std::env::temp_dir().join(format!(
            "tutti-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&profile).expect("browser profile folder");
        // fd 3 reads the child's stdin, fd 4 writes its stdout; the browser itself
        // gets neither.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(&bin)
            .args([
                "--headless",
                // Containers and CI often run as root, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--mute-audio",
                "--force-device-scale-factor=1",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
        let commands = child.stdin.take().expect("stdin is piped");
        let mut answers = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    stderr.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match answers.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            commands,
            messages,
            next_id: 1,
            page_errors: Vec::new(),
            stderr,
            profile,
        };
        b.call(None, "Browser.getVersion", json!({}));
        b
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Sends a command and waits for its answer (60 s); panics on a protocol error.
    pub fn call(&mut self, tab: Option<&Tab>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(t) = tab {
            msg["sessionId"] = json!(t.session);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        if let Err(e) = self
            .commands
            .write_all(&bytes)
            .and_then(|()| self.commands.flush())
        {
            panic!(
                "the browser stopped taking commands ({e}); its stderr:\n{}",
                self.stderr_text()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = match self.messages.recv_timeout(left) {
                Ok(v) => v,
                Err(_) => panic!(
                    "no answer to {method} within 60 s; browser stderr:\n{}",
                    self.stderr_text()
                ),
            };
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                self.page_errors.push(format!(
                    "{} {}",
                    d["text"].as_str().unwrap_or_default(),
                    d["exception"]["description"].as_str().unwrap_or_default()
                ));
            }
            // A refused request (the 401 before a key is given) is logged by the
            // network layer; it is the page's business, not an error of the page.
            Some("Log.entryAdded")
                if v["params"]["entry"]["level"] == "error"
                    && v["params"]["entry"]["source"] != "network" =>
            {
                let e = &v["params"]["entry"];
                self.page_errors.push(format!(
                    "{} ({})",
                    e["text"].as_str().unwrap_or_default(),
                    e["url"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }

    /// Opens `url` in a new tab of `width`×`height`.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].clone();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
        );
        let tab = Tab {
            session: attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(Some(&tab), domain, json!({}));
        }
        self.viewport(&tab, width, height, false);
        self.call(Some(&tab), "Page.navigate", json!({"url": url}));
        self.wait_for(&tab, "document.readyState === 'complete'", 30);
        tab
    }

    /// Sets the tab's viewport (`mobile`: a phone's, with touch).
    pub fn viewport(&mut self, tab: &Tab, width: u32, height: u32, mobile: bool) {
        self.call(
            Some(tab),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
        self.call(
            Some(tab),
            "Emulation.setTouchEmulationEnabled",
            json!({"enabled": mobile}),
        );
    }

    /// Emulates `prefers-color-scheme`.
    pub fn colour_scheme(&mut self, tab: &Tab, scheme: &str) {
        self.call(
            Some(tab),
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        );
    }

    /// The value of a JavaScript expression (promises awaited); panics on an exception.
    pub fn eval(&mut self, tab: &Tab, expr: &str) -> Value {
        let r = self.call(
            Some(tab),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expr}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is truthy; panics after `seconds` with the page's status line.
    pub fn wait_for(&mut self, tab: &Tab, expr: &str, seconds: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let v = self.eval(
                tab,
                &format!("(() => {{ try {{ return {expr}; }} catch (e) {{ return false; }} }})()"),
            );
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let status = self.eval(
                    tab,
                    "(document.getElementById('status') || {}).textContent || document.title",
                );
                panic!(
                    "waited {seconds} s for `{expr}`; page status: {status}; page errors: {:?}",
                    self.page_errors
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The centre of the first element matching `selector`, scrolled into view.
    pub fn centre(&mut self, tab: &Tab, selector: &str) -> (f64, f64) {
        self.centre_of(tab, selector, false)
    }

    /// The centre of the last element matching `selector`, scrolled into view.
    pub fn centre_last(&mut self, tab: &Tab, selector: &str) -> (f64, f64) {
        self.centre_of(tab, selector, true)
    }

    fn centre_of(&mut self, tab: &Tab, selector: &str, last: bool) -> (f64, f64) {
        let sel = serde_json::to_string(selector).unwrap_or_default();
        let v = self.eval(
            tab,
            &format!(
                "(() => {{ const e = [...document.querySelectorAll({sel})].at({at}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.left + r.width / 2, r.top + r.height / 2]; }})()",
                at = if last { -1 } else { 0 }
            ),
        );
        match (v[0].as_f64(), v[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("no element matches {selector}"),
        }
    }

    /// Moves the mouse to (x, y): the page sees a real hover.
    pub fn hover(&mut self, tab: &Tab, x: f64, y: f64) {
        self.call(
            Some(tab),
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        );
    }

    /// A left click at (x, y).
    pub fn click(&mut self, tab: &Tab, x: f64, y: f64) {
        self.hover(tab, x, y);
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                Some(tab),
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// A tap at (x, y) (touch emulation must be on).
    pub fn tap(&mut self, tab: &Tab, x: f64, y: f64) {
        self.call(
            Some(tab),
            "Input.dispatchTouchEvent",
            json!({"type": "touchStart", "touchPoints": [{"x": x, "y": y}]}),
        );
        self.call(
            Some(tab),
            "Input.dispatchTouchEvent",
            json!({"type": "touchEnd", "touchPoints": []}),
        );
    }

    /// Clicks the element matching `selector`.
    pub fn click_on(&mut self, tab: &Tab, selector: &str) {
        let (x, y) = self.centre(tab, selector);
        self.click(tab, x, y);
    }

    /// Focuses `selector` and types `text` as keyboard input.
    pub fn type_into(&mut self, tab: &Tab, selector: &str, text: &str) {
        self.click_on(tab, selector);
        self.call(Some(tab), "Input.insertText", json!({"text": text}));
    }

    /// Saves a PNG of the viewport at `path`.
    pub fn screenshot(&mut self, tab: &Tab, path: &Path) {
        let r = self.call(
            Some(tab),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        let data = base64_decode(r["data"].as_str().unwrap_or_default());
        assert!(data.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, data).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (the protocol's encoding of binary data).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_by_hand() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("iVBORw=="), b"\x89PNG");
}
