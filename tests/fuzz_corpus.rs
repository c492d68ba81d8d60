//! Replays every committed fuzz input (`fuzz/corpus/TARGET/` seeds and
//! `fuzz/regressions/TARGET/` findings) through the entry points the fuzz targets call,
//! so CI checks them without building the fuzzers. No input may panic; a seed is
//! accepted unless its name starts with `bad-`; a refused input (every regression)
//! gives a non-empty one-line error.
#![cfg(all(feature = "bench", feature = "serve"))]

use std::path::{Path, PathBuf};

type Entry = fn(&[u8]) -> tutti::fuzz::Outcome;

const TARGETS: &[(&str, Entry)] = &[
    ("gguf", tutti::fuzz::gguf),
    ("hf_checkpoint", tutti::fuzz::hf_checkpoint),
    ("tokenizer_json", tutti::fuzz::tokenizer_json),
    ("byte_vocab", tutti::fuzz::byte_vocab),
    ("chat_template", tutti::fuzz::chat_template),
    ("ensemble_toml", tutti::fuzz::ensemble_toml),
    ("bench_rows", tutti::fuzz::bench_rows),
    ("serve_request", tutti::fuzz::serve_request),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| Some(e.ok()?.path())).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn every_committed_fuzz_input_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let fuzz_dirs: Vec<String> = files(&root.join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    let mut named: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    named.sort_unstable();
    assert_eq!(fuzz_dirs, named, "every fuzz target is replayed here");
    let mut problems = Vec::new();
    let mut replayed = 0;
    for (target, entry) in TARGETS {
        let seeds = files(&root.join("corpus").join(target));
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seeds");
        let regressions = files(&root.join("regressions").join(target));
        for path in seeds.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let must_refuse = name.starts_with("bad-") || regressions.contains(path);
            replayed += 1;
            let outcome = std::panic::catch_unwind(|| entry(&data));
            let shown = path.strip_prefix(&root).unwrap().display();
            match outcome {
                Err(_) => problems.push(format!("{shown}: panicked")),
                Ok(Ok(())) if must_refuse => problems.push(format!("{shown}: accepted")),
                Ok(Err(e)) if !must_refuse => problems.push(format!("{shown}: refused: {e}")),
                Ok(Err(e)) if e.trim().is_empty() || e.contains('\n') => {
                    problems.push(format!("{shown}: unclear error {e:?}"))
                }
                Ok(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(replayed >= 25, "only {replayed} inputs");
}
