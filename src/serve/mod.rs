//! An OpenAI-compatible HTTP server in front of one [`Ensemble`] (`tutti serve`; cargo
//! feature `serve`).
//!
//! Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`,
//! `GET /health` and `GET /metrics` (Prometheus text); `GET /` is a web view of the
//! ensemble at work (`page.rs`). One engine thread owns the
//! ensemble and decodes the requests together (`worker.rs`: continuous batching over a
//! [`crate::engine::Batch`], at most `ServeOptions::batch.max_batch` at once, their KV
//! caches from a budget); the HTTP handlers (on tokio) check each request, tokenize its
//! prompt for every member, and queue it in a bounded FIFO queue (full: 429 with
//! `Retry-After`, answered before the body is read). Each request's events come back on
//! a channel of its own; when the client goes away the channel closes and the
//! generation stops after its current round (a request still waiting is skipped).
//!
//! ```no_run
//! use tutti::engine::{Ensemble, MemberSpec};
//! use tutti::serve::{ServeOptions, Server};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ens = Ensemble::builder()
//!     .member(MemberSpec::new("models-cache/SmolLM2-135M-Instruct.Q4_1.gguf"))
//!     .build()?;
//! let server = Server::bind(ens, ServeOptions::default()).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

pub(crate) mod api;
mod error;
mod explain;
mod metrics;
mod page;
mod respond;
mod worker;

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::unbounded_channel;

pub use api::Endpoint;
pub use error::{ApiError, ServeError};

use crate::engine::{BatchOptions, Ensemble, Request};
use api::{Limits, MemberInfo};
use metrics::Metrics;
use respond::Render;
use worker::{Engine, Job, Refused};

/// How the server listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to bind (loopback unless told otherwise).
    pub host: IpAddr,
    /// Port; 0 picks a free one ([`Server::local_addr`] tells which).
    pub port: u16,
    /// The model name clients use; default: the members' names joined by `+`.
    pub name: Option<String>,
    /// When set, every endpoint but `/health` and the web view's page and assets needs
    /// `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests that may wait for the engine (more: 429).
    pub queue: usize,
    /// How requests decode together: the most at once, the prompt chunk fed between
    /// decode steps, the KV-cache budget.
    pub batch: BatchOptions,
    /// Most tokens one request may ask for.
    pub max_tokens_cap: usize,
    /// Largest request body in bytes (more: 413).
    pub max_body_bytes: usize,
    /// After a shutdown signal, how long requests already accepted may still run (the
    /// wait for the engine thread is bounded by it too).
    pub drain: Duration,
    /// Seeds the sampling of requests that give no `seed`: the n-th such request gets a
    /// seed mixed from this one and n. `None`: each draws a seed from the operating
    /// system. Either way no two seedless requests share a draw.
    pub seed: Option<u64>,
    /// Settings every call starts from (sampling, top-k, gate, combine, stop strings,
    /// `max_tokens` for chat requests that give none); the request overrides them.
    pub template: Request,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            name: None,
            api_key: None,
            queue: 64,
            batch: BatchOptions {
                kv_budget: Some(default_kv_budget()),
                ..BatchOptions::default()
            },
            max_tokens_cap: 4096,
            max_body_bytes: 2 << 20,
            drain: Duration::from_secs(30),
            seed: None,
            template: Request::raw(""),
        }
    }
}

/// The KV-cache budget when none is given: a quarter of the memory available now
/// (`MemAvailable`), else 4 GiB where the system does not say.
pub fn default_kv_budget() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    available.map_or(4 << 30, |b| b / 4)
}

/// Shared by every handler.
struct AppState {
    engine: Engine,
    members: Arc<[MemberInfo]>,
    /// End-of-sequence text and id of each member (how an EOS candidate is shown).
    eos_texts: Vec<(String, Option<u32>)>,
    limits: Limits,
    served: Vec<String>,
    /// SHA-256 of the API key: compared in constant time with the hash of the one sent.
    key_hash: Option<[u8; 32]>,
    max_body_bytes: usize,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    next_id: AtomicU64,
    started: u64,
    /// `GET /ui/config` of the web view.
    page: serde_json::Value,
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    drain: Duration,
}

impl Server {
    /// Binds the address and starts the engine thread with `ensemble`.
    pub async fn bind(ensemble: Ensemble, options: ServeOptions) -> Result<Server, ServeError> {
        if options.max_tokens_cap == 0 {
            return Err(ServeError::Options(
                "--max-tokens-cap must be at least 1".into(),
            ));
        }
        let mut probe = options.template.clone();
        probe.prompt = crate::engine::Prompt::Raw("x".into());
        probe
            .validate()
            .map_err(|e| ServeError::Options(e.to_string()))?;
        let members: Vec<MemberInfo> = ensemble
            .members()
            .iter()
            .map(|m| MemberInfo {
                name: m.name().to_string(),
                tokenizer: m.tokenizer().clone(),
                context_length: m.backend().context_length(),
                vocab_len: m.vocab().len(),
            })
            .collect();
        let eos_texts = ensemble
            .members()
            .iter()
            .map(|m| {
                let id = m.vocab().eos_ids().first().copied();
                let text = id
                    .and_then(|id| m.tokenizer().decode(&[id], false).ok())
                    .unwrap_or_default();
                (text, id)
            })
            .collect();
        let name = options.name.clone().unwrap_or_else(|| {
            members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join("+")
        });
        let limits = Limits {
            name,
            template: options.template.clone(),
            max_tokens_cap: options.max_tokens_cap,
            seeds: Arc::new(api::Seeds::new(options.seed)),
        };
        let served = api::served_models(&limits, &members);
        let page = page::config(
            &limits.name,
            &ensemble,
            &limits.template,
            limits.max_tokens_cap,
        );
        let addr = SocketAddr::new(options.host, options.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::start(
            ensemble,
            options.queue,
            options.batch.clone(),
            metrics.clone(),
        )?;
        let key_hash = options
            .api_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into());
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Server {
            listener,
            state: Arc::new(AppState {
                engine,
                members: members.into(),
                eos_texts,
                limits,
                served,
                key_hash,
                max_body_bytes: options.max_body_bytes,
                metrics,
                draining: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                started,
                page,
            }),
            drain: options.drain,
        })
    }

    /// The address the server listens on (the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
    }

    /// The name clients use for the ensemble.
    pub fn model_name(&self) -> &str {
        &self.state.limits.name
    }

    /// Serves until `shutdown` completes; then takes no new requests, lets the accepted
    /// ones finish for at most the drain time (longer ones are cut after their current
    /// step) and returns once the engine thread has ended.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let state = self.state.clone();
        let (signalled_tx, mut signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let graceful = {
            let state = state.clone();
            async move {
                shutdown.await;
                state.draining.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: no new requests; finishing the accepted ones");
                let _ = signalled_tx.send(());
            }
        };
        let app = router(state.clone());
        let mut serving = tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(graceful)
                .into_future(),
        );
        let mut signalled_at = None;
        let served = tokio::select! {
            r = &mut serving => r,
            _ = &mut signalled_rx => {
                signalled_at = Some(Instant::now());
                match tokio::time::timeout(self.drain, &mut serving).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(
                            "requests still running after {:.0} s: cutting them short",
                            self.drain.as_secs_f64()
                        );
                        state.engine.cancel_all();
                        match tokio::time::timeout(Duration::from_secs(10), &mut serving).await {
                            Ok(r) => r,
                            Err(_) => {
                                serving.abort();
                                Ok(Ok(()))
                            }
                        }
                    }
                }
            }
        };
        // The engine stops after its current step; a step that hangs (a stalled served
        // member) must not hold the process past the drain time.
        let drain_left = signalled_at.map_or(self.drain, |t: Instant| {
            self.drain.saturating_sub(t.elapsed())
        });
        if drain_left.is_zero() {
            state.engine.cancel_all();
        }
        let engine_state = state.clone();
        let joined = tokio::task::spawn_blocking(move || engine_state.engine.shut_down());
        if tokio::time::timeout(drain_left + JOIN_GRACE, joined)
            .await
            .is_err()
        {
            tracing::warn!(
                "the engine is still in a step {:.0} s after the drain time; stopping without it",
                JOIN_GRACE.as_secs_f64()
            );
        }
        match served {
            Ok(r) => r.map_err(ServeError::Io),
            Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

/// How long the engine thread may still take to stop once the drain time is over.
const JOIN_GRACE: Duration = Duration::from_secs(10);

fn router(state: Arc<AppState>) -> Router {
    let only_get = |r: HttpRequest| async move { wrong_method(&r, "GET") };
    let only_post = |r: HttpRequest| async move { wrong_method(&r, "POST") };
    Router::new()
        .route("/v1/models", get(models).fallback(only_get))
        .route("/v1/models/{model}", get(model).fallback(only_get))
        .route("/v1/completions", post(completions).fallback(only_post))
        .route("/v1/chat/completions", post(chat).fallback(only_post))
        .route("/health", get(health).fallback(only_get))
        .route("/metrics", get(metrics_text).fallback(only_get))
        .route("/", get(page::index).fallback(only_get))
        .route("/ui/app.js", get(page::app_js).fallback(only_get))
        .route("/ui/app.css", get(page::app_css).fallback(only_get))
        .route("/ui/config", get(page::config_json).fallback(only_get))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Checks the API key and counts every response by endpoint and status.
async fn guard(State(s): State<Arc<AppState>>, req: HttpRequest, next: Next) -> Response {
    let path = req.uri().path();
    let public = path == "/health" || page::is_public(path);
    let endpoint = match path {
        "/v1/models" | "/v1/completions" | "/v1/chat/completions" | "/health" | "/metrics" => {
            path.to_string()
        }
        p if p.starts_with("/v1/models/") => "/v1/models/{model}".to_string(),
        _ => "other".to_string(),
    };
    let response = match (&s.key_hash, endpoint.as_str()) {
        (Some(expected), _) if !public => match bearer(req.headers()) {
            None => ApiError::unauthorized(
                "missing API key: send the header `Authorization: Bearer KEY` with the server's key",
            )
            .into_response(),
            Some(key) => {
                let sent: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                if bool::from(sent[..].ct_eq(&expected[..])) {
                    next.run(req).await
                } else {
                    ApiError::unauthorized("invalid API key").into_response()
                }
            }
        },
        _ => next.run(req).await,
    };
    s.metrics
        .count_response(&endpoint, response.status().as_u16());
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

async fn no_route(req: HttpRequest) -> Response {
    ApiError::no_route(req.uri().path()).into_response()
}

/// 405 with the OpenAI error object and the `Allow` header.
fn wrong_method(req: &HttpRequest, allowed: &'static str) -> Response {
    let mut response =
        ApiError::wrong_method(req.method().as_str(), req.uri().path(), allowed).into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn model_object(s: &AppState, id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": s.started, "owned_by": "tutti"})
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    let data: Vec<_> = s.served.iter().map(|n| model_object(&s, n)).collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn model(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if s.served.contains(&id) {
        json_response(StatusCode::OK, &model_object(&s, &id))
    } else {
        ApiError::unknown_model(&id, &s.served).into_response()
    }
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.draining.load(Ordering::SeqCst) {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "shutting down"}),
        )
    } else {
        json_response(StatusCode::OK, &json!({"status": "ok"}))
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(s.engine.capacity()),
    )
        .into_response()
}

async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    handle(s, Endpoint::Completions, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    handle(s, Endpoint::Chat, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Bodies past the limit are still read (and dropped) up to this many times the limit,
/// so that the client can read the 413 instead of a reset connection.
const DRAIN_FACTOR: usize = 8;

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut over = declared.is_some_and(|n| n > limit);
    let mut data = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = data.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad(format!("could not read the request body: {e}")))?;
        seen += chunk.len();
        if seen > limit {
            over = true;
        }
        if over {
            if seen > limit.saturating_mul(DRAIN_FACTOR) {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if over {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf)
}

async fn handle(
    s: Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if s.draining.load(Ordering::SeqCst) {
        return Err(ApiError::shutting_down());
    }
    // A place in the queue first: a full queue costs a flood no reading or tokenizing.
    let slot = match s.engine.reserve() {
        Ok(slot) => slot,
        Err(Refused::Full) => return Err(ApiError::queue_full(s.engine.capacity())),
        Err(Refused::Stopped) => return Err(ApiError::shutting_down()),
    };
    let bytes = read_body(headers, body, s.max_body_bytes).await?;
    let call = api::parse(&bytes, endpoint, &s.limits, &s.members)?;
    let members = s.members.clone();
    let call = tokio::task::spawn_blocking(move || api::encode(call, &members))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e}")))??;
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let render = Render::new(&call, id, s.eos_texts[call.slots[0]].clone());
    let (tx, rx) = unbounded_channel();
    let job = Job {
        request: call.request.clone(),
        echo: call.echo.then(|| call.logprobs.unwrap_or(0)),
        events: tx,
        enqueued: Instant::now(),
    };
    match slot.submit(job) {
        Ok(()) => {}
        Err(Refused::Full) => return Err(ApiError::queue_full(s.engine.capacity())),
        Err(Refused::Stopped) => return Err(ApiError::shutting_down()),
    }
    tracing::debug!(
        "request {id} queued ({}, {} tokens max, stream: {})",
        endpoint.path(),
        call.request.max_tokens,
        call.stream
    );
    if call.stream {
        Ok(render.stream(rx))
    } else {
        let body = render.collect(rx).await?;
        Ok(json_response(StatusCode::OK, &body))
    }
}
