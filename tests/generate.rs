//! Single-model generation: the one-member ensemble against a plain greedy loop over
//! `CausalLm`, seeded sampling, and the `tutti generate` command line.

mod ensemble_support;

use std::process::Command;

use ensemble_support::{demo, load, plain_greedy, GEMMA, SMOL};
use tutti::engine::{EngineError, Ensemble, Event, Flow, Message, Prompt, Request, StopReason};

const PROMPT: &str = "The capital of France is";

fn solo(name: &str) -> Ensemble {
    Ensemble::builder().model(load(name), 1.0).build().unwrap()
}

fn solo_ids(name: &str, max: usize) -> (Vec<u32>, Vec<u32>) {
    let mut reference = load(name);
    let prompt = reference.tokenizer.encode_prompt(PROMPT).unwrap();
    let expected = plain_greedy(&mut reference, &prompt, max);
    let mut ens = Ensemble::builder().model(reference, 1.0).build().unwrap();
    let out = ens
        .generate_quiet(&Request::raw(PROMPT).max_tokens(max))
        .unwrap();
    assert_eq!(out.members[0].prompt_tokens, prompt.len());
    (out.members[0].ids.clone(), expected)
}

#[test]
fn one_member_matches_plain_greedy_smollm2() {
    let (got, expected) = solo_ids(SMOL, 24);
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn one_member_matches_plain_greedy_gemma3() {
    let (got, expected) = solo_ids(GEMMA, 24);
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut ens = solo(SMOL);
    let request = |seed| Request::raw(PROMPT).max_tokens(16).sample(1.2, 0.95, seed);
    let a = ens.generate_quiet(&request(11)).unwrap();
    let b = ens.generate_quiet(&request(11)).unwrap();
    assert_eq!(a.members[0].ids, b.members[0].ids);
    assert_eq!(a.text, b.text);
    let c = ens.generate_quiet(&request(12)).unwrap();
    assert_ne!(
        a.members[0].ids, c.members[0].ids,
        "another seed gives another text"
    );
}

/// Collects the events of a generation.
fn events(ens: &mut Ensemble, request: &Request) -> (Vec<Event>, tutti::Generation) {
    let mut seen = Vec::new();
    let out = ens
        .generate(request, &mut |e: &Event| {
            seen.push(e.clone());
            Flow::Continue
        })
        .unwrap();
    (seen, out)
}

fn text_of(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn streamed_text_equals_the_result_and_stop_strings_cut() {
    let mut ens = solo(SMOL);
    let (seen, full) = events(&mut ens, &Request::raw(PROMPT).max_tokens(24));
    assert_eq!(text_of(&seen), full.text);
    assert!(full.text.contains('.'), "{:?}", full.text);
    let (seen, cut) = events(&mut ens, &Request::raw(PROMPT).max_tokens(24).stop("."));
    assert_eq!(cut.stop_reason, StopReason::StopString);
    assert_eq!(cut.text, full.text[..full.text.find('.').unwrap()]);
    assert_eq!(text_of(&seen), cut.text);
}

#[test]
fn step_events_carry_the_choice_its_probability_and_alternatives() {
    let mut ens = solo(SMOL);
    let request = Request::raw(PROMPT).max_tokens(6).alternatives(4);
    let (seen, out) = events(&mut ens, &request);
    let steps: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), out.steps.len());
    let mut bytes = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s.index, i);
        assert_eq!(s.alternatives.len(), 4);
        // Greedy: the choice is the most probable alternative, probabilities descend.
        assert_eq!(s.alternatives[0], s.chosen);
        assert!(s.alternatives.windows(2).all(|w| w[0].prob >= w[1].prob));
        assert!(s.chosen.prob > 0.0 && s.chosen.prob <= 1.0);
        // One member: its own id and probability of the chosen token.
        assert_eq!(s.members.len(), 1);
        assert!(s.members[0].consulted);
        assert_eq!(s.members[0].prob, Some(s.chosen.prob));
        bytes.extend_from_slice(&s.chosen.bytes);
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), out.text);
    // A one-member step's probability is the model's own softmax probability.
    let mut m = load(SMOL);
    let ids = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let logits: Vec<f32> = m.lm.forward(&ids).unwrap().to_vec1().unwrap();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let top = f64::from(logits[out.members[0].ids[0] as usize] - max).exp() / z;
    assert!(
        (f64::from(steps[0].chosen.prob) - top).abs() < 1e-4,
        "{} vs {top}",
        steps[0].chosen.prob
    );
    match seen.last() {
        Some(Event::Finish(f)) => {
            assert_eq!(f.reason, out.stop_reason);
            assert_eq!(f.usage.completion_tokens, out.tokens);
            assert_eq!(f.usage.prompt_tokens, ids.len());
        }
        other => panic!("last event {other:?}"),
    }
}

#[test]
fn a_sink_can_stop_and_the_iterator_gives_the_same_events() {
    let mut ens = solo(SMOL);
    let request = Request::raw(PROMPT).max_tokens(12);
    let (all, full) = events(&mut ens, &request);
    // Stop after the third step.
    let mut steps = 0;
    let out = ens
        .generate(&request, &mut |e: &Event| {
            if matches!(e, Event::Step(_)) {
                steps += 1;
            }
            if steps == 3 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    assert_eq!(out.steps.len(), 3);
    assert!(full.text.starts_with(&out.text));
    // The iterator yields exactly the sink's events.
    let streamed: Vec<Event> = ens.stream(&request).unwrap().map(Result::unwrap).collect();
    let strip = |v: &[Event]| -> Vec<String> {
        v.iter()
            .map(|e| match e {
                Event::Step(s) => format!("step {} {:?}", s.index, s.chosen),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(strip(&streamed), strip(&all));
}

#[test]
fn chat_requests_use_the_template_with_every_role() {
    let mut ens = solo(SMOL);
    let messages = vec![
        Message::system("You answer in one word."),
        Message::user("Capital of France?"),
        Message::assistant("Paris."),
        Message::user("Capital of Italy?"),
    ];
    let prompt = Prompt::Chat(messages.clone());
    let ids = ens.prompt_ids(0, &prompt).unwrap();
    let text = ens.members()[0].tokenizer().decode(&ids, false).unwrap();
    for m in &messages {
        assert!(text.contains(&m.content), "{text}");
    }
    assert!(text.contains("<|im_start|>system") && text.ends_with("<|im_start|>assistant\n"));
    let out = ens
        .generate_quiet(&Request::chat(messages).max_tokens(4))
        .unwrap();
    assert!(out.tokens > 0);
    // Gemma 3 (base model, no template) gets the contents as raw text.
    let g = solo(GEMMA);
    assert_eq!(g.prompt_notes(&prompt).len(), 1);
    let ids = g.prompt_ids(0, &prompt).unwrap();
    let text = g.members()[0].tokenizer().decode(&ids, true).unwrap();
    assert_eq!(
        text,
        "You answer in one word.\n\nCapital of France?\n\nParis.\n\nCapital of Italy?"
    );
}

#[test]
fn bad_requests_are_clear_errors() {
    fn ens_err(ens: &mut Ensemble, r: Request) -> EngineError {
        ens.generate_quiet(&r).unwrap_err()
    }
    let mut ens = solo(SMOL);
    assert!(matches!(
        ens_err(&mut ens, Request::raw(PROMPT).solo(3)),
        EngineError::NoSuchMember { index: 3, len: 1 }
    ));
    assert!(matches!(
        ens_err(&mut ens, Request::raw(PROMPT).weights(vec![1.0, 1.0])),
        EngineError::BadWeights { .. }
    ));
    let msg = ens_err(&mut ens, Request::ids(vec![vec![1, 2, 999_999]])).to_string();
    assert!(msg.contains("999999") && msg.contains("outside"), "{msg}");
    assert!(matches!(
        ens_err(&mut ens, Request::raw("   ")),
        EngineError::EmptyPrompt
    ));
    // A prompt longer than the model's context (SmolLM2: 8,192 tokens).
    let long = "word ".repeat(9000);
    let msg = ens_err(&mut ens, Request::raw(long)).to_string();
    assert!(
        msg.contains("shorten the prompt") && msg.contains("8192"),
        "{msg}"
    );
    // The ensemble is unharmed by the failures.
    let out = ens
        .generate_quiet(&Request::raw(PROMPT).max_tokens(2))
        .unwrap();
    assert_eq!(out.tokens, 2);
}

fn tutti(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_json_reports_ids_and_timings() {
    let smol = demo(SMOL);
    let out = tutti(&[
        "generate",
        "-m",
        &smol,
        "--raw",
        "--greedy",
        "--max-tokens",
        "8",
        "--json",
        PROMPT,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let ids: Vec<u32> = serde_json::from_value(v["ids"][0].clone()).unwrap();
    let mut reference = load(SMOL);
    let prompt = reference.tokenizer.encode_prompt(PROMPT).unwrap();
    assert_eq!(ids, plain_greedy(&mut reference, &prompt, 8));
    assert_eq!(v["prompt_tokens"], prompt.len());
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"), "{v}");
    assert!(v["timing"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["timing"]["prefill_ms"].as_f64().unwrap() > 0.0);
    assert!(["eos", "max_tokens"].contains(&v["stop_reason"].as_str().unwrap()));
}

#[test]
fn cli_empty_prompt_and_bad_device_are_clear_errors() {
    let smol = demo(SMOL);
    let out = tutti(&["generate", "-m", &smol, ""]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt is empty"));
    #[cfg(not(feature = "cuda"))]
    {
        let out = tutti(&["generate", "-m", &smol, "--device", "cuda:0", "hi"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features cuda"), "{err}");
    }
}

/// A relrep pair without a full map prepares its alignment once: the first run stores
/// the preparation in the map cache with the candidates it mapped, the second loads it
/// (and says so), maps those candidates without projecting a vocabulary, and decodes
/// the same tokens. (The times are printed: on a loaded machine they say little.)
#[test]
fn cli_relrep_preparation_is_cached_between_runs() {
    let cache = std::env::temp_dir().join(format!("tutti-relrep-prep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let (smol, gemma) = (demo(SMOL), demo(GEMMA));
    let run = || {
        let t0 = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
            .args(["generate", "-m", &smol, "-m", &gemma, "--align", "relrep"])
            .args([
                "--raw",
                "--greedy",
                "--max-tokens",
                "12",
                "--top-k",
                "20",
                "--json",
            ])
            .arg("Write one sentence about a café in Zürich:")
            .env("TUTTI_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let seconds = t0.elapsed().as_secs_f64();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, log, seconds)
    };
    let (first, log1, s1) = run();
    let (second, log2, s2) = run();
    eprintln!("relrep runs: {s1:.1} s, then {s2:.1} s");
    assert_eq!(
        log1.matches("relrep prepared and its preparation cached")
            .count(),
        2,
        "{log1}"
    );
    assert!(log1.contains("targets projected"), "{log1}");
    assert!(log1.contains("more mapped candidates kept"), "{log1}");
    assert_eq!(
        log2.matches("relrep preparation loaded from the cache")
            .count(),
        2,
        "{log2}"
    );
    assert!(!log2.contains("targets projected"), "{log2}");
    assert!(!log2.contains("more mapped candidates kept"), "{log2}");
    assert_eq!(first["text"], second["text"]);
    assert_eq!(first["ids"], second["ids"]);
    let _ = std::fs::remove_dir_all(&cache);
}
