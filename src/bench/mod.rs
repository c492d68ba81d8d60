//! Benchmark harnesses that run every member alone and the ensemble on the same items.

pub mod qa;
pub mod speed;
