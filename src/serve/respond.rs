//! Turns the engine's messages for one request into the OpenAI response: one JSON body,
//! or Server-Sent Events (`data: {chunk}` frames, then `data: [DONE]`).
//!
//! Logprobs come from the step events (the chosen candidate and the most probable
//! alternatives of the combined distribution). A token's entry is sent with the text
//! that covers its first byte; tokens whose bytes were all cut by a stop string are
//! not reported. A winning end-of-sequence is reported last, at the end of the text,
//! with its distribution (a client that ensembles this server needs it: without it, it
//! cannot tell how sure the server was that the text ends).

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{Call, Endpoint};
use super::error::ApiError;
use super::worker::Msg;
use crate::engine::{Choice, Generation, PromptToken, StepEvent, StopReason};

/// What a response needs besides the engine's messages.
pub struct Render {
    endpoint: Endpoint,
    model: String,
    id: String,
    created: u64,
    logprobs: Option<usize>,
    token_ids: bool,
    include_usage: bool,
    /// The first taking-part member: its ids stand for tokens (`token_id:<id>`) and its
    /// end-of-sequence text for an EOS candidate.
    slot0: usize,
    eos_text: String,
    /// The first member's end-of-sequence id, for an EOS candidate it did not propose.
    eos_id: Option<u32>,
    tracker: Tracker,
    started: Option<(f64, f64)>,
    /// Attribution records not sent yet (`tutti: {"explain": true}`).
    explain: super::explain::Records,
    /// `echo`: the prompt goes before the generated text, its tokens before the
    /// generated ones.
    echo: bool,
    /// The prompt as the client sent it (a text prompt), else its tokens' text.
    echo_text: Option<String>,
    /// The prompt's tokens, once scored.
    prompt: Vec<Entry>,
}

/// One reported token.
struct Entry {
    /// Byte offset of the token in the generated text.
    start: usize,
    token: String,
    bytes: Vec<u8>,
    logprob: f64,
    top: Vec<(String, Vec<u8>, f64)>,
    /// Character offset in the text (set when released).
    char_offset: usize,
    /// A winning end-of-sequence: no text covers it, the end of the generation does.
    eos: bool,
    /// False for a prompt token scoring starts after: its logprob is null.
    scored: bool,
}

/// Tokens waiting for the text that covers them.
#[derive(Default)]
struct Tracker {
    pending: VecDeque<Entry>,
    /// Bytes of all chosen tokens so far.
    byte_pos: usize,
    /// Text released so far.
    text: String,
}

impl Tracker {
    fn step(&mut self, mut entry: Entry, len: usize) {
        entry.start = self.byte_pos;
        self.byte_pos += len;
        self.pending.push_back(entry);
    }

    /// Appends released text; returns the entries it covers now.
    fn text(&mut self, t: &str) -> Vec<Entry> {
        self.text.push_str(t);
        let mut out = Vec::new();
        while self
            .pending
            .front()
            .is_some_and(|e| e.start < self.text.len())
        {
            if let Some(mut e) = self.pending.pop_front() {
                let mut b = e.start;
                while !self.text.is_char_boundary(b) {
                    b -= 1;
                }
                e.char_offset = self.text[..b].chars().count();
                out.push(e);
            }
        }
        out
    }

    /// At the end of a generation: a winning end-of-sequence still waiting, when all
    /// the text before it was released.
    fn finish(&mut self) -> Vec<Entry> {
        let text_chars = self.text.chars().count();
        match self.pending.front() {
            Some(e) if e.eos && e.start <= self.text.len() => self
                .pending
                .pop_front()
                .map(|mut e| {
                    e.char_offset = text_chars;
                    e
                })
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A log-probability that JSON can carry (−∞ is not a number there).
fn logprob(p: f32) -> f64 {
    if p > 0.0 {
        (p as f64).ln()
    } else {
        -9999.0
    }
}

/// A log-probability that JSON can carry, from a natural log.
fn finite(lp: f64) -> f64 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos | StopReason::StopString => "stop",
        // A cancelled generation here was cut short by the server (shutdown): like a
        // budget that ran out, the text is incomplete.
        StopReason::MaxTokens | StopReason::ContextLength | StopReason::Cancelled => "length",
    }
}

fn usage_json(g: &Generation) -> Value {
    let u = g.usage();
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

impl Render {
    /// `eos` is the first taking-part member's end-of-sequence text and id.
    pub fn new(call: &Call, id_number: u64, eos: (String, Option<u32>)) -> Render {
        let (eos_text, eos_id) = eos;
        let prefix = match call.endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        Render {
            endpoint: call.endpoint,
            model: call.model.clone(),
            id: format!("{prefix}-{id_number:016x}{:08x}", rand::random::<u32>()),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            logprobs: call.logprobs,
            token_ids: call.token_ids,
            include_usage: call.include_usage,
            slot0: call.slots[0],
            eos_text,
            eos_id,
            tracker: Tracker::default(),
            started: None,
            explain: super::explain::Records::default(),
            echo: call.echo,
            echo_text: call.echo_text.clone(),
            prompt: Vec::new(),
        }
    }

    /// The scored prompt's entries (`echo`), with their offsets in its text.
    fn on_prompt(&mut self, tokens: &[PromptToken]) {
        let mut text = Vec::new();
        let shown = |id: u32, bytes: &[u8]| match self.token_ids {
            true => format!("token_id:{id}"),
            false => String::from_utf8_lossy(bytes).into_owned(),
        };
        let mut entries = Vec::with_capacity(tokens.len());
        for t in tokens {
            let start = text.len();
            text.extend_from_slice(&t.bytes);
            let before = String::from_utf8_lossy(&text[..start]).chars().count();
            entries.push(Entry {
                start,
                token: shown(t.id, &t.bytes),
                bytes: t.bytes.clone(),
                logprob: t.logprob.map_or(0.0, finite),
                top: t
                    .top
                    .iter()
                    .map(|(b, lp)| {
                        (
                            String::from_utf8_lossy(b).into_owned(),
                            b.clone(),
                            finite(*lp),
                        )
                    })
                    .collect(),
                char_offset: before,
                eos: false,
                scored: t.logprob.is_some(),
            });
        }
        if self.echo_text.is_none() {
            self.echo_text = Some(String::from_utf8_lossy(&text).into_owned());
        }
        self.prompt = entries;
    }

    /// How a candidate is shown: its text (or `token_id:<id>`) and its exact bytes.
    fn show(&self, c: &Choice) -> (String, Vec<u8>) {
        let bytes = if c.eos {
            self.eos_text.as_bytes().to_vec()
        } else {
            c.bytes.clone()
        };
        let id = c
            .proposers
            .iter()
            .find(|(s, _)| *s == self.slot0)
            .map(|&(_, id)| id)
            .or(if c.eos { self.eos_id } else { None });
        let token = match (self.token_ids, id) {
            (true, Some(id)) => format!("token_id:{id}"),
            _ => String::from_utf8_lossy(&bytes).into_owned(),
        };
        (token, bytes)
    }

    fn on_step(&mut self, s: &StepEvent) {
        self.explain.step(s);
        if self.logprobs.is_none() {
            return;
        }
        let (token, bytes) = self.show(&s.chosen);
        let top = s
            .alternatives
            .iter()
            .map(|a| {
                let (t, b) = self.show(a);
                (t, b, logprob(a.prob))
            })
            .collect();
        let len = s.chosen.bytes.len();
        self.tracker.step(
            Entry {
                start: 0,
                token,
                bytes,
                logprob: logprob(s.chosen.prob),
                top,
                char_offset: 0,
                eos: s.chosen.eos,
                scored: true,
            },
            len,
        );
    }

    fn logprobs_json(&self, entries: &[Entry]) -> Value {
        if self.logprobs.is_none() {
            return Value::Null;
        }
        match self.endpoint {
            Endpoint::Completions => json!({
                "tokens": entries.iter().map(|e| e.token.clone()).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|e| match e.scored {
                    true => json!(e.logprob),
                    false => Value::Null,
                }).collect::<Vec<_>>(),
                "top_logprobs": entries.iter().map(|e| match e.scored {
                    true => Value::Object(e.top.iter().map(|(t, _, lp)| (t.clone(), json!(lp))).collect()),
                    false => Value::Null,
                }).collect::<Vec<_>>(),
                "text_offset": entries.iter().map(|e| e.char_offset).collect::<Vec<_>>(),
            }),
            Endpoint::Chat => json!({
                "content": entries.iter().map(|e| json!({
                    "token": e.token,
                    "logprob": e.logprob,
                    "bytes": e.bytes,
                    "top_logprobs": e.top.iter().map(|(t, b, lp)| json!({
                        "token": t, "logprob": lp, "bytes": b,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "refusal": Value::Null,
            }),
        }
    }

    /// tutti's details of a finished generation.
    fn details(&self, g: &Generation) -> Value {
        let (queue_ms, started_at_ms) = self.started.unwrap_or((0.0, 0.0));
        json!({
            "members": g.members.iter().map(|m| json!({
                "slot": m.slot,
                "name": m.name,
                "weight": m.weight,
                "prompt_tokens": m.prompt_tokens,
                "ids": m.ids,
                "rollbacks": m.rollbacks,
                "rolled_back_tokens": m.rolled_back_tokens,
            })).collect::<Vec<_>>(),
            "stop_reason": g.stop_reason,
            "ensembled_share": g.ensembled_share,
            "rollbacks": g.rollbacks(),
            "queue_ms": queue_ms,
            "started_at_ms": started_at_ms,
            "timing": {
                "prefill_ms": g.timing.prefill_ms,
                "total_ms": g.timing.total_ms,
                "tokens_per_s": g.timing.tokens_per_s,
                "ms_per_token": g.timing.ms_per_token,
            },
        })
    }

    /// The whole response of a non-streaming request.
    pub async fn collect(mut self, mut rx: UnboundedReceiver<Msg>) -> Result<Value, ApiError> {
        let mut entries = Vec::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Started {
                    queued_ms,
                    at_unix_ms,
                } => self.started = Some((queued_ms, at_unix_ms)),
                Msg::Step(s) => self.on_step(&s),
                Msg::Prompt(p) => self.on_prompt(&p),
                Msg::Text(t) => entries.extend(self.tracker.text(&t)),
                Msg::Done(Ok(g)) => {
                    entries.extend(self.tracker.finish());
                    if self.echo {
                        let shift = self.echo_text.as_deref().map_or(0, |t| t.chars().count());
                        for e in &mut entries {
                            e.char_offset += shift;
                        }
                        let mut all = std::mem::take(&mut self.prompt);
                        all.extend(entries);
                        entries = all;
                    }
                    return Ok(self.body(&g, &entries));
                }
                Msg::Done(Err(e)) => return Err(e),
            }
        }
        Err(ApiError::internal(
            "the engine stopped before finishing the request",
        ))
    }

    fn body(&mut self, g: &Generation, entries: &[Entry]) -> Value {
        let reason = finish_reason(g.stop_reason);
        let text = match (self.echo, &self.echo_text) {
            (true, Some(p)) => format!("{p}{}", g.text),
            _ => g.text.clone(),
        };
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": self.logprobs_json(entries),
                "finish_reason": reason,
            }),
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": g.text, "refusal": Value::Null},
                "logprobs": self.logprobs_json(entries),
                "finish_reason": reason,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::Chat => "chat.completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_json(g),
            "tutti": self.explain.finish(self.details(g)),
        })
    }

    /// One streamed chunk with `choices` (and `usage: null` when usage was asked for).
    fn chunk(&self, choices: Value, extra: Option<(&str, Value)>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::Chat => "chat.completion.chunk",
            },
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        if let Some((k, v)) = extra {
            c[k] = v;
        }
        frame(&c)
    }

    fn text_choice(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        match self.endpoint {
            Endpoint::Completions => json!([{
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }]),
            Endpoint::Chat => {
                let delta = if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!([{
                    "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish,
                }])
            }
        }
    }

    /// The frames one message turns into; true once the stream is over.
    fn frames(&mut self, msg: Msg, out: &mut VecDeque<String>) -> bool {
        match msg {
            Msg::Started {
                queued_ms,
                at_unix_ms,
            } => {
                self.started = Some((queued_ms, at_unix_ms));
                let choices = match self.endpoint {
                    Endpoint::Completions => self.text_choice("", Value::Null, None),
                    Endpoint::Chat => json!([{
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": Value::Null,
                        "finish_reason": Value::Null,
                    }]),
                };
                let started = json!({"queue_ms": queued_ms, "started_at_ms": at_unix_ms});
                out.push_back(self.chunk(choices, Some(("tutti", started))));
                false
            }
            Msg::Step(s) => {
                self.on_step(&s);
                false
            }
            // Refused with a stream (see `api::parse`).
            Msg::Prompt(_) => false,
            Msg::Text(t) => {
                let entries = self.tracker.text(&t);
                let lp = self.logprobs_json(&entries);
                let records = self.explain.take();
                out.push_back(self.chunk(self.text_choice(&t, lp, None), records));
                false
            }
            Msg::Done(Ok(g)) => {
                let reason = finish_reason(g.stop_reason);
                let last = self.tracker.finish();
                let lp = if last.is_empty() {
                    Value::Null
                } else {
                    self.logprobs_json(&last)
                };
                let choices = self.text_choice("", lp, Some(reason));
                let details = self.explain.finish(self.details(&g));
                out.push_back(self.chunk(choices, Some(("tutti", details))));
                if self.include_usage {
                    let mut c = json!({
                        "id": self.id,
                        "object": match self.endpoint {
                            Endpoint::Completions => "text_completion",
                            Endpoint::Chat => "chat.completion.chunk",
                        },
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                    });
                    c["usage"] = usage_json(&g);
                    out.push_back(frame(&c));
                }
                out.push_back(DONE.to_string());
                true
            }
            Msg::Done(Err(e)) => {
                out.push_back(frame(&e.body()));
                out.push_back(DONE.to_string());
                true
            }
        }
    }

    /// The streaming response: SSE frames as the engine's messages arrive. Dropping the
    /// body (the client left) drops `rx`, which stops the generation.
    pub fn stream(self, rx: UnboundedReceiver<Msg>) -> Response {
        struct State {
            render: Render,
            rx: UnboundedReceiver<Msg>,
            out: VecDeque<String>,
            over: bool,
        }
        let state = State {
            render: self,
            rx,
            out: VecDeque::new(),
            over: false,
        };
        let frames = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(f) = st.out.pop_front() {
                    return Some((Ok::<String, Infallible>(f), st));
                }
                if st.over {
                    return None;
                }
                match st.rx.recv().await {
                    Some(msg) => st.over = st.render.frames(msg, &mut st.out),
                    None => {
                        let e =
                            ApiError::internal("the engine stopped before finishing the request");
                        st.out.push_back(frame(&e.body()));
                        st.out.push_back(DONE.to_string());
                        st.over = true;
                    }
                }
            }
        });
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(frames),
        )
            .into_response()
    }
}

const DONE: &str = "data: [DONE]\n\n";

fn frame(v: &Value) -> String {
    format!("data: {v}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str) -> Entry {
        Entry {
            start: 0,
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob: -0.5,
            top: Vec::new(),
            char_offset: 0,
            eos: false,
            scored: true,
        }
    }

    #[test]
    fn entries_are_released_with_the_text_that_covers_them() {
        let mut t = Tracker::default();
        // "é" split over two tokens, then a token held back (a stop string that cut it).
        t.step(entry("\u{fffd}"), 1);
        assert!(t.text("").is_empty());
        t.step(entry("\u{fffd}"), 1);
        let out = t.text("é");
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].char_offset, out[1].char_offset), (0, 0));
        t.step(entry("x"), 1);
        let out = t.text("x");
        assert_eq!(out[0].char_offset, 1);
        t.step(entry("STOP"), 4);
        assert!(
            t.text("").is_empty(),
            "a token cut by a stop string stays unreported"
        );
    }

    #[test]
    fn logprob_of_zero_is_a_finite_number() {
        assert_eq!(logprob(0.0), -9999.0);
        assert!((logprob(0.5) - 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(finish_reason(StopReason::Eos), "stop");
        assert_eq!(finish_reason(StopReason::MaxTokens), "length");
    }
}
