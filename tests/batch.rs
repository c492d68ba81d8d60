//! The request scheduler ([`Batch`]) over the two demo models: requests that join and
//! leave mid-run, a cancelled request, prompts fed in chunks and the KV budget's
//! waiting and refusal. Every request's steps must carry the bits it gets decoded
//! alone: batch-invariant numerics make the company a request keeps moot.

mod ensemble_support;

use std::collections::HashMap;

use ensemble_support::{load, GEMMA, SMOL};
use tutti::align::AlignMethod;
use tutti::engine::{
    Admit, BatchOptions, EngineError, Ensemble, Event, Flow, Gate, Planned, Request, Sampling,
    SeqId,
};

fn pair() -> Ensemble {
    Ensemble::builder()
        .model(load(SMOL), 1.0)
        .model(load(GEMMA), 1.0)
        .align(AlignMethod::MinEd)
        .build()
        .unwrap()
}

/// A step's chosen bytes, the bits of its combined probability and of every member's.
type StepBits = (Vec<u8>, u32, Vec<Option<u32>>);

fn bits_of(event: &Event) -> Option<StepBits> {
    let Event::Step(s) = event else {
        return None;
    };
    let members = s.members.iter().map(|m| m.prob.map(f32::to_bits)).collect();
    Some((s.chosen.bytes.clone(), s.chosen.prob.to_bits(), members))
}

/// The steps `request` gets decoded alone on a fresh ensemble.
fn alone(request: &Request) -> Vec<StepBits> {
    let mut steps = Vec::new();
    pair()
        .generate(request, &mut |e: &Event| {
            steps.extend(bits_of(e));
            Flow::Continue
        })
        .unwrap();
    steps
}

fn started(admit: Admit) -> SeqId {
    match admit {
        Admit::Started(id) => id,
        Admit::Wait(p) => panic!("{:?} had to wait", p.request().prompt),
    }
}

fn requests() -> Vec<Request> {
    vec![
        Request::raw("The capital of France is").max_tokens(10),
        Request::raw("Write one sentence about the sea.").max_tokens(14),
        // The gate consults the second member only where the first is unsure: only the
        // first is forwarded with the batch, the second in the step when needed.
        Request::raw("The three primary colors are")
            .max_tokens(12)
            .gate(Gate::Uncertain(0.5)),
        Request::raw("Once upon a time")
            .max_tokens(12)
            .sampling(Sampling::Sample {
                temperature: 0.8,
                top_p: 0.95,
                seed: 3,
            }),
        Request::chat(vec![tutti::engine::Message::user("Name three colors.")]).max_tokens(9),
    ]
}

/// Requests that join while others run (at different rounds, one mid-prompt) and
/// leave at different times each get, step by step, the bits they get alone; their
/// prompts are fed in chunks of 5 ids between the others' decode steps.
#[test]
fn requests_joining_and_leaving_mid_run_get_the_bits_they_get_alone() {
    let requests = requests();
    let mut ens = pair();
    let mut batch = ens.batch(BatchOptions {
        max_batch: 4,
        prefill_chunk: Some(5),
        kv_budget: None,
    });
    let mut got: HashMap<SeqId, Vec<StepBits>> = HashMap::new();
    let mut finished = HashMap::new();
    let mut ids = Vec::new();
    let mut sink = |id: SeqId, e: &Event| {
        if let Some(b) = bits_of(e) {
            got.entry(id).or_default().push(b);
        }
        Flow::Continue
    };
    // The first request alone for three rounds, then the others one round apart.
    ids.push(started(
        batch.start(batch.plan(&requests[0]).unwrap()).unwrap(),
    ));
    let mut round = 0;
    let mut prefilled = 0;
    while !batch.is_empty() || ids.len() < requests.len() {
        if round >= 3 && ids.len() < requests.len() {
            let r = &requests[ids.len()];
            ids.push(started(batch.start(batch.plan(r).unwrap()).unwrap()));
        }
        let out = batch.step(&mut sink);
        prefilled += out.prefilling;
        for f in out.finished {
            finished.insert(f.id, f.result.unwrap());
        }
        round += 1;
    }
    drop(batch);
    assert!(prefilled > 0, "no prompt was fed in chunks");
    for (r, id) in requests.iter().zip(&ids) {
        let want = alone(r);
        let steps = &got[id];
        let first = want.iter().zip(steps).position(|(a, b)| a != b);
        assert_eq!(first, None, "{:?}: step {first:?} differs", r.prompt);
        assert_eq!(steps.len(), want.len(), "{:?}", r.prompt);
        assert!(finished[id].batched_forwards > 0, "{:?}", r.prompt);
    }
    // The ensemble has its members back and still decodes as a fresh one.
    let again = &requests[1];
    let mut steps = Vec::new();
    ens.generate(again, &mut |e: &Event| {
        steps.extend(bits_of(e));
        Flow::Continue
    })
    .unwrap();
    assert_eq!(steps, alone(again));
}

/// Cancelling one request mid-run ends it as cancelled and leaves the others' steps
/// as they are alone.
#[test]
fn cancelling_one_request_leaves_the_others_unchanged() {
    let requests = requests();
    let mut ens = pair();
    let mut batch = ens.batch(BatchOptions::default());
    let ids: Vec<SeqId> = requests
        .iter()
        .map(|r| started(batch.start(batch.plan(r).unwrap()).unwrap()))
        .collect();
    let mut got: HashMap<SeqId, Vec<StepBits>> = HashMap::new();
    let mut finishes = HashMap::new();
    let mut sink = |id: SeqId, e: &Event| {
        if let Some(b) = bits_of(e) {
            got.entry(id).or_default().push(b);
        }
        if let Event::Finish(f) = e {
            finishes.insert(id, f.reason);
        }
        Flow::Continue
    };
    for _ in 0..3 {
        batch.step(&mut sink);
    }
    let cancelled = batch.cancel(ids[0], &mut sink).expect("request 0 runs");
    assert_eq!(
        cancelled.result.unwrap().stop_reason,
        tutti::engine::StopReason::Cancelled
    );
    assert!(batch.cancel(ids[0], &mut sink).is_none());
    while !batch.is_empty() {
        batch.step(&mut sink);
    }
    drop(batch);
    assert_eq!(finishes[&ids[0]], tutti::engine::StopReason::Cancelled);
    assert_eq!(got[&ids[0]].len(), 3);
    for (i, (r, id)) in requests.iter().zip(&ids).enumerate() {
        let want = alone(r);
        let steps = &got[id];
        if i == 0 {
            assert_eq!(steps[..], want[..3]);
            continue;
        }
        assert_eq!(*steps, want, "{:?}", r.prompt);
    }
}

/// A request whose cache does not fit beside the running ones waits and starts once
/// they leave; one that could never fit is refused with the budget named.
#[test]
fn the_kv_budget_makes_requests_wait_or_refuses_them() {
    let mut ens = pair();
    let one = Request::raw("The capital of France is").max_tokens(8);
    let bytes = {
        let batch = ens.batch(BatchOptions::default());
        batch.plan(&one).unwrap().kv_bytes()
    };
    assert!(bytes > 0, "local members report their cache size");
    let mut batch = ens.batch(BatchOptions {
        max_batch: 8,
        prefill_chunk: None,
        kv_budget: Some(bytes + bytes / 2),
    });
    let first = started(batch.start(batch.plan(&one).unwrap()).unwrap());
    let second: Planned = match batch.start(batch.plan(&one).unwrap()).unwrap() {
        Admit::Wait(p) => *p,
        Admit::Started(_) => panic!("two requests started in a budget for one and a half"),
    };
    assert_eq!(batch.kv_used(), bytes);
    let mut ended = Vec::new();
    while !batch.is_empty() {
        ended.extend(batch.step(&mut |_, _| Flow::Continue).finished);
    }
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].id, first);
    let first_text = ended.remove(0).result.unwrap().text;
    let second = started(batch.start(second).unwrap());
    while !batch.is_empty() {
        ended.extend(batch.step(&mut |_, _| Flow::Continue).finished);
    }
    assert_eq!(ended[0].id, second);
    assert_eq!(ended.remove(0).result.unwrap().text, first_text);

    let long = Request::raw("The capital of France is").max_tokens(400);
    match batch.plan(&long) {
        Err(e @ EngineError::KvBudget { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("--kv-budget") && msg.contains("MiB"), "{msg}");
        }
        other => panic!("a request over the budget was planned: {other:?}"),
    }
}

/// A request that shares a long prompt prefix with one still computing it waits a
/// round, then starts from a copy of that prefix instead of computing it again; its
/// steps still carry the bits it gets alone.
#[test]
fn a_shared_prompt_prefix_is_computed_once_and_copied() {
    let header = "You are a careful assistant. Answer in one short sentence. ".repeat(3);
    let requests: Vec<Request> = ["What is the capital of France?", "What color is the sky?"]
        .iter()
        .map(|q| Request::raw(format!("{header}Q: {q}\nA:")).max_tokens(6))
        .collect();
    let mut ens = pair();
    let mut batch = ens.batch(BatchOptions {
        max_batch: 4,
        prefill_chunk: None,
        kv_budget: None,
    });
    let first = started(batch.start(batch.plan(&requests[0]).unwrap()).unwrap());
    let waiting = match batch.start(batch.plan(&requests[1]).unwrap()).unwrap() {
        Admit::Wait(p) => *p,
        Admit::Started(_) => panic!("the second request computed the shared header again"),
    };
    let mut got: HashMap<SeqId, Vec<StepBits>> = HashMap::new();
    let mut sink = |id: SeqId, e: &Event| {
        if let Some(b) = bits_of(e) {
            got.entry(id).or_default().push(b);
        }
        Flow::Continue
    };
    batch.step(&mut sink);
    let second = started(batch.start(waiting).unwrap());
    while !batch.is_empty() {
        batch.step(&mut sink);
    }
    drop(batch);
    assert_eq!(got[&first], alone(&requests[0]));
    assert_eq!(got[&second], alone(&requests[1]));
}

/// A fork holding a copy of a cached prefix continues with the bits a fresh prefill of
/// the whole text gives, and leaves the original's cache alone.
#[test]
fn a_fork_with_a_copied_prefix_continues_like_a_fresh_prefill() {
    for name in [SMOL, GEMMA] {
        let mut a = load(name);
        let ids = a
            .tokenizer
            .encode_prompt("The capital of France is Paris, and the capital of Italy is")
            .unwrap();
        a.lm.forward(&ids).unwrap();
        let keep = ids.len() - 4;
        let (mut b, kept) = a.fork_with_prefix(keep).expect("a transformer forks");
        assert_eq!(kept, keep, "{name}");
        assert_eq!(b.lm.position(), keep, "{name}");
        let from_copy: Vec<f32> = b.lm.forward(&ids[keep..]).unwrap().to_vec1().unwrap();
        let fresh: Vec<f32> = load(name).lm.forward(&ids).unwrap().to_vec1().unwrap();
        let same = from_copy
            .iter()
            .zip(&fresh)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name}: the copied prefix gives other logits");
        assert_eq!(
            a.lm.position(),
            ids.len(),
            "{name}: the original's cache moved"
        );
    }
}
