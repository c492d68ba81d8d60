//! placeholder

pub mod align;
pub mod bench;
pub mod engine;
pub mod vocab;
pub use engine::{Ensemble, EnsembleBuilder, Generation, MemberSpec};
