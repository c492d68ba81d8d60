//! `tutti serve` with the demo models, through a real HTTP client on an ephemeral
//! loopback port: the OpenAI endpoints, streaming, logprobs, stop strings, seeded
//! sampling, every error case, the queue (429), a client that leaves mid-stream, API
//! keys, graceful shutdown, and greedy output equal to `tutti generate`'s.

mod serve_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::{demo, get, post, post_raw, stream, unix_ms, ServerProc, GEMMA, SMOL};

const PROMPT: &str = "The capital of France is";

fn completion(model: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0});
    merge(&mut b, extra);
    b
}

fn chat_body(model: &str, text: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "temperature": 0,
    });
    merge(&mut b, extra);
    b
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), extra) {
        a.extend(b);
    }
}

fn ok(reply: &serve_support::Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Completions, chat, streaming, logprobs, stop, seeds, models, metrics and every error
/// case against one server of the demo pair.
#[test]
fn pair_server_speaks_the_openai_api() {
    let s = ServerProc::pair(&[
        "--name",
        "pair",
        "--max-tokens-cap",
        "64",
        "--max-body-bytes",
        "100000",
    ]);
    let completions = s.url("/v1/completions");
    let chat = s.url("/v1/chat/completions");

    // Models: the ensemble and each member by name.
    let models = ok(&get(&s.url("/v1/models"), None));
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids[0], "pair");
    assert_eq!(ids.len(), 3, "{models}");
    assert_eq!(ok(&get(&s.url("/health"), None))["status"], "ok");

    // Completions: text, usage, finish reason, per-member ids.
    let c = ok(&post(&completions, &completion("pair", json!({}))));
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["model"], "pair");
    let text = c["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    let usage = &c["usage"];
    let n = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&n), "{c}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + n
    );
    let reason = c["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(reason == "length" || reason == "stop", "{c}");
    assert_eq!(c["tutti"]["members"].as_array().unwrap().len(), 2);

    // Streaming gives the same text, usage last, then [DONE].
    let sse = stream(
        &completions,
        &completion(
            "pair",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    assert!(sse.done, "no [DONE]");
    assert_eq!(sse.text(), text);
    assert_eq!(sse.finish_reasons(), vec![reason.to_string()]);
    let last = sse.chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"], *usage);
    for c in &sse.chunks[..sse.chunks.len() - 1] {
        assert!(c["usage"].is_null(), "{c}");
        assert_eq!(c["object"], "text_completion");
    }

    // Chat: non-streamed and streamed agree.
    let body = chat_body("pair", "Name a color.", json!({}));
    let c = ok(&post(&chat, &body));
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    let chat_text = c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sbody = body.clone();
    merge(&mut sbody, json!({"stream": true}));
    let sse = stream(&chat, &sbody);
    assert!(sse.done);
    assert_eq!(sse.text(), chat_text);
    assert_eq!(sse.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(sse
        .chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(sse.chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(sse.finish_reasons().len(), 1);

    check_logprobs(&completions, &chat);
    check_stop(&completions, &text);
    check_seeds(&completions);
    check_errors(&s);

    // The errors left nothing behind: the same request gives the same text.
    let again = ok(&post(&completions, &completion("pair", json!({}))));
    assert_eq!(again["choices"][0]["text"], text.as_str());
    // A member alone, by its name.
    let member = ids[1].to_string();
    let solo = ok(&post(&completions, &completion(&member, json!({}))));
    assert_eq!(solo["model"], member.as_str());
    assert_eq!(solo["tutti"]["members"].as_array().unwrap().len(), 1);

    let metrics = get(&s.url("/metrics"), None);
    assert_eq!(metrics.status, 200);
    let m = metrics.body;
    for needle in [
        "tutti_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
        "status=\"400\"",
        "status=\"404\"",
        "status=\"413\"",
        "tutti_queue_depth 0",
        "tutti_ensembled_share",
        "tutti_rollbacks_total",
    ] {
        assert!(m.contains(needle), "{needle} missing from /metrics:\n{m}");
    }
    let steps: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tutti_step_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(steps > 10, "{m}");
}

fn check_logprobs(completions: &str, chat: &str) {
    // Completions API: tokens, their logprobs, the alternatives and text offsets.
    let c = ok(&post(
        completions,
        &completion("pair", json!({"logprobs": 3})),
    ));
    let choice = &c["choices"][0];
    let text = choice["text"].as_str().unwrap();
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text, "{lp}");
    let n = tokens.len();
    assert_eq!(
        n as u64,
        c["usage"]["completion_tokens"].as_u64().unwrap(),
        "{c}"
    );
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    let mut at = 0;
    for (t, &o) in tokens.iter().zip(&offsets) {
        assert_eq!(o, at as u64);
        at += t.chars().count();
    }
    for i in 0..n {
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{lp}");
        assert!(chosen <= 0.0);
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        // Greedy: the chosen token is the most probable of the combined distribution.
        assert!((chosen - best).abs() < 1e-6, "{chosen} vs {best}: {lp}");
    }

    // Chat API: content entries with exact bytes and top alternatives.
    let body = chat_body(
        "pair",
        "Name a color.",
        json!({"logprobs": true, "top_logprobs": 2}),
    );
    let c = ok(&post(chat, &body));
    let content = c["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let text = c["choices"][0]["message"]["content"].as_str().unwrap();
    let mut bytes = Vec::new();
    for e in content {
        let b: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect();
        bytes.extend_from_slice(&b);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{e}");
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        assert!(top[0]["bytes"].is_array() && top[0]["token"].is_string());
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), text);

    // Streamed logprobs are the same entries, spread over the chunks.
    let mut sbody = body;
    merge(&mut sbody, json!({"stream": true}));
    let sse = stream(chat, &sbody);
    let streamed: Vec<Value> = sse
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(&streamed, content);
}

fn check_stop(completions: &str, text: &str) {
    // A stop string from the middle of the greedy text cuts it there.
    let chars: Vec<char> = text.chars().collect();
    assert!(
        chars.len() >= 6,
        "greedy text too short for a stop test: {text:?}"
    );
    let stop: String = chars[3..5].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let c = ok(&post(
        completions,
        &completion("pair", json!({"stop": [stop.clone(), "never appears"]})),
    ));
    assert_eq!(c["choices"][0]["text"], cut, "stop {stop:?}");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    let sse = stream(
        completions,
        &completion("pair", json!({"stop": stop, "stream": true})),
    );
    assert_eq!(sse.text(), cut);
    assert_eq!(sse.finish_reasons(), vec!["stop".to_string()]);
}

fn check_seeds(completions: &str) {
    let sampled = |seed: u64| {
        let c = ok(&post(
            completions,
            &completion(
                "pair",
                json!({"temperature": 1.3, "top_p": 0.95, "seed": seed, "max_tokens": 10}),
            ),
        ));
        (
            c["choices"][0]["text"].as_str().unwrap().to_string(),
            c["tutti"]["members"][0]["ids"].clone(),
        )
    };
    let a = sampled(5);
    assert_eq!(a, sampled(5), "the same seed gives the same text");
    let others = [sampled(6), sampled(7)];
    assert!(
        others.iter().any(|o| *o != a),
        "three seeds gave one text: {a:?}"
    );
}

fn check_errors(s: &ServerProc) {
    let completions = s.url("/v1/completions");
    let chat = s.url("/v1/chat/completions");
    // Malformed JSON.
    let e = post_raw(&completions, "{\"prompt\": \"x\",", None).error(400);
    assert_eq!(e["type"], "invalid_request_error");
    assert!(
        e["message"].as_str().unwrap().contains("not valid JSON"),
        "{e}"
    );
    // Wrong types.
    post_raw(
        &completions,
        "{\"prompt\": \"x\", \"max_tokens\": \"many\"}",
        None,
    )
    .error(400);
    // Unknown model.
    let e = post(&completions, &completion("gpt-4", json!({}))).error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    // Ranges.
    for (extra, param) in [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"temperature": 0.7, "top_p": 0}), "top_p"),
        (json!({"max_tokens": 65}), "max_tokens"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"n": 2}), "n"),
        (json!({"logprobs": 50}), "logprobs"),
        (json!({"tutti": {"top_k": 0}}), "tutti.top_k"),
        (json!({"tutti": {"weights": [1, -1]}}), "tutti.weights"),
        (json!({"tutti": {"combine": "median"}}), "tutti.combine"),
        (json!({"prompt": [1, 2, 3]}), "prompt"),
        (
            json!({"return_tokens_as_token_ids": true, "logprobs": 1}),
            "return_tokens_as_token_ids",
        ),
    ] {
        let e = post(&completions, &completion("pair", extra.clone())).error(400);
        assert_eq!(e["param"], param, "{extra}: {e}");
    }
    let e = post(&chat, &chat_body("pair", "hi", json!({"top_logprobs": 3}))).error(400);
    assert_eq!(e["param"], "top_logprobs");
    let e = post(&chat, &json!({"model": "pair", "messages": []})).error(400);
    assert_eq!(e["param"], "messages");
    let e = post(
        &chat,
        &json!({"messages": [{"role": "tool", "content": "x"}]}),
    )
    .error(400);
    assert_eq!(e["param"], "messages");
    // Token ids to an ensemble name the reason.
    let e = post(&completions, &json!({"prompt": [[1, 2, 3]]})).error(400);
    assert!(e["message"].as_str().unwrap().contains("one-member"), "{e}");
    // A prompt longer than a member's context (SmolLM2: 8192 tokens).
    let long = "hello ".repeat(9000);
    let e = post(
        &completions,
        &json!({"model": "pair", "prompt": long, "max_tokens": 1}),
    )
    .error(400);
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    assert!(e["message"].as_str().unwrap().contains("shorten"), "{e}");
    // Over the body limit.
    let huge = json!({"model": "pair", "prompt": "x".repeat(200_000)});
    let e = post(&completions, &huge).error(413);
    assert!(e["message"].as_str().unwrap().contains("--max-body-bytes"));
    // Unknown path and wrong method.
    post(&s.url("/v1/embeddings"), &json!({})).error(404);
    assert_eq!(get(&completions, None).status, 405);
}

/// Greedy output through the server equals `tutti generate --json` (text and every
/// member's ids) on several prompts, chat and raw, served one after another on one
/// server: what ran before (the prefix the members hold, fed back in other chunks)
/// changes nothing, and a request repeated at once gives the same answer.
#[test]
fn greedy_through_the_server_equals_tutti_generate() {
    let s = ServerProc::pair(&["--name", "pair"]);
    let (a, b) = (demo(SMOL), demo(GEMMA));
    let prompts = [
        "The capital of France is",
        "Write one word that rhymes with cat.",
        "What is 2 + 3?",
        "Name three colors.",
        "List three fruits.",
        "Translate 'good morning' to French.",
        "Name three colors.",
        "Name three colors.",
    ];
    let generate = |prompt: &str, raw: bool| -> Value {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tutti"));
        cmd.args([
            "generate",
            "-m",
            &a,
            "-m",
            &b,
            "--greedy",
            "--max-tokens",
            "16",
            "--json",
            "-q",
        ]);
        if raw {
            cmd.arg("--raw");
        }
        let out = cmd.arg(prompt).env("HF_HUB_OFFLINE", "1").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let compare = |served: &Value, reference: &Value, text_field: &str| {
        let choice = &served["choices"][0];
        let text = if text_field == "text" {
            &choice["text"]
        } else {
            &choice["message"]["content"]
        };
        assert_eq!(text, &reference["text"]);
        let ids: Vec<Value> = served["tutti"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["ids"].clone())
            .collect();
        assert_eq!(Value::Array(ids), reference["ids"]);
    };
    for p in prompts {
        let served = ok(&post(
            &s.url("/v1/chat/completions"),
            &json!({"model": "pair", "messages": [{"role": "user", "content": p}],
                    "max_tokens": 16, "temperature": 0}),
        ));
        compare(&served, &generate(p, false), "message");
    }
    let served = ok(&post(
        &s.url("/v1/completions"),
        &json!({"model": "pair", "prompt": PROMPT, "max_tokens": 16, "temperature": 0}),
    ));
    compare(&served, &generate(PROMPT, true), "text");
}

/// Auto weights from the second request on: the server holds the prompts' shared
/// template header from the request before, and each request must still be weighted
/// as a fresh `tutti generate --weights auto` run weights it.
#[test]
fn auto_weights_through_the_server_equal_fresh_runs() {
    let s = ServerProc::pair(&["--name", "pair", "--weights", "auto"]);
    let (a, b) = (demo(SMOL), demo(GEMMA));
    let weights_of = |v: &Value| -> Vec<f64> {
        v["members"]
            .as_array()
            .unwrap_or_else(|| panic!("no members in {v}"))
            .iter()
            .map(|m| m["weight"].as_f64().unwrap())
            .collect()
    };
    for p in [
        "Name a color.",
        "What is the capital of Italy?",
        "Write one word that rhymes with cat.",
    ] {
        let served = ok(&post(
            &s.url("/v1/chat/completions"),
            &json!({"model": "pair", "messages": [{"role": "user", "content": p}],
                    "max_tokens": 2, "temperature": 0}),
        ));
        let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
            .args(["generate", "-m", &a, "-m", &b, "--weights", "auto"])
            .args(["--greedy", "--max-tokens", "2", "--json", "-q", p])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fresh: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (got, want) = (weights_of(&served["tutti"]), weights_of(&fresh));
        assert!(
            want.iter().all(|&w| w > 0.0 && w < 1.0),
            "{p:?}: fresh weights {want:?}"
        );
        assert_eq!(got, want, "{p:?}: served {got:?}, fresh {want:?}");
    }
    assert!(
        !s.stderr_text().contains("cannot score its prompt"),
        "{}",
        s.stderr_text()
    );
}

/// A one-member server: API keys, token-id prompts, and tokens as `token_id:<id>`.
#[test]
fn solo_server_keys_token_ids_and_token_id_logprobs() {
    let s = ServerProc::start(&["-m", &demo(SMOL)], &[("TUTTI_API_KEY", "sekret")]);
    let url = s.url("/v1/completions");
    let body = completion("ignored", json!({}));
    // Keys: missing, wrong, right; /health needs none.
    let e = post_raw(&url, &body.to_string(), None);
    assert_eq!(e.www_authenticate.as_deref(), Some("Bearer"));
    assert_eq!(e.error(401)["code"], "invalid_api_key");
    post_raw(&url, &body.to_string(), Some("sekreT")).error(401);
    assert_eq!(get(&s.url("/v1/models"), None).status, 401);
    assert_eq!(get(&s.url("/metrics"), Some("wrong")).status, 401);
    assert_eq!(get(&s.url("/health"), None).status, 200);
    let models = get(&s.url("/v1/models"), Some("sekret")).json();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);

    let key = Some("sekret");
    let by_text = post_raw(&url, &completion(&name, json!({})).to_string(), key).json();
    // The same prompt as the tokenizer's ids gives the same continuation.
    let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(["tokenize", "-m", &demo(SMOL), "--json", PROMPT])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ids = serde_json::from_slice::<Value>(&out.stdout).unwrap()["ids"].clone();
    let by_ids = post_raw(
        &url,
        &json!({"model": name, "prompt": ids, "max_tokens": 8, "temperature": 0}).to_string(),
        key,
    )
    .json();
    assert_eq!(by_ids["choices"][0]["text"], by_text["choices"][0]["text"]);
    assert_eq!(by_ids["usage"], by_text["usage"]);
    // Out-of-vocabulary ids are refused before queueing.
    let e = post_raw(
        &url,
        &json!({"prompt": [1, 4_000_000_000u64], "max_tokens": 2}).to_string(),
        key,
    )
    .error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("outside the vocabulary"),
        "{e}"
    );

    // vLLM's return_tokens_as_token_ids: the tokens are the member's own ids.
    let c = post_raw(
        &url,
        &completion(
            &name,
            json!({"logprobs": 2, "return_tokens_as_token_ids": true}),
        )
        .to_string(),
        key,
    )
    .json();
    let tokens: Vec<String> = c["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = c["tutti"]["members"][0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| format!("token_id:{id}"))
        .collect();
    assert_eq!(tokens, expected);
    for top in c["choices"][0]["logprobs"]["top_logprobs"]
        .as_array()
        .unwrap()
    {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top.keys().all(|k| k.starts_with("token_id:")), "{top:?}");
    }
    // Chat: same rendering, bytes stay the token's bytes.
    let c = post_raw(
        &s.url("/v1/chat/completions"),
        &chat_body(
            &name,
            "Say hi.",
            json!({"logprobs": true, "top_logprobs": 1, "return_tokens_as_token_ids": true}),
        )
        .to_string(),
        key,
    )
    .json();
    let content = c["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    let mut bytes = Vec::new();
    for e in content {
        assert!(e["token"].as_str().unwrap().starts_with("token_id:"), "{e}");
        bytes.extend(
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        c["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

/// Whether the engine decodes a request now (from `/metrics`).
fn engine_busy(s: &ServerProc) -> bool {
    get(&s.url("/metrics"), None)
        .body
        .lines()
        .any(|l| l == "tutti_engine_busy 1")
}

/// A full queue answers 429 with Retry-After, and nothing else fails.
#[test]
fn a_full_queue_answers_429_and_nothing_else() {
    // One request at a time: the burst must wait in the queue.
    let s = ServerProc::solo(&["--queue", "1", "--max-batch", "1"]);
    let url = s.url("/v1/completions");
    // A long streaming request holds the engine.
    let long = std::thread::spawn({
        let url = url.clone();
        move || {
            stream(
                &url,
                &json!({"prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stream": true,
                        "tutti": {"top_k": 1}}),
            )
        }
    });
    // Wait until it runs: the engine is busy and the queue is empty.
    let busy = Instant::now();
    while !engine_busy(&s) {
        assert!(
            busy.elapsed() < Duration::from_secs(300),
            "the engine never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                post(
                    &url,
                    &json!({"prompt": PROMPT, "max_tokens": 2, "temperature": 0}),
                )
            })
        })
        .collect();
    let replies: Vec<_> = burst.into_iter().map(|h| h.join().unwrap()).collect();
    let (mut accepted, mut refused) = (0, 0);
    for r in &replies {
        match r.status {
            200 => {
                accepted += 1;
                assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
            }
            429 => {
                refused += 1;
                assert_eq!(r.retry_after.as_deref(), Some("1"));
                assert_eq!(r.error(429)["code"], "rate_limit_exceeded");
            }
            other => panic!("unexpected status {other}: {}", r.body),
        }
    }
    assert!(refused >= 1, "no 429 from a queue of 1: {replies:?}");
    assert!(
        accepted >= 1,
        "the free queue place took nothing: {replies:?}"
    );
    let sse = long.join().unwrap();
    assert!(sse.done);
    assert_eq!(sse.finish_reasons().len(), 1);
    let m = get(&s.url("/metrics"), None).body;
    assert!(m.contains("status=\"429\"}"), "{m}");
}

/// Writes a streaming request on a raw socket (so that closing it is a real disconnect)
/// and returns the reader.
fn raw_stream(base: &str, body: &Value) -> BufReader<TcpStream> {
    let addr = base.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    BufReader::new(sock)
}

/// Reads until the next `data:` line.
fn next_data(r: &mut BufReader<TcpStream>) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            return serde_json::from_str(d).unwrap();
        }
    }
}

/// A client that leaves mid-stream frees the engine: the next queued request starts
/// within one step of the disconnect (server-side start time against the moment the
/// socket closed, both wall clock on this machine); a queued request whose client left
/// is skipped.
#[test]
fn a_disconnect_mid_stream_frees_the_engine_within_one_step() {
    // One request at a time, so that the others wait for the one that leaves.
    let s = ServerProc::solo(&["--max-batch", "1"]);
    let long = json!({"prompt": PROMPT, "max_tokens": 400, "temperature": 0,
                      "stream": true, "tutti": {"top_k": 1}});
    let mut a = raw_stream(&s.base, &long);
    let first = next_data(&mut a);
    assert!(
        first["tutti"]["started_at_ms"].as_f64().is_some(),
        "{first}"
    );
    // C waits in the queue, then its client leaves: the engine must skip it.
    let mut c = raw_stream(&s.base, &long);
    let mut status = String::new();
    c.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    drop(c);
    // B waits in the queue (its headers come back once it is queued).
    let b = serve_support::agent()
        .post(&s.url("/v1/completions"))
        .header("Content-Type", "application/json")
        .send(
            json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0, "stream": true})
                .to_string(),
        )
        .unwrap();
    assert_eq!(b.status().as_u16(), 200);
    // Steps of A as the client sees them: one text chunk per step.
    let mut arrivals = vec![Instant::now()];
    for _ in 0..12 {
        next_data(&mut a);
        arrivals.push(Instant::now());
    }
    let step_ms = arrivals
        .windows(2)
        .skip(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    let left_at = unix_ms();
    drop(a);
    let sse = serve_support::read_sse(b.into_body().into_reader(), 200);
    assert!(sse.done);
    let started = sse.chunks[0]["tutti"]["started_at_ms"].as_f64().unwrap();
    let gap = started - left_at;
    eprintln!("disconnect → next request started: {gap:.1} ms (longest step seen {step_ms:.1} ms)");
    // One step (the one running when the socket closed) plus scheduling slack.
    assert!(
        gap <= step_ms + 25.0,
        "the next request started {gap:.1} ms after the disconnect; one step is {step_ms:.1} ms"
    );
    let m = get(&s.url("/metrics"), None).body;
    assert!(
        m.contains("tutti_generations_total{reason=\"cancelled\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tutti_skipped_total 1"),
        "the request whose client left still ran:\n{m}"
    );
}

/// Requests served together (`--max-batch 4`, more clients than that) get the answers
/// they get one at a time, a client leaving mid-stream does not disturb the others, and
/// `/metrics` shows rounds of several requests. A request that could never fit the KV
/// budget gets 503 naming it.
#[test]
fn concurrent_requests_decode_together_with_the_answers_they_get_alone() {
    let s = ServerProc::solo(&["--max-batch", "4", "--kv-budget", "300"]);
    let url = s.url("/v1/completions");
    let prompts = [
        "The capital of France is",
        "Once upon a time",
        "The three primary colors are",
        "Water boils at",
        "My favourite food is",
        "The sun rises in the",
    ];
    let body = |p: &str| json!({"prompt": p, "max_tokens": 12, "temperature": 0});
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| ok(&post(&url, &body(p)))["choices"][0]["text"].clone())
        .collect();
    // A client that leaves mid-stream while the others run.
    let mut leaving = raw_stream(
        &s.base,
        &json!({"prompt": "Count from one to fifty:", "max_tokens": 200, "temperature": 0,
                "stream": true}),
    );
    next_data(&mut leaving);
    let together: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (url, body) = (url.clone(), body(p));
            std::thread::spawn(move || post(&url, &body))
        })
        .collect();
    next_data(&mut leaving);
    drop(leaving);
    for (i, h) in together.into_iter().enumerate() {
        let reply = ok(&h.join().unwrap());
        assert_eq!(reply["choices"][0]["text"], alone[i], "{}", prompts[i]);
    }
    let rounds = metric(&s, "tutti_batch_size_count");
    let single = metric(&s, "tutti_batch_size_bucket{le=\"1\"}");
    assert!(rounds > single, "no round decoded more than one request");
    assert_eq!(metric(&s, "tutti_max_batch"), 4.0);
    assert!(metric(&s, "tutti_kv_budget_bytes") > 0.0);

    let refused = post(&url, &json!({"prompt": "Hi", "max_tokens": 400}));
    let err = refused.error(503);
    assert_eq!(err["code"], "kv_budget_exceeded", "{}", refused.body);
    assert!(
        err["message"].as_str().unwrap().contains("--kv-budget"),
        "{}",
        refused.body
    );
}

/// SIGTERM: no new requests, the running one finishes, exit code 0.
#[test]
fn sigterm_lets_the_running_request_finish_and_exits_zero() {
    let mut s = ServerProc::solo(&[]);
    let url = s.url("/v1/completions");
    let running = std::thread::spawn({
        let url = url.clone();
        move || {
            stream(
                &url,
                &json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": true}),
            )
        }
    });
    let t0 = Instant::now();
    while !engine_busy(&s) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the engine never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let sse = running.join().unwrap();
    assert!(sse.done);
    assert_eq!(sse.finish_reasons(), vec!["length".to_string()]);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        s.stderr_text()
    );
    assert!(
        serve_support::agent()
            .get(&s.url("/health"))
            .call()
            .is_err(),
        "the port still answers"
    );
}

/// A server started with `--temperature` and no `--seed` gives each seedless request a
/// draw of its own; a request's `seed` still makes its sample reproducible.
#[test]
fn seedless_requests_draw_their_own_samples_under_a_server_temperature() {
    let s = ServerProc::solo(&["--temperature", "1.5"]);
    let url = s.url("/v1/completions");
    let draw = |extra: Value| {
        let mut body = json!({"prompt": PROMPT, "max_tokens": 12});
        merge(&mut body, extra);
        let c = ok(&post(&url, &body));
        c["tutti"]["members"][0]["ids"].clone()
    };
    let seedless: Vec<Value> = (0..3).map(|_| draw(json!({}))).collect();
    assert!(
        seedless.iter().any(|d| *d != seedless[0]),
        "three seedless requests drew one sample: {seedless:?}"
    );
    assert_eq!(
        draw(json!({"seed": 3})),
        draw(json!({"seed": 3})),
        "a seed makes the draw reproducible"
    );
}

/// A folder model whose chat template refuses some conversations: the tiny Gemma 3
/// fixture with Gemma 3's tokenizer and template (roles must alternate).
fn refusing_template_model() -> String {
    let dir = std::env::temp_dir().join(format!("tutti-serve-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(root.join("tests/fixtures/tiny/gemma3").join(f), dir.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let from = root.join("models-cache/tokenizers/gemma3").join(f);
        assert!(
            from.exists(),
            "{} is missing: run scripts/fetch-tokenizers.sh",
            from.display()
        );
        std::fs::copy(from, dir.join(f)).unwrap();
    }
    dir.display().to_string()
}

/// What the client got wrong is a 400 `invalid_request_error` (SDKs retry 5xx): a chat
/// template's `raise_exception`; a wrong method is a 405 with the OpenAI error object.
#[test]
fn client_errors_are_400_and_wrong_methods_405_with_an_error_object() {
    let model = refusing_template_model();
    let s = ServerProc::start(&["-m", &model], &[]);
    let chat = s.url("/v1/chat/completions");
    let e = post(
        &chat,
        &json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                "max_tokens": 1}),
    )
    .error(400);
    assert_eq!(e["type"], "invalid_request_error", "{e}");
    assert_eq!(e["param"], "messages", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("alternate"),
        "the template's own words: {e}"
    );
    // Wrong methods.
    let e = get(&s.url("/v1/completions"), None).error(405);
    assert_eq!(e["type"], "invalid_request_error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("POST"), "{e}");
    get(&chat, None).error(405);
    let e = post(&s.url("/v1/models"), &json!({})).error(405);
    assert!(e["message"].as_str().unwrap().contains("GET"), "{e}");
    post(&s.url("/health"), &json!({})).error(405);
    drop(s);
    let _ = std::fs::remove_dir_all(&model);
}

/// Prometheus text value of `name` (a metric without labels).
fn metric(s: &ServerProc, name: &str) -> f64 {
    let text = get(&s.url("/metrics"), None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// With the queue full, a request is refused before its body is read: a client that
/// announces a body and never sends it still gets its 429 at once.
#[test]
fn a_full_queue_answers_429_before_reading_the_body() {
    let s = ServerProc::solo(&["--queue", "1"]);
    let long = json!({"prompt": "1, 2, 3, 4, 5,", "max_tokens": 2000, "temperature": 0,
                      "stream": true, "tutti": {"top_k": 1}});
    // One request runs, one waits.
    let mut running = raw_stream(&s.base, &long);
    next_data(&mut running);
    let mut waiting = raw_stream(&s.base, &long);
    let mut status = String::new();
    waiting.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(metric(&s, "tutti_queue_depth"), 1.0);
    // Headers announcing a large body, and no body.
    let addr = s.base.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = BufReader::new(sock);
    let mut status = String::new();
    reply
        .read_line(&mut status)
        .expect("no answer while the body was still missing");
    assert!(status.starts_with("HTTP/1.1 429"), "{status}");
}

/// A second SIGTERM (or Ctrl-C) during the drain ends the server at once.
#[test]
fn a_second_sigterm_exits_at_once() {
    let mut s = ServerProc::solo(&["--drain-seconds", "600"]);
    let long = json!({"prompt": "1, 2, 3, 4, 5,", "max_tokens": 4000, "temperature": 0,
                      "stream": true, "tutti": {"top_k": 1}});
    let mut running = raw_stream(&s.base, &long);
    next_data(&mut running);
    let pid = s.child.id().to_string();
    let term = || {
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success())
    };
    term();
    // The first signal drains: the request goes on.
    for _ in 0..3 {
        next_data(&mut running);
    }
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "exited while draining"
    );
    term();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still running 5 s after the second SIGTERM:\n{}",
            s.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !status.success(),
        "an interrupted drain is not a clean exit"
    );
}

/// `--api-key-file` reads the key from a file (nothing in `ps`); a key given on the
/// command line works but is warned about; an empty key file is refused.
#[test]
fn api_key_file_and_a_warning_for_a_key_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("tutti-serve-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let key_file = file.display().to_string();
    let s = ServerProc::solo(&["--api-key-file", &key_file]);
    let models = s.url("/v1/models");
    assert_eq!(get(&models, None).status, 401);
    assert_eq!(get(&models, Some("s3cret-from-file")).status, 200);
    assert!(
        !s.stderr_text().contains("--api-key-file"),
        "no warning for a key file:\n{}",
        s.stderr_text()
    );
    drop(s);

    let s = ServerProc::solo(&["--api-key", "on-the-command-line"]);
    assert_eq!(
        get(&s.url("/v1/models"), Some("on-the-command-line")).status,
        200
    );
    let log = s.stderr_text();
    assert!(
        log.contains("--api-key-file") && log.contains("process list"),
        "no warning for a key on the command line:\n{log}"
    );
    drop(s);

    std::fs::write(&file, "  \n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args([
            "serve",
            "-m",
            &demo(SMOL),
            "--port",
            "0",
            "--api-key-file",
            &key_file,
        ])
        .env_remove("TUTTI_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("empty") && err.contains(&key_file), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(["serve", "-m", &demo(SMOL), "--port", "0"])
        .args(["--api-key-file", &key_file, "--api-key", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "both ways to give a key at once");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serves `ens` in this process on a loopback port while `f` runs with its base URL.
fn serve_in_process<T>(ens: tutti::Ensemble, f: impl FnOnce(&str) -> T) -> T {
    serve_in_process_with(ens, tutti::serve::ServeOptions::default(), f).0
}

/// [`serve_in_process`] with `options` (the port is always a free one); also returns
/// how long the server took to stop once `f` had returned.
fn serve_in_process_with<T>(
    ens: tutti::Ensemble,
    options: tutti::serve::ServeOptions,
    f: impl FnOnce(&str) -> T,
) -> (T, Duration) {
    use tutti::serve::{ServeOptions, Server};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = ServeOptions { port: 0, ..options };
    let server = rt.block_on(Server::bind(ens, options)).unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = rt.spawn(server.run(async {
        let _ = stopped.await;
    }));
    let out = f(&base);
    let t0 = Instant::now();
    let _ = stop.send(());
    rt.block_on(running).unwrap().unwrap();
    let took = t0.elapsed();
    // An engine thread still in a step is left behind, not waited for.
    rt.shutdown_background();
    (out, took)
}

/// A member whose forwards stall once `stall` is set (a served member that stopped
/// answering), around a real local model.
struct Stalling {
    inner: tutti::backends::LocalModel,
    stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl tutti::engine::Backend for Stalling {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn tokenizer(&self) -> &tutti::models::ModelTokenizer {
        self.inner.tokenizer()
    }
    fn logit_width(&self) -> usize {
        self.inner.logit_width()
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn forward(
        &mut self,
        context: &[u32],
        cached: usize,
    ) -> tutti::engine::Result<tutti::engine::Logits> {
        if self.stall.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(60));
        }
        self.inner.forward(context, cached)
    }
    fn uses_host_cpu(&self) -> bool {
        self.inner.uses_host_cpu()
    }
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
}

/// After a shutdown, the server stops within the drain time plus its grace periods even
/// when the engine thread hangs in a step: it does not wait for that step to end.
#[test]
fn shutdown_does_not_wait_for_a_hung_step_past_the_drain_time() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stall = Arc::new(AtomicBool::new(false));
    let model = tutti::models::Model::load(&demo(SMOL), &Default::default()).unwrap();
    let backend = Stalling {
        inner: tutti::backends::LocalModel::new(model),
        stall: stall.clone(),
    };
    let ens = tutti::Ensemble::builder()
        .backend(Box::new(backend), 1.0)
        .build()
        .unwrap();
    let options = tutti::serve::ServeOptions {
        drain: Duration::from_secs(1),
        ..Default::default()
    };
    let ((), took) = serve_in_process_with(ens, options, |base| {
        let body = json!({"prompt": PROMPT, "max_tokens": 200, "temperature": 0,
                          "stream": true, "tutti": {"top_k": 1}});
        let mut running = raw_stream(base, &body);
        next_data(&mut running);
        stall.store(true, Ordering::SeqCst);
        // The engine is now inside a step that lasts a minute; the client stays.
        std::mem::forget(running);
    });
    eprintln!(
        "stopped {:.1} s after the shutdown signal",
        took.as_secs_f64()
    );
    // 1 s of drain, at most 10 s for the connections, at most 10 s for the engine.
    assert!(
        took < Duration::from_secs(40),
        "the server waited {took:?} for a hung step"
    );
}

/// A panic part-way through a member's layers (injected by the test) answers 500, and
/// the next request is answered exactly as by a fresh server: no KV row the failed
/// forward left in the first layers' caches is attended to.
#[test]
fn a_caught_panic_leaves_no_stale_kv_rows() {
    use tutti::engine::{Ensemble, MemberSpec};
    use tutti_models::{LoadOptions, Model};
    let build = || {
        Ensemble::builder()
            .member(MemberSpec::new(demo(SMOL)))
            .build()
            .unwrap()
    };
    let body = json!({"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 3});
    let reference = serve_in_process(build(), |base| {
        ok(&post(&format!("{base}/v1/completions"), &body))
    });
    let mut model = Model::load(&demo(SMOL), &LoadOptions::default()).unwrap();
    model.lm.inject_panic_after_layer(5);
    let ens = Ensemble::builder().model(model, 1.0).build().unwrap();
    serve_in_process(ens, |base| {
        let url = format!("{base}/v1/completions");
        let failed = post(
            &url,
            &json!({"prompt": "Once upon a time, in a land far away, there lived a",
                    "max_tokens": 2, "temperature": 0}),
        );
        failed.error(500);
        let after = ok(&post(&url, &body));
        assert_eq!(after["choices"], reference["choices"]);
        let again = ok(&post(&url, &body));
        assert_eq!(again["choices"], reference["choices"]);
    });
}

/// `echo` with `max_tokens: 0` returns the prompt and its tokens' log-probabilities as
/// vLLM does (the first token's null), for a text prompt and for its ids alike; with
/// `max_tokens` above 0 the generated tokens follow. Streams and chat refuse it.
#[test]
fn echo_scores_the_prompt_like_vllm() {
    let s = ServerProc::solo(&[]);
    let url = s.url("/v1/completions");
    let name = get(&s.url("/v1/models"), None).json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let scored = |prompt: Value, max_tokens: u32| {
        ok(&post(
            &url,
            &json!({"model": name, "prompt": prompt, "max_tokens": max_tokens,
                    "echo": true, "logprobs": 2, "temperature": 0}),
        ))
    };
    let r = scored(json!(PROMPT), 0);
    let c = &r["choices"][0];
    assert_eq!(c["text"], PROMPT);
    assert_eq!(r["usage"]["completion_tokens"], 0);
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(["tokenize", "-m", &demo(SMOL), "--json", PROMPT])
        .output()
        .unwrap();
    let ids = serde_json::from_slice::<Value>(&out.stdout).unwrap()["ids"].clone();
    assert_eq!(
        tokens.len(),
        ids.as_array().unwrap().len(),
        "one entry per prompt token"
    );
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, PROMPT);
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    for i in 1..tokens.len() {
        let x = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(x <= 0.0 && !top.is_empty() && top.len() <= 2);
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            best >= x,
            "the top candidate is at least as likely as the prompt's token"
        );
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    // The prompt's ids give the same scores.
    let by_ids = scored(ids, 0);
    assert_eq!(by_ids["choices"][0]["logprobs"], c["logprobs"]);
    // Generated tokens follow the prompt's.
    let more = scored(json!(PROMPT), 3);
    let m = &more["choices"][0];
    assert!(m["text"].as_str().unwrap().starts_with(PROMPT));
    let n = m["logprobs"]["tokens"].as_array().unwrap().len();
    assert_eq!(n, tokens.len() + 3);
    assert_eq!(
        m["logprobs"]["token_logprobs"].as_array().unwrap()[..tokens.len()],
        lp["token_logprobs"].as_array().unwrap()[..]
    );
    // Refused: with a stream, in chat, and max_tokens 0 without echo.
    let e = post(
        &url,
        &json!({"prompt": PROMPT, "echo": true, "stream": true}),
    )
    .error(400);
    assert_eq!(e["param"], "echo");
    let chat = s.url("/v1/chat/completions");
    let e = post(&chat, &chat_body(&name, "hi", json!({"echo": true}))).error(400);
    assert_eq!(e["param"], "echo");
    let e = post(&url, &json!({"prompt": PROMPT, "max_tokens": 0})).error(400);
    assert_eq!(e["param"], "max_tokens");
}
