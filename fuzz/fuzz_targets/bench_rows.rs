#![no_main]
// Errors are the expected outcome; a panic, a hang or a runaway allocation is a finding.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tutti::fuzz::bench_rows(data);
});
