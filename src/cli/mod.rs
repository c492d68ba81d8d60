//! Subcommands of the `tutti` binary. Each module owns its clap arguments and a `run`.

pub mod align;
pub mod bench;
pub mod bench_mc;
pub mod bench_serve;
pub mod bench_speed;
pub mod common;
pub mod ensemble_args;
pub mod explain;
pub mod generate;
pub mod info;
pub mod log;
pub mod logits;
pub mod progress;
pub mod route;
pub mod serve;
pub mod tokenize;
