//! Ensemble quality settings on the demo models: the gates in any member order, the
//! members' own temperatures, and weights from the prompt's perplexity (a random-weight
//! member with its own tokenizer is silenced by them).

mod ensemble_support;

use ensemble_support::{demo, load, GEMMA, SMOL};
use tutti::engine::{Ensemble, Event, Flow, Gate, Request, StepEvent};

const PROMPT: &str = "The capital of France is";

fn raw() -> Request {
    Request::raw(PROMPT).max_tokens(16)
}

fn steps(ens: &mut Ensemble, request: &Request) -> (tutti::engine::Generation, Vec<StepEvent>) {
    let mut steps = Vec::new();
    let out = ens
        .generate(request, &mut |e: &Event| {
            if let Event::Step(s) = e {
                steps.push(s.clone());
            }
            Flow::Continue
        })
        .unwrap();
    (out, steps)
}

fn pair() -> Ensemble {
    Ensemble::builder()
        .model(load(SMOL), 1.0)
        .model(load(GEMMA), 1.0)
        .build()
        .unwrap()
}

#[test]
fn disagree_gate_combines_only_where_the_top_candidates_differ() {
    let mut ens = pair();
    let request = Request::raw("Write one sentence about the sea:")
        .max_tokens(24)
        .gate(Gate::Disagree);
    let (out, events) = steps(&mut ens, &request);
    assert!(
        out.ensembled_steps > 0 && out.ensembled_steps < out.steps.len(),
        "{} of {} steps ensembled",
        out.ensembled_steps,
        out.steps.len()
    );
    for s in &events {
        // Every member runs at every step.
        assert!(s.members.iter().all(|m| m.consulted), "step {}", s.index);
        if !s.time.ensembled {
            // An agreed step took a candidate both members proposed.
            assert!(
                s.members.iter().all(|m| m.id.is_some()),
                "step {}: {:?}",
                s.index,
                s.members
            );
        }
    }
}

#[test]
fn uncertain_gate_works_in_either_member_order() {
    let gate = Gate::Uncertain(0.5);
    // Gemma as the primary through the request's member order...
    let mut ens = pair();
    let (a, _) = steps(&mut ens, &raw().gate(gate).members(vec![1, 0]));
    assert!(a.ensembled_steps > 0 && a.ensembled_steps < a.steps.len());
    assert_eq!(ens.members()[1].distributions(), a.steps.len());
    assert_eq!(ens.members()[0].distributions(), a.ensembled_steps);
    // ...decodes like an ensemble built in that order.
    let mut reversed = Ensemble::builder()
        .model(load(GEMMA), 1.0)
        .model(load(SMOL), 1.0)
        .build()
        .unwrap();
    let (b, _) = steps(&mut reversed, &raw().gate(gate));
    assert_eq!(a.text, b.text);
    assert_eq!(a.ensembled_steps, b.ensembled_steps);
    assert_eq!(a.members[0].ids, b.members[0].ids);
    assert_eq!(a.members[1].ids, b.members[1].ids);
}

#[test]
fn a_members_temperature_is_applied_before_combining() {
    let alone = |t: f32| {
        let mut e = Ensemble::builder()
            .backend_at(
                Box::new(tutti::backends::LocalModel::new(load(SMOL))),
                1.0,
                t,
            )
            .build()
            .unwrap();
        steps(&mut e, &raw())
    };
    let (plain, plain_steps) = alone(1.0);
    let (sharp, sharp_steps) = alone(0.5);
    // Greedy choices do not move; the member's probabilities sharpen.
    assert_eq!(plain.members[0].ids, sharp.members[0].ids);
    let mut sharper = 0;
    for (p, s) in plain_steps.iter().zip(&sharp_steps) {
        assert!(s.chosen.prob >= p.chosen.prob - 1e-6, "step {}", p.index);
        sharper += usize::from(s.chosen.prob > p.chosen.prob + 1e-4);
    }
    assert!(sharper > 0);
    // A member flattened to near-uniform (t = 100 over 262k ids) adds nothing to the
    // mean: the pair decodes as SmolLM2 alone.
    let mut flat = Ensemble::builder()
        .model(load(SMOL), 1.0)
        .backend_at(
            Box::new(tutti::backends::LocalModel::new(load(GEMMA))),
            1.0,
            100.0,
        )
        .build()
        .unwrap();
    let (out, _) = steps(&mut flat, &raw());
    assert_eq!(out.members[0].ids, plain.members[0].ids);
    assert_eq!(out.text, plain.text);
}

/// A random-weight `tiny` model with the GPT-2 tokenizer (neither demo model's).
fn random_member() -> tutti_models::Model {
    let tok = std::path::PathBuf::from(demo("tokenizers/gpt2/tokenizer.json"));
    let mut cfg = tutti_models::random::shape_config("tiny").unwrap();
    cfg.vocab_size = 50_304;
    tutti::bench::speed::random_model(
        cfg,
        "random-tiny".into(),
        &tok,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        1,
    )
    .unwrap()
}

#[test]
fn auto_weights_follow_the_prompts_perplexity() {
    let prompt =
        "Q: What is the capital of Italy?\nA: Rome\n\nQ: What is the capital of Spain?\nA:";
    let request = Request::raw(prompt).max_tokens(6).stop("\n");
    let mut smol = Ensemble::builder().model(load(SMOL), 1.0).build().unwrap();
    let expected = smol.generate_quiet(&request).unwrap();
    let mut ens = Ensemble::builder()
        .model(load(SMOL), 1.0)
        .model(random_member(), 1.0)
        .build()
        .unwrap();
    let out = ens
        .generate_quiet(
            &request
                .clone()
                .auto_weights(tutti::engine::DEFAULT_AUTO_TAU),
        )
        .unwrap();
    let w: Vec<f32> = out.members.iter().map(|m| m.weight).collect();
    assert!(w[1] < 1e-6 && (w[0] - 1.0).abs() < 1e-5, "{w:?}");
    assert_eq!(out.text, expected.text);
    assert_eq!(out.members[0].ids, expected.members[0].ids);
    // The prefill ran once per member, in the first step's time.
    assert!(out.steps[0].forward_ms.iter().all(|&ms| ms > 0.0));
    assert_eq!(ens.members()[1].distributions(), out.steps.len());
    assert!(
        out.timing.total_ms >= out.timing.prefill_ms,
        "the generation's time leaves out the auto-weight prefill: {:?}",
        out.timing
    );
    // The demo pair fit such a prompt about equally well: neither is silenced.
    let mut pair = pair();
    let out = pair
        .generate_quiet(&request.auto_weights(tutti::engine::DEFAULT_AUTO_TAU))
        .unwrap();
    let w: Vec<f32> = out.members.iter().map(|m| m.weight).collect();
    assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{w:?}");
    assert!(w.iter().all(|&x| x > 0.1), "{w:?}");
}

/// The scores of a scored prefill are the log-probabilities a token-by-token run gives
/// (to the quantized kernels' batch-size differences), and the last position's logits
/// are exactly those of a plain prefill.
#[test]
fn a_scored_prefill_matches_token_by_token_log_probabilities() {
    for name in [SMOL, GEMMA] {
        let mut m = load(name);
        let ids = m.tokenizer.encode_prompt("One, two, three, four").unwrap();
        m.lm.reset();
        let plain: Vec<f32> = m.lm.forward(&ids).unwrap().to_vec1().unwrap();
        m.lm.reset();
        let (last, scores) = m.lm.forward_scored(&ids).unwrap();
        assert_eq!(last.to_vec1::<f32>().unwrap(), plain, "{name}");
        assert_eq!(scores.len(), ids.len() - 1);
        m.lm.reset();
        for (i, &score) in scores.iter().enumerate() {
            let row: Vec<f32> = m.lm.forward(&ids[i..i + 1]).unwrap().to_vec1().unwrap();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
            let expected = row[ids[i + 1] as usize] - lse;
            // One-token and multi-token forwards of the quantized matmuls differ by up
            // to ~0.7 in logits on these models, so the check is on probabilities.
            assert!(
                (score.exp() - expected.exp()).abs() < 0.05,
                "{name} position {i}: {score} vs {expected}"
            );
        }
    }
}
