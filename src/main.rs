//! The `tutti` command line: generation, logits inspection, tokenization, vocabulary
//! alignment, benchmarks, the OpenAI-compatible server and build information.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tutti",
    version,
    about = "Token-level ensemble decoding of language models"
)]
struct Cli {
    /// More log lines on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// CPU threads for model compute [default: every core, or TUTTI_THREADS].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with one model or an ensemble of models.
    Generate(cli::generate::GenerateArgs),
    /// Print the top-N next-token ids and logits at the last prompt position.
    Logits(cli::logits::LogitsArgs),
    /// Token ids of a text, or export a model's tokenizer as tokenizer.json.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Build (or load from cache) a vocabulary map between two models and print stats.
    Align(cli::align::AlignArgs),
    /// Run members alone and as an ensemble on a benchmark, side by side.
    Bench(cli::bench::BenchArgs),
    /// Route mode (DER): members answer one after another, a policy picks who is next;
    /// `tutti route train` trains a learned policy.
    Route(cli::route::RouteArgs),
    /// Serve the ensemble over the OpenAI HTTP API (completions, chat, models).
    Serve(cli::serve::ServeArgs),
    /// Print compiled features, available devices and versions.
    Info,
}

fn main() {
    let cli = Cli::parse();
    cli::log::init(cli.verbose, cli.quiet);
    if let Some(n) = cli.threads {
        tutti::models::set_threads(n.into());
    }
    if cli.threads.is_some() || std::env::var_os("TUTTI_THREADS").is_some() {
        // candle's own CPU kernels and the alignment searches size their pools from it;
        // no other thread exists yet.
        std::env::set_var("RAYON_NUM_THREADS", tutti::models::threads().to_string());
    }
    // Panics that tutti catches inside dependencies' file readers are reported as that
    // file's error; their default message would only repeat it less clearly.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info
            .location()
            .is_some_and(|l| tutti::caught::panic_is_caught(l.file()))
        {
            default(info);
        }
    }));
    let result = match cli.command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Logits(args) => cli::logits::run(args),
        Command::Tokenize(args) => cli::tokenize::run(args),
        Command::Align(args) => cli::align::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Route(args) => cli::route::run(args),
        Command::Info => cli::info::run(),
    };
    if let Err(err) = result {
        // One line, each cause once, no backtrace: errors here are for the user.
        eprintln!("error: {}", cli::log::error_line(&err));
        std::process::exit(1);
    }
}
