//! tutti: token-level ensemble decoding of heterogeneous language models.
//!
//! Several causal language models with different tokenizers decode one text in
//! lockstep. The path of one token through the engine:
//!
//! 1. every member forwards its pending ids through its [`engine::Backend`] (a candle
//!    model or a server, [`backends`]);
//! 2. softmax with temperature and top-k per member;
//! 3. the union of the candidates, keyed by their exact bytes ([`vocab::Vocab`]);
//! 4. each member's probability of each candidate: its own id, else through a
//!    vocabulary map ([`align`]);
//! 5. the weighted average, renormalised over the union, and the choice (greedy or
//!    seeded sampling);
//! 6. feedback: the chosen bytes are appended to every member in its own tokenization,
//!    rolling its KV cache back where re-tokenization changed its tail
//!    ([`engine::Member`]).
//!
//! `docs/architecture.md` follows one token through the files; `docs/library.md` lists
//! what a library user needs.
//!
//! [`Ensemble`] is the entry point; settings travel with each [`Request`]; a single model
//! is a one-member ensemble. The `bench` module (cargo feature `bench`, on by default)
//! scores members and ensembles side by side; the `serve` module (cargo feature `serve`,
//! on by default) serves an ensemble over the OpenAI HTTP API.

pub mod align;
pub mod backends;
#[cfg(feature = "bench")]
pub mod bench;
pub mod caught;
pub mod config;
pub mod durable;
pub mod engine;
#[cfg(feature = "fuzz")]
pub mod fuzz;
#[cfg(feature = "route")]
pub mod route;
#[cfg(feature = "serve")]
pub mod serve;
pub mod vocab;

pub use backends::{LocalModel, RemoteModel, RemoteSpec};
pub use config::EnsembleFile;
pub use engine::{Ensemble, EnsembleBuilder, Event, Flow, Generation, MemberSpec, Request};
pub use tutti_models as models;

/// `docs/library.md`, whose example is compiled and run with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
pub struct LibraryGuide;
