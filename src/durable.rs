//! Files that survive a crash or a power loss. Every file tutti writes whole (bench and
//! route reports, route policy files, alignment maps, exported tokenizers) goes through
//! [`write_atomic`]: a unique temporary file in the same folder, written and fsynced,
//! renamed over the target, then the folder fsynced. Append-only result files are
//! synced after each row ([`sync_appended`]).
//!
//! The helper lives in the models crate, whose tokenizer export uses it too; this
//! module is its home for the rest of tutti.

pub use tutti_models::durable::{sync_appended, sync_dir, write_atomic, write_atomic_with};
