//! Attribution records in API responses (`tutti: {"explain": true}`): each step's
//! [`StepExplain`] as JSON, sent with the streamed chunk whose text follows it (a
//! record can arrive before the text it covers is released); records left at the end
//! (a winning end of sequence, tokens a stop string cut) and the [`Summary`] ride in
//! the final `tutti` object. A non-streaming response carries them all there.

use serde_json::{json, Value};

use crate::engine::{StepEvent, Summary};

/// Records of one response not sent yet, and the summary of all of them.
#[derive(Default)]
pub struct Records {
    pending: Vec<Value>,
    summary: Summary,
    /// Whether the request asked for records (the first one says).
    on: bool,
}

impl Records {
    pub fn step(&mut self, s: &StepEvent) {
        if let Some(r) = &s.explain {
            self.on = true;
            self.summary.add(r);
            // A record is plain numbers and strings: it always serializes.
            self.pending
                .push(serde_json::to_value(r).unwrap_or(Value::Null));
        }
    }

    /// The records waiting, as a chunk's `tutti` member (none waiting: nothing).
    pub fn take(&mut self) -> Option<(&'static str, Value)> {
        if self.pending.is_empty() {
            return None;
        }
        Some((
            "tutti",
            json!({"explain": std::mem::take(&mut self.pending)}),
        ))
    }

    /// `details` with the records still waiting and the summary.
    pub fn finish(&mut self, mut details: Value) -> Value {
        if self.on {
            details["explain"] = Value::Array(std::mem::take(&mut self.pending));
            details["explain_summary"] = serde_json::to_value(&self.summary).unwrap_or(Value::Null);
        }
        details
    }
}
