//! Token maps between the real vocabularies: exact maps, min-ed against a brute-force
//! reference on random samples, and the map cache.

mod align_support;

use align_support::load;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tutti::align::cache::{MapCache, MapKey, Source};
use tutti::align::min_ed::{brute_force, map_ids, MinEdIndex};
use tutti::align::{exact_map, AlignMethod, MapStats};
use tutti::vocab::Vocab;

#[test]
fn exact_maps_shared_tokens_to_themselves() {
    let (_, llama) = load("llama3");
    let (_, qwen) = load("qwen3");
    let map = exact_map(&llama, &qwen);
    let mut shared = 0;
    for id in llama.candidates() {
        let bytes = llama.bytes(id).unwrap();
        match (llama.is_eos(id), qwen.id_of(bytes), map.map(id)) {
            (true, _, t) => assert_eq!(t, Some(qwen.eos_ids()[0])),
            (false, Some(q), t) => {
                shared += 1;
                assert_eq!(t, Some(q));
                assert_eq!(qwen.bytes(q), Some(bytes));
            }
            (false, None, t) => assert_eq!(t, None, "id {id} has no counterpart"),
        }
    }
    let stats = MapStats::compute(&map, &llama, &qwen);
    assert_eq!(stats.exact_overlap, shared);
    assert_eq!(stats.mapped_identical, shared);
    // Both descend from the same byte-level BPE family: most of Llama 3 is shared.
    assert!(shared > 100_000, "overlap {shared}");
    // A vocabulary maps onto itself as the identity on canonical ids.
    let (_, gemma) = load("gemma3");
    let self_map = exact_map(&gemma, &gemma);
    for (id, bytes) in gemma.canonical_surfaces() {
        assert_eq!(self_map.map(id), Some(id), "{bytes:?}");
    }
}

/// `n` A candidates without an exact counterpart in B (the interesting queries), plus
/// `n / 10` with one, sampled with a fixed seed.
fn sample(a: &Vocab, b: &Vocab, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut hard, mut easy): (Vec<u32>, Vec<u32>) = a
        .candidates()
        .filter(|&id| !a.is_eos(id))
        .partition(|&id| b.id_of(a.bytes(id).unwrap()).is_none());
    hard.shuffle(&mut rng);
    easy.shuffle(&mut rng);
    hard.truncate(n);
    easy.truncate(n / 10);
    hard.extend(easy);
    hard
}

fn check_against_brute_force(a_name: &str, b_name: &str, n: usize) {
    let (_, a) = load(a_name);
    let (_, b) = load(b_name);
    let ids = sample(&a, &b, n, 17);
    assert!(ids.len() >= n, "{a_name}: only {} sampled", ids.len());
    let fast = map_ids(&MinEdIndex::new(&b), &a, &ids, &|_| {});
    let slow = brute_force(&a, &b, &ids);
    for ((id, f), s) in ids.iter().zip(&fast).zip(&slow) {
        assert_eq!(
            f,
            s,
            "{a_name}→{b_name}: token {id} ({:?})",
            String::from_utf8_lossy(a.bytes(*id).unwrap())
        );
        assert!(f.is_some());
    }
}

#[test]
fn min_ed_agrees_with_brute_force_gemma3_to_smollm2() {
    check_against_brute_force("gemma3", "smollm2", 2000);
}

#[test]
fn min_ed_agrees_with_brute_force_qwen3_to_llama3() {
    check_against_brute_force("qwen3", "llama3", 600);
}

#[test]
fn map_cache_round_trip_on_real_vocabularies() {
    let (_, smol) = load("smollm2");
    let (_, gpt2) = load("gpt2");
    let dir = std::env::temp_dir().join(format!("tutti-align-cache-{}", std::process::id()));
    let cache = MapCache::new(&dir);
    let key = MapKey::new(AlignMethod::Exact, &smol, &gpt2, &[]);
    let (built, src) = cache
        .get_or_build(&key, false, || Ok(exact_map(&smol, &gpt2)))
        .unwrap();
    assert_eq!(src, Source::Built);
    let (loaded, src) = cache
        .get_or_build(&key, false, || panic!("must load"))
        .unwrap();
    assert_eq!(src, Source::Cached);
    assert_eq!(built, loaded);
    // Corrupt the stored file: detected and rebuilt.
    let path = cache.path(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (rebuilt, src) = cache
        .get_or_build(&key, false, || Ok(exact_map(&smol, &gpt2)))
        .unwrap();
    assert!(matches!(src, Source::Rebuilt(_)), "{src:?}");
    assert_eq!(rebuilt, built);
    let _ = std::fs::remove_dir_all(&dir);
}
