//! The generation engine: one decoding loop for a single model and for ensembles.
//!
//! A single model is a one-member [`Ensemble`]. Settings travel with each call as a
//! [`Request`]; the ensemble holds members and vocabulary lookups only. The engine knows
//! its members through the [`Backend`] trait alone (the implementations are in
//! [`crate::backends`]). One token's path, top to bottom:
//!
//! | file | what it does |
//! |---|---|
//! | `ensemble.rs` | the handle: [`Ensemble::generate`] runs a sequence step by step |
//! | `batch.rs` | several requests at once ([`Batch`]): one batched forward per member and round, then each sequence's step |
//! | `sequence.rs` | one request's state: taking-part members, weights, sampler, text |
//! | `step.rs` | the step in named phases: forward → distributions → union → member probabilities → combine → choose → commit |
//! | `member.rs` | a member's committed ids and cache position; its forward and its commit |
//! | `dist.rs` | a member's distribution and top-k, from whatever logits its backend gave |
//! | `union.rs` | the union of candidates keyed by bytes; each member's probability of each, through [`crate::align::lookup`] |
//! | `combine.rs` | combination rules, auto weights, the choice |
//!
//! Scoring given continuations instead of generating ([`Ensemble::score`]) forces the
//! same loop along their bytes: `score.rs`.
//!
//! Building: `spec.rs` ([`MemberSpec`]) and `builder.rs` ([`EnsembleBuilder`]).
//!
//! ```no_run
//! use tutti::engine::{Ensemble, Event, Flow, MemberSpec, Request};
//! let mut ens = Ensemble::builder()
//!     .member(MemberSpec::new("models-cache/SmolLM2-135M-Instruct.Q4_1.gguf"))
//!     .member(MemberSpec::new("models-cache/gemma-3-270m-q4_k_m.gguf").weight(0.5))
//!     .build()?;
//! let request = Request::raw("The capital of France is").max_tokens(32);
//! let out = ens.generate(&request, &mut |e: &Event| {
//!     if let Event::Text(t) = e {
//!         print!("{t}");
//!     }
//!     Flow::Continue
//! })?;
//! println!("\n{} tokens, {:.0}% ensembled", out.tokens, 100.0 * out.ensembled_share);
//! # Ok::<(), tutti::engine::EngineError>(())
//! ```

mod backend;
mod batch;
mod builder;
mod combine;
mod dist;
mod ensemble;
mod error;
mod events;
pub mod explain;
mod member;
mod output;
mod request;
mod score;
mod sequence;
mod spec;
mod step;
mod union;

pub use crate::align::lookup::MapEvent;
pub use backend::{Backend, Logits, SparseLogits};
pub use batch::{Admit, Batch, BatchOptions, Finished, Planned, Round, SeqId};
pub use builder::{BuildEvent, EnsembleBuilder};
pub use ensemble::{Ensemble, Stream};
pub use error::{EngineError, Result, MAX_TOP_K};
pub use events::{
    Choice, Discard, Event, Finish, Flow, Generation, MemberReport, MemberStep, Sink, StepEvent,
    StepTime, StopReason, Timing, Usage,
};
pub use explain::{Agreement, MemberAttribution, StepExplain, Summary};
pub use member::Member;
pub use request::{
    derived_seed, parse_auto_weights, Combine, Gate, Message, OnMemberFailure, Prompt, Request,
    Role, Sampling, DEFAULT_AUTO_TAU, MAX_ALTERNATIVES,
};
pub use score::{
    sequence_log_prob, ContinuationScore, MemberScores, PromptToken, ScoreRequest, ScoredStep,
    Scores,
};
pub use sequence::encode_prompt;
pub use spec::{timeout_of, MemberSpec, MAX_TIMEOUT_S};
pub use union::CandidateKey;

pub(crate) use member::check_temperature;
