//! Panics tutti catches: some dependencies' file readers panic on damaged input, and
//! tutti runs them inside `catch_unwind` so that the panic becomes that file's error.
//! A binary's panic hook asks [`panic_is_caught`] to stay quiet about those.

/// Source files of dependencies whose readers panic on some damaged input, inside
/// tutti's `catch_unwind` that turns the panic into the file's error: candle's GGUF
/// header reader and the Parquet reader.
pub const CAUGHT_PANIC_SITES: &[&str] = &["quantized/gguf_file.rs", "/parquet-"];

/// Whether a panic at `file` is one tutti catches and reports as an error.
pub fn panic_is_caught(file: &str) -> bool {
    CAUGHT_PANIC_SITES.iter().any(|site| file.contains(site))
}
