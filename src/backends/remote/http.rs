//! One HTTP request to a served member, repeated where repeating is safe: connection
//! errors, timed-out connection attempts, 429 and 5xx answers are tried again with a
//! doubling backoff (or the wait `Retry-After` asks for), all within the member's
//! timeout; anything else fails at once with the server's own message.

use std::time::Duration;

use serde_json::Value;

use super::RemoteModel;
use crate::engine::{EngineError, Result};

/// Attempts per request for connection errors and timed-out connection attempts, 429
/// and 5xx answers (a step is a pure function of the ids, so repeating it is safe); all
/// of them within the member's timeout.
pub(super) const ATTEMPTS: u32 = 3;
/// First backoff between attempts; doubled each time.
pub(super) const BACKOFF: Duration = Duration::from_millis(200);

/// What went wrong with one request, before it is turned into an [`EngineError`].
pub(super) enum Failure {
    /// Worth another attempt: connection refused, reset or timed out while connecting,
    /// or a 429 or 5xx answer; with the wait the server asked for (`Retry-After`).
    Transient(String, Option<Duration>),
    /// Not worth repeating.
    Fatal(String),
}

impl RemoteModel {
    /// One HTTP exchange: JSON body in (or GET), status and JSON out, within `limit`.
    pub(super) fn exchange(
        &self,
        url: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> std::result::Result<Value, Failure> {
        let result = match body {
            Some(b) => {
                let mut req = self
                    .agent
                    .post(url)
                    .header("Content-Type", "application/json");
                if let Some(k) = &self.key {
                    req = req.header("Authorization", format!("Bearer {k}"));
                }
                req.config()
                    .timeout_global(Some(limit))
                    .build()
                    .send(b.to_string().as_bytes())
            }
            None => {
                let mut req = self.agent.get(url);
                if let Some(k) = &self.key {
                    req = req.header("Authorization", format!("Bearer {k}"));
                }
                req.config().timeout_global(Some(limit)).build().call()
            }
        };
        let mut resp = result.map_err(|e| classify(&e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| match classify(&e) {
                Failure::Transient(m, _) | Failure::Fatal(m) => {
                    Failure::Transient(format!("reading the answer failed: {m}"), None)
                }
            })?;
        let short: String = text.chars().take(300).collect();
        if status >= 500 || status == 429 {
            return Err(Failure::Transient(
                format!("HTTP {status}: {short}"),
                retry_after,
            ));
        }
        if status >= 400 {
            return Err(Failure::Fatal(format!("HTTP {status}: {short}")));
        }
        serde_json::from_str(&text).map_err(|_| {
            Failure::Fatal(format!(
                "HTTP {status} with an answer that is not JSON: {short:?}"
            ))
        })
    }

    /// [`RemoteModel::exchange`] with bounded retries on transient failures, after the
    /// wait the server asks for (`Retry-After`) or a doubling backoff, all within the
    /// member's timeout: a wait that would pass it fails at once.
    pub(super) fn call(&mut self, url: &str, body: Option<&Value>) -> Result<Value> {
        let timeout = self.spec.timeout;
        let deadline = std::time::Instant::now() + timeout;
        let mut wait = BACKOFF;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            self.round_trips += 1;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(self.err(format!(
                    "{url}: no answer within the member's timeout ({} s){}",
                    timeout.as_secs_f64(),
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!("; last: {last}")
                    }
                )));
            }
            match self.exchange(url, body, left) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(m)) => return Err(self.err(format!("{url}: {m}"))),
                Err(Failure::Transient(m, asked)) => {
                    tracing::warn!(
                        "{}: {url}: {m} (attempt {attempt} of {ATTEMPTS})",
                        self.name
                    );
                    if attempt < ATTEMPTS {
                        let pause = asked.unwrap_or(wait);
                        if std::time::Instant::now() + pause >= deadline {
                            return Err(self.err(format!(
                                "{url}: {m}; the next attempt would come after {} s (the \
                                 server's Retry-After or the backoff), past the member's \
                                 timeout of {} s",
                                pause.as_secs_f64(),
                                timeout.as_secs_f64()
                            )));
                        }
                        std::thread::sleep(pause);
                        wait *= 2;
                    }
                    last = m;
                }
            }
        }
        Err(self.err(format!(
            "{url}: {last} ({ATTEMPTS} attempts); is the server running? \
             (on-member-failure `drop` goes on without this member)"
        )))
    }

    /// A GET that may be missing on some servers: a 4xx is `None`, other failures are
    /// errors.
    pub(super) fn optional(&mut self, url: &str) -> Result<Option<Value>> {
        match self.call(url, None) {
            Ok(v) => Ok(Some(v)),
            Err(EngineError::Remote { reason, .. })
                if reason.contains(": HTTP 4") && !reason.contains(": HTTP 429") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn exchange_counted(&mut self, url: &str, body: &Value) -> Result<Value> {
        self.call(url, Some(body))
    }
}

/// The wait a `Retry-After` header asks for, in its delta-seconds form (an HTTP date
/// falls back to the backoff).
pub(super) fn retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(super) fn classify(e: &ureq::Error) -> Failure {
    use std::io::ErrorKind;
    match e {
        // Nothing was sent yet: the server may just be slow to accept (a full backlog).
        ureq::Error::Timeout(ureq::Timeout::Connect) => {
            Failure::Transient("no connection within the connect timeout".into(), None)
        }
        ureq::Error::Timeout(t) => Failure::Fatal(format!("no answer within the timeout ({t})")),
        ureq::Error::ConnectionFailed => Failure::Transient("connection failed".into(), None),
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => Failure::Transient(io.to_string(), None),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                Failure::Fatal(format!("no answer within the timeout ({io})"))
            }
            _ => Failure::Fatal(io.to_string()),
        },
        ureq::Error::Protocol(p) => Failure::Fatal(format!("the answer is not HTTP: {p}")),
        other => Failure::Fatal(other.to_string()),
    }
}
