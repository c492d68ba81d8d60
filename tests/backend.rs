//! Members behind other backends: a backend written here (outside the engine) that
//! hands the step only the head of each distribution, as a serving engine's
//! `top_logprobs` does, plugs into the same loop and decodes like the local model.

mod ensemble_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ensemble_support::{load, GEMMA, SMOL};
use tutti::engine::{Backend, EngineError, Ensemble, Gate, Logits, Request, SparseLogits};
use tutti::LocalModel;
use tutti_models::{Model, ModelTokenizer};

/// A local model that reports only its `n` most probable ids (log-probabilities) and
/// the remaining mass, and counts its forwards.
struct HeadOnly {
    inner: LocalModel,
    n: usize,
    forwards: Arc<AtomicUsize>,
}

impl HeadOnly {
    fn new(model: Model, n: usize) -> (HeadOnly, Arc<AtomicUsize>) {
        let forwards = Arc::new(AtomicUsize::new(0));
        let mut inner = LocalModel::new(model);
        inner.keep_logits_on_device(false);
        (
            HeadOnly {
                inner,
                n,
                forwards: forwards.clone(),
            },
            forwards,
        )
    }
}

impl Backend for HeadOnly {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn tokenizer(&self) -> &ModelTokenizer {
        self.inner.tokenizer()
    }
    fn logit_width(&self) -> usize {
        self.inner.logit_width()
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn forward(&mut self, context: &[u32], cached: usize) -> Result<Logits, EngineError> {
        self.forwards.fetch_add(1, Ordering::Relaxed);
        let Logits::Host(row) = self.inner.forward(context, cached)? else {
            unreachable!("host logits were asked for")
        };
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        let top: Vec<(u32, f32)> = ids[..self.n]
            .iter()
            .map(|&id| (id, row[id as usize] - lse))
            .collect();
        let rest = 1.0 - top.iter().map(|&(_, lp)| lp.exp()).sum::<f32>();
        Ok(Logits::Sparse(Arc::new(SparseLogits { top, rest })))
    }
    fn uses_host_cpu(&self) -> bool {
        true
    }
    fn device_name(&self) -> String {
        "head-only".into()
    }
}

const PROMPT: &str = "The capital of France is";

#[test]
fn a_head_only_backend_decodes_like_the_local_model() {
    let request = Request::raw(PROMPT).max_tokens(16);
    let mut local = Ensemble::builder().model(load(SMOL), 1.0).build().unwrap();
    let expected = local.generate_quiet(&request).unwrap();
    let (head, forwards) = HeadOnly::new(load(SMOL), 40);
    let mut sparse = Ensemble::builder()
        .backend(Box::new(head), 1.0)
        .build()
        .unwrap();
    let got = sparse.generate_quiet(&request).unwrap();
    assert_eq!(got.members[0].ids, expected.members[0].ids);
    assert_eq!(got.text, expected.text);
    // One forward per step: the prompt, then one id at a time.
    assert_eq!(forwards.load(Ordering::Relaxed), got.steps.len());
}

#[test]
fn a_head_only_member_ensembles_with_a_local_one() {
    // Weight 0 on the head-only member: the local member's greedy text, while the
    // head-only member follows it in its own tokens.
    let request = Request::raw(PROMPT).max_tokens(12);
    let mut alone = Ensemble::builder().model(load(GEMMA), 1.0).build().unwrap();
    let expected = alone.generate_quiet(&request).unwrap();
    let (head, _) = HeadOnly::new(load(SMOL), 20);
    let mut pair = Ensemble::builder()
        .model(load(GEMMA), 1.0)
        .backend(Box::new(head), 0.0)
        .build()
        .unwrap();
    let out = pair.generate_quiet(&request).unwrap();
    assert_eq!(out.text, expected.text);
    assert_eq!(out.members[0].ids, expected.members[0].ids);
    let smol_text = pair.members()[1].vocab().decode_bytes(&out.members[1].ids);
    assert_eq!(String::from_utf8_lossy(&smol_text), out.text);
}

#[test]
fn the_gate_runs_each_member_once_per_consulted_step() {
    let (primary, primary_forwards) = HeadOnly::new(load(SMOL), 20);
    let (other, other_forwards) = HeadOnly::new(load(GEMMA), 20);
    let mut ens = Ensemble::builder()
        .backend(Box::new(primary), 1.0)
        .backend(Box::new(other), 1.0)
        .build()
        .unwrap();
    let out = ens
        .generate_quiet(
            &Request::raw(PROMPT)
                .max_tokens(16)
                .gate(Gate::Uncertain(0.5)),
        )
        .unwrap();
    assert!(out.ensembled_steps > 0 && out.ensembled_steps < out.steps.len());
    assert_eq!(primary_forwards.load(Ordering::Relaxed), out.steps.len());
    // The other member runs only on ensembled steps (catching up in one forward).
    assert_eq!(other_forwards.load(Ordering::Relaxed), out.ensembled_steps);
    // Each consulted member's distribution is computed once per step.
    assert_eq!(ens.members()[0].distributions(), out.steps.len());
    assert_eq!(ens.members()[1].distributions(), out.ensembled_steps);
}
