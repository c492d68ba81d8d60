//! Served members against real servers on loopback: `tutti serve` and llama.cpp's
//! `llama-server` (built by `scripts/llama-server.sh` from the llama.cpp source vendored
//! in the llama-cpp-python 0.3.36 sdist) as members next to local ones, lookahead, and
//! the faults: a server killed mid-generation, a stalling server, garbage answers and a
//! tokenizer mismatch.

mod remote_support;
mod serve_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remote_support::{demo, LlamaServer, GEMMA, PROMPTS, SMOL};
use serve_support::ServerProc;
use tutti::engine::{
    EngineError, Ensemble, Event, Flow, Generation, MemberSpec, OnMemberFailure, Request,
};

const TOKENS: usize = 24;

/// How far a served member's top probabilities may lie from the exact ones at T = 1.5
/// (the tail outside the top list is estimated; measured: within 25%).
const TAIL_TOLERANCE: f32 = 0.3;

fn build(specs: &[MemberSpec]) -> Ensemble {
    let mut b = Ensemble::builder().no_map_cache();
    for s in specs {
        b = b.member(s.clone());
    }
    b.build()
        .unwrap_or_else(|e| panic!("building {specs:?}: {e}"))
}

fn local(name: &str) -> MemberSpec {
    MemberSpec::new(demo(name))
}

fn remote(model: String, tokenizer: &str) -> MemberSpec {
    MemberSpec::new(model).tokenizer(demo(tokenizer))
}

fn run(ens: &mut Ensemble, prompt: &str) -> Generation {
    ens.generate_quiet(&Request::raw(prompt).max_tokens(TOKENS))
        .unwrap_or_else(|e| panic!("{prompt:?}: {e}"))
}

/// Ids of every member, per prompt.
fn ids(g: &Generation) -> Vec<Vec<u32>> {
    g.members.iter().map(|m| m.ids.clone()).collect()
}

/// A member served by `tutti serve` gives the same greedy ids as the same model in
/// process, alone and next to a local Gemma.
#[test]
fn tutti_serve_member_matches_the_local_model() {
    let server = ServerProc::solo(&["--name", "smol"]);
    let spec = remote(format!("openai+{}/v1#smol", server.base), SMOL);
    let mut solo_remote = build(std::slice::from_ref(&spec));
    let mut solo_local = build(&[local(SMOL)]);
    for prompt in &PROMPTS[..4] {
        let (r, l) = (run(&mut solo_remote, prompt), run(&mut solo_local, prompt));
        assert_eq!(ids(&r), ids(&l), "{prompt:?}: {:?} vs {:?}", r.text, l.text);
        assert!(r.members[0].round_trips.is_some_and(|n| n >= r.steps.len()));
        assert_eq!(l.members[0].round_trips, None);
    }
    let mut pair_remote = build(&[spec, local(GEMMA).weight(0.5)]);
    let mut pair_local = build(&[local(SMOL), local(GEMMA).weight(0.5)]);
    for prompt in &PROMPTS[..4] {
        let (r, l) = (run(&mut pair_remote, prompt), run(&mut pair_local, prompt));
        assert_eq!(r.text, l.text, "{prompt:?}");
        assert_eq!(ids(&r), ids(&l), "{prompt:?}");
    }
}

/// llama-server serving SmolLM2 next to a local Gemma, through the native and the
/// OpenAI endpoint, against the all-local pair on eight prompts.
#[test]
fn llama_server_member_against_the_all_local_pair() {
    let server = LlamaServer::start(SMOL, 2);
    let mut all_local = build(&[local(SMOL), local(GEMMA).weight(0.5)]);
    let expected: Vec<String> = PROMPTS
        .iter()
        .map(|p| run(&mut all_local, p).text)
        .collect();
    for (endpoint, spec) in [("native", server.native()), ("openai", server.openai())] {
        let mut ens = build(&[remote(spec, SMOL), local(GEMMA).weight(0.5)]);
        let mut same = 0;
        for (p, want) in PROMPTS.iter().zip(&expected) {
            let g = run(&mut ens, p);
            assert_eq!(g.tokens, TOKENS, "{endpoint} {p:?}: {:?}", g.text);
            if g.text == *want {
                same += 1;
            } else {
                eprintln!(
                    "{endpoint} {p:?}:\n  remote {:?}\n  local  {:?}",
                    g.text, want
                );
            }
        }
        eprintln!(
            "{endpoint}: {same} of {} prompts give the all-local text",
            PROMPTS.len()
        );
        assert!(same >= 5, "{endpoint}: only {same} of 8 prompts match");
    }
}

/// A llama-server that cannot start is reported at once, with how it ended, its last
/// log lines and the likely cause, instead of a wait for an address that never comes.
#[test]
fn llama_server_start_failure_is_reported_at_once() {
    let missing = std::env::temp_dir().join("tutti-test-no-such-model.gguf");
    let _ = std::fs::remove_file(&missing);
    let t0 = Instant::now();
    let e = LlamaServer::try_start(&missing.display().to_string(), 1, false, &[])
        .err()
        .expect("a missing model file cannot be served");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let code = e.status.and_then(|s| s.code());
    assert!(code.is_some_and(|c| c != 0), "{:?}", e.status);
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("exited with status {}", code.unwrap_or(0))),
        "{msg}"
    );
    assert!(!e.log_tail.is_empty(), "{msg}");
    for line in &e.log_tail {
        assert!(msg.contains(line.as_str()), "{msg}");
    }
    assert!(
        msg.contains("likely cause: the model file could not be loaded"),
        "{msg}"
    );
    assert!(!e.crashed());
}

/// A start-up crash by signal is named as such, and a crash with repacking on points
/// at `--no-repack`.
#[test]
fn llama_server_crash_message_names_the_signal_and_the_fix() {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::ExitStatus::from_raw(11);
    let e = remote_support::StartError {
        args: vec!["-m".into(), "m.gguf".into()],
        status: Some(status),
        log_tail: vec!["llama threadpool init, n_threads = 2".into()],
        cause: None,
    };
    assert!(e.crashed());
    assert_eq!(e.how(), "killed by signal 11 (SIGSEGV)");
    let msg = e.to_string();
    assert!(
        msg.contains("killed by signal 11 (SIGSEGV) during start-up"),
        "{msg}"
    );
    assert!(msg.contains("llama threadpool init"), "{msg}");
    let with_repack = remote_support::likely_cause(Some(status), &e.log_tail, true);
    assert!(with_repack.is_some_and(|c| c.contains("--no-repack")));
    let without = remote_support::likely_cause(Some(status), &e.log_tail, false);
    assert!(without.is_some_and(|c| !c.contains("--no-repack")));
}

/// Lookahead answers later steps from one request while the ensemble follows the
/// server's greedy path: fewer round trips, and the text of one request per step.
#[test]
fn lookahead_saves_round_trips() {
    let server = LlamaServer::start(SMOL, 2);
    let mut per_step = build(&[remote(server.native(), SMOL), local(GEMMA).weight(0.5)]);
    let mut ahead = build(&[
        remote(server.native(), SMOL).lookahead(4),
        local(GEMMA).weight(0.5),
    ]);
    let mut auto = build(&[
        remote(server.native(), SMOL).lookahead_auto(4),
        local(GEMMA).weight(0.5),
    ]);
    let (mut trips_step, mut trips_ahead, mut same) = (0, 0, 0);
    let (mut trips_auto, mut same_auto) = (0, 0);
    for p in &PROMPTS[..4] {
        let a = run(&mut per_step, p);
        let b = run(&mut ahead, p);
        let c = run(&mut auto, p);
        trips_step += a.members[0].round_trips.unwrap();
        trips_ahead += b.members[0].round_trips.unwrap();
        trips_auto += c.members[0].round_trips.unwrap();
        same += usize::from(a.text == b.text);
        same_auto += usize::from(a.text == c.text);
    }
    // `auto` looks ahead only where it measures a gain (on loopback it mostly does
    // not), so its round trips lie between the two; its text is the same either way.
    eprintln!("lookahead auto: {trips_auto} round trips, {same_auto} of 4 texts equal");
    assert!(trips_auto <= trips_step, "{trips_auto} > {trips_step}");
    assert!(same_auto >= 3, "{same_auto} of 4 with lookahead auto");
    eprintln!(
        "round trips per token: {:.2} without, {:.2} with lookahead 4; {same} of 4 texts equal",
        trips_step as f64 / (4 * TOKENS) as f64,
        trips_ahead as f64 / (4 * TOKENS) as f64
    );
    assert_eq!(
        trips_step,
        4 * TOKENS,
        "one request per step without lookahead"
    );
    assert!(
        trips_ahead * 2 < trips_step,
        "{trips_ahead} round trips with lookahead against {trips_step}"
    );
    assert!(same >= 3, "{same} of 4");
}

/// The server is killed after a few steps: with `fail` the generation ends with an
/// error naming the member, quickly; with `drop` it goes on with Gemma and reports
/// the drop.
#[test]
fn server_killed_mid_generation() {
    for policy in [OnMemberFailure::Fail, OnMemberFailure::Drop] {
        let server = Arc::new(Mutex::new(LlamaServer::start(SMOL, 2)));
        let spec = remote(server.lock().unwrap().native(), SMOL);
        let name = spec.model.clone();
        let mut ens = build(&[spec, local(GEMMA).weight(0.5)]);
        let mut steps = 0;
        let killer = server.clone();
        let mut sink = |e: &Event| {
            if let Event::Step(_) = e {
                steps += 1;
                if steps == 3 {
                    killer.lock().unwrap().kill();
                }
            }
            Flow::Continue
        };
        let request = Request::raw(PROMPTS[0])
            .max_tokens(12)
            .on_member_failure(policy);
        let t0 = Instant::now();
        let result = ens.generate(&request, &mut sink);
        assert!(t0.elapsed() < Duration::from_secs(60), "{policy}: too slow");
        match policy {
            OnMemberFailure::Fail => {
                let e = result.unwrap_err();
                assert!(matches!(e, EngineError::Remote { .. }), "{e:?}");
                let msg = e.to_string();
                assert!(msg.contains(&name) && msg.contains("drop"), "{msg}");
            }
            OnMemberFailure::Drop => {
                let g = result.unwrap();
                assert_eq!(g.tokens, 12, "{:?}", g.text);
                let why = g.members[0].dropped.as_deref().expect("smol is dropped");
                assert!(why.contains(&name), "{why}");
                assert_eq!(g.members[1].dropped, None);
            }
        }
    }
}

/// A loopback listener that accepts connections and runs `answer` on each.
fn fake_server(answer: fn(std::net::TcpStream)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || answer(stream));
        }
    });
    format!("http://{addr}")
}

/// Reads one request's head (enough for these answers).
fn read_head(s: &mut std::net::TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf);
}

#[test]
fn stalling_server_times_out() {
    let base = fake_server(|mut s| {
        read_head(&mut s);
        std::thread::sleep(Duration::from_secs(120));
    });
    let spec = remote(format!("llamacpp+{base}"), SMOL).timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    let e = spec.load().err().expect("a stalled server is an error");
    let msg = e.to_string();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(msg.contains("timeout") && msg.contains(&base), "{msg}");
}

#[test]
fn garbage_answers_are_clear_errors() {
    let not_json = fake_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
    });
    let not_http = fake_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"\x00\x01garbage\r\n\r\n");
    });
    let wrong_json = fake_server(|mut s| {
        read_head(&mut s);
        let body = br#"{"tokens":[1,2,3],"choices":"no"}"#;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body);
    });
    for (base, says) in [
        (not_json, "not JSON"),
        (not_http, "not HTTP"),
        (wrong_json, "tokenizes a probe text differently"),
    ] {
        for spec in [format!("llamacpp+{base}"), format!("openai+{base}/v1#m")] {
            let t0 = Instant::now();
            let e = remote(spec.clone(), SMOL)
                .load()
                .err()
                .expect("garbage is an error");
            let msg = e.to_string();
            assert!(t0.elapsed() < Duration::from_secs(10), "{spec}");
            assert!(msg.contains(says) && msg.contains(&spec), "{spec}: {msg}");
        }
    }
}

/// A server whose model tokenizes differently from the member's tokenizer is refused
/// at connect time, naming the server and the fix.
#[test]
fn tokenizer_mismatch_is_refused() {
    let server = LlamaServer::start(SMOL, 2);
    for spec in [server.native(), server.openai()] {
        let e = remote(spec.clone(), GEMMA)
            .load()
            .err()
            .expect("a mismatch is an error");
        let msg = e.to_string();
        assert!(
            msg.contains(&spec) && msg.contains("tokenizer of the model the server runs"),
            "{msg}"
        );
    }
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = format!("llamacpp+http://127.0.0.1:{port}");
    let e = remote(spec.clone(), SMOL)
        .load()
        .err()
        .expect("nothing listens");
    let msg = e.to_string();
    assert!(
        msg.contains(&spec) && msg.contains("server running"),
        "{msg}"
    );
}

/// The first step's most probable candidates and their probabilities.
fn first_alternatives(ens: &mut Ensemble, request: &Request) -> Vec<(Vec<u8>, f32)> {
    let mut first = None;
    let mut sink = |e: &Event| {
        if let (Event::Step(s), None) = (e, &first) {
            first = Some(
                s.alternatives
                    .iter()
                    .map(|c| (c.bytes.clone(), c.prob))
                    .collect(),
            );
        }
        Flow::Continue
    };
    ens.generate(request, &mut sink)
        .unwrap_or_else(|e| panic!("{e}"));
    first.expect("a first step")
}

/// Above temperature 1, through the request's temperature or the member's own `:t=`, a
/// served member's distribution follows the same model's exact tempered one in process:
/// the mass outside the server's top list continues the list's decay instead of being
/// spread over the whole vocabulary and flattened with it (which took the top
/// probabilities to a half or a third of the exact ones).
#[test]
fn served_tails_above_temperature_one_follow_the_local_model() {
    let server = ServerProc::solo(&["--name", "smol"]);
    let served = remote(format!("openai+{}/v1#smol", server.base), SMOL);
    for prompt in &PROMPTS[..4] {
        for t in [1.5f32] {
            for (member_t, request_t) in [(1.0, t), (t, 1.0)] {
                let mut far = build(&[served.clone().temperature(member_t)]);
                let mut near = build(&[local(SMOL).temperature(member_t)]);
                let request = Request::raw(*prompt)
                    .max_tokens(1)
                    .alternatives(5)
                    .sample(request_t, 1.0, 7);
                let (got, want) = (
                    first_alternatives(&mut far, &request),
                    first_alternatives(&mut near, &request),
                );
                eprintln!("{prompt:?} T={t} member_t={member_t}: served {got:?}\n  local {want:?}");
                assert_eq!(got[0].0, want[0].0, "{prompt:?} at {t}");
                for ((gb, gp), (wb, wp)) in got.iter().zip(&want).take(3) {
                    assert_eq!(gb, wb, "{prompt:?} at {t}");
                    assert!(
                        (gp - wp).abs() <= TAIL_TOLERANCE * wp,
                        "{prompt:?} at {t} (member {member_t}): served {gp}, local {wp}"
                    );
                }
            }
        }
    }
}

/// `tutti serve` as a served member next to a local Gemma, on chat prompts where the
/// served SmolLM2's greedy choice is end of text at some step with a probability under
/// one half while the pair goes on: the pair must go on too (the server reports the
/// end-of-text step with its distribution, and the member is not read as certain).
#[test]
fn tutti_serve_member_does_not_end_the_pair_early() {
    use tutti::engine::{Message, Prompt};
    let server = ServerProc::solo(&["--name", "smol"]);
    let spec = remote(format!("openai+{}/v1#smol", server.base), SMOL);
    let mut pair_remote = build(&[spec, local(GEMMA)]);
    let mut pair_local = build(&[local(SMOL), local(GEMMA)]);
    let mut smol = build(&[local(SMOL)]);
    // A prompt where the precondition holds (SmolLM2 alone ends the text, unsure, at
    // step 11 of the pair's answer); the assertion below checks that it still does.
    let p = "What color is the sky?";
    let prompt = Prompt::Chat(vec![Message::user(p)]);
    let request = Request::chat(vec![Message::user(p)]).max_tokens(TOKENS);
    let want = pair_local.generate_quiet(&request).unwrap();
    // Where SmolLM2 alone would have ended the text, unsure, and the pair did not.
    let head = pair_local.prompt_ids(0, &prompt).unwrap();
    let smol_ids = &want.members[0].ids;
    let unsure_end = (0..smol_ids.len()).find(|&k| {
        let ctx = [head.as_slice(), &smol_ids[..k]].concat();
        let mut first = None;
        let mut sink = |e: &Event| {
            if let (Event::Step(s), None) = (e, &first) {
                first = Some(s.chosen.clone());
            }
            Flow::Continue
        };
        let r = Request::ids(vec![ctx]).max_tokens(1);
        smol.generate(&r, &mut sink).unwrap();
        first.is_some_and(|c| c.eos && c.prob < 0.5)
    });
    assert!(
        unsure_end.is_some(),
        "{p:?}: no unsure end of text in {:?}",
        want.text
    );
    let got = pair_remote.generate_quiet(&request).unwrap();
    assert_eq!(
        got.text, want.text,
        "{p:?} (SmolLM2 unsure at {unsure_end:?})"
    );
    assert_eq!(ids(&got), ids(&want), "{p:?}");
}

/// A loopback HTTP proxy standing in for a busy server: it forwards every request to
/// `backend`, except that it answers the next completion requests with 429 and a
/// `Retry-After` while `throttle` says so, and it starts accepting connections only
/// once `open` is set (until then its accept queue is kept full, so that a connection
/// attempt times out).
struct Proxy {
    base: String,
    /// Completion requests still to refuse, and the `Retry-After` seconds to send.
    throttle: Arc<Mutex<(usize, u64)>>,
    open: Arc<std::sync::atomic::AtomicBool>,
    /// When each completion request arrived, and the status it got.
    seen: Arc<Mutex<Vec<(Instant, u16)>>>,
    /// Tokens (`token_id:<id>`) left out of every completion's logprobs, as a server
    /// that does not report them would.
    hidden: Arc<Mutex<Vec<String>>>,
    fillers: Mutex<Vec<std::net::TcpStream>>,
}

impl Proxy {
    fn start(backend: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy {
            base: format!("http://{addr}"),
            throttle: Arc::new(Mutex::new((0, 0))),
            open: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            seen: Arc::new(Mutex::new(Vec::new())),
            hidden: Arc::new(Mutex::new(Vec::new())),
            fillers: Mutex::new(Vec::new()),
        };
        let (throttle, open, seen, hidden) = (
            proxy.throttle.clone(),
            proxy.open.clone(),
            proxy.seen.clone(),
            proxy.hidden.clone(),
        );
        std::thread::spawn(move || loop {
            if !open.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let (backend, throttle, seen) = (backend.clone(), throttle.clone(), seen.clone());
            let hidden = hidden.clone();
            std::thread::spawn(move || forward(stream, &backend, &throttle, &seen, &hidden));
        });
        proxy
    }

    /// Refuses the next `n` completion requests with `Retry-After: after`.
    fn refuse(&self, n: usize, after: u64) {
        *self.throttle.lock().unwrap() = (n, after);
    }

    /// Stops accepting and fills the accept queue, so that new connections time out.
    fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        let addr: std::net::SocketAddr = self.base["http://".len()..].parse().unwrap();
        let mut fillers = self.fillers.lock().unwrap();
        for _ in 0..10_000 {
            // A connect that is merely slow (a loaded machine) is not a full queue: the
            // queue counts as full only when a second, longer attempt times out too.
            let connected = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .or_else(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
            match connected {
                Ok(s) => fillers.push(s),
                Err(_) => return,
            }
        }
        panic!("the accept queue never filled");
    }

    /// Accepts again (the queued fillers are read to their end and dropped).
    fn reopen(&self) {
        self.fillers.lock().unwrap().clear();
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Serves one request of `stream` (one per connection).
fn forward(
    mut stream: std::net::TcpStream,
    backend: &str,
    throttle: &Mutex<(usize, u64)>,
    seen: &Mutex<Vec<(Instant, u16)>>,
    hidden: &Mutex<Vec<String>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if stream.read_exact(&mut body).is_err() {
        return;
    }
    let completion = path.ends_with("/completions") || path.ends_with("/completion");
    let refused = completion && {
        let mut t = throttle.lock().unwrap();
        let refuse = t.0 > 0;
        t.0 = t.0.saturating_sub(1);
        refuse.then_some(t.1)
    }
    .is_some();
    let (status, extra, text) = if refused {
        let after = throttle.lock().unwrap().1;
        (
            429,
            format!("Retry-After: {after}\r\n"),
            r#"{"error":{"message":"busy","type":"rate_limit_error"}}"#.to_string(),
        )
    } else {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{backend}{path}");
        let answer = if method == "GET" {
            agent.get(&url).call()
        } else {
            agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(&body[..])
        };
        let Ok(mut r) = answer else { return };
        let status = r.status().as_u16();
        let mut text = r.body_mut().read_to_string().unwrap_or_default();
        let hidden = hidden.lock().unwrap().clone();
        if completion && !hidden.is_empty() {
            text = hide_tokens(&text, &hidden);
        }
        (status, String::new(), text)
    };
    if completion {
        seen.lock().unwrap().push((Instant::now(), status));
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{text}",
        text.len()
    );
}

/// A completions answer without the positions whose token is one of `hidden`.
fn hide_tokens(answer: &str, hidden: &[String]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(answer).unwrap();
    let lp = &mut v["choices"][0]["logprobs"];
    let keep: Vec<bool> = lp["tokens"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|x| !hidden.iter().any(|h| x == h.as_str()))
                .collect()
        })
        .unwrap_or_default();
    for field in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        if let Some(list) = lp[field].as_array_mut() {
            let mut i = 0;
            list.retain(|_| {
                i += 1;
                keep.get(i - 1).copied().unwrap_or(true)
            });
        }
    }
    v.to_string()
}

/// A 429 with `Retry-After` is retried after the wait the server asks for, and a
/// connection attempt that times out is retried, both within the member's timeout; a
/// wait past the timeout fails at once, saying so.
#[test]
fn throttled_and_unreachable_for_a_moment_servers_are_retried() {
    let server = ServerProc::solo(&["--name", "smol"]);
    let proxy = Arc::new(Proxy::start(server.base.clone()));
    let spec =
        remote(format!("openai+{}/v1#smol", proxy.base), SMOL).timeout(Duration::from_secs(30));
    let mut ens = build(std::slice::from_ref(&spec));
    let mut reference = build(&[local(SMOL)]);
    let request = Request::raw(PROMPTS[0]).max_tokens(4);
    let want = ids(&reference.generate_quiet(&request).unwrap());

    proxy.seen.lock().unwrap().clear();
    proxy.refuse(2, 1);
    let g = ens
        .generate_quiet(&request)
        .unwrap_or_else(|e| panic!("two 429s are retried: {e}"));
    assert_eq!(ids(&g), want);
    let seen = std::mem::take(&mut *proxy.seen.lock().unwrap());
    let statuses: Vec<u16> = seen.iter().map(|s| s.1).collect();
    assert_eq!(&statuses[..3], [429, 429, 200], "{statuses:?}");
    for w in seen[..3].windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    }

    // Retry-After beyond the member's timeout: no wait, a clear error.
    proxy.refuse(1, 3600);
    let t0 = Instant::now();
    let e = ens
        .generate_quiet(&request)
        .expect_err("a wait past the deadline fails");
    let msg = e.to_string();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(msg.contains("429") && msg.contains("3600"), "{msg}");
    proxy.refuse(0, 0);

    // For eleven seconds new connections time out (the default connect timeout is five),
    // then the server is back. A dropped SYN is sent again after 1 and 3 s: eleven
    // seconds make the first attempt time out even when the member starts it a few
    // seconds late on a loaded machine, and leave the third attempt to connect.
    proxy.close();
    let later = proxy.clone();
    let reopen = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(11));
        later.reopen();
    });
    let t0 = Instant::now();
    let g = ens
        .generate_quiet(&request)
        .unwrap_or_else(|e| panic!("a connect timeout is retried: {e}"));
    reopen.join().unwrap();
    assert_eq!(ids(&g), want);
    // Four steps, and at least one attempt that timed out while connecting.
    assert!(
        g.members[0].round_trips.is_some_and(|n| n > 4),
        "{:?}",
        g.members[0].round_trips
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(11),
        "{:?}",
        t0.elapsed()
    );
}

/// A server that leaves a winning end of text out of its logprobs (answers with no
/// position and `finish_reason: stop`): the member abstains at that step instead of
/// ending the text with certainty, so the pair goes on where the local pair does.
#[test]
fn a_server_hiding_its_end_of_text_does_not_end_the_pair() {
    use tutti::engine::Message;
    let server = ServerProc::solo(&["--name", "smol"]);
    let proxy = Proxy::start(server.base.clone());
    let spec = remote(format!("openai+{}/v1#smol", proxy.base), SMOL);
    let mut pair_remote = build(&[spec, local(GEMMA)]);
    let mut pair_local = build(&[local(SMOL), local(GEMMA)]);
    *proxy.hidden.lock().unwrap() = pair_local.members()[0]
        .vocab()
        .eos_ids()
        .iter()
        .map(|id| format!("token_id:{id}"))
        .collect();
    // SmolLM2 alone ends this answer after "5", unsure (see
    // `tutti_serve_member_does_not_end_the_pair_early`); the pair goes on.
    let request = Request::chat(vec![Message::user("What is 2 + 3?")]).max_tokens(TOKENS);
    let want = pair_local.generate_quiet(&request).unwrap();
    let got = pair_remote.generate_quiet(&request).unwrap();
    let unsure = "\n\n2 + 3 = 5";
    assert!(want.text.len() > unsure.len(), "{:?}", want.text);
    assert!(
        got.text.starts_with(unsure) && got.text.len() > unsure.len(),
        "{:?} against the local pair's {:?}",
        got.text,
        want.text
    );
}
