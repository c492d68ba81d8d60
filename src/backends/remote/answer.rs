//! One step's request to a served member and what its answer says: the generated
//! positions with their top log-probabilities, in every format the supported servers
//! answer in (OpenAI completions with `token_id:N` tokens or ids, llama-server's
//! native and chat-style lists), turned into sparse distributions.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Protocol, RemoteModel, MIN_PROBS};
use crate::engine::{Logits, Result, SparseLogits};

impl RemoteModel {
    /// The number of log-probabilities to ask for: the request's top-k, and at least
    /// [`MIN_PROBS`], within the server's cap. Only the top-k are proposed as
    /// candidates; the others give exact probabilities to more of the union's
    /// candidates, which would otherwise get the tail estimate.
    pub(super) fn n_probs(&self) -> usize {
        let want = self.top_n.max(MIN_PROBS);
        match self.cap {
            Some(c) => want.min(c),
            None => want,
        }
    }

    /// One completion request of `max_tokens` greedy tokens after `context`; returns
    /// each generated position's chosen id and top list, and the text when the server
    /// gives it. A refusal of the number of log-probabilities caps it (warned once) and
    /// the request is repeated.
    pub(super) fn complete(
        &mut self,
        context: &[u32],
        max_tokens: usize,
        n: usize,
    ) -> Result<(Vec<Position>, Option<String>)> {
        let mut n = n.max(1);
        loop {
            let (url, body) = match self.spec.protocol {
                Protocol::LlamaCpp => (
                    format!("{}/completion", self.spec.base),
                    json!({
                        "prompt": context,
                        "n_predict": max_tokens,
                        "temperature": 0.0,
                        "n_probs": n,
                        "cache_prompt": true,
                        "return_tokens": true,
                        "stream": false,
                    }),
                ),
                Protocol::OpenAi => (
                    format!("{}/completions", self.spec.base),
                    json!({
                        "model": self.spec.model,
                        "prompt": context,
                        "max_tokens": max_tokens,
                        "temperature": 0.0,
                        "logprobs": n,
                        "return_tokens_as_token_ids": true,
                        "stream": false,
                    }),
                ),
            };
            let answer = match self.exchange_counted(&url, &body) {
                Ok(v) => v,
                Err(e) => {
                    // A 4xx about logprobs: the server's cap is below n.
                    let msg = e.to_string();
                    if n > 1 && msg.contains("HTTP 4") && msg.to_lowercase().contains("logprob") {
                        let cap = cap_from_message(&msg, n).unwrap_or(MIN_PROBS.min(n - 1));
                        if !self.warned_cap && cap < self.top_n {
                            tracing::warn!(
                                "{}: the server returns at most {cap} log-probabilities per \
                                 token; top-k is capped at {cap} for this member ({msg})",
                                self.name
                            );
                            self.warned_cap = true;
                        }
                        self.cap = Some(cap);
                        n = cap;
                        continue;
                    }
                    return Err(e);
                }
            };
            if let Some((evaluated, new)) = self.reuse.record(context, &answer) {
                tracing::warn!(
                    "{}: the server re-evaluates {evaluated} ids per step where {new} are \
                     new, so its prefix cache is not reused and every step costs several \
                     forwards; for a sliding-window model (Gemma 2/3) start llama-server \
                     with --swa-full",
                    self.name
                );
            }
            return parse_answer(self.spec.protocol, &answer).map_err(|m| {
                let short: String = answer.to_string().chars().take(300).collect();
                self.err(format!("{url}: {m}; the answer was {short}"))
            });
        }
    }

    /// The distribution of a step the server ended without reporting it (a server that
    /// leaves the end-of-text token out of its logprobs): end of text was its greedy
    /// choice, but how sure it was is unknown. Counting it as certain would hand the
    /// ensemble's choice to this member (under `mean` a certain end of text wins at
    /// equal weights; under `product` it floors every other candidate), so the member
    /// abstains instead: end of text is proposed at a uniform share and everything
    /// else is the flat remainder, and the other members decide. A member alone ends
    /// its text, as the server did.
    pub(super) fn unreported_end(&mut self) -> Result<Logits> {
        let eos = self.tokenizer.eos_ids().first().copied().ok_or_else(|| {
            self.err("the server reported no token and the tokenizer has no end-of-text id")
        })?;
        if !self.warned_unreported_end {
            self.warned_unreported_end = true;
            tracing::warn!(
                "{}: the server ended a text without reporting the end-of-text token's \
                 probability; this member abstains at such steps",
                self.name
            );
        }
        let share = 1.0 / self.width.max(1) as f32;
        Ok(Logits::Sparse(Arc::new(SparseLogits {
            top: vec![(eos, share.ln())],
            rest: 1.0 - share,
        })))
    }
}

/// One generated position of an answer: the id the server chose and its top list
/// `(id, logprob)`, most probable first.
pub(super) struct Position {
    pub(super) chosen: u32,
    pub(super) top: Vec<(u32, f32)>,
}

/// Sorts and sums a top list into a sparse distribution.
pub(super) fn sparse(mut top: Vec<(u32, f32)>) -> SparseLogits {
    // llama-server writes log(0) as the lowest float.
    top.retain(|&(_, lp)| lp.is_finite() && lp > -1e30);
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // A server may list an id twice, not necessarily side by side: its most probable
    // entry stands for it, so that its mass is counted once.
    let mut seen = std::collections::HashSet::with_capacity(top.len());
    top.retain(|e| seen.insert(e.0));
    let mass: f64 = top.iter().map(|&(_, lp)| f64::from(lp).exp()).sum();
    SparseLogits {
        top,
        rest: (1.0 - mass).max(0.0) as f32,
    }
}

pub(super) fn ids_of(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?
        .iter()
        .map(|x| {
            x.as_u64()
                .or_else(|| x.get("id").and_then(Value::as_u64))
                .and_then(|n| u32::try_from(n).ok())
        })
        .collect()
}

/// An id from `token_id:123` (vLLM's `return_tokens_as_token_ids`, `tutti serve`).
pub(super) fn token_id(s: &str) -> Option<u32> {
    s.strip_prefix("token_id:")?.parse().ok()
}

pub(super) fn entry_id(e: &Value) -> Option<u32> {
    e.get("id")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| e.get("token").and_then(Value::as_str).and_then(token_id))
}

pub(super) fn entry_logprob(e: &Value) -> Option<f32> {
    e.get("logprob").and_then(Value::as_f64).map(|x| x as f32)
}

/// A chat-style list `[{id|token, logprob, top_logprobs: [{id|token, logprob}]}]`
/// (llama-server, native and OpenAI endpoint).
pub(super) fn content_positions(list: &[Value]) -> std::result::Result<Vec<Position>, String> {
    list.iter()
        .map(|p| {
            let chosen = entry_id(p).ok_or("a generated token without an id")?;
            let top = p
                .get("top_logprobs")
                .and_then(Value::as_array)
                .ok_or("a generated token without `top_logprobs`")?
                .iter()
                .map(|e| match (entry_id(e), entry_logprob(e)) {
                    (Some(id), Some(lp)) => Ok((id, lp)),
                    _ => Err("a top log-probability without an id or a number".to_string()),
                })
                .collect::<std::result::Result<_, _>>()?;
            Ok(Position { chosen, top })
        })
        .collect()
}

/// Reads the generated positions (and the text) of a completion answer.
pub(super) fn parse_answer(
    protocol: Protocol,
    v: &Value,
) -> std::result::Result<(Vec<Position>, Option<String>), String> {
    match protocol {
        Protocol::LlamaCpp => {
            let list = v
                .get("completion_probabilities")
                .or_else(|| v.get("probs"))
                .and_then(Value::as_array)
                .ok_or("no `completion_probabilities` (not a llama-server /completion answer)")?;
            let text = v.get("content").and_then(Value::as_str).map(String::from);
            Ok((content_positions(list)?, text))
        }
        Protocol::OpenAi => {
            let choice = v
                .pointer("/choices/0")
                .ok_or("no `choices` (not an OpenAI completions answer)")?;
            let text = choice.get("text").and_then(Value::as_str).map(String::from);
            let lp = choice.get("logprobs").unwrap_or(&Value::Null);
            if lp.is_null() {
                // No generated token reported: the server stopped at once (end of text).
                return match choice.get("finish_reason").and_then(Value::as_str) {
                    Some("stop") => Ok((Vec::new(), text)),
                    _ => Err("no `logprobs` in the answer".into()),
                };
            }
            if let Some(list) = lp.get("content").and_then(Value::as_array) {
                return Ok((content_positions(list)?, text));
            }
            let tokens = lp
                .get("tokens")
                .and_then(Value::as_array)
                .ok_or("`logprobs` without `tokens`")?;
            let tops = lp
                .get("top_logprobs")
                .and_then(Value::as_array)
                .ok_or("`logprobs` without `top_logprobs`")?;
            if tokens.len() != tops.len() {
                return Err("`tokens` and `top_logprobs` differ in length".into());
            }
            let no_ids = "tokens are not token ids: the server must support \
                          `return_tokens_as_token_ids` (vLLM, tutti serve)";
            tokens
                .iter()
                .zip(tops)
                .map(|(t, top)| {
                    let chosen = t.as_str().and_then(token_id).ok_or(no_ids)?;
                    let top = top
                        .as_object()
                        .ok_or("a `top_logprobs` entry that is not an object")?
                        .iter()
                        .map(|(k, lp)| match (token_id(k), lp.as_f64()) {
                            (Some(id), Some(lp)) => Ok((id, lp as f32)),
                            (None, _) => Err(no_ids.to_string()),
                            _ => Err("a top log-probability that is not a number".to_string()),
                        })
                        .collect::<std::result::Result<_, _>>()?;
                    Ok(Position { chosen, top })
                })
                .collect::<std::result::Result<Vec<_>, String>>()
                .map(|p| (p, text))
        }
    }
}

/// The server's limit from a refusal such as "… greater than max allowed: 20" or
/// "… from 0 to 20": the largest number in the message below `asked`.
pub(super) fn cap_from_message(msg: &str, asked: usize) -> Option<usize> {
    msg.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse::<usize>().ok())
        .filter(|&x| x > 0 && x < asked)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn reads_every_answer_format() {
        let legacy = json!({"choices": [{"text": "a", "finish_reason": "length", "logprobs": {
            "tokens": ["token_id:5"],
            "top_logprobs": [{"token_id:5": -0.1, "token_id:7": -2.5}],
        }}]});
        let (p, text) = parse_answer(Protocol::OpenAi, &legacy).unwrap();
        assert_eq!((p[0].chosen, text.as_deref()), (5, Some("a")));
        let mut top = p[0].top.clone();
        top.sort_by_key(|e| e.0);
        assert_eq!(top, [(5, -0.1), (7, -2.5)]);
        let content = json!({"choices": [{"text": "b", "logprobs": {"content": [
            {"id": 3, "token": "b", "logprob": -0.5, "top_logprobs": [
                {"id": 3, "token": "b", "logprob": -0.5}, {"id": 9, "logprob": -1.5}]}]}}]});
        let (p, _) = parse_answer(Protocol::OpenAi, &content).unwrap();
        assert_eq!(
            (p[0].chosen, p[0].top.clone()),
            (3, vec![(3, -0.5), (9, -1.5)])
        );
        let native = json!({"content": "b", "completion_probabilities": [
            {"id": 3, "logprob": -0.5, "top_logprobs": [{"id": 3, "logprob": -0.5}]}]});
        assert_eq!(
            parse_answer(Protocol::LlamaCpp, &native).unwrap().0.len(),
            1
        );
        let stopped = json!({"choices": [{"text": "", "finish_reason": "stop", "logprobs": null}]});
        assert!(parse_answer(Protocol::OpenAi, &stopped)
            .unwrap()
            .0
            .is_empty());
        let text_keys =
            json!({"choices": [{"logprobs": {"tokens": ["a"], "top_logprobs": [{"a": -0.1}]}}]});
        let e = parse_answer(Protocol::OpenAi, &text_keys).err().unwrap();
        assert!(e.contains("return_tokens_as_token_ids"), "{e}");
        for garbage in [
            json!([1, 2]),
            json!({"choices": []}),
            json!({"content": "x"}),
        ] {
            assert!(parse_answer(Protocol::OpenAi, &garbage).is_err());
            assert!(parse_answer(Protocol::LlamaCpp, &garbage).is_err());
        }
    }

    #[test]
    pub(super) fn sparse_sorts_and_keeps_the_rest_mass() {
        let s = sparse(vec![
            (2, (0.2f32).ln()),
            (1, (0.5f32).ln()),
            (2, (0.2f32).ln()),
        ]);
        assert_eq!(s.top.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2]);
        assert!((s.rest - 0.3).abs() < 1e-5, "{}", s.rest);
        let s = sparse(vec![(1, 0.0), (2, f32::MIN)]);
        assert_eq!((s.top.len(), s.rest), (1, 0.0));
    }

    #[test]
    pub(super) fn a_repeated_id_counts_once_wherever_it_is_listed() {
        // Id 2 twice with different log-probabilities and id 5 between them: the
        // first, most probable, entry stands for it.
        let s = sparse(vec![
            (2, (0.3f32).ln()),
            (5, (0.25f32).ln()),
            (2, (0.2f32).ln()),
        ]);
        assert_eq!(s.top.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 5]);
        assert!((s.top[0].1 - 0.3f32.ln()).abs() < 1e-6);
        assert!((s.rest - 0.45).abs() < 1e-5, "{}", s.rest);
    }

    #[test]
    pub(super) fn finds_the_cap_in_a_refusal() {
        assert_eq!(
            cap_from_message(
                "HTTP 400: Requested sample logprobs of 50, which is greater than max allowed: 20",
                50
            ),
            Some(20)
        );
        assert_eq!(
            cap_from_message("logprobs must be an integer from 0 to 20", 32),
            Some(20)
        );
        assert_eq!(cap_from_message("HTTP 400: logprobs too large", 32), None);
    }
}
