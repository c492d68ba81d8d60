//! Scoring continuations (`Ensemble::score`): a member alone gives its own
//! log-likelihood bit for bit with its forwards and close to llama.cpp's, a model with
//! itself gives the model, the demo pair follows the primary's cut with every member in
//! its own tokens, candidates outside every top-k are inserted, and bad requests fail
//! clearly.

mod ensemble_support;

use ensemble_support::{load, GEMMA, SMOL};
use serde_json::Value;
use tutti::align::AlignMethod;
use tutti::engine::{Combine, EngineError, Ensemble, Request, ScoreRequest};

const CONTEXT: &str = "Question: What is the capital of France?\nAnswer:";

fn conts() -> Vec<String> {
    [
        " Paris",
        " Berlin, the capital of Germany",
        " zebra xylophone quartz",
    ]
    .map(String::from)
    .to_vec()
}

fn solo(name: &str) -> Ensemble {
    Ensemble::builder().model(load(name), 1.0).build().unwrap()
}

fn pair(a: &str, b: &str) -> Ensemble {
    Ensemble::builder()
        .model(load(a), 1.0)
        .model(load(b), 1.0)
        .align(AlignMethod::MinEd)
        .no_map_cache()
        .build()
        .unwrap()
}

/// `ln softmax(logits)[id]` as the engine computes it: in f64 from the f32 normaliser.
fn log_softmax_at(logits: &[f32], id: u32) -> f64 {
    let n = tutti_kernels::log_norm(logits, 1.0).unwrap();
    (f64::from(logits[id as usize]) - f64::from(n.max_logit)) / f64::from(n.temperature)
        - f64::from(n.log_z)
}

#[test]
fn a_member_alone_scores_its_tokens_bit_for_bit_with_its_forwards() {
    for name in [SMOL, GEMMA] {
        let mut ens = solo(name);
        let scores = ens
            .score(&ScoreRequest::new(Request::raw(CONTEXT), conts()))
            .unwrap();
        assert_eq!(scores.members.len(), 1);
        let mut model = load(name);
        let prompt = model.tokenizer.encode_prompt(CONTEXT).unwrap();
        assert_eq!(scores.members[0].scores, scores.ensemble);
        for (cont, got) in conts().iter().zip(&scores.ensemble) {
            let ids = model.tokenizer.encode(cont, false).unwrap();
            assert_eq!(
                got.tokens,
                ids.len(),
                "{name}: one step per token of {cont:?}"
            );
            let mut want = 0.0;
            for (i, &id) in ids.iter().enumerate() {
                // A fresh forward of the whole prefix: the last row's logits.
                model.lm.reset();
                let mut ctx = prompt.clone();
                ctx.extend_from_slice(&ids[..i]);
                let logits: Vec<f32> = model.lm.forward(&ctx).unwrap().to_vec1().unwrap();
                let lp = log_softmax_at(&logits, id);
                assert_eq!(
                    got.steps[i].logprob.to_bits(),
                    lp.to_bits(),
                    "{name}: step {i} of {cont:?}"
                );
                want += lp;
            }
            assert_eq!(
                got.logprob.to_bits(),
                f64::to_bits(want),
                "{name}: {cont:?}"
            );
            // candle's own log-softmax over one forward of everything agrees closely.
            model.lm.reset();
            let mut all = prompt.clone();
            all.extend_from_slice(&ids);
            let (_, logp) = model.lm.forward_scored(&all).unwrap();
            let theirs: f64 = logp[prompt.len() - 1..].iter().map(|&x| f64::from(x)).sum();
            assert!(
                (theirs - got.logprob).abs() < 1e-3,
                "{name}: {theirs} vs {}",
                got.logprob
            );
        }
        assert!(
            scores.ensemble[0].logprob > scores.ensemble[2].logprob,
            "{name}: the right answer is likelier than nonsense"
        );
    }
}

/// llama.cpp's log-probabilities of its own greedy continuations, one row at a time
/// (the fixtures of `models/tests/llamacpp_parity.rs`), scored as continuations.
#[test]
fn a_member_alone_matches_llamacpp_log_probabilities() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llamacpp/smollm2-ubatch1.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut ens = solo(SMOL);
    let mut checked = 0;
    let mut worst = 0f64;
    for case in v["cases"].as_array().unwrap() {
        let tokens = ids(&case["tokens"]);
        let greedy = ids(&case["greedy"]);
        let n = greedy.len().min(8);
        let text = ens.members()[0].vocab().decode_bytes(&greedy[..n]);
        let Ok(text) = String::from_utf8(text) else {
            continue;
        };
        if text.is_empty() {
            continue;
        }
        // Only where the member's own encoding of the text is llama.cpp's ids.
        if ens.members()[0].tokenizer().encode(&text, false).unwrap() != greedy[..n] {
            continue;
        }
        let req = ScoreRequest::new(Request::ids(vec![tokens]), vec![text]);
        let scores = ens.score(&req).unwrap();
        for (step, got) in scores.ensemble[0].steps.iter().enumerate() {
            let (id, want) = (
                &case["top_logprobs"][step][0][0],
                &case["top_logprobs"][step][0][1],
            );
            assert_eq!(id.as_u64().unwrap() as u32, greedy[step]);
            worst = worst.max((got.logprob - want.as_f64().unwrap()).abs());
            assert!(
                got.greedy,
                "llama.cpp's greedy id is the member's greedy id"
            );
        }
        checked += 1;
    }
    eprintln!("{checked} continuations, largest |Δ log-probability| {worst:.2e}");
    assert!(
        checked >= 5,
        "only {checked} fixture continuations re-encode to their ids"
    );
    // The logits agree to 1e-5 (`llamacpp_parity`); what is left is the normaliser,
    // which llama-server sums over the vocabulary in f32 and this engine in f64.
    assert!(
        worst < 1e-3,
        "log-probabilities differ from llama.cpp's by {worst}"
    );
}

#[test]
fn a_model_with_itself_scores_as_the_model() {
    for name in [SMOL, GEMMA] {
        let alone = solo(name)
            .score(&ScoreRequest::new(Request::raw(CONTEXT), conts()))
            .unwrap();
        for rule in [Combine::Mean, Combine::Max, Combine::Confidence] {
            let twice = pair(name, name)
                .score(&ScoreRequest::new(
                    Request::raw(CONTEXT).combine(rule),
                    conts(),
                ))
                .unwrap();
            for (a, b) in alone.ensemble.iter().zip(&twice.ensemble) {
                assert_eq!(a.logprob.to_bits(), b.logprob.to_bits(), "{name} {rule:?}");
                assert_eq!(a.steps.len(), b.steps.len());
                assert_eq!(a.greedy, b.greedy);
            }
            for (a, b) in alone.ensemble.iter().zip(&twice.sequence) {
                assert_eq!(
                    a.logprob.to_bits(),
                    b.logprob.to_bits(),
                    "{name}: sequence level"
                );
            }
        }
    }
}

#[test]
fn the_demo_pair_follows_the_primary_cut_with_each_member_in_its_own_tokens() {
    let mut ens = pair(SMOL, GEMMA);
    let scores = ens
        .score(&ScoreRequest::new(Request::raw(CONTEXT), conts()))
        .unwrap();
    let mut inserted = 0;
    for (c, cont) in conts().iter().enumerate() {
        let s = &scores.ensemble[c];
        let joined: Vec<u8> = s.steps.iter().flat_map(|st| st.bytes.clone()).collect();
        assert_eq!(joined, cont.as_bytes(), "the steps spell the continuation");
        let smol_ids = ens.members()[0].tokenizer().encode(cont, false).unwrap();
        assert_eq!(
            s.tokens,
            smol_ids.len(),
            "the primary's tokens cut the steps"
        );
        assert!(s.logprob.is_finite() && s.logprob < 0.0);
        inserted += s.steps.iter().filter(|st| st.inserted).count();
        if s.steps.iter().any(|st| st.inserted) {
            assert_eq!(
                s.greedy,
                Some(false),
                "an inserted step was nobody's choice"
            );
        }
        // The sequence level lies between the members alone.
        let (a, b) = (
            scores.members[0].scores[c].logprob,
            scores.members[1].scores[c].logprob,
        );
        let seq = scores.sequence[c].logprob;
        assert!(seq >= a.min(b) - 1e-9 && seq <= a.max(b) + 1e-9);
    }
    assert!(inserted > 0, "nonsense lies outside both members' top-k");
    // Each member alone inside the ensemble's call scores as a one-member request.
    for (i, name) in [SMOL, GEMMA].iter().enumerate() {
        let alone = solo(name)
            .score(&ScoreRequest::new(Request::raw(CONTEXT), conts()))
            .unwrap();
        assert_eq!(alone.ensemble, scores.members[i].scores, "{name}");
    }
    // Another primary cuts by its own tokens.
    let swapped = ens
        .score(&ScoreRequest::new(
            Request::raw(CONTEXT).members(vec![1, 0]),
            conts(),
        ))
        .unwrap();
    for (c, cont) in conts().iter().enumerate() {
        let gemma_ids = ens.members()[1].tokenizer().encode(cont, false).unwrap();
        assert_eq!(swapped.ensemble[c].tokens, gemma_ids.len());
    }
    // Scoring again, after other texts, gives the same bits.
    let again = ens
        .score(&ScoreRequest::new(Request::raw(CONTEXT), conts()))
        .unwrap();
    assert_eq!(again, scores);
}

#[test]
fn bad_score_requests_fail_clearly() {
    let mut ens = solo(SMOL);
    let empty = ens.score(&ScoreRequest::new(Request::raw(CONTEXT), Vec::new()));
    assert!(
        matches!(empty, Err(EngineError::BadRequest(_))),
        "{empty:?}"
    );
    let blank = ens.score(&ScoreRequest::new(
        Request::raw(CONTEXT),
        vec![String::new()],
    ));
    assert!(
        matches!(blank, Err(EngineError::BadRequest(_))),
        "{blank:?}"
    );
    let no_ctx = ens.score(&ScoreRequest::new(Request::raw(" "), vec![" a".into()]));
    assert!(
        matches!(no_ctx, Err(EngineError::EmptyPrompt)),
        "{no_ctx:?}"
    );
}

/// A continuation longer than one forward's rows (64) scores as its tokens' one-id
/// steps do.
#[test]
fn a_long_continuation_spans_several_row_forwards() {
    let cont: String = " and then".repeat(40);
    let mut ens = solo(SMOL);
    let got = ens
        .score(&ScoreRequest::new(
            Request::raw(CONTEXT),
            vec![cont.clone()],
        ))
        .unwrap();
    let mut model = load(SMOL);
    let prompt = model.tokenizer.encode_prompt(CONTEXT).unwrap();
    let ids = model.tokenizer.encode(&cont, false).unwrap();
    assert!(ids.len() > 64, "{} tokens", ids.len());
    model.lm.reset();
    let mut logits: Vec<f32> = model.lm.forward(&prompt).unwrap().to_vec1().unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let lp = log_softmax_at(&logits, id);
        assert_eq!(
            got.ensemble[0].steps[i].logprob.to_bits(),
            lp.to_bits(),
            "step {i}"
        );
        logits = model.lm.forward(&[id]).unwrap().to_vec1().unwrap();
    }
}
