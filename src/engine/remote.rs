//! Members served by another process over HTTP: any OpenAI-compatible `/v1/completions`
//! with logprobs (vLLM, SGLang, `tutti serve`, llama-server's OpenAI endpoint) or
//! llama.cpp's native `/completion` with `n_probs`.
//!
//! One step of a remote member is one request: the member's committed ids as a token-id
//! prompt, greedy decoding of `1 + lookahead` tokens, and the top-N log-probabilities
//! (at temperature 1, before any sampler) of each. The server's prefix cache makes each
//! request incremental, so a rollback costs nothing here: the next request simply
//! carries the shorter context. The answer is a sparse distribution ([`SparseLogits`]).
//!
//! With lookahead, the distributions of the server's own greedy continuation are kept
//! and answer later steps without a round trip as long as the ensemble's choices follow
//! that continuation; the first divergence drops them. `lookahead = auto` asks for it
//! only while the member's measured times say it saves time (`LookaheadPlanner`).
//!
//! The tokenizer is always local (candidates are compared by bytes); at connect time
//! the server must tokenize a probe text to the same ids (where it offers `/tokenize`)
//! and decode a short greedy continuation to the same text, and it must return top-N
//! log-probabilities with token ids.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tutti_models::ModelTokenizer;

use super::backend::{Backend, Logits, SparseLogits};
use super::error::{EngineError, Result};

/// Text sent to `/tokenize` (and, in the local tokenization, as a probe prompt) to check
/// that the server's model and the local tokenizer agree: words, digits, spacing,
/// punctuation and non-ASCII letters.
const PROBE: &str = "Tokenizer probe: naïve café, 1234 apples & 56.7% déjà-vu!\n  Ünïcödé — ok?";

/// Log-probabilities asked for at least per token (vLLM's default cap).
const MIN_PROBS: usize = 20;

/// Attempts per request for connection errors and timed-out connection attempts, 429
/// and 5xx answers (a step is a pure function of the ids, so repeating it is safe); all
/// of them within the member's timeout.
const ATTEMPTS: u32 = 3;
/// First backoff between attempts; doubled each time.
const BACKOFF: Duration = Duration::from_millis(200);

/// Which HTTP API a remote member speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `POST {base}/completions` with `logprobs` (OpenAI legacy completions).
    OpenAi,
    /// llama-server's `POST {base}/completion` with `n_probs`.
    LlamaCpp,
}

/// Where and how to reach a served member.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RemoteSpec {
    pub protocol: Protocol,
    /// `http://HOST:PORT/v1` (OpenAI) or `http://HOST:PORT` (llama.cpp), no trailing `/`.
    pub base: String,
    /// The model name an OpenAI server is asked for (after `#`).
    pub model: Option<String>,
    /// The server model's tokenizer: a folder, tokenizer.json, GGUF or `hf:` spec.
    pub tokenizer: String,
    /// Name of the environment variable holding a bearer key (never the key itself).
    pub api_key_env: Option<String>,
    /// Extra greedy tokens (with their distributions) asked for per request; with
    /// `lookahead_auto`, the most, asked for only when measured to pay.
    pub lookahead: usize,
    /// Choose per request between no lookahead and `lookahead` from measured times.
    pub lookahead_auto: bool,
    /// Longest wait for a server's answer to one request.
    pub timeout: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
}

impl RemoteSpec {
    /// The most lookahead `lookahead = auto` asks for.
    pub const AUTO_LOOKAHEAD: usize = 4;

    /// Default timeout of one request (a first request prefills the whole prompt).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// Whether `model` names a served member (`openai+http://…` or `llamacpp+http://…`).
    pub fn is_remote(model: &str) -> bool {
        model.starts_with("openai+") || model.starts_with("llamacpp+")
    }

    /// Parses `openai+http://HOST:PORT/v1#MODEL` or `llamacpp+http://HOST:PORT`.
    pub fn parse(model: &str, tokenizer: Option<&str>) -> Result<RemoteSpec> {
        let bad = |reason: String| EngineError::BadSpec {
            spec: model.to_string(),
            reason,
        };
        let (protocol, rest) = if let Some(r) = model.strip_prefix("openai+") {
            (Protocol::OpenAi, r)
        } else if let Some(r) = model.strip_prefix("llamacpp+") {
            (Protocol::LlamaCpp, r)
        } else {
            return Err(bad(
                "a served member starts with `openai+http://` or `llamacpp+http://`".into(),
            ));
        };
        if !rest.starts_with("http://") {
            return Err(bad(format!(
                "only plain `http://` servers are supported (got `{rest}`); put a TLS proxy's \
                 plain side or an SSH tunnel on loopback in front of a remote HTTPS server"
            )));
        }
        let (url, name) = match rest.split_once('#') {
            Some((u, n)) => (u, Some(n.to_string())),
            None => (rest, None),
        };
        let host = &url["http://".len()..];
        if host.is_empty() || host.starts_with('/') {
            return Err(bad("no host after `http://`".into()));
        }
        let model_name = match (protocol, name) {
            (Protocol::OpenAi, Some(n)) if !n.is_empty() => Some(n),
            (Protocol::OpenAi, _) => {
                return Err(bad("an OpenAI server needs the model name after `#` \
                     (openai+http://HOST:PORT/v1#MODEL)"
                    .into()))
            }
            (Protocol::LlamaCpp, Some(_)) => {
                return Err(bad(
                    "llama-server serves one model: drop the `#MODEL` part".into()
                ))
            }
            (Protocol::LlamaCpp, None) => None,
        };
        let tokenizer = tokenizer.ok_or_else(|| {
            bad(
                "a served member needs its tokenizer here: add `tokenizer = \"PATH|hf:ORG/NAME\"` \
                 to its [[member]] table, or `:tok=PATH` to -m (`tutti tokenize -m MODEL.gguf \
                 --export DIR` writes one from a GGUF)"
                    .into(),
            )
        })?;
        Ok(RemoteSpec {
            protocol,
            base: url.trim_end_matches('/').to_string(),
            model: model_name,
            tokenizer: tokenizer.to_string(),
            api_key_env: None,
            lookahead: 0,
            lookahead_auto: false,
            timeout: Self::DEFAULT_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// The spec as written (for names and errors).
    pub fn display(&self) -> String {
        match (self.protocol, &self.model) {
            (Protocol::OpenAi, Some(m)) => format!("openai+{}#{m}", self.base),
            (Protocol::OpenAi, None) => format!("openai+{}", self.base),
            (Protocol::LlamaCpp, _) => format!("llamacpp+{}", self.base),
        }
    }

    /// Connects: loads the tokenizer, checks the server and returns the backend.
    pub fn connect(&self) -> Result<RemoteModel> {
        RemoteModel::connect(self.clone())
    }
}

/// What went wrong with one request, before it is turned into an [`EngineError`].
enum Failure {
    /// Worth another attempt: connection refused, reset or timed out while connecting,
    /// or a 429 or 5xx answer; with the wait the server asked for (`Retry-After`).
    Transient(String, Option<Duration>),
    /// Not worth repeating.
    Fatal(String),
}

/// The greedy continuation of the last request and the distributions along it.
struct Ahead {
    /// The context the request was made for.
    context: Vec<u32>,
    /// How many of the looked-ahead distributions answered a step.
    used: usize,
    /// The server's greedy ids after it.
    tokens: Vec<u32>,
    /// `dists[j]`: the distribution after `context + tokens[..j]`.
    dists: Vec<Arc<SparseLogits>>,
}

/// A member behind an HTTP server.
pub struct RemoteModel {
    spec: RemoteSpec,
    name: String,
    agent: ureq::Agent,
    key: Option<String>,
    tokenizer: ModelTokenizer,
    width: usize,
    context_length: usize,
    /// Log-probabilities asked for per token (the request's top-k).
    top_n: usize,
    /// The most the server returns (found at connect time or from its first refusal).
    cap: Option<usize>,
    warned_cap: bool,
    warned_unreported_end: bool,
    ahead: Option<Ahead>,
    /// Present under `lookahead_auto`.
    planner: Option<LookaheadPlanner>,
    round_trips: usize,
    reuse: ReuseWatch,
}

/// Decides, request by request, whether a served member with `lookahead = auto` asks
/// for its lookahead tokens. Lookahead trades server work (1 + L tokens per request)
/// for round trips; it pays only when a round trip costs more than the decode steps
/// that end up unused. Both are measured: the wall time of one-token requests and of
/// lookahead requests that only extend the previous context, and how many looked-ahead
/// tokens the ensemble used (a geometric run: each is used with probability `q` after
/// the one before it was).
#[derive(Debug)]
pub(crate) struct LookaheadPlanner {
    max: usize,
    plain_ms: Option<f64>,
    ahead_ms: Option<f64>,
    /// Looked-ahead tokens used, and runs that ended before the last one (decayed).
    used: f64,
    broken: f64,
    requests: usize,
}

impl LookaheadPlanner {
    /// Weight of a new timing in the running averages.
    const ALPHA: f64 = 0.2;
    /// Every this many requests the other choice is tried, to follow changes in load.
    const EXPLORE_EVERY: usize = 16;
    /// Decay of the acceptance counts, so that a change of text is followed.
    const DECAY: f64 = 0.95;

    pub(crate) fn new(max: usize) -> LookaheadPlanner {
        LookaheadPlanner {
            max,
            plain_ms: None,
            ahead_ms: None,
            used: 0.0,
            broken: 0.0,
            requests: 0,
        }
    }

    /// Probability that a looked-ahead token is used, given that the one before it
    /// was (an even prior before anything is known).
    fn keep(&self) -> f64 {
        (self.used + 1.0) / (self.used + self.broken + 2.0)
    }

    /// Expected tokens used from a request of `1 + max` tokens.
    fn expected_run(&self) -> f64 {
        let q = self.keep();
        (0..=self.max).map(|j| q.powi(j as i32)).sum()
    }

    /// Lookahead for the next request: 0 or `max`.
    pub(crate) fn choose(&mut self) -> usize {
        self.requests += 1;
        let (w1, wl) = match (self.plain_ms, self.ahead_ms) {
            (None, _) => return 0,
            (Some(_), None) => return self.max,
            (Some(a), Some(b)) => (a, b),
        };
        // Tokens per millisecond of each choice.
        let best = if self.expected_run() / wl > 1.0 / w1 {
            self.max
        } else {
            0
        };
        if self.requests.is_multiple_of(Self::EXPLORE_EVERY) {
            self.max - best
        } else {
            best
        }
    }

    /// A request that only extended the previous context took `ms` with `lookahead`.
    pub(crate) fn timed(&mut self, lookahead: usize, ms: f64) {
        let slot = if lookahead == 0 {
            &mut self.plain_ms
        } else {
            &mut self.ahead_ms
        };
        *slot = Some(match *slot {
            Some(old) => old + Self::ALPHA * (ms - old),
            None => ms,
        });
    }

    /// Of `offered` looked-ahead tokens, the ensemble used the first `used`.
    pub(crate) fn outcome(&mut self, offered: usize, used: usize) {
        if offered == 0 {
            return;
        }
        self.used = self.used * Self::DECAY + used.min(offered) as f64;
        self.broken = self.broken * Self::DECAY + f64::from(u8::from(used < offered));
    }
}

/// Notices a server that re-evaluates more than the new ids of each step, from the
/// `timings.prompt_n` llama-server reports: its prefix cache is not doing its job and
/// every step costs several forwards.
#[derive(Default)]
struct ReuseWatch {
    /// The ids of the previous request.
    last: Vec<u32>,
    /// Consecutive requests that re-evaluated more than their new ids.
    slow: usize,
    warned: bool,
}

impl ReuseWatch {
    /// Consecutive over-evaluating requests before the warning (a single one happens
    /// when a server evicts its cache).
    const PATIENCE: usize = 3;

    /// Records one request; returns `(evaluated, new)` the first time the server has
    /// re-evaluated more than the new ids `PATIENCE` times in a row.
    fn record(&mut self, context: &[u32], answer: &Value) -> Option<(u64, usize)> {
        let common = self
            .last
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count();
        let new = context.len() - common;
        self.last.clear();
        self.last.extend_from_slice(context);
        let evaluated = answer
            .pointer("/timings/prompt_n")
            .and_then(Value::as_u64)?;
        // llama-server re-evaluates the last id when the whole prompt is cached.
        if common > 0 && evaluated > new.max(1) as u64 + 1 {
            self.slow += 1;
        } else {
            self.slow = 0;
        }
        if self.slow >= Self::PATIENCE && !self.warned {
            self.warned = true;
            return Some((evaluated, new));
        }
        None
    }
}

impl RemoteModel {
    fn connect(spec: RemoteSpec) -> Result<RemoteModel> {
        let name = spec.display();
        let tokenizer =
            ModelTokenizer::from_source(&spec.tokenizer).map_err(|source| EngineError::Model {
                member: name.clone(),
                source,
            })?;
        let key = match &spec.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| EngineError::Remote {
                member: name.clone(),
                reason: format!(
                    "the bearer key variable `{var}` is not set; export it or drop the key setting"
                ),
            })?),
            None => None,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(spec.connect_timeout))
            .timeout_global(Some(spec.timeout))
            .build()
            .into();
        let width = tokenizer.vocab_size();
        let mut m = RemoteModel {
            spec,
            name,
            agent,
            key,
            tokenizer,
            width,
            context_length: usize::MAX / 2,
            top_n: 10,
            cap: None,
            warned_cap: false,
            warned_unreported_end: false,
            ahead: None,
            planner: None,
            round_trips: 0,
            reuse: ReuseWatch::default(),
        };
        if m.spec.lookahead_auto && m.spec.lookahead > 0 {
            m.planner = Some(LookaheadPlanner::new(m.spec.lookahead));
        }
        m.check()?;
        Ok(m)
    }

    fn err(&self, reason: impl Into<String>) -> EngineError {
        EngineError::Remote {
            member: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The server's root (`/tokenize`, `/health` and `/props` live there for vLLM and
    /// llama-server alike).
    fn root(&self) -> &str {
        self.spec
            .base
            .strip_suffix("/v1")
            .unwrap_or(&self.spec.base)
    }

    /// One HTTP exchange: JSON body in (or GET), status and JSON out, within `limit`.
    fn exchange(
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
    fn call(&mut self, url: &str, body: Option<&Value>) -> Result<Value> {
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
             (--on-member-failure drop continues without this member)"
        )))
    }

    /// A GET that may be missing on some servers: a 4xx is `None`, other failures are
    /// errors.
    fn optional(&mut self, url: &str) -> Result<Option<Value>> {
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

    /// Connect-time checks: the server answers, tokenizes like the local tokenizer,
    /// returns top-N log-probabilities with ids, and decodes its own greedy ids to the
    /// text the local tokenizer gives them.
    fn check(&mut self) -> Result<()> {
        let local = self
            .tokenizer
            .encode(PROBE, false)
            .map_err(|source| EngineError::Model {
                member: self.name.clone(),
                source,
            })?;
        let fix = format!(
            "give this member the tokenizer of the model the server runs (now `{}`)",
            self.spec.tokenizer
        );
        // Reachability first (with retries), then the context length where the server
        // tells it.
        if self.spec.protocol == Protocol::LlamaCpp {
            let props = self.call(&format!("{}/props", self.root()), None)?;
            if let Some(n) = props
                .pointer("/default_generation_settings/n_ctx")
                .and_then(Value::as_u64)
            {
                self.context_length = n as usize;
            }
        } else if let Some(models) = self.optional(&format!("{}/models", self.spec.base))? {
            let want = self.spec.model.clone();
            let entry = models.get("data").and_then(Value::as_array).and_then(|d| {
                d.iter()
                    .find(|m| m.get("id").and_then(Value::as_str) == want.as_deref())
            });
            if let Some(n) = entry
                .and_then(|e| e.get("max_model_len"))
                .and_then(Value::as_u64)
            {
                self.context_length = n as usize;
            }
        }
        // llama-server and vLLM offer /tokenize at the root; other servers may not.
        let tokenize_body = json!({
            "content": PROBE, "prompt": PROBE, "model": self.spec.model,
            "add_special": false, "add_special_tokens": false,
        });
        let url = format!("{}/tokenize", self.root());
        match self.exchange(&url, Some(&tokenize_body), self.spec.timeout) {
            Ok(v) => {
                let ids = v.get("tokens").and_then(ids_of);
                match ids {
                    Some(ids) if ids == local => {}
                    Some(ids) => {
                        return Err(self.err(format!(
                            "the server tokenizes a probe text differently from the local \
                             tokenizer ({} ids {:?}… against {} ids {:?}…): {fix}",
                            ids.len(),
                            &ids[..ids.len().min(6)],
                            local.len(),
                            &local[..local.len().min(6)]
                        )))
                    }
                    None => tracing::info!(
                        "{}: /tokenize gave no token list; checking by decoding instead",
                        self.name
                    ),
                }
            }
            Err(Failure::Fatal(m)) if m.starts_with("HTTP 4") => {
                tracing::info!("{}: no /tokenize ({m}); checking by decoding", self.name)
            }
            Err(Failure::Fatal(m)) | Err(Failure::Transient(m, _)) => {
                return Err(self.err(format!("{url}: {m}")))
            }
        }
        // A short greedy continuation of the probe: log-probabilities must come with
        // ids, and the server's text must be what the local tokenizer makes of them.
        let mut prompt =
            self.tokenizer
                .encode(PROBE, true)
                .map_err(|source| EngineError::Model {
                    member: self.name.clone(),
                    source,
                })?;
        prompt.truncate(8);
        let (steps, text) = self.complete(&prompt, 4, 5)?;
        if steps.is_empty() {
            return Ok(());
        }
        if steps.iter().any(|s| s.top.is_empty()) {
            return Err(self.err(
                "the server returned no top log-probabilities; it must support them \
                 (vLLM: --max-logprobs; llama-server: n_probs)",
            ));
        }
        if let Some(&(bad, _)) = steps
            .iter()
            .flat_map(|s| s.top.iter())
            .find(|&&(id, _)| id as usize >= self.width)
        {
            return Err(self.err(format!(
                "the server returned token id {bad}, outside the local tokenizer's {} ids: {fix}",
                self.width
            )));
        }
        if let Some(text) = text {
            let ids: Vec<u32> = steps.iter().map(|s| s.chosen).collect();
            let local_text =
                self.tokenizer
                    .decode(&ids, true)
                    .map_err(|source| EngineError::Model {
                        member: self.name.clone(),
                        source,
                    })?;
            // Servers may leave special tokens out of the text.
            if !text.is_empty() && !local_text.contains(text.as_str()) && local_text != text {
                return Err(self.err(format!(
                    "the server's text {text:?} for ids {ids:?} is not the local tokenizer's \
                     {local_text:?}: {fix}"
                )));
            }
        }
        Ok(())
    }

    /// The number of log-probabilities to ask for: the request's top-k, and at least
    /// [`MIN_PROBS`], within the server's cap. Only the top-k are proposed as
    /// candidates; the others give exact probabilities to more of the union's
    /// candidates, which would otherwise get the tail estimate.
    fn n_probs(&self) -> usize {
        let want = self.top_n.max(MIN_PROBS);
        match self.cap {
            Some(c) => want.min(c),
            None => want,
        }
    }

    /// One completion request of `max_tokens` greedy tokens after `context`; returns
    /// each generated position's chosen id and top list, and the text when the server
    /// gives it. A refusal of the number of log-probabilities caps it (warned once) and
    /// the request is repeated.
    fn complete(
        &mut self,
        context: &[u32],
        max_tokens: usize,
        n: usize,
    ) -> Result<(Vec<Position>, Option<String>)> {
        let mut n = n.max(1);
        loop {
            let (url, body) = match self.spec.protocol {
                Protocol::LlamaCpp => (
                    format!("{}/completion", self.spec.base),
                    json!({
                        "prompt": context,
                        "n_predict": max_tokens,
                        "temperature": 0.0,
                        "n_probs": n,
                        "cache_prompt": true,
                        "return_tokens": true,
                        "stream": false,
                    }),
                ),
                Protocol::OpenAi => (
                    format!("{}/completions", self.spec.base),
                    json!({
                        "model": self.spec.model,
                        "prompt": context,
                        "max_tokens": max_tokens,
                        "temperature": 0.0,
                        "logprobs": n,
                        "return_tokens_as_token_ids": true,
                        "stream": false,
                    }),
                ),
            };
            let answer = match self.exchange_counted(&url, &body) {
                Ok(v) => v,
                Err(e) => {
                    // A 4xx about logprobs: the server's cap is below n.
                    let msg = e.to_string();
                    if n > 1 && msg.contains("HTTP 4") && msg.to_lowercase().contains("logprob") {
                        let cap = cap_from_message(&msg, n).unwrap_or(MIN_PROBS.min(n - 1));
                        if !self.warned_cap && cap < self.top_n {
                            tracing::warn!(
                                "{}: the server returns at most {cap} log-probabilities per \
                                 token; top-k is capped at {cap} for this member ({msg})",
                                self.name
                            );
                            self.warned_cap = true;
                        }
                        self.cap = Some(cap);
                        n = cap;
                        continue;
                    }
                    return Err(e);
                }
            };
            if let Some((evaluated, new)) = self.reuse.record(context, &answer) {
                tracing::warn!(
                    "{}: the server re-evaluates {evaluated} ids per step where {new} are \
                     new, so its prefix cache is not reused and every step costs several \
                     forwards; for a sliding-window model (Gemma 2/3) start llama-server \
                     with --swa-full",
                    self.name
                );
            }
            return parse_answer(self.spec.protocol, &answer).map_err(|m| {
                let short: String = answer.to_string().chars().take(300).collect();
                self.err(format!("{url}: {m}; the answer was {short}"))
            });
        }
    }

    /// The distribution of a step the server ended without reporting it (a server that
    /// leaves the end-of-text token out of its logprobs): end of text was its greedy
    /// choice, but how sure it was is unknown. Counting it as certain would hand the
    /// ensemble's choice to this member (under `mean` a certain end of text wins at
    /// equal weights; under `product` it floors every other candidate), so the member
    /// abstains instead: end of text is proposed at a uniform share and everything
    /// else is the flat remainder, and the other members decide. A member alone ends
    /// its text, as the server did.
    fn unreported_end(&mut self) -> Result<Logits> {
        let eos = self.tokenizer.eos_ids().first().copied().ok_or_else(|| {
            self.err("the server reported no token and the tokenizer has no end-of-text id")
        })?;
        if !self.warned_unreported_end {
            self.warned_unreported_end = true;
            tracing::warn!(
                "{}: the server ended a text without reporting the end-of-text token's \
                 probability; this member abstains at such steps",
                self.name
            );
        }
        let share = 1.0 / self.width.max(1) as f32;
        Ok(Logits::Sparse(Arc::new(SparseLogits {
            top: vec![(eos, share.ln())],
            rest: 1.0 - share,
        })))
    }

    fn exchange_counted(&mut self, url: &str, body: &Value) -> Result<Value> {
        self.call(url, Some(body))
    }

    /// Round trips made since the member connected (connect-time checks included).
    pub fn round_trips(&self) -> usize {
        self.round_trips
    }
}

/// One generated position of an answer: the id the server chose and its top list
/// `(id, logprob)`, most probable first.
struct Position {
    chosen: u32,
    top: Vec<(u32, f32)>,
}

/// Sorts and sums a top list into a sparse distribution.
fn sparse(mut top: Vec<(u32, f32)>) -> SparseLogits {
    // llama-server writes log(0) as the lowest float.
    top.retain(|&(_, lp)| lp.is_finite() && lp > -1e30);
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // A server may list an id twice, not necessarily side by side: its most probable
    // entry stands for it, so that its mass is counted once.
    let mut seen = std::collections::HashSet::with_capacity(top.len());
    top.retain(|e| seen.insert(e.0));
    let mass: f64 = top.iter().map(|&(_, lp)| f64::from(lp).exp()).sum();
    SparseLogits {
        top,
        rest: (1.0 - mass).max(0.0) as f32,
    }
}

fn ids_of(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?
        .iter()
        .map(|x| {
            x.as_u64()
                .or_else(|| x.get("id").and_then(Value::as_u64))
                .and_then(|n| u32::try_from(n).ok())
        })
        .collect()
}

/// An id from `token_id:123` (vLLM's `return_tokens_as_token_ids`, `tutti serve`).
fn token_id(s: &str) -> Option<u32> {
    s.strip_prefix("token_id:")?.parse().ok()
}

fn entry_id(e: &Value) -> Option<u32> {
    e.get("id")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| e.get("token").and_then(Value::as_str).and_then(token_id))
}

fn entry_logprob(e: &Value) -> Option<f32> {
    e.get("logprob").and_then(Value::as_f64).map(|x| x as f32)
}

/// A chat-style list `[{id|token, logprob, top_logprobs: [{id|token, logprob}]}]`
/// (llama-server, native and OpenAI endpoint).
fn content_positions(list: &[Value]) -> std::result::Result<Vec<Position>, String> {
    list.iter()
        .map(|p| {
            let chosen = entry_id(p).ok_or("a generated token without an id")?;
            let top = p
                .get("top_logprobs")
                .and_then(Value::as_array)
                .ok_or("a generated token without `top_logprobs`")?
                .iter()
                .map(|e| match (entry_id(e), entry_logprob(e)) {
                    (Some(id), Some(lp)) => Ok((id, lp)),
                    _ => Err("a top log-probability without an id or a number".to_string()),
                })
                .collect::<std::result::Result<_, _>>()?;
            Ok(Position { chosen, top })
        })
        .collect()
}

/// Reads the generated positions (and the text) of a completion answer.
fn parse_answer(
    protocol: Protocol,
    v: &Value,
) -> std::result::Result<(Vec<Position>, Option<String>), String> {
    match protocol {
        Protocol::LlamaCpp => {
            let list = v
                .get("completion_probabilities")
                .or_else(|| v.get("probs"))
                .and_then(Value::as_array)
                .ok_or("no `completion_probabilities` (not a llama-server /completion answer)")?;
            let text = v.get("content").and_then(Value::as_str).map(String::from);
            Ok((content_positions(list)?, text))
        }
        Protocol::OpenAi => {
            let choice = v
                .pointer("/choices/0")
                .ok_or("no `choices` (not an OpenAI completions answer)")?;
            let text = choice.get("text").and_then(Value::as_str).map(String::from);
            let lp = choice.get("logprobs").unwrap_or(&Value::Null);
            if lp.is_null() {
                // No generated token reported: the server stopped at once (end of text).
                return match choice.get("finish_reason").and_then(Value::as_str) {
                    Some("stop") => Ok((Vec::new(), text)),
                    _ => Err("no `logprobs` in the answer".into()),
                };
            }
            if let Some(list) = lp.get("content").and_then(Value::as_array) {
                return Ok((content_positions(list)?, text));
            }
            let tokens = lp
                .get("tokens")
                .and_then(Value::as_array)
                .ok_or("`logprobs` without `tokens`")?;
            let tops = lp
                .get("top_logprobs")
                .and_then(Value::as_array)
                .ok_or("`logprobs` without `top_logprobs`")?;
            if tokens.len() != tops.len() {
                return Err("`tokens` and `top_logprobs` differ in length".into());
            }
            let no_ids = "tokens are not token ids: the server must support \
                          `return_tokens_as_token_ids` (vLLM, tutti serve)";
            tokens
                .iter()
                .zip(tops)
                .map(|(t, top)| {
                    let chosen = t.as_str().and_then(token_id).ok_or(no_ids)?;
                    let top = top
                        .as_object()
                        .ok_or("a `top_logprobs` entry that is not an object")?
                        .iter()
                        .map(|(k, lp)| match (token_id(k), lp.as_f64()) {
                            (Some(id), Some(lp)) => Ok((id, lp as f32)),
                            (None, _) => Err(no_ids.to_string()),
                            _ => Err("a top log-probability that is not a number".to_string()),
                        })
                        .collect::<std::result::Result<_, _>>()?;
                    Ok(Position { chosen, top })
                })
                .collect::<std::result::Result<Vec<_>, String>>()
                .map(|p| (p, text))
        }
    }
}

/// The server's limit from a refusal such as "… greater than max allowed: 20" or
/// "… from 0 to 20": the largest number in the message below `asked`.
fn cap_from_message(msg: &str, asked: usize) -> Option<usize> {
    msg.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse::<usize>().ok())
        .filter(|&x| x > 0 && x < asked)
        .max()
}

/// The wait a `Retry-After` header asks for, in its delta-seconds form (an HTTP date
/// falls back to the backoff).
fn retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn classify(e: &ureq::Error) -> Failure {
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

impl Backend for RemoteModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn tokenizer(&self) -> &ModelTokenizer {
        &self.tokenizer
    }

    fn logit_width(&self) -> usize {
        self.width
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn forward(&mut self, context: &[u32], _cached: usize) -> Result<Logits> {
        if let Some(a) = &mut self.ahead {
            if let Some(tail) = context.strip_prefix(a.context.as_slice()) {
                let j = tail.len();
                if j < a.dists.len() && a.tokens[..j] == *tail {
                    a.used = a.used.max(j);
                    return Ok(Logits::Sparse(a.dists[j].clone()));
                }
            }
        }
        if let (Some(a), Some(p)) = (self.ahead.take(), self.planner.as_mut()) {
            p.outcome(a.dists.len() - 1, a.used);
        }
        let lookahead = match &mut self.planner {
            Some(p) => p.choose(),
            None => self.spec.lookahead,
        };
        // Only a request that extends the previous one by a step's worth of ids times
        // the server's per-step work (not a prefill or a rollback).
        let last = &self.reuse.last;
        let step_only = !last.is_empty()
            && context.starts_with(last)
            && context.len() - last.len() <= 1 + self.spec.lookahead;
        let n = self.n_probs();
        let t0 = std::time::Instant::now();
        let (steps, _) = self.complete(context, 1 + lookahead, n)?;
        if let (true, Some(p)) = (step_only, self.planner.as_mut()) {
            p.timed(lookahead, t0.elapsed().as_secs_f64() * 1e3);
        }
        if steps.is_empty() {
            return self.unreported_end();
        }
        let tokens: Vec<u32> = steps.iter().map(|s| s.chosen).collect();
        let dists: Vec<Arc<SparseLogits>> =
            steps.into_iter().map(|s| Arc::new(sparse(s.top))).collect();
        let first = dists[0].clone();
        if dists.len() > 1 {
            self.ahead = Some(Ahead {
                used: 0,
                context: context.to_vec(),
                tokens,
                dists,
            });
        }
        Ok(Logits::Sparse(first))
    }

    fn uses_host_cpu(&self) -> bool {
        false
    }

    fn device_name(&self) -> String {
        match self.spec.protocol {
            Protocol::OpenAi => "an OpenAI-compatible server".into(),
            Protocol::LlamaCpp => "llama-server".into(),
        }
    }

    fn set_top_n(&mut self, n: usize) {
        if n != self.top_n {
            self.ahead = None;
        }
        self.top_n = n;
    }

    fn round_trips(&self) -> Option<usize> {
        Some(self.round_trips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_with_url_colons() {
        let s = RemoteSpec::parse("openai+http://127.0.0.1:8000/v1/#m:x", Some("t")).unwrap();
        assert_eq!(s.protocol, Protocol::OpenAi);
        assert_eq!(s.base, "http://127.0.0.1:8000/v1");
        assert_eq!(s.model.as_deref(), Some("m:x"));
        assert_eq!(s.display(), "openai+http://127.0.0.1:8000/v1#m:x");
        let s = RemoteSpec::parse("llamacpp+http://localhost:8080", Some("t")).unwrap();
        assert_eq!((s.protocol, s.model), (Protocol::LlamaCpp, None));
        for (bad, says) in [
            ("openai+http://h:1/v1", "#"),
            ("llamacpp+http://h:1#m", "one model"),
            ("openai+https://h/v1#m", "http://"),
            ("llamacpp+http://", "host"),
        ] {
            let e = RemoteSpec::parse(bad, Some("t")).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = RemoteSpec::parse("llamacpp+http://h:1", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer"), "{e}");
    }

    #[test]
    fn reads_every_answer_format() {
        let legacy = json!({"choices": [{"text": "a", "finish_reason": "length", "logprobs": {
            "tokens": ["token_id:5"],
            "top_logprobs": [{"token_id:5": -0.1, "token_id:7": -2.5}],
        }}]});
        let (p, text) = parse_answer(Protocol::OpenAi, &legacy).unwrap();
        assert_eq!((p[0].chosen, text.as_deref()), (5, Some("a")));
        let mut top = p[0].top.clone();
        top.sort_by_key(|e| e.0);
        assert_eq!(top, [(5, -0.1), (7, -2.5)]);
        let content = json!({"choices": [{"text": "b", "logprobs": {"content": [
            {"id": 3, "token": "b", "logprob": -0.5, "top_logprobs": [
                {"id": 3, "token": "b", "logprob": -0.5}, {"id": 9, "logprob": -1.5}]}]}}]});
        let (p, _) = parse_answer(Protocol::OpenAi, &content).unwrap();
        assert_eq!(
            (p[0].chosen, p[0].top.clone()),
            (3, vec![(3, -0.5), (9, -1.5)])
        );
        let native = json!({"content": "b", "completion_probabilities": [
            {"id": 3, "logprob": -0.5, "top_logprobs": [{"id": 3, "logprob": -0.5}]}]});
        assert_eq!(
            parse_answer(Protocol::LlamaCpp, &native).unwrap().0.len(),
            1
        );
        let stopped = json!({"choices": [{"text": "", "finish_reason": "stop", "logprobs": null}]});
        assert!(parse_answer(Protocol::OpenAi, &stopped)
            .unwrap()
            .0
            .is_empty());
        let text_keys =
            json!({"choices": [{"logprobs": {"tokens": ["a"], "top_logprobs": [{"a": -0.1}]}}]});
        let e = parse_answer(Protocol::OpenAi, &text_keys).err().unwrap();
        assert!(e.contains("return_tokens_as_token_ids"), "{e}");
        for garbage in [
            json!([1, 2]),
            json!({"choices": []}),
            json!({"content": "x"}),
        ] {
            assert!(parse_answer(Protocol::OpenAi, &garbage).is_err());
            assert!(parse_answer(Protocol::LlamaCpp, &garbage).is_err());
        }
    }

    #[test]
    fn sparse_sorts_and_keeps_the_rest_mass() {
        let s = sparse(vec![
            (2, (0.2f32).ln()),
            (1, (0.5f32).ln()),
            (2, (0.2f32).ln()),
        ]);
        assert_eq!(s.top.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2]);
        assert!((s.rest - 0.3).abs() < 1e-5, "{}", s.rest);
        let s = sparse(vec![(1, 0.0), (2, f32::MIN)]);
        assert_eq!((s.top.len(), s.rest), (1, 0.0));
    }

    #[test]
    fn a_repeated_id_counts_once_wherever_it_is_listed() {
        // Id 2 twice with different log-probabilities and id 5 between them: the
        // first, most probable, entry stands for it.
        let s = sparse(vec![
            (2, (0.3f32).ln()),
            (5, (0.25f32).ln()),
            (2, (0.2f32).ln()),
        ]);
        assert_eq!(s.top.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 5]);
        assert!((s.top[0].1 - 0.3f32.ln()).abs() < 1e-6);
        assert!((s.rest - 0.45).abs() < 1e-5, "{}", s.rest);
    }

    #[test]
    fn warns_once_when_the_prefix_is_re_evaluated() {
        let answer = |n: u64| json!({"timings": {"prompt_n": n}});
        let mut w = ReuseWatch::default();
        let mut ctx: Vec<u32> = (0..20).collect();
        assert_eq!(
            w.record(&ctx, &answer(20)),
            None,
            "the first request prefills"
        );
        // One new id per step, evaluated as one or two: the cache works.
        for n in [1, 2, 1] {
            ctx.push(7);
            assert_eq!(w.record(&ctx, &answer(n)), None);
        }
        // Six evaluated for one new id, three times in a row: one warning.
        let mut warned = Vec::new();
        for _ in 0..6 {
            ctx.push(7);
            warned.extend(w.record(&ctx, &answer(6)));
        }
        assert_eq!(warned, vec![(6, 1)]);
        // A rollback re-evaluates what changed, which is not a failure of the cache.
        let mut w = ReuseWatch::default();
        w.record(&ctx, &answer(30));
        for k in 0..4 {
            ctx.truncate(ctx.len() - 3);
            ctx.extend([100 + k; 3]);
            assert_eq!(w.record(&ctx, &answer(3)), None);
        }
        // Servers without timings are never judged.
        let mut w = ReuseWatch::default();
        for _ in 0..5 {
            ctx.push(1);
            assert_eq!(w.record(&ctx, &json!({})), None);
        }
    }

    /// Feeds a planner `n` requests whose times follow `r + s·tokens` and whose
    /// looked-ahead tokens are used with probability `q` each (deterministic: the run
    /// length is the expected one, rounded); returns the share of requests that looked
    /// ahead.
    fn plan(r: f64, s: f64, q: f64, n: usize) -> f64 {
        let mut p = LookaheadPlanner::new(4);
        let run = (1..=4).map(|j| q.powi(j)).sum::<f64>().round() as usize;
        let mut ahead = 0;
        for _ in 0..n {
            let l = p.choose();
            p.timed(l, r + s * (1 + l) as f64);
            if l > 0 {
                ahead += 1;
                p.outcome(l, run);
            }
        }
        ahead as f64 / n as f64
    }

    #[test]
    fn lookahead_is_asked_for_where_it_pays() {
        // Loopback CPU server: 2 ms round trip, 15 ms per token: never worth it (only
        // the exploring requests look ahead).
        assert!(plan(2.0, 15.0, 0.7, 200) < 0.1);
        // Across a network, 60 ms round trip: worth it.
        assert!(plan(60.0, 15.0, 0.7, 200) > 0.9);
        // A GPU server (decode 5 ms) on a LAN (10 ms): worth it when the ensemble
        // follows the server, not when it always leaves its path at once.
        assert!(plan(10.0, 5.0, 0.9, 200) > 0.9);
        assert!(plan(10.0, 5.0, 0.0, 200) < 0.1);
        // Before anything is measured: one plain request, then one looking ahead.
        let mut p = LookaheadPlanner::new(3);
        assert_eq!(p.choose(), 0);
        p.timed(0, 10.0);
        assert_eq!(p.choose(), 3);
    }

    #[test]
    fn finds_the_cap_in_a_refusal() {
        assert_eq!(
            cap_from_message(
                "HTTP 400: Requested sample logprobs of 50, which is greater than max allowed: 20",
                50
            ),
            Some(20)
        );
        assert_eq!(
            cap_from_message("logprobs must be an integer from 0 to 20", 32),
            Some(20)
        );
        assert_eq!(cap_from_message("HTTP 400: logprobs too large", 32), None);
    }
}
