//! Per-token attribution with the demo pair: the records agree with the step events and
//! the generation, asking for them changes no text (library, `tutti generate --explain`
//! and the API), and the API streams them with the text.

mod serve_support;

use std::process::Command;

use serde_json::{json, Value};
use serve_support::{demo, post, stream, ServerProc, GEMMA, SMOL};
use tutti::engine::{
    Agreement, Ensemble, Event, Flow, Gate, MemberSpec, Request, StepEvent, Summary,
};

const PROMPT: &str = "The three most important inventions of the twentieth century are";
const N: usize = 20;

fn pair() -> Ensemble {
    Ensemble::builder()
        .member(MemberSpec::new(demo(SMOL)))
        .member(MemberSpec::new(demo(GEMMA)))
        .build()
        .unwrap()
}

fn steps(ens: &mut Ensemble, request: &Request) -> (Vec<StepEvent>, tutti::Generation) {
    let mut seen = Vec::new();
    let out = ens
        .generate(request, &mut |e: &Event| {
            if let Event::Step(s) = e {
                seen.push(s.clone());
            }
            Flow::Continue
        })
        .unwrap();
    (seen, out)
}

#[test]
fn records_follow_the_steps_and_change_no_text() {
    let mut ens = pair();
    let request = Request::raw(PROMPT).max_tokens(N);
    let (plain, without) = steps(&mut ens, &request);
    assert!(plain.iter().all(|s| s.explain.is_none()));
    let (explained, with) = steps(&mut ens, &request.clone().explain(true));
    assert_eq!(with.text, without.text);
    for (a, b) in with.members.iter().zip(&without.members) {
        assert_eq!(a.ids, b.ids);
    }

    let records: Vec<_> = explained
        .iter()
        .map(|s| s.explain.as_deref().expect("a record per step").clone())
        .collect();
    assert_eq!(records.len(), with.steps.len());
    let mut disagreed = false;
    for (s, r) in explained.iter().zip(&records) {
        assert_eq!(r.index, s.index);
        assert_eq!(r.chosen.bytes, s.chosen.bytes);
        assert_eq!(r.chosen.eos, s.chosen.eos);
        assert_eq!(r.members.len(), 2);
        for (m, ms) in r.members.iter().zip(&s.members) {
            assert_eq!(m.slot, ms.slot);
            assert_eq!(m.consulted, ms.consulted);
            assert_eq!(m.prob, ms.prob);
        }
        let agreed: Vec<bool> = r.members.iter().filter_map(|m| m.agreed).collect();
        assert_eq!(
            r.agreement == Agreement::All,
            agreed.iter().all(|&a| a),
            "{r:?}"
        );
        disagreed |= r.agreement == Agreement::Split;
        let shares: f32 = r.members.iter().map(|m| m.contribution).sum();
        assert!((shares - 1.0).abs() < 1e-4, "{r:?}");
        let weights: f32 = r.members.iter().map(|m| m.weight).sum();
        assert!((weights - 1.0).abs() < 1e-4, "{r:?}");
        assert!(r.leader.is_some_and(|l| l < 2));
        // Greedy: the chosen candidate is the most probable alternative.
        assert_eq!(r.alternatives[0].bytes, r.chosen.bytes, "{r:?}");
        assert!(r.alternatives.windows(2).all(|w| w[0].prob >= w[1].prob));
        // A member whose own top choice won gave the chosen candidate that probability.
        for m in &r.members {
            if m.agreed == Some(true) {
                let top = m.top.as_ref().map_or(0.0, |t| t.prob);
                assert!((top - m.prob.unwrap_or(0.0)).abs() < 1e-5, "{r:?}");
            }
        }
    }
    assert!(disagreed, "the demo pair disagrees somewhere in {N} tokens");
    let summary = Summary::of(&records);
    assert_eq!(summary.steps, with.steps.len());
    assert_eq!(
        summary.rolled_back_tokens,
        with.members
            .iter()
            .map(|m| m.rolled_back_tokens)
            .sum::<usize>()
    );
    for (m, report) in summary.members.iter().zip(&with.members) {
        assert_eq!(m.rolled_back_tokens, report.rolled_back_tokens);
    }
}

#[test]
fn gate_skips_and_sampling_are_recorded_without_changing_the_text() {
    let mut ens = pair();
    let gated = Request::raw(PROMPT)
        .max_tokens(N)
        .gate(Gate::Uncertain(0.5));
    let (_, without) = steps(&mut ens, &gated);
    let (explained, with) = steps(&mut ens, &gated.clone().explain(true));
    assert_eq!(with.text, without.text);
    let mut alone = 0;
    for s in &explained {
        let r = s.explain.as_deref().expect("a record");
        let consulted = r.members.iter().filter(|m| m.consulted).count();
        assert_eq!(r.agreement == Agreement::Alone, consulted == 1, "{r:?}");
        if consulted == 1 {
            alone += 1;
            assert_eq!(r.leader, Some(0), "the primary decides alone");
            assert_eq!(r.members[1].prob, None);
        }
    }
    assert!(alone > 0, "SmolLM2 is sure of some token at 0.5");

    let sampled = Request::raw(PROMPT).max_tokens(N).sample(1.0, 0.95, 7);
    let (_, a) = steps(&mut ens, &sampled);
    let (_, b) = steps(&mut ens, &sampled.clone().explain(true));
    assert_eq!(a.text, b.text);
}

fn tutti(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tutti {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The text of plain-marker output: `[A:…]` wrappers removed, legend and summary cut.
fn unmark(s: &str) -> String {
    let body = s.rsplit_once("\n\nlegend:").map_or(s, |(b, _)| b);
    let mut out = String::new();
    let mut rest = body;
    let mut open = false;
    while !rest.is_empty() {
        if !open
            && rest.len() > 2
            && rest.starts_with('[')
            && rest[1..].starts_with(['A', 'B'])
            && rest[2..].starts_with(':')
        {
            open = true;
            rest = &rest[3..];
        } else if open && rest.starts_with(']') {
            open = false;
            rest = &rest[1..];
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[test]
fn cli_explain_marks_tokens_and_keeps_the_text() {
    let (smol, gemma) = (demo(SMOL), demo(GEMMA));
    let base = [
        "generate",
        "-m",
        &smol,
        "-m",
        &gemma,
        "--raw",
        "--greedy",
        "--max-tokens",
        "16",
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.push(PROMPT);
        String::from_utf8(tutti(&args).stdout).unwrap()
    };
    let plain = run(&[]);
    let explained = run(&["--explain"]);
    // Not a terminal: markers, no colour codes.
    assert!(!explained.contains('\x1b'), "{explained}");
    assert!(
        explained.contains("[A:") || explained.contains("[B:"),
        "{explained}"
    );
    assert!(
        explained.contains("\n\nlegend:  A = SmolLM2"),
        "{explained}"
    );
    assert!(
        explained.contains("the members disagreed on"),
        "{explained}"
    );
    assert!(explained.contains("own top choice won"), "{explained}");
    assert!(explained.contains("rollbacks: "), "{explained}");
    assert_eq!(unmark(&explained), plain.trim_end_matches('\n'));

    let json_plain: Value = serde_json::from_str(&run(&["--json"])).unwrap();
    let json: Value = serde_json::from_str(&run(&["--explain", "--json"])).unwrap();
    assert_eq!(json["text"], json_plain["text"]);
    assert_eq!(json["ids"], json_plain["ids"]);
    let tokens = json["explain"]["tokens"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tokens.len(), json["steps"].as_array().map_or(0, Vec::len));
    assert_eq!(json["explain"]["summary"]["steps"], tokens.len());
    assert_eq!(json["explain"]["members"][1]["label"], "B");
    assert!(json_plain.get("explain").is_none());
}

#[test]
fn the_api_returns_records_streamed_and_whole() {
    let server = ServerProc::pair(&[]);
    let body =
        json!({"prompt": PROMPT, "max_tokens": N, "temperature": 0, "tutti": {"explain": true}});
    let whole = post(&server.url("/v1/completions"), &body);
    assert_eq!(whole.status, 200, "{}", whole.body);
    let whole = whole.json();
    let records = whole["tutti"]["explain"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!records.is_empty(), "{whole}");
    assert_eq!(whole["tutti"]["explain_summary"]["steps"], records.len());
    let text = whole["choices"][0]["text"].as_str().unwrap_or_default();
    let bytes = |records: &[Value]| -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| r["chosen"]["bytes"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| b.as_u64().map(|b| b as u8))
            .collect()
    };
    assert!(bytes(&records).starts_with(text.as_bytes()), "{whole}");
    for r in &records {
        assert!(["all", "split", "alone"].contains(&r["agreement"].as_str().unwrap_or_default()));
        assert_eq!(r["members"].as_array().map(Vec::len), Some(2), "{r}");
        assert!(
            r["alternatives"].as_array().is_some_and(|a| !a.is_empty()),
            "{r}"
        );
    }

    // Streamed: records ride with the text chunks, the rest and the summary with the
    // last one; each step once, in order.
    let mut body = body;
    body["stream"] = json!(true);
    let sse = stream(&server.url("/v1/completions"), &body);
    assert!(sse.done);
    let streamed: Vec<Value> = sse
        .chunks
        .iter()
        .flat_map(|c| {
            c["tutti"]["explain"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let indices: Vec<u64> = streamed
        .iter()
        .filter_map(|r| r["index"].as_u64())
        .collect();
    assert_eq!(indices, (0..streamed.len() as u64).collect::<Vec<_>>());
    let carrying_text = sse
        .chunks
        .iter()
        .filter(|c| c["tutti"]["explain"].is_array() && c["choices"][0]["finish_reason"].is_null())
        .count();
    assert!(
        carrying_text > 0,
        "records come with the text, not all at the end"
    );
    let last = sse
        .chunks
        .iter()
        .rev()
        .find(|c| c["choices"][0]["finish_reason"].is_string());
    let last = last.expect("a chunk with finish_reason");
    assert_eq!(last["tutti"]["explain_summary"]["steps"], streamed.len());
    assert!(bytes(&streamed).starts_with(sse.text().as_bytes()));

    // Chat too; and without the flag, no records.
    let chat = post(
        &server.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4,
                "tutti": {"explain": true}}),
    )
    .json();
    assert!(
        chat["tutti"]["explain"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{chat}"
    );
    let off = post(
        &server.url("/v1/completions"),
        &json!({"prompt": PROMPT, "max_tokens": 2}),
    )
    .json();
    assert!(off["tutti"].get("explain").is_none(), "{off}");
    // A bad value is the client's error, named.
    let bad = post(
        &server.url("/v1/completions"),
        &json!({"prompt": PROMPT, "tutti": {"explain": "yes"}}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
}
