//! The checks a served member passes when it connects: the server tokenizes a probe
//! text to the local tokenizer's ids (where it offers `/tokenize`), decodes a short
//! greedy continuation to the same text, and returns top-N log-probabilities with
//! token ids.

use serde_json::{json, Value};

use super::answer::ids_of;
use super::http::Failure;
use super::{Protocol, RemoteModel};
use crate::engine::{EngineError, Result};

/// Text sent to `/tokenize` (and, in the local tokenization, as a probe prompt) to check
/// that the server's model and the local tokenizer agree: words, digits, spacing,
/// punctuation and non-ASCII letters.
pub(super) const PROBE: &str =
    "Tokenizer probe: naïve café, 1234 apples & 56.7% déjà-vu!\n  Ünïcödé — ok?";

impl RemoteModel {
    /// Connect-time checks: the server answers, tokenizes like the local tokenizer,
    /// returns top-N log-probabilities with ids, and decodes its own greedy ids to the
    /// text the local tokenizer gives them.
    pub(super) fn check(&mut self) -> Result<()> {
        let fix = format!(
            "give this member the tokenizer of the model the server runs (now `{}`)",
            self.spec.tokenizer
        );
        // Reachability first (with retries), then the context length where the server
        // tells it.
        self.read_context_length()?;
        self.check_tokenize(&fix)?;
        self.check_decode(&fix)
    }

    /// The context length from llama-server's `/props` or an OpenAI server's model list.
    fn read_context_length(&mut self) -> Result<()> {
        if self.spec.protocol == Protocol::LlamaCpp {
            let props = self.call(&format!("{}/props", self.root()), None)?;
            if let Some(n) = props
                .pointer("/default_generation_settings/n_ctx")
                .and_then(Value::as_u64)
            {
                self.context_length = n as usize;
            }
        } else if let Some(models) = self.optional(&format!("{}/models", self.spec.base))? {
            let want = self.spec.model.clone();
            let entry = models.get("data").and_then(Value::as_array).and_then(|d| {
                d.iter()
                    .find(|m| m.get("id").and_then(Value::as_str) == want.as_deref())
            });
            if let Some(n) = entry
                .and_then(|e| e.get("max_model_len"))
                .and_then(Value::as_u64)
            {
                self.context_length = n as usize;
            }
        }
        Ok(())
    }

    fn model_err(&self, source: tutti_models::Error) -> EngineError {
        EngineError::Model {
            member: self.name.clone(),
            source,
        }
    }

    /// The server's `/tokenize` of the probe gives the local ids (servers without it
    /// are checked by decoding only).
    fn check_tokenize(&mut self, fix: &str) -> Result<()> {
        let local = self
            .tokenizer
            .encode(PROBE, false)
            .map_err(|e| self.model_err(e))?;
        // llama-server and vLLM offer /tokenize at the root; other servers may not.
        let tokenize_body = json!({
            "content": PROBE, "prompt": PROBE, "model": self.spec.model,
            "add_special": false, "add_special_tokens": false,
        });
        let url = format!("{}/tokenize", self.root());
        match self.exchange(&url, Some(&tokenize_body), self.spec.timeout) {
            Ok(v) => match v.get("tokens").and_then(ids_of) {
                Some(ids) if ids == local => Ok(()),
                Some(ids) => Err(self.err(format!(
                    "the server tokenizes a probe text differently from the local \
                     tokenizer ({} ids {:?}… against {} ids {:?}…): {fix}",
                    ids.len(),
                    &ids[..ids.len().min(6)],
                    local.len(),
                    &local[..local.len().min(6)]
                ))),
                None => {
                    tracing::info!(
                        "{}: /tokenize gave no token list; checking by decoding instead",
                        self.name
                    );
                    Ok(())
                }
            },
            Err(Failure::Fatal(m)) if m.starts_with("HTTP 4") => {
                tracing::info!("{}: no /tokenize ({m}); checking by decoding", self.name);
                Ok(())
            }
            Err(Failure::Fatal(m)) | Err(Failure::Transient(m, _)) => {
                Err(self.err(format!("{url}: {m}")))
            }
        }
    }

    /// A short greedy continuation of the probe: log-probabilities must come with ids,
    /// and the server's text must be what the local tokenizer makes of them.
    fn check_decode(&mut self, fix: &str) -> Result<()> {
        let mut prompt = self
            .tokenizer
            .encode(PROBE, true)
            .map_err(|e| self.model_err(e))?;
        prompt.truncate(8);
        let (steps, text) = self.complete(&prompt, 4, 5)?;
        if steps.is_empty() {
            return Ok(());
        }
        if steps.iter().any(|s| s.top.is_empty()) {
            return Err(self.err(
                "the server returned no top log-probabilities; it must support them \
                 (vLLM: --max-logprobs; llama-server: n_probs)",
            ));
        }
        if let Some(&(bad, _)) = steps
            .iter()
            .flat_map(|s| s.top.iter())
            .find(|&&(id, _)| id as usize >= self.width)
        {
            return Err(self.err(format!(
                "the server returned token id {bad}, outside the local tokenizer's {} ids: {fix}",
                self.width
            )));
        }
        let Some(text) = text else {
            return Ok(());
        };
        let ids: Vec<u32> = steps.iter().map(|s| s.chosen).collect();
        let local_text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| self.model_err(e))?;
        // Servers may leave special tokens out of the text.
        if !text.is_empty() && !local_text.contains(text.as_str()) && local_text != text {
            return Err(self.err(format!(
                "the server's text {text:?} for ids {ids:?} is not the local tokenizer's \
                 {local_text:?}: {fix}"
            )));
        }
        Ok(())
    }
}
