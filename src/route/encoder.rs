//! The state encoder: a small model tutti loads, kept frozen, that turns the state text
//! `Q: …\nA: …` into a vector for the actor, the critic and the terminator. The paper
//! encodes with OPT-125M; here any decoder tutti loads serves (by default the first
//! member's model, loaded a second time so that encoding never disturbs a member's
//! cache). The vector is the mean over positions of the last layer's normalised hidden
//! states. Encodings are cached by text: training revisits the same states often.

use std::collections::HashMap;

use tutti_models::{LoadOptions, Model};

use super::RouteError;

/// Longest state text encoded, in tokens (the tail is kept: it holds the answer).
pub const MAX_STATE_TOKENS: usize = 512;

pub struct StateEncoder {
    model: Model,
    dim: usize,
    cache: HashMap<String, Vec<f32>>,
}

impl StateEncoder {
    /// Loads `spec` (a `.gguf`, a model folder or `hf:…`) on the CPU.
    pub fn load(spec: &str) -> Result<StateEncoder, RouteError> {
        let model =
            Model::load(spec, &LoadOptions::default()).map_err(|e| RouteError::Encoder {
                model: spec.to_string(),
                reason: e.to_string(),
            })?;
        StateEncoder::new(model)
    }

    /// Wraps a loaded model; fails when it cannot encode.
    pub fn new(mut model: Model) -> Result<StateEncoder, RouteError> {
        let probe = encode_with(&mut model, "Q: ?\nA: None")?;
        Ok(StateEncoder {
            dim: probe.len(),
            model,
            cache: HashMap::new(),
        })
    }

    /// Width of the state vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The encoder model's name.
    pub fn name(&self) -> &str {
        &self.model.info.name
    }

    /// Identifies the encoder's weights (a policy trained on one encoder is refused on
    /// another).
    pub fn fingerprint(&self) -> &str {
        &self.model.info.weights_fingerprint
    }

    /// The state vector of `text`.
    pub fn encode(&mut self, text: &str) -> Result<Vec<f32>, RouteError> {
        if let Some(v) = self.cache.get(text) {
            return Ok(v.clone());
        }
        let v = encode_with(&mut self.model, text)?;
        self.cache.insert(text.to_string(), v.clone());
        Ok(v)
    }
}

fn encode_with(model: &mut Model, text: &str) -> Result<Vec<f32>, RouteError> {
    let err = |reason: String| RouteError::Encoder {
        model: model.info.name.clone(),
        reason,
    };
    let mut ids = model
        .tokenizer
        .encode_prompt(text)
        .map_err(|e| err(e.to_string()))?;
    let room = MAX_STATE_TOKENS.min(model.info.context_length);
    if ids.len() > room {
        ids.drain(..ids.len() - room);
    }
    match model.lm.encode(&ids).map_err(|e| err(e.to_string()))? {
        Some(t) => t.to_vec1::<f32>().map_err(|e| err(e.to_string())),
        None => Err(err(
            "this model cannot encode states; pass --encoder with a local model".into(),
        )),
    }
}
