//! The OpenAI request bodies of `/v1/completions` and `/v1/chat/completions`, checked and
//! turned into an engine [`Request`] ([`parse`]), and the prompt turned into each
//! member's token ids with its context length checked ([`encode`]) — all before the
//! request is queued, so the engine only ever sees requests it can run.

use serde::Deserialize;
use serde_json::Value;
use tutti_models::ModelTokenizer;

use super::error::ApiError;
use crate::engine::{
    encode_prompt, Combine, EngineError, Gate, Message, Prompt, Request, Role, Sampling,
    MAX_ALTERNATIVES,
};

/// Which API a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }

    /// The prompt field's name, for errors.
    fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Completions => "prompt",
            Endpoint::Chat => "messages",
        }
    }
}

/// What the server knows of one member without asking the engine thread.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    pub name: String,
    pub tokenizer: ModelTokenizer,
    pub context_length: usize,
    /// Ids of its vocabulary (token-id prompts must stay below).
    pub vocab_len: usize,
}

/// Server-wide settings a request is checked against.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The name clients use for the whole ensemble.
    pub name: String,
    /// Every call starts from these settings (the command line's sampling, top-k, gate,
    /// combine rule, stop strings and default `max_tokens`).
    pub template: Request,
    pub max_tokens_cap: usize,
    /// Where requests without a `seed` get theirs.
    pub seeds: std::sync::Arc<Seeds>,
}

/// The seeds of sampled requests that give none: each request draws its own, whatever
/// seed the server's sampling settings carry.
#[derive(Debug, Default)]
pub struct Seeds {
    /// The server's `--seed`: the n-th seedless request then samples with a seed mixed
    /// from it and n, so that a restarted server answers the same requests, sent in the
    /// same order, the same way. `None`: seeds from the operating system.
    base: Option<u64>,
    drawn: std::sync::atomic::AtomicU64,
}

impl Seeds {
    pub fn new(base: Option<u64>) -> Seeds {
        Seeds {
            base,
            drawn: Default::default(),
        }
    }

    /// The seed of the next request that gives none.
    pub fn next(&self) -> u64 {
        let Some(base) = self.base else {
            return rand::random();
        };
        let n = self
            .drawn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::engine::derived_seed(base, n)
    }
}

/// A checked request, ready to be encoded and queued.
#[derive(Clone, Debug)]
pub struct Call {
    pub endpoint: Endpoint,
    /// The model name to answer with.
    pub model: String,
    pub request: Request,
    /// Taking-part member slots, in order.
    pub slots: Vec<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// `None`: no logprobs; `Some(n)`: the chosen token's logprob and `n` alternatives.
    pub logprobs: Option<usize>,
    /// vLLM's `return_tokens_as_token_ids`: tokens rendered as `token_id:<id>`.
    pub token_ids: bool,
    /// `echo`: the prompt is scored and returned before the generated text.
    pub echo: bool,
    /// A text prompt as sent, for `echo`.
    pub echo_text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// tutti's own request extension: the ensemble knobs of one call.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TuttiExtension {
    /// Member slots taking part, in order.
    members: Option<Vec<usize>>,
    weights: Option<Vec<f32>>,
    /// `"auto"` or `"auto:TAU"`: weights from the members' perplexity on the prompt.
    auto_weights: Option<String>,
    top_k: Option<usize>,
    gate: Option<String>,
    combine: Option<String>,
    /// Per-token attribution records in the response (`tutti.explain`).
    explain: Option<bool>,
}

/// Every field read from either endpoint's body; unknown fields are ignored, as other
/// OpenAI-compatible servers do.
#[derive(Deserialize)]
struct Body {
    model: Option<String>,
    prompt: Option<Value>,
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<Value>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<Value>,
    top_logprobs: Option<i64>,
    n: Option<i64>,
    best_of: Option<i64>,
    echo: Option<bool>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    suffix: Option<String>,
    tools: Option<Vec<Value>>,
    response_format: Option<Value>,
    return_tokens_as_token_ids: Option<bool>,
    tutti: Option<TuttiExtension>,
}

/// Most stop strings a request may give.
const MAX_STOPS: usize = 16;

/// Checks a request body and builds the engine request (prompt not yet tokenized).
pub fn parse(
    bytes: &[u8],
    endpoint: Endpoint,
    limits: &Limits,
    members: &[MemberInfo],
) -> Result<Call, ApiError> {
    let mut body: Body = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad(format!("the request body is not valid JSON: {e}"))
        } else {
            ApiError::bad(format!("invalid request body: {e}"))
        }
    })?;

    // The model: the ensemble's name, or one member's name to run it alone.
    let names: Vec<String> = served_models(limits, members);
    let model = body.model.clone().unwrap_or_else(|| limits.name.clone());
    let solo = if model == limits.name {
        None
    } else if members.len() > 1 {
        match members.iter().position(|m| m.name == model) {
            Some(slot) => Some(slot),
            None => return Err(ApiError::unknown_model(&model, &names)),
        }
    } else {
        return Err(ApiError::unknown_model(&model, &names));
    };

    unsupported(&body, endpoint)?;

    let ext = body.tutti.take().unwrap_or_default();
    let slots: Vec<usize> = match (&ext.members, solo) {
        (Some(_), Some(_)) => return Err(ApiError::param(
            "tutti.members",
            "tutti.members cannot be combined with a member's model name; use the ensemble's name",
        )),
        (Some(list), None) => list.clone(),
        (None, Some(slot)) => vec![slot],
        (None, None) => (0..members.len()).collect(),
    };
    if slots.is_empty() {
        return Err(ApiError::param("tutti.members", "tutti.members is empty"));
    }
    for (i, &s) in slots.iter().enumerate() {
        if s >= members.len() {
            return Err(ApiError::param(
                "tutti.members",
                format!(
                    "no member #{s}: the ensemble has {} members (slots 0..{})",
                    members.len(),
                    members.len() - 1
                ),
            ));
        }
        if slots[..i].contains(&s) {
            return Err(ApiError::param(
                "tutti.members",
                format!("member #{s} is listed twice"),
            ));
        }
    }

    let prompt = match endpoint {
        Endpoint::Completions => completion_prompt(body.prompt.as_ref(), slots.len())?,
        Endpoint::Chat => {
            if body.prompt.is_some() {
                return Err(ApiError::param(
                    "prompt",
                    "the chat API takes `messages`, not `prompt`; use /v1/completions for a raw prompt",
                ));
            }
            chat_prompt(body.messages.take())?
        }
    };

    let mut request = limits.template.clone();
    request.prompt = prompt;
    request.members = (slots.len() != members.len()
        || slots.iter().enumerate().any(|(i, &s)| i != s))
    .then(|| slots.clone());

    // Token budget.
    let asked = body.max_completion_tokens.or(body.max_tokens);
    let param = if body.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let echo = body.echo == Some(true);
    let max_tokens = match asked {
        Some(0) if echo => 0,
        Some(n) if n < 1 => {
            return Err(ApiError::param(
                param,
                format!("{param} must be at least 1 (got {n}); 0 scores the prompt without generating, with echo: true"),
            ))
        }
        Some(n) if n as u64 > limits.max_tokens_cap as u64 => {
            return Err(ApiError::param(
                param,
                format!(
                    "{param} is {n}, over this server's cap of {} (--max-tokens-cap)",
                    limits.max_tokens_cap
                ),
            ))
        }
        Some(n) => n as usize,
        // The OpenAI completions API generates 16 tokens unless told; chat answers get
        // the server's own default.
        None => match endpoint {
            Endpoint::Completions => 16,
            Endpoint::Chat => limits.template.max_tokens,
        }
        .min(limits.max_tokens_cap),
    };
    request.max_tokens = max_tokens;

    request.sampling = sampling(&body, limits.template.sampling, &limits.seeds)?;

    // Stop strings add to the server's own.
    match body.stop {
        Some(StopField::One(s)) => request.stop.push(s),
        Some(StopField::Many(list)) => {
            if list.len() > MAX_STOPS {
                return Err(ApiError::param(
                    "stop",
                    format!("at most {MAX_STOPS} stop strings (got {})", list.len()),
                ));
            }
            request.stop.extend(list);
        }
        None => {}
    }

    // Ensemble knobs.
    let tutti_auto = crate::engine::parse_auto_weights;
    if let Some(w) = ext.weights {
        if w.len() != slots.len() {
            return Err(ApiError::param(
                "tutti.weights",
                format!(
                    "{} weights for {} taking-part members; give one per member",
                    w.len(),
                    slots.len()
                ),
            ));
        }
        request.weights = Some(w);
    }
    if let Some(a) = ext.auto_weights {
        request.auto_weights =
            Some(tutti_auto(&a).map_err(|e| ApiError::param("tutti.auto_weights", e.to_string()))?);
    }
    if let Some(k) = ext.top_k {
        request.top_k = k;
    }
    if let Some(g) = ext.gate {
        request.gate = g
            .parse::<Gate>()
            .map_err(|e| ApiError::param("tutti.gate", e.to_string()))?;
    }
    if let Some(on) = ext.explain {
        request.explain = on;
    }
    if let Some(c) = ext.combine {
        request.combine = c
            .parse::<Combine>()
            .map_err(|e| ApiError::param("tutti.combine", e.to_string()))?;
    }

    // Logprobs.
    let logprobs = match endpoint {
        Endpoint::Completions => match &body.logprobs {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if (0..=MAX_ALTERNATIVES as i64).contains(&n) => Some(n as usize),
                _ => {
                    return Err(ApiError::param(
                        "logprobs",
                        format!("logprobs must be an integer from 0 to {MAX_ALTERNATIVES} (the alternatives per token)"),
                    ))
                }
            },
        },
        Endpoint::Chat => {
            let on = match &body.logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::param(
                        "logprobs",
                        "logprobs must be true or false in the chat API (top_logprobs sets how many alternatives)",
                    ))
                }
            };
            match body.top_logprobs {
                Some(n) if !(0..=MAX_ALTERNATIVES as i64).contains(&n) => {
                    return Err(ApiError::param(
                        "top_logprobs",
                        format!("top_logprobs must be from 0 to {MAX_ALTERNATIVES} (got {n})"),
                    ))
                }
                Some(n) if n > 0 && !on => {
                    return Err(ApiError::param(
                        "top_logprobs",
                        "top_logprobs needs logprobs: true",
                    ))
                }
                Some(n) => on.then_some(n as usize),
                None => on.then_some(0),
            }
        }
    };
    if let Some(n) = logprobs {
        request.alternatives = n;
        request.top_k = request.top_k.max(n);
    }

    let token_ids = body.return_tokens_as_token_ids.unwrap_or(false);
    if token_ids && slots.len() != 1 {
        return Err(ApiError::param(
            "return_tokens_as_token_ids",
            "return_tokens_as_token_ids needs one member (an ensemble's candidates have no single token id); \
             name one member as the model or start the server with one -m",
        ));
    }

    let stream = body.stream.unwrap_or(false);
    let include_usage = body
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);

    if echo && stream {
        return Err(ApiError::param(
            "echo",
            "echo is supported without stream: the prompt's scores come in one response",
        ));
    }
    let echo_text = match (&request.prompt, echo) {
        (Prompt::Raw(t), true) => Some(t.clone()),
        _ => None,
    };

    request.validate().map_err(|e| {
        let param = validation_param(&e, endpoint);
        ApiError::from(e).with_param(param)
    })?;
    Ok(Call {
        endpoint,
        model,
        request,
        slots,
        stream,
        include_usage,
        logprobs,
        token_ids,
        echo,
        echo_text,
    })
}

/// The request field behind an error of [`Request::validate`].
fn validation_param(e: &EngineError, endpoint: Endpoint) -> &'static str {
    match e {
        EngineError::BadTopK(_) => "tutti.top_k",
        EngineError::BadWeights { .. } => "tutti.weights",
        EngineError::BadGate(_) => "tutti.gate",
        EngineError::BadCombine(_) => "tutti.combine",
        EngineError::BadSampling(_) => "temperature",
        EngineError::EmptyPrompt => endpoint.prompt_param(),
        _ => "tutti",
    }
}

/// The model names this server answers to: the ensemble's, then each member's (an
/// ensemble's member can be run alone).
pub fn served_models(limits: &Limits, members: &[MemberInfo]) -> Vec<String> {
    let mut names = vec![limits.name.clone()];
    if members.len() > 1 {
        for m in members {
            if !names.contains(&m.name) {
                names.push(m.name.clone());
            }
        }
    }
    names
}

/// Parameters whose meaning this server cannot honour are refused, not ignored.
fn unsupported(body: &Body, endpoint: Endpoint) -> Result<(), ApiError> {
    if let Some(n) = body.n {
        if n != 1 {
            return Err(ApiError::param(
                "n",
                format!("n must be 1 (got {n}): this server returns one choice per request; send several requests"),
            ));
        }
    }
    if let Some(b) = body.best_of {
        if b != 1 {
            return Err(ApiError::param("best_of", "best_of must be 1"));
        }
    }
    if body.echo == Some(true) && endpoint == Endpoint::Chat {
        return Err(ApiError::param(
            "echo",
            "echo is for /v1/completions; the chat API does not echo",
        ));
    }
    for (name, v) in [
        ("presence_penalty", body.presence_penalty),
        ("frequency_penalty", body.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::param(
                name,
                format!("{name} is not supported (only 0)"),
            ));
        }
    }
    if body.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::param("logit_bias", "logit_bias is not supported"));
    }
    if body.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "suffix is not supported"));
    }
    if body.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::param("tools", "tools are not supported"));
    }
    if let Some(f) = &body.response_format {
        if f.get("type").and_then(Value::as_str).unwrap_or("text") != "text" {
            return Err(ApiError::param(
                "response_format",
                "only response_format {\"type\": \"text\"} is supported",
            ));
        }
    }
    if endpoint == Endpoint::Completions && body.messages.is_some() {
        return Err(ApiError::param(
            "messages",
            "the completions API takes `prompt`; use /v1/chat/completions for messages",
        ));
    }
    Ok(())
}

fn sampling(body: &Body, template: Sampling, seeds: &Seeds) -> Result<Sampling, ApiError> {
    if let Some(t) = body.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::param(
                "temperature",
                format!("temperature must be between 0 and 2 (got {t})"),
            ));
        }
    }
    if let Some(p) = body.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("top_p must be greater than 0 and at most 1 (got {p})"),
            ));
        }
    }
    let seed = match &body.seed {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|s| s as u64))
                .ok_or_else(|| ApiError::param("seed", "seed must be an integer"))?,
        ),
    };
    // The template's seed is not used: it would give every seedless request one draw.
    let (t_template, p_template) = match template {
        Sampling::Greedy => (None, 1.0),
        Sampling::Sample {
            temperature, top_p, ..
        } => (Some(temperature), top_p),
    };
    let temperature = body.temperature.map(|t| t as f32).or(t_template);
    Ok(match temperature {
        None => Sampling::Greedy,
        Some(0.0) => Sampling::Greedy,
        Some(t) => Sampling::Sample {
            temperature: t,
            top_p: body.top_p.map_or(p_template, |p| p as f32),
            seed: seed.unwrap_or_else(|| seeds.next()),
        },
    })
}

fn completion_prompt(prompt: Option<&Value>, members: usize) -> Result<Prompt, ApiError> {
    let bad = |msg: &str| ApiError::param("prompt", msg);
    let one_batch = "one prompt per request: batches of prompts are not supported";
    let ids_of = |arr: &[Value]| -> Result<Vec<u32>, ApiError> {
        arr.iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&x| x <= u32::MAX as u64)
                    .map(|x| x as u32)
                    .ok_or_else(|| bad("a token-id prompt is a list of non-negative integers"))
            })
            .collect()
    };
    let ids = match prompt {
        None | Some(Value::Null) => return Err(bad("`prompt` is required")),
        Some(Value::String(s)) => return Ok(Prompt::Raw(s.clone())),
        Some(Value::Array(items)) => match items.first() {
            None => return Err(bad("the prompt is empty")),
            Some(Value::String(_)) if items.len() == 1 => {
                return Ok(Prompt::Raw(
                    items[0].as_str().unwrap_or_default().to_string(),
                ))
            }
            Some(Value::String(_)) => return Err(bad(one_batch)),
            Some(Value::Array(inner)) if items.len() == 1 => ids_of(inner)?,
            Some(Value::Array(_)) => return Err(bad(one_batch)),
            Some(_) => ids_of(items)?,
        },
        Some(_) => return Err(bad("`prompt` must be a string or a list of token ids")),
    };
    if members != 1 {
        return Err(bad(
            "token-id prompts need a one-member server: the members of an ensemble tokenize \
             differently; send the prompt as text",
        ));
    }
    Ok(Prompt::Ids(vec![ids]))
}

fn chat_prompt(messages: Option<Vec<ChatMessage>>) -> Result<Prompt, ApiError> {
    let messages = messages.ok_or_else(|| ApiError::param("messages", "`messages` is required"))?;
    if messages.is_empty() {
        return Err(ApiError::param("messages", "`messages` is empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "tool" | "function" => {
                return Err(ApiError::param(
                    "messages",
                    format!(
                        "messages[{i}]: the role `{}` is not supported (tools are not)",
                        m.role
                    ),
                ))
            }
            r => r
                .parse::<Role>()
                .map_err(|e| ApiError::param("messages", format!("messages[{i}]: {e}")))?,
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::param(
                            "messages",
                            format!("messages[{i}]: content parts of type `{}` are not supported (text only)", p.kind),
                        ));
                    }
                    text.push_str(p.text.as_deref().unwrap_or_default());
                }
                text
            }
        };
        out.push(Message::new(role, content));
    }
    Ok(Prompt::Chat(out))
}

/// Turns the call's prompt into each taking-part member's ids and checks that they fit
/// its context (tokenizing can take milliseconds: run it off the async threads).
pub fn encode(mut call: Call, members: &[MemberInfo]) -> Result<Call, ApiError> {
    let param = call.endpoint.prompt_param();
    let ids: Vec<Vec<u32>> = match &call.request.prompt {
        Prompt::Ids(given) => {
            let m = &members[call.slots[0]];
            if let Some(&bad) = given[0].iter().find(|&&id| id as usize >= m.vocab_len) {
                return Err(ApiError::param(
                    param,
                    format!(
                        "token id {bad} is outside the vocabulary of `{}` ({} ids)",
                        m.name, m.vocab_len
                    ),
                ));
            }
            given.clone()
        }
        prompt => call
            .slots
            .iter()
            .map(|&s| {
                let m = &members[s];
                encode_prompt(&m.tokenizer, &m.name, prompt)
                    .map_err(|e| prompt_error(e).with_param(param))
            })
            .collect::<Result<_, _>>()?,
    };
    for (ids, &s) in ids.iter().zip(&call.slots) {
        let m = &members[s];
        if ids.is_empty() {
            return Err(ApiError::param(param, "the prompt is empty"));
        }
        if ids.len() > m.context_length {
            return Err(ApiError::param(
                param,
                format!(
                    "the prompt is {} tokens for member `{}`, whose context holds {}; shorten the prompt",
                    ids.len(),
                    m.name,
                    m.context_length
                ),
            )
            .with_code("context_length_exceeded"));
        }
    }
    call.request.prompt = Prompt::Ids(ids);
    Ok(call)
}

/// An error of turning the client's text into ids. A member's tokenizer or chat
/// template that fails on it (a template's `raise_exception`, its step budget spent on
/// a huge conversation, text the tokenizer cannot encode) is the request's fault: 400,
/// which clients do not retry.
fn prompt_error(e: EngineError) -> ApiError {
    let EngineError::Model { member, source } = &e else {
        return ApiError::from(e);
    };
    match source {
        tutti_models::Error::ChatTemplate(why) => ApiError::bad(format!(
            "the chat template of member `{member}` refused these messages: {why}; \
             change the messages (many templates need user and assistant turns that \
             alternate, or no system message) or send a raw prompt to /v1/completions"
        )),
        tutti_models::Error::Tokenizer(why) => ApiError::bad(format!(
            "member `{member}` cannot tokenize this prompt: {why}; change the text"
        )),
        _ => ApiError::from(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            name: "pair".into(),
            template: Request::raw(""),
            max_tokens_cap: 100,
            seeds: Default::default(),
        }
    }

    /// Parses with a two-member server whose members are never tokenized here.
    fn parse2(body: &str, ep: Endpoint) -> Result<Call, ApiError> {
        parse(body.as_bytes(), ep, &limits(), &fake_members(2))
    }

    fn fake_members(n: usize) -> Vec<MemberInfo> {
        // A tokenizer is needed only by `encode`; these tests stop before it.
        (0..n)
            .map(|i| MemberInfo {
                name: format!("m{i}"),
                tokenizer: tiny_tokenizer(),
                context_length: 8,
                vocab_len: 10,
            })
            .collect()
    }

    fn tiny_tokenizer() -> ModelTokenizer {
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "<unk>": 2}, "unk_token": "<unk>"}
        });
        let dir = std::env::temp_dir().join(format!("tutti-serve-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        ModelTokenizer::from_tokenizer_json(&path, None, None, None).unwrap()
    }

    #[test]
    fn ranges_and_unsupported_fields_are_refused_with_their_param() {
        let cases = [
            (r#"{"prompt":"x","temperature":3}"#, "temperature"),
            (r#"{"prompt":"x","temperature":1,"top_p":0}"#, "top_p"),
            (r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":101}"#, "max_tokens"),
            (r#"{"prompt":"x","n":2}"#, "n"),
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"x","echo":true,"stream":true}"#, "echo"),
            (r#"{"prompt":[1,2,3]}"#, "prompt"),
            (r#"{"prompt":["a","b"]}"#, "prompt"),
            (r#"{"prompt":"x","tutti":{"weights":[1]}}"#, "tutti.weights"),
            (
                r#"{"prompt":"x","tutti":{"members":[0,0]}}"#,
                "tutti.members",
            ),
            (
                r#"{"prompt":"x","tutti":{"gate":"sometimes"}}"#,
                "tutti.gate",
            ),
            (
                r#"{"prompt":"x","tutti":{"auto_weights":"auto:-1"}}"#,
                "tutti.auto_weights",
            ),
            (
                r#"{"prompt":"x","return_tokens_as_token_ids":true}"#,
                "return_tokens_as_token_ids",
            ),
        ];
        for (body, param) in cases {
            let e = parse2(body, Endpoint::Completions).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}: {e}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
        }
        let e = parse2(
            r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#,
            Endpoint::Chat,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let e = parse2(r#"{"model":"other","prompt":"x"}"#, Endpoint::Completions).unwrap_err();
        assert_eq!(e.status.as_u16(), 404);
        let e = parse2(r#"{"prompt": "x""#, Endpoint::Completions).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn a_valid_request_maps_to_engine_settings() {
        let c = parse2(
            r#"{"model":"pair","prompt":"hi","max_tokens":5,"temperature":0.5,"seed":7,
                "stop":["\n"],"logprobs":3,"tutti":{"weights":[1,0.5],"top_k":2,"combine":"product",
                "gate":"disagree","auto_weights":"auto:0.2"}}"#,
            Endpoint::Completions,
        )
        .unwrap();
        let r = &c.request;
        assert_eq!(r.prompt, Prompt::Raw("hi".into()));
        assert_eq!(r.max_tokens, 5);
        assert_eq!(
            r.sampling,
            Sampling::Sample {
                temperature: 0.5,
                top_p: 1.0,
                seed: 7
            }
        );
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert_eq!(
            (r.alternatives, r.top_k),
            (3, 3),
            "top-k is raised to the alternatives"
        );
        assert_eq!(r.combine, Combine::Product);
        assert_eq!(r.gate, crate::engine::Gate::Disagree);
        assert_eq!(r.auto_weights, Some(0.2));
        assert_eq!(r.members, None);
        assert_eq!(c.logprobs, Some(3));
        // A member's name runs it alone, and then token ids work.
        let c = parse2(
            r#"{"model":"m1","prompt":[[3,4]],"temperature":0}"#,
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!(c.slots, vec![1]);
        assert_eq!(c.request.members, Some(vec![1]));
        assert_eq!(c.request.prompt, Prompt::Ids(vec![vec![3, 4]]));
        assert_eq!(c.request.sampling, Sampling::Greedy);
        // Chat: content parts, developer role, default budget from the template.
        let c = parse2(
            r#"{"messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
                "logprobs":true,"top_logprobs":2,"stream":true,"stream_options":{"include_usage":true}}"#,
            Endpoint::Chat,
        )
        .unwrap();
        assert_eq!(
            c.request.prompt,
            Prompt::Chat(vec![Message::system("be brief"), Message::user("hi")])
        );
        assert_eq!(c.request.max_tokens, 100, "the template's 256, capped");
        assert!(c.stream && c.include_usage);
        assert_eq!(c.logprobs, Some(2));
    }

    /// A WordLevel tokenizer without an unknown token (encoding an unknown word fails)
    /// and a template whose work grows with the square of a message's length.
    fn strict_tokenizer() -> ModelTokenizer {
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "<unk>"}
        });
        let template =
            "{% for m in messages %}{% for c in m['content'] %}{% for d in m['content'] %}\
                        {% endfor %}{% endfor %}{{ m['content'] }}{% endfor %}";
        let tcfg = serde_json::json!({ "chat_template": template });
        ModelTokenizer::from_tokenizer_json_bytes(
            std::path::Path::new("strict/tokenizer.json"),
            json.to_string().as_bytes(),
            Some(&tcfg),
            None,
            None,
        )
        .unwrap()
    }

    /// The client's text is at fault when its tokenizer or a member's template fails on
    /// it: 400, never a 500 that SDKs would retry.
    #[test]
    fn tokenizer_and_template_failures_on_client_text_are_400() {
        let mut members = fake_members(1);
        members[0].tokenizer = strict_tokenizer();
        members[0].context_length = 100_000;
        let l = limits();
        let call = |body: &str, ep| {
            let c = parse(body.as_bytes(), ep, &l, &members).unwrap();
            encode(c, &members).unwrap_err()
        };
        let e = call(r#"{"prompt":"a zzz b"}"#, Endpoint::Completions);
        assert_eq!(
            (e.status.as_u16(), e.kind, e.param.as_deref()),
            (400, "invalid_request_error", Some("prompt")),
            "{e}"
        );
        let long = format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "a".repeat(4000)
        );
        let e = call(&long, Endpoint::Chat);
        assert_eq!(
            (e.status.as_u16(), e.kind, e.param.as_deref()),
            (400, "invalid_request_error", Some("messages")),
            "{e}"
        );
        assert!(e.message.contains("steps"), "{e}");
    }

    #[test]
    fn encode_checks_context_and_vocabulary() {
        let members = fake_members(1);
        let l = limits();
        let c = parse(
            br#"{"model":"pair","prompt":"a b a"}"#,
            Endpoint::Completions,
            &l,
            &members,
        )
        .unwrap();
        let c = encode(c, &members).unwrap();
        assert_eq!(c.request.prompt, Prompt::Ids(vec![vec![0, 1, 0]]));
        let long = format!(r#"{{"prompt":"{}"}}"#, "a ".repeat(9));
        let c = parse(long.as_bytes(), Endpoint::Completions, &l, &members).unwrap();
        let e = encode(c, &members).unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"), "{e}");
        let c = parse(br#"{"prompt":[1,99]}"#, Endpoint::Completions, &l, &members).unwrap();
        let e = encode(c, &members).unwrap_err();
        assert!(e.message.contains("token id 99"), "{e}");
    }
}
