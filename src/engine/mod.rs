//! The generation engine: one decoding loop for a single model and for ensembles.
//!
//! A single model is a one-member [`Ensemble`]. Settings travel with each call as a
//! [`Request`]; the ensemble holds members and vocabulary maps only. One step, top to
//! bottom, in five files:
//!
//! 1. `ensemble.rs`: the loop. Members forward their pending ids through their
//!    [`Backend`] (`backend.rs`: a candle model here, or a server), in parallel off the
//!    CPU;
//! 2. `step.rs`: each consulted member's distribution and top-k, once per step
//!    ([`step::MemberDist`]) → the union of candidates keyed by bytes ([`step::Union`]) →
//!    each member's probability of each candidate ([`step::Step::member_probs`]) →
//!    [`step::combine`] → [`step::choose`];
//! 3. `crate::align::lookup`: which of a member's tokens stands for a candidate it did
//!    not propose;
//! 4. `member.rs`: feedback — every member commits the chosen bytes in its own
//!    tokenization, rolling its cache back when re-tokenizing changes earlier ids
//!    ([`Member::commit`]).
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

pub mod backend;
pub mod config;
mod ensemble;
mod error;
pub mod events;
pub mod explain;
pub mod member;
pub mod output;
pub mod remote;
pub mod request;
pub mod step;

pub use backend::{Backend, LocalModel, Logits, SparseLogits};
pub use config::EnsembleFile;
pub use ensemble::{encode_prompt, BuildEvent, Ensemble, EnsembleBuilder, MemberSpec, Stream};
pub use error::{EngineError, Result};
pub use events::{
    Choice, Discard, Event, Finish, Flow, Generation, MemberReport, MemberStep, Sink, StepEvent,
    StepTime, StopReason, Timing, Usage,
};
pub use explain::{Agreement, MemberAttribution, StepExplain, Summary};
pub use member::{Member, PromptScore};
pub use remote::{Protocol, RemoteModel, RemoteSpec};
pub use request::{
    parse_auto_weights, validate_weights, Combine, Gate, Message, OnMemberFailure, Prompt, Request,
    Role, Sampling, DEFAULT_AUTO_TAU, MAX_ALTERNATIVES, MAX_TOP_K,
};
