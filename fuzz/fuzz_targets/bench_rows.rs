#![no_main]
// Errors are the expected outcome; a panic tutti does not catch, a hang or a runaway
// allocation is a finding.
libfuzzer_sys::fuzz_target!(init: tutti::fuzz::abort_on_uncaught_panics(), |data: &[u8]| {
    let _ = tutti::fuzz::bench_rows(data);
});
