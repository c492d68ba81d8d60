//! Lockstep ensembles of the two demo models (different architectures and tokenizers):
//! reductions to a single model, reproducible sampling, KV rollback correctness and
//! clear errors for bad input.

mod ensemble_support;

use candle_core::Tensor;
use ensemble_support::{argmax, demo, load, load_fresh, max_diff, plain_greedy, GEMMA, SMOL};
use tutti::align::AlignMethod;
use tutti::engine::{
    Combine, EngineError, Ensemble, Gate, Member, MemberSpec, Prompt, Request, Sampling,
};
use tutti::EnsembleFile;
use tutti_models::Model;

const PROMPT: &str = "The capital of France is";
const N: usize = 16;

fn greedy_of(name: &str) -> Vec<u32> {
    let mut m = load(name);
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    plain_greedy(&mut m, &prompt, N)
}

fn raw() -> Request {
    Request::raw(PROMPT).max_tokens(N)
}

/// `n` greedy ids of `model` from the logits `logits`, EOS included (no early stop).
fn greedy_steps(model: &mut Model, logits: Tensor, n: usize) -> Vec<u32> {
    let mut logits: Vec<f32> = logits.to_vec1().unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = argmax(&logits);
        ids.push(id);
        logits = model.lm.forward(&[id]).unwrap().to_vec1().unwrap();
    }
    ids
}

/// A fork shares the weights but keeps its own cache: the model and its fork decoding
/// two prompts in alternation give what two fresh loads give.
#[test]
fn a_fork_decodes_like_a_fresh_load_with_a_cache_of_its_own() {
    for name in [SMOL, GEMMA] {
        let mut a = load_fresh(name);
        let mut b = a.fork().expect("a transformer forks");
        assert_eq!(b.lm.position(), 0);
        let p1 = a.tokenizer.encode_prompt(PROMPT).unwrap();
        let p2 = a
            .tokenizer
            .encode_prompt("Once upon a time, a robot")
            .unwrap();
        let (mut la, mut lb) = (
            a.lm.forward(&p1).unwrap().to_vec1::<f32>().unwrap(),
            b.lm.forward(&p2).unwrap().to_vec1::<f32>().unwrap(),
        );
        let (mut ids_a, mut ids_b) = (Vec::new(), Vec::new());
        for _ in 0..N {
            let (x, y) = (argmax(&la), argmax(&lb));
            ids_a.push(x);
            ids_b.push(y);
            la = a.lm.forward(&[x]).unwrap().to_vec1().unwrap();
            lb = b.lm.forward(&[y]).unwrap().to_vec1().unwrap();
        }
        for (prompt, got) in [(&p1, ids_a), (&p2, ids_b)] {
            let mut fresh = load_fresh(name);
            let first = fresh.lm.forward(prompt).unwrap();
            assert_eq!(greedy_steps(&mut fresh, first, N), got, "{name}");
        }
    }
}

/// The same file given twice loads once: the second member shares the first one's
/// weights and each decodes like the model alone.
#[test]
fn the_same_file_twice_decodes_like_the_model_alone() {
    let expected = greedy_of(GEMMA);
    let mut ens = Ensemble::builder()
        .member(MemberSpec::new(demo(GEMMA)))
        .member(MemberSpec::new(demo(GEMMA)).weight(0.5))
        .no_map_cache()
        .build()
        .unwrap();
    for _ in 0..2 {
        let out = ens.generate_quiet(&raw()).unwrap();
        assert_eq!(out.members[0].ids, expected);
        assert_eq!(out.members[1].ids, expected);
    }
}

#[test]
fn same_model_twice_gives_its_greedy_ids() {
    let expected = greedy_of(SMOL);
    let mut ens = Ensemble::builder()
        .model(load(SMOL), 1.0)
        .model(load(SMOL), 1.0)
        .build()
        .unwrap();
    let out = ens.generate_quiet(&raw()).unwrap();
    assert_eq!(out.members[0].ids, expected);
    assert_eq!(out.members[1].ids, expected);
    assert_eq!(out.ensembled_share, 1.0);
}

#[test]
fn weights_one_zero_give_the_first_members_greedy_ids_across_tokenizers() {
    for (a, b) in [(SMOL, GEMMA), (GEMMA, SMOL)] {
        let expected = greedy_of(a);
        for (align, combine) in [
            (AlignMethod::MinEd, Combine::Mean),
            (AlignMethod::Exact, Combine::Mean),
            (AlignMethod::MinEd, Combine::Confidence),
        ] {
            let mut ens = Ensemble::builder()
                .model(load(a), 1.0)
                .model(load(b), 0.0)
                .align(align)
                .build()
                .unwrap();
            let out = ens.generate_quiet(&raw().combine(combine)).unwrap();
            assert_eq!(
                out.members[0].ids, expected,
                "{a} + {b}:0 with {align}, {combine}"
            );
            // The zero-weight member still followed the text in its own tokens.
            let text_b = ens.members()[1].vocab().decode_bytes(&out.members[1].ids);
            assert_eq!(String::from_utf8_lossy(&text_b), out.text);
        }
    }
}

fn pair(align: AlignMethod) -> Ensemble {
    Ensemble::builder()
        .model(load(SMOL), 1.0)
        .model(load(GEMMA), 1.0)
        .align(align)
        .build()
        .unwrap()
}

#[test]
fn seeded_ensemble_sampling_is_reproducible() {
    let sampling = Sampling::Sample {
        temperature: 1.0,
        top_p: 0.9,
        seed: 5,
    };
    let mut ens = pair(AlignMethod::MinEd);
    let a = ens.generate_quiet(&raw().sampling(sampling)).unwrap();
    let b = ens.generate_quiet(&raw().sampling(sampling)).unwrap();
    assert_eq!(a.text, b.text);
    assert_eq!(a.members[0].ids, b.members[0].ids);
    assert_eq!(a.members[1].ids, b.members[1].ids);
}

/// The tensor top-k path (what GPU members use: fused top-k on the logits tensor, one
/// batched gather) gives the same generations as the host path, bit for bit on the CPU:
/// greedy, gated and sampled, with both alignment methods that map missing candidates.
#[test]
fn tensor_topk_path_matches_the_host_path() {
    let sampling = Sampling::Sample {
        temperature: 0.8,
        top_p: 0.95,
        seed: 11,
    };
    for (gate, sampled, align) in [
        (Gate::Always, false, AlignMethod::MinEd),
        (Gate::Uncertain(0.6), false, AlignMethod::Exact),
        (Gate::Always, true, AlignMethod::MinEd),
    ] {
        let run = |device_topk: bool| {
            let mut ens = pair(align);
            assert!(ens.set_device_topk(device_topk));
            let mut request = raw().gate(gate);
            if sampled {
                request = request.sampling(sampling);
            }
            let out = ens.generate_quiet(&request).unwrap();
            let ids: Vec<Vec<u32>> = out.members.iter().map(|m| m.ids.clone()).collect();
            (out.text, ids, out.ensembled_steps)
        };
        assert_eq!(run(true), run(false), "{gate:?} sampled {sampled} {align}");
    }
}

/// Softmax of logits.
fn probs(l: &[f32]) -> Vec<f32> {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = l.iter().map(|x| (x - m).exp()).sum();
    l.iter().map(|x| (x - m).exp() / z).collect()
}

/// After generation each member's cache must give the logits of a fresh prefill of its
/// committed ids. One-token and multi-token forwards of the quantized matmuls differ by
/// up to ~0.7 in logits on these models (measured without any rollback), so the check
/// is on the distribution: same top token, probabilities within 0.05. As a control, the
/// prefill of the committed ids minus the last one must fail that check.
fn assert_kv_matches_fresh_prefill(members: Vec<Member>) {
    for mut m in members {
        m.forward_pending().unwrap();
        let cached = probs(&m.host_logits().unwrap().unwrap());
        let committed = m.committed().to_vec();
        // The same weights with a cache of their own.
        let lm = &mut load(m.name()).lm;
        lm.reset();
        let fresh = probs(&lm.forward(&committed).unwrap().to_vec1::<f32>().unwrap());
        lm.reset();
        let shifted = probs(
            &lm.forward(&committed[..committed.len() - 1])
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        let d = max_diff(&cached, &fresh);
        assert!(
            d < 0.05,
            "{}: probabilities differ by {d} from a fresh prefill",
            m.name()
        );
        assert_eq!(argmax(&cached), argmax(&fresh), "{}", m.name());
        let control = max_diff(&cached, &shifted);
        assert!(
            control > 0.05,
            "{}: the check cannot tell states apart ({control})",
            m.name()
        );
    }
}

#[test]
fn rollback_keeps_kv_equal_to_fresh_prefill_during_generation() {
    let mut ens = pair(AlignMethod::MinEd);
    let out = ens
        .generate_quiet(
            &Request::raw("Write one sentence about a café in Zürich:")
                .max_tokens(N)
                .gate(Gate::Uncertain(0.6)),
        )
        .unwrap();
    assert!(out.tokens > 0);
    assert_kv_matches_fresh_prefill(ens.into_members());
}

#[test]
fn rollback_on_split_words_and_characters() {
    // Pieces that split words and a two-byte character force re-tokenization, so both
    // members must cut their caches back.
    let pieces: [&[u8]; 9] = [
        b" Z", b"\xc3", b"\xbcri", b"ch", b" is", b" a", b" ci", b"ty", b" of",
    ];
    for name in [SMOL, GEMMA] {
        let ens = Ensemble::builder().model(load(name), 1.0).build().unwrap();
        let prompt = ens.prompt_ids(0, &Prompt::Raw("Hello".into())).unwrap();
        let mut members = ens.into_members();
        let m = &mut members[0];
        m.start(prompt).unwrap();
        for p in pieces {
            m.forward_pending().unwrap();
            m.commit(p, None).unwrap();
        }
        assert!(m.rollbacks() > 0, "{name}: no rollback happened");
        let text = m.vocab().decode_bytes(m.generated());
        assert_eq!(text, " Zürich is a city of".as_bytes(), "{name}");
        // The committed ids are the member's own encoding of the text.
        let own = m.tokenizer().encode(" Zürich is a city of", false).unwrap();
        assert_eq!(m.generated(), &own[..], "{name}");
        assert_kv_matches_fresh_prefill(members);
    }
}

/// Everything a generation shows: the text, every member's ids, and per step the
/// combined probabilities of the whole union, who proposed each candidate with which id,
/// and each member's probability of the choice. Wrong vocabulary maps change the
/// probabilities even when the text survives. Proposers are named by their position in
/// the request's `members` (`order`), so that a subset of a larger ensemble and an
/// ensemble of just those members read the same.
fn trace(
    ens: &mut Ensemble,
    request: &Request,
    order: &[usize],
) -> (String, Vec<Vec<u32>>, Vec<String>) {
    let mut steps = Vec::new();
    let out = ens
        .generate(request, &mut |e: &tutti::Event| {
            if let tutti::Event::Step(s) = e {
                let alternatives: Vec<String> = s
                    .alternatives
                    .iter()
                    .map(|c| {
                        let mut by: Vec<(usize, u32)> = c
                            .proposers
                            .iter()
                            .map(|&(slot, id)| {
                                let at = order.iter().position(|&o| o == slot).unwrap();
                                (at, id)
                            })
                            .collect();
                        by.sort_unstable();
                        format!("{:?} {} {} {by:?}", c.bytes, c.eos, c.prob)
                    })
                    .collect();
                steps.push(format!(
                    "{alternatives:?} {:?}",
                    s.members.iter().map(|m| m.prob).collect::<Vec<_>>()
                ));
            }
            tutti::Flow::Continue
        })
        .unwrap();
    let ids = out.members.iter().map(|m| m.ids.clone()).collect();
    (out.text, ids, steps)
}

/// A request's member subset, in any order, decodes exactly like an ensemble built of
/// those members in that order, for every alignment method: each member scores the
/// others' candidates through the map from the member that proposed them.
#[test]
fn every_alignment_through_the_engine_in_any_order_and_on_subsets() {
    let request = Request::raw("Write one sentence about a café in Zürich:")
        .max_tokens(24)
        .alternatives(20);
    for align in [AlignMethod::Exact, AlignMethod::MinEd, AlignMethod::RelRep] {
        let build = |names: &[&str]| {
            let mut b = Ensemble::builder().align(align).no_map_cache();
            for n in names {
                b = b.model(load(n), 1.0);
            }
            b.build().unwrap()
        };
        let mut big = build(&[GEMMA, SMOL, GEMMA]);
        // relrep prepares its relative representations per ensemble (~20 s a pair
        // here): fewer orders for it.
        let mut orders = vec![(vec![1, 0], [SMOL, GEMMA]), (vec![1, 2], [SMOL, GEMMA])];
        if align != AlignMethod::RelRep {
            orders.extend([(vec![0, 1], [GEMMA, SMOL]), (vec![2, 1], [GEMMA, SMOL])]);
        }
        let mut reference: Vec<(Vec<&str>, Ensemble)> = Vec::new();
        for (slots, names) in orders {
            let got = trace(&mut big, &request.clone().members(slots.clone()), &slots);
            if !reference.iter().any(|(n, _)| n.as_slice() == names) {
                reference.push((names.to_vec(), build(&names)));
            }
            let ens = &mut reference
                .iter_mut()
                .find(|(n, _)| n.as_slice() == names)
                .unwrap()
                .1;
            let expected = trace(ens, &request, &[0, 1]);
            assert_eq!(
                got, expected,
                "{align}: members {slots:?} of [gemma, smol, gemma]"
            );
        }
    }
}

/// Full maps go through the disk cache shared with `tutti align`: an ensemble asked to
/// build them stores them, the next one loads them, and both decode like the
/// per-candidate search.
#[test]
fn full_maps_are_cached_and_decode_like_the_lazy_search() {
    let dir = std::env::temp_dir().join(format!("tutti-maps-{}", std::process::id()));
    let cache = tutti::align::cache::MapCache::new(&dir);
    let request = Request::raw(PROMPT).max_tokens(N).alternatives(20);
    let build = |full: bool, cache: Option<tutti::align::cache::MapCache>| {
        let sources = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sources.clone();
        let mut b = Ensemble::builder()
            .model(load(SMOL), 1.0)
            .model(load(GEMMA), 1.0)
            .align(AlignMethod::MinEd)
            .full_maps(full)
            .on_progress(move |e| {
                use tutti::engine::{BuildEvent, MapEvent};
                if let BuildEvent::Map(MapEvent::Ready { source, .. }) = e {
                    seen.lock().unwrap().push((*source).clone());
                }
            });
        b = match cache {
            Some(c) => b.map_cache(c),
            None => b.no_map_cache(),
        };
        let ens = b.build().unwrap();
        let sources = sources.lock().unwrap().clone();
        (ens, sources)
    };
    use tutti::align::cache::Source;
    let (mut lazy, none) = build(false, None);
    assert!(none.is_empty());
    let (mut built, sources) = build(true, Some(cache.clone()));
    assert_eq!(sources.len(), 2);
    assert!(sources.iter().all(|s| *s != Source::Cached), "{sources:?}");
    let (mut loaded, sources) = build(false, Some(cache));
    assert_eq!(sources, vec![Source::Cached; 2]);
    let expected = trace(&mut lazy, &request, &[0, 1]);
    assert_eq!(trace(&mut built, &request, &[0, 1]), expected);
    assert_eq!(trace(&mut loaded, &request, &[0, 1]), expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_clear_error() {
    let smol = demo(SMOL);
    let build = |b: tutti::EnsembleBuilder| b.build().map(|_| ()).unwrap_err();
    // Devices are checked before any weights are read.
    #[cfg(not(feature = "cuda"))]
    {
        let err = build(
            Ensemble::builder()
                .member(MemberSpec::new(&smol))
                .member(MemberSpec::new(&smol).device(tutti_models::DeviceSpec::Cuda(0))),
        );
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
    let err = build(
        Ensemble::builder()
            .member(MemberSpec::new(&smol).weight(0.0))
            .member(MemberSpec::new(&smol).weight(0.0)),
    );
    assert!(matches!(err, EngineError::BadWeights { .. }), "{err}");
    let err = build(
        Ensemble::builder()
            .member(MemberSpec::new(&smol).weight(1.0))
            .member(MemberSpec::new(&smol).weight(-0.5)),
    );
    assert!(err.to_string().contains("negative"), "{err}");
    assert!(matches!(
        Request::raw("x").top_k(0).validate(),
        Err(EngineError::BadTopK(0))
    ));
    assert!(matches!(build(Ensemble::builder()), EngineError::NoMembers));
    assert!(MemberSpec::parse("a.gguf:w=heavy").is_err());
    assert_eq!(MemberSpec::parse("a.gguf:w=0.25").unwrap().weight, 0.25);
    assert!("uncertain:1.5".parse::<Gate>().is_err());
    let err =
        EnsembleFile::parse("[[member]]\nmodel = \"a\"\nweigth = 2\n", "pair.toml").unwrap_err();
    assert!(err.to_string().contains("weigth"), "{err}");
}

#[test]
fn cli_ensemble_file_and_errors() {
    let dir = std::env::temp_dir().join(format!("tutti-ens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!("topk = 3\n[[member]]\nmodel = {:?}\n", demo(SMOL)),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(["generate", "--ensemble", bad.to_str().unwrap(), "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("topk") && err.contains("bad.toml"), "{err}");
    let good = dir.join("pair.toml");
    std::fs::write(
        &good,
        format!(
            "top_k = 5\ngate = \"uncertain:0.5\"\n[[member]]\nmodel = {:?}\n[[member]]\nmodel = {:?}\nweight = 0.5\ndevice = \"cpu\"\n",
            demo(SMOL),
            demo(GEMMA)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args([
            "generate",
            "--ensemble",
            good.to_str().unwrap(),
            "--raw",
            "--max-tokens",
            "6",
            "--json",
            PROMPT,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    assert_eq!(v["settings"]["top_k"], 5);
    assert_eq!(v["members"][1]["weight"], 0.5);
    let share = v["ensembled_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share));
    assert_eq!(
        v["steps"].as_array().unwrap().len(),
        v["tokens"].as_u64().unwrap() as usize + usize::from(v["stop_reason"] == "eos")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every step of a generation as bits: the chosen bytes, their combined probability and
/// each member's probability of them.
fn step_bits(ens: &mut Ensemble, request: &Request) -> Vec<(Vec<u8>, u32, Vec<Option<u32>>)> {
    let mut steps = Vec::new();
    for event in ens.stream(request).unwrap() {
        if let tutti::engine::Event::Step(s) = event.unwrap() {
            let members = s.members.iter().map(|m| m.prob.map(f32::to_bits)).collect();
            steps.push((s.chosen.bytes.clone(), s.chosen.prob.to_bits(), members));
        }
    }
    steps
}

/// A token-id request per member (as the server sends them), so the prefix cache applies.
fn ids_request(text: &str) -> Request {
    let ids = [SMOL, GEMMA]
        .iter()
        .map(|m| load(m).tokenizer.encode_prompt(text).unwrap())
        .collect();
    Request::ids(ids).max_tokens(12)
}

/// The same greedy request gives the same bits whatever ran before it on the same
/// ensemble, with the prefix cache on as the server runs it: the reused prefix is fed
/// in other chunks than in a fresh run, and batch-invariant numerics make that moot.
#[test]
fn the_same_request_after_five_others_gives_the_same_bits() {
    let target = "Name three colors.";
    let mut fresh = pair(AlignMethod::MinEd);
    fresh.set_prefix_cache(true);
    let want = step_bits(&mut fresh, &ids_request(target));
    assert!(!want.is_empty());
    let mut used = pair(AlignMethod::MinEd);
    used.set_prefix_cache(true);
    for other in [
        "Name three animals.",
        "Name",
        "The capital of France is",
        "Name three colors. Then name three more colors, all of them",
        "Write a haiku about rain.",
    ] {
        step_bits(&mut used, &ids_request(other));
    }
    let got = step_bits(&mut used, &ids_request(target));
    let first = want.iter().zip(&got).position(|(a, b)| a != b);
    assert_eq!(
        first, None,
        "step {first:?} differs after five other requests"
    );
    assert_eq!(want.len(), got.len());
}

/// Requests decoded together (`generate_batch`: every step one batched forward per member
/// over all of them) give each the answer it gets alone: greedy and seeded sampling,
/// other rules, a subset of the members, a chat prompt, and requests that end early
/// while the others go on.
#[test]
fn batched_requests_give_each_the_answer_it_gets_alone() {
    let requests = vec![
        Request::raw(PROMPT).max_tokens(12),
        Request::raw("Write one sentence about the sea.").max_tokens(20),
        Request::raw("2 + 2 =")
            .max_tokens(4)
            .combine(Combine::Product),
        Request::raw("Once upon a time")
            .max_tokens(16)
            .sampling(Sampling::Sample {
                temperature: 0.8,
                top_p: 0.95,
                seed: 11,
            }),
        Request::raw("The largest planet is")
            .max_tokens(10)
            .members(vec![1]),
        Request::chat(vec![tutti::engine::Message::user("Name three colors.")]).max_tokens(14),
    ];
    let mut ens = pair(AlignMethod::MinEd);
    let together = ens.generate_batch(&requests).unwrap();
    assert_eq!(together.len(), requests.len());
    for (i, (r, got)) in requests.iter().zip(&together).enumerate() {
        let alone = pair(AlignMethod::MinEd).generate_quiet(r).unwrap();
        assert_eq!(got.text, alone.text, "request {i}");
        assert_eq!(got.stop_reason, alone.stop_reason, "request {i}");
        for (a, b) in got.members.iter().zip(&alone.members) {
            assert_eq!(a.ids, b.ids, "request {i}");
        }
        assert_eq!(alone.batched_forwards, 0);
    }
    // Every step counts its member's batched forward in its time.
    for s in together[1].steps.iter() {
        assert!(s.forward_ms.iter().all(|&f| f > 0.0), "{s:?}");
        assert!(s.total_ms >= s.forward_ms.iter().sum::<f64>());
    }
    // The longest requests ran most of their member forwards together.
    assert!(
        together[1].batched_forwards >= together[1].tokens,
        "{} batched forwards for {} tokens",
        together[1].batched_forwards,
        together[1].tokens
    );
}
