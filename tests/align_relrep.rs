//! relrep on the two real demo models (SmolLM2-135M-Instruct Q4_1 and Gemma-3-270M
//! Q4_K_M, from `scripts/fetch-models.sh`): held-out shared tokens (not anchors) should
//! map to their identical counterpart (the B token with the same bytes).
//!
//! The acceptance target is ≥ 95% identity, guarded here in both directions.
//! relrep-v4 (whitened embeddings, 16,384 anchors, the anchors' cross-similarity's
//! singular basis weighted by S², CSLS k = 3 over a 64-target shortlist) measures
//! 1905/2000 = 95.25% Gemma 3 → SmolLM2 and 1905/2000 = 95.25% SmolLM2 → Gemma 3 on
//! this test's draw (on the first 500 of it: 94.6% / 95.6%). relrep-v3 (plain relative
//! vectors) measured 92.8% / 94.0% on 500, v2 9% / 3%; the other variants and their
//! numbers are in `src/align/relrep.rs`. The margin over the target is small (5 tokens
//! per direction): a change that loses it has to be measured and argued, not waved
//! through. About 2½ minutes on 2 loaded CPU cores, most of it set-up of the
//! SmolLM2 → Gemma 3 direction (262k targets).

use std::collections::HashSet;
use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tutti::align::relrep::{RelRep, RelRepConfig};
use tutti::vocab::Vocab;

/// Held-out sample size: 2,000 rather than 500 halves the sampling error (±0.5 points
/// instead of ±1 at 95%) and costs seconds, not minutes, since CSLS penalties are only
/// computed for shortlisted targets.
const HELD_OUT: usize = 2000;

fn model(file: &str) -> (Vocab, candle_core::Tensor) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models-cache")
        .join(file);
    assert!(
        path.is_file(),
        "{} missing: run scripts/fetch-models.sh",
        path.display()
    );
    let m =
        tutti_models::Model::load(path.to_str().unwrap(), &Default::default()).expect("load model");
    let v = Vocab::from_tokenizer(
        m.tokenizer.inner(),
        m.tokenizer.eos_ids(),
        Some(m.lm.vocab_size()),
    )
    .unwrap();
    // Both demo models tie input and output embeddings.
    assert!(m.lm.output_embeddings().unwrap().is_none());
    (v, m.lm.input_embeddings().unwrap())
}

/// Identity rate of `rr` on [`HELD_OUT`] random shared tokens of A that are not anchors.
fn held_out_identity(rr: &RelRep, va: &Vocab, rows_a: usize, vb: &Vocab) -> (usize, usize) {
    let anchors: HashSet<u32> = rr.anchors().iter().map(|p| p.0).collect();
    let mut held: Vec<(u32, u32)> = va
        .canonical_surfaces()
        .into_iter()
        .filter(|(id, _)| !anchors.contains(id) && (*id as usize) < rows_a)
        .filter(|(id, _)| !va.is_byte_fallback(*id) && !va.is_eos(*id))
        .filter_map(|(id, s)| vb.id_of(s).map(|t| (id, t)))
        .collect();
    held.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    held.truncate(HELD_OUT);
    let ids: Vec<u32> = held.iter().map(|p| p.0).collect();
    let got = rr.lookup_many(&ids).unwrap();
    let right = got
        .iter()
        .zip(&held)
        .filter(|(g, h)| g.map(|x| x.0) == Some(h.1))
        .count();
    // Lazy lookups are memoised and agree with the batch.
    assert_eq!(rr.lookup(ids[0]).unwrap(), got[0].map(|x| x.0));
    (right, held.len())
}

#[test]
fn relrep_maps_held_out_shared_tokens_both_directions() {
    let (vg, eg) = model("gemma-3-270m-q4_k_m.gguf");
    let (vs, es) = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let cfg = RelRepConfig::default();
    let mut results = Vec::new();
    for (name, va, ea, vb, eb) in [
        ("Gemma 3 -> SmolLM2", &vg, &eg, &vs, &es),
        ("SmolLM2 -> Gemma 3", &vs, &es, &vg, &eg),
    ] {
        let t = std::time::Instant::now();
        let rr = RelRep::new(va, ea, vb, eb, &cfg).unwrap();
        assert_eq!(rr.anchors().len(), cfg.anchors);
        let (right, n) = held_out_identity(&rr, va, ea.dims()[0], vb);
        eprintln!(
            "relrep {name} identity on held-out shared tokens: {right}/{n} ({:.1}s)",
            t.elapsed().as_secs_f64()
        );
        results.push((name, right, n));
    }
    for (name, right, n) in results {
        assert!(right * 100 >= n * 95, "{name}: {right}/{n}");
    }
}
