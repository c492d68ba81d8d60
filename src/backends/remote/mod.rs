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

mod answer;
mod check;
mod http;
mod lookahead;

use std::sync::Arc;
use std::time::Duration;

use tutti_models::ModelTokenizer;

use crate::engine::{Backend, EngineError, Logits, Result, SparseLogits};
use answer::sparse;
pub(crate) use lookahead::LookaheadPlanner;
use lookahead::{Ahead, ReuseWatch};

/// Log-probabilities asked for at least per token (vLLM's default cap).
const MIN_PROBS: usize = 20;

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
                "a served member needs its tokenizer here: `tokenizer = \"PATH|hf:ORG/NAME\"` in \
                 its [[member]] table, or `:tok=PATH` after its spec (a GGUF's tokenizer can be \
                 exported with `tutti tokenize --export`)"
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

    /// Round trips made since the member connected (connect-time checks included).
    pub fn round_trips(&self) -> usize {
        self.round_trips
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
}
