//! The ensemble TOML file (`tutti generate --ensemble FILE.toml`).
//!
//! ```toml
//! align = "min-ed"          # exact | min-ed | relrep
//! top_k = 10
//! gate = "always"           # or "uncertain:0.5", "disagree"
//! combine = "mean"          # confidence | product | max | entropy
//! # weights = "auto"        # or "auto:TAU": weights from the prompt's perplexity
//! max_tokens = 256
//! stop = ["\n\n"]
//! # temperature = 0.7       # sampling; absent = greedy
//! # top_p = 0.9
//! # seed = 1
//!
//! [[member]]
//! model = "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf"
//! weight = 1.0
//! t = 1.0                   # the member's own temperature, applied before combining
//! device = "cpu"
//!
//! [[member]]
//! model = "models-cache/gemma-3-270m-q4_k_m.gguf"
//! weight = 0.5
//!
//! [[member]]                # a model served elsewhere (see docs/remote.md)
//! model = "openai+http://127.0.0.1:8000/v1#Qwen/Qwen2.5-72B-Instruct"
//! tokenizer = "hf:Qwen/Qwen2.5-72B-Instruct"
//! api_key_env = "VLLM_KEY"  # the variable's name, never the key
//! lookahead = 4
//! timeout = 60              # seconds per request
//! ```
//!
//! `on_member_failure = "drop"` at the top level lets a generation go on without a
//! member whose server fails (default `"fail"`).
//!
//! Unknown keys are errors, so a misspelt setting never silently does nothing.

use std::path::Path;

use serde::Deserialize;

use tutti_models::{Architecture, DTypeSpec, DeviceSpec};

use crate::backends::RemoteSpec;
use crate::engine::{
    check_temperature, parse_auto_weights, EngineError, MemberSpec, Request, Result, Sampling,
};

/// Top level of the file; every setting is optional (command-line flags override).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnsembleFile {
    pub align: Option<String>,
    pub top_k: Option<usize>,
    pub gate: Option<String>,
    pub combine: Option<String>,
    pub weights: Option<String>,
    pub max_tokens: Option<usize>,
    pub stop: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub on_member_failure: Option<String>,
    #[serde(default, rename = "member")]
    pub members: Vec<MemberEntry>,
}

/// One `[[member]]` table.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    pub model: String,
    pub weight: Option<f32>,
    /// The member's own temperature.
    pub t: Option<f32>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub arch: Option<String>,
    /// A served member's tokenizer.
    pub tokenizer: Option<String>,
    /// Environment variable holding a served member's bearer key.
    pub api_key_env: Option<String>,
    /// Extra greedy tokens per request of a served member: a count, or `"auto"`.
    pub lookahead: Option<Lookahead>,
    /// Seconds a served member's request may take.
    pub timeout: Option<f64>,
}

/// A `lookahead` value: a token count or `"auto"`.
#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(untagged)]
pub enum Lookahead {
    Tokens(usize),
    Word(String),
}

impl MemberEntry {
    /// The member spec, with the file's device/dtype or the given defaults.
    pub fn to_spec(
        &self,
        device: DeviceSpec,
        dtype: DTypeSpec,
        origin: &str,
    ) -> Result<MemberSpec> {
        let bad = |what: &str, e: tutti_models::Error| EngineError::Config {
            path: origin.to_string(),
            reason: format!("member `{}`: {what}: {e}", self.model),
        };
        let device = match &self.device {
            Some(d) => d.parse().map_err(|e| bad("device", e))?,
            None => device,
        };
        let dtype = match &self.dtype {
            Some(d) => d.parse().map_err(|e| bad("dtype", e))?,
            None => dtype,
        };
        let arch = self
            .arch
            .as_deref()
            .map(Architecture::parse)
            .transpose()
            .map_err(|e| bad("arch", e))?;
        let t = self.t.unwrap_or(1.0);
        check_temperature(&self.model, t).map_err(|e| EngineError::Config {
            path: origin.to_string(),
            reason: format!("member `{}`: t: {e}", self.model),
        })?;
        let mut spec = MemberSpec::new(self.model.clone())
            .weight(self.weight.unwrap_or(1.0))
            .temperature(t)
            .device(device)
            .dtype(dtype)
            .arch(arch);
        spec = match &self.lookahead {
            None => spec,
            Some(Lookahead::Tokens(l)) => spec.lookahead(*l),
            Some(Lookahead::Word(w)) if w == "auto" => {
                spec.lookahead_auto(RemoteSpec::AUTO_LOOKAHEAD)
            }
            Some(Lookahead::Word(w)) => {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    reason: format!(
                        "member `{}`: lookahead must be a token count or \"auto\" (got {w:?})",
                        self.model
                    ),
                })
            }
        };
        spec = self.serving_settings(spec, origin)?;
        if let Some(r) = spec.remote() {
            r.map_err(|e| EngineError::Config {
                path: origin.to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(spec)
    }

    /// The settings of a served member (refused for a model in this process).
    fn serving_settings(&self, mut spec: MemberSpec, origin: &str) -> Result<MemberSpec> {
        let remote = RemoteSpec::is_remote(&self.model);
        let serving = [
            ("tokenizer", self.tokenizer.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("lookahead", self.lookahead.is_some()),
            ("timeout", self.timeout.is_some()),
        ];
        if let (false, Some((key, _))) = (remote, serving.iter().find(|(_, set)| *set)) {
            return Err(EngineError::Config {
                path: origin.to_string(),
                reason: format!(
                    "member `{}`: `{key}` applies to served members (openai+http://… or \
                     llamacpp+http://…) only",
                    self.model
                ),
            });
        }
        if let Some(t) = &self.tokenizer {
            spec = spec.tokenizer(t.clone());
        }
        if let Some(v) = &self.api_key_env {
            spec = spec.api_key_env(v.clone());
        }
        if let Some(t) = self.timeout {
            let Some(timeout) = crate::engine::timeout_of(t) else {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    reason: format!(
                        "member `{}`: timeout must be a number of seconds above 0 and at most {} (got {t})",
                        self.model,
                        crate::engine::MAX_TIMEOUT_S
                    ),
                });
            };
            spec = spec.timeout(timeout);
        }
        Ok(spec)
    }
}

impl EnsembleFile {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<EnsembleFile> {
        toml::from_str(text).map_err(|e| EngineError::Config {
            path: origin.to_string(),
            reason: e.to_string().trim().to_string(),
        })
    }

    /// `request` with the settings the file gives (command-line flags, applied after
    /// this, override them).
    pub fn apply(&self, mut request: Request, origin: &str) -> Result<Request> {
        let bad = |e: EngineError| EngineError::Config {
            path: origin.to_string(),
            reason: e.to_string(),
        };
        if let Some(k) = self.top_k {
            request.top_k = k;
        }
        if let Some(g) = &self.gate {
            request.gate = g.parse().map_err(bad)?;
        }
        if let Some(c) = &self.combine {
            request.combine = c.parse().map_err(bad)?;
        }
        if let Some(w) = &self.weights {
            request.auto_weights = Some(parse_auto_weights(w).map_err(bad)?);
        }
        if let Some(n) = self.max_tokens {
            request.max_tokens = n;
        }
        if let Some(p) = &self.on_member_failure {
            request.on_member_failure = p.parse().map_err(bad)?;
        }
        if let Some(stop) = &self.stop {
            request.stop.extend(stop.iter().cloned());
        }
        if let Some(t) = self.temperature.filter(|&t| t != 0.0) {
            request.sampling = Sampling::Sample {
                temperature: t,
                top_p: self.top_p.unwrap_or(1.0),
                seed: self.seed.unwrap_or(0),
            };
        }
        Ok(request)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<EnsembleFile> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_and_settings() {
        let f = EnsembleFile::parse(
            "top_k = 5\ngate = \"uncertain:0.4\"\n[[member]]\nmodel = \"a.gguf\"\nweight = 2.0\n[[member]]\nmodel = \"b\"\ndevice = \"cpu\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(f.top_k, Some(5));
        assert_eq!(f.members.len(), 2);
        let spec = |i: usize| {
            f.members[i]
                .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "t.toml")
                .unwrap()
        };
        assert_eq!(spec(0).weight, 2.0);
        assert_eq!(spec(1).device, DeviceSpec::Cpu);
        let r = f.apply(Request::raw("x"), "t.toml").unwrap();
        assert_eq!((r.top_k, r.gate), (5, crate::engine::Gate::Uncertain(0.4)));
        let f = EnsembleFile::parse(
            "weights = \"auto:0.2\"\n[[member]]\nmodel = \"a\"\nt = 0.5\n",
            "t.toml",
        )
        .unwrap();
        let s = f.members[0]
            .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "t.toml")
            .unwrap();
        assert_eq!((s.weight, s.temperature), (1.0, 0.5));
        let r = f.apply(Request::raw("x"), "t.toml").unwrap();
        assert_eq!(r.auto_weights, Some(0.2));
        let f = EnsembleFile::parse("[[member]]\nmodel = \"a\"\nt = 0\n", "t.toml").unwrap();
        let err = f.members[0]
            .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml") && err.contains("above 0"), "{err}");
        let f = EnsembleFile::parse("weights = \"1,2\"\n", "t.toml").unwrap();
        assert!(f.apply(Request::raw("x"), "t.toml").is_err());
        let bad =
            EnsembleFile::parse("[[member]]\nmodel = \"a\"\ndevice = \"tpu\"\n", "t.toml").unwrap();
        let err = bad.members[0]
            .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml") && err.contains("tpu"), "{err}");
    }

    #[test]
    fn served_members_take_a_tokenizer_and_a_key_variable() {
        let f = EnsembleFile::parse(
            "on_member_failure = \"drop\"\n[[member]]\nmodel = \"openai+http://127.0.0.1:8000/v1#m\"\ntokenizer = \"hf:o/n\"\napi_key_env = \"K\"\nlookahead = 3\ntimeout = 2.5\n",
            "t.toml",
        )
        .unwrap();
        let spec = f.members[0]
            .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "t.toml")
            .unwrap();
        let r = spec.remote().unwrap().unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.tokenizer, "hf:o/n");
        assert_eq!((r.api_key_env.as_deref(), r.lookahead), (Some("K"), 3));
        let auto = EnsembleFile::parse(
            "[[member]]\nmodel = \"llamacpp+http://h:1\"\ntokenizer = \"t\"\nlookahead = \"auto\"\n",
            "e.toml",
        )
        .unwrap();
        let spec = auto.members[0]
            .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "e.toml")
            .unwrap();
        assert!(spec.lookahead_auto && spec.lookahead == RemoteSpec::AUTO_LOOKAHEAD);
        let often = EnsembleFile::parse(
            "[[member]]\nmodel = \"llamacpp+http://h:1\"\ntokenizer = \"t\"\nlookahead = \"often\"\n",
            "e.toml",
        )
        .unwrap();
        let e = often.members[0]
            .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "e.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"auto\""), "{e}");
        assert_eq!(r.timeout, std::time::Duration::from_millis(2500));
        let req = f.apply(Request::raw("x"), "t.toml").unwrap();
        assert_eq!(req.on_member_failure, crate::engine::OnMemberFailure::Drop);
        for (toml, says) in [
            (
                "[[member]]\nmodel = \"a.gguf\"\ntokenizer = \"t\"\n",
                "served members",
            ),
            ("[[member]]\nmodel = \"llamacpp+http://h:1\"\n", "tokenizer"),
            (
                "[[member]]\nmodel = \"llamacpp+http://h:1\"\ntokenizer = \"t\"\ntimeout = -1\n",
                "timeout",
            ),
            // Past a Duration's range: refused, not a panic.
            (
                "[[member]]\nmodel = \"llamacpp+http://h:1\"\ntokenizer = \"t\"\ntimeout = 1e30\n",
                "at most",
            ),
        ] {
            let f = EnsembleFile::parse(toml, "t.toml").unwrap();
            let e = f.members[0]
                .to_spec(DeviceSpec::Auto, DTypeSpec::Auto, "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("t.toml"), "{toml}: {e}");
        }
        let e = EnsembleFile::parse("on_member_failure = \"ignore\"\n", "t.toml")
            .unwrap()
            .apply(Request::raw("x"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fail") && e.contains("drop"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let f = EnsembleFile::parse("combine = \"confidence\"\n", "t.toml").unwrap();
        assert_eq!(f.combine.as_deref(), Some("confidence"));
        assert!("median".parse::<crate::engine::Combine>().is_err());
        let err = EnsembleFile::parse("topk = 5\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml") && err.contains("topk"), "{err}");
        let err = EnsembleFile::parse("[[member]]\nmodel = \"a\"\nwieght = 1\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("wieght"), "{err}");
    }
}
