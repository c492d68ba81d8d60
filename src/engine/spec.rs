//! [`MemberSpec`]: how to load one member, from code or from the command line's
//! `MODEL[:w=WEIGHT][:t=TEMPERATURE][:tok=…][:key=…][:lookahead=…][:timeout=…]`.
//! Turning a spec into a running backend is the backends' job
//! ([`MemberSpec::load`], in `crate::backends`).

use tutti_models::{Architecture, DTypeSpec, DeviceSpec};

use super::error::{EngineError, Result};
use crate::backends::remote::RemoteSpec;

/// How to load one member.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MemberSpec {
    /// Folder, `.gguf` file or `hf:ORG/NAME[@REV][/FILE.gguf]`; or a server:
    /// `openai+http://HOST:PORT/v1#MODEL` or `llamacpp+http://HOST:PORT`.
    pub model: String,
    pub weight: f32,
    /// The member's own softmax temperature, applied before combining (1 = as is).
    pub temperature: f32,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Architecture override.
    pub arch: Option<Architecture>,
    /// A served member's tokenizer (folder, tokenizer.json, GGUF or `hf:` spec).
    pub tokenizer: Option<String>,
    /// Environment variable holding a served member's bearer key.
    pub api_key_env: Option<String>,
    /// Greedy tokens a served member returns beyond the one asked for, per request
    /// (with `lookahead_auto`: the most, asked for only when measured to pay).
    pub lookahead: usize,
    /// Choose per request between no lookahead and `lookahead` (`:lookahead=auto`).
    pub lookahead_auto: bool,
    /// A served member's request timeout (default [`RemoteSpec::DEFAULT_TIMEOUT`]).
    pub timeout: Option<std::time::Duration>,
}

impl MemberSpec {
    /// A member with weight 1 on the automatically chosen device.
    pub fn new(model: impl Into<String>) -> MemberSpec {
        MemberSpec {
            model: model.into(),
            weight: 1.0,
            temperature: 1.0,
            device: DeviceSpec::Auto,
            dtype: DTypeSpec::Auto,
            arch: None,
            tokenizer: None,
            api_key_env: None,
            lookahead: 0,
            lookahead_auto: false,
            timeout: None,
        }
    }

    /// Parses `MODEL[:w=WEIGHT][:t=TEMPERATURE]` and, for a served member,
    /// `[:tok=TOKENIZER]`, `[:key=ENV_VAR]`, `[:lookahead=L]` and `[:timeout=SECONDS]`, in
    /// any order. Only these `:NAME=` suffixes are split off, so the colons of URLs
    /// (`http://h:8000`) and of `hf:` specs stay part of the model or tokenizer.
    pub fn parse(spec: &str) -> Result<MemberSpec> {
        const KEYS: [&str; 6] = [":w=", ":t=", ":tok=", ":key=", ":lookahead=", ":timeout="];
        let bad = |reason: String| EngineError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut rest = spec;
        let mut found: Vec<(&str, &str)> = Vec::new();
        while let Some((at, key)) = KEYS
            .iter()
            .filter_map(|k| rest.rfind(k).map(|at| (at, *k)))
            .max_by_key(|&(at, _)| at)
        {
            if found.iter().any(|(k, _)| *k == key) {
                return Err(bad(format!("`{key}` is given twice")));
            }
            found.push((key, &rest[at + key.len()..]));
            rest = &rest[..at];
        }
        if rest.is_empty() {
            return Err(bad("no model before the `:NAME=` settings".into()));
        }
        let mut out = MemberSpec::new(rest);
        let remote = RemoteSpec::is_remote(rest);
        for (key, value) in found {
            if key != ":w=" && key != ":t=" && !remote {
                return Err(bad(format!(
                    "`{key}` applies to served members (openai+http://… or llamacpp+http://…) only"
                )));
            }
            match key {
                ":w=" => {
                    out.weight = value.parse::<f32>().map_err(|_| {
                        bad(format!(
                            "`{value}` is not a number (expected MODEL:w=WEIGHT)"
                        ))
                    })?
                }
                ":t=" => {
                    let t = value
                        .parse::<f32>()
                        .ok()
                        .filter(|t| t.is_finite() && *t > 0.0)
                        .ok_or_else(|| {
                            bad(format!(
                                "the temperature must be a number above 0 (got `{value}`)"
                            ))
                        })?;
                    out.temperature = t;
                }
                ":tok=" => out.tokenizer = Some(value.to_string()),
                ":key=" => out.api_key_env = Some(value.to_string()),
                ":lookahead=" if value == "auto" => {
                    out.lookahead = RemoteSpec::AUTO_LOOKAHEAD;
                    out.lookahead_auto = true;
                }
                ":lookahead=" => {
                    out.lookahead = value.parse().map_err(|_| {
                        bad(format!(
                            "`{value}` is not a token count (expected :lookahead=L or \
                             :lookahead=auto)"
                        ))
                    })?
                }
                _ => {
                    let timeout = value
                        .parse()
                        .ok()
                        .and_then(timeout_of)
                        .ok_or_else(|| {
                            bad(format!(
                                "`{value}` is not a number of seconds above 0 and at most {MAX_TIMEOUT_S}"
                            ))
                        })?;
                    out.timeout = Some(timeout);
                }
            }
        }
        Ok(out)
    }

    /// The server settings of a served member (`None` for a model in this process).
    pub fn remote(&self) -> Option<Result<RemoteSpec>> {
        if !RemoteSpec::is_remote(&self.model) {
            return None;
        }
        Some(
            RemoteSpec::parse(&self.model, self.tokenizer.as_deref()).map(|mut r| {
                r.api_key_env = self.api_key_env.clone();
                r.lookahead = self.lookahead;
                r.lookahead_auto = self.lookahead_auto;
                if let Some(t) = self.timeout {
                    r.timeout = t;
                }
                r
            }),
        )
    }

    /// The member's own softmax temperature.
    pub fn temperature(mut self, t: f32) -> MemberSpec {
        self.temperature = t;
        self
    }

    pub fn tokenizer(mut self, t: impl Into<String>) -> MemberSpec {
        self.tokenizer = Some(t.into());
        self
    }

    pub fn api_key_env(mut self, var: impl Into<String>) -> MemberSpec {
        self.api_key_env = Some(var.into());
        self
    }

    pub fn lookahead(mut self, l: usize) -> MemberSpec {
        self.lookahead = l;
        self.lookahead_auto = false;
        self
    }

    /// Lookahead of up to `max` tokens, asked for only while measured round-trip and
    /// decode times say it saves time.
    pub fn lookahead_auto(mut self, max: usize) -> MemberSpec {
        self.lookahead = max;
        self.lookahead_auto = true;
        self
    }

    pub fn timeout(mut self, t: std::time::Duration) -> MemberSpec {
        self.timeout = Some(t);
        self
    }

    pub fn weight(mut self, w: f32) -> MemberSpec {
        self.weight = w;
        self
    }

    pub fn device(mut self, d: DeviceSpec) -> MemberSpec {
        self.device = d;
        self
    }

    pub fn dtype(mut self, d: DTypeSpec) -> MemberSpec {
        self.dtype = d;
        self
    }

    pub fn arch(mut self, a: Option<Architecture>) -> MemberSpec {
        self.arch = a;
        self
    }
}

/// Longest per-request deadline a served member may be given (a week): longer ones
/// would overflow the clock's arithmetic.
pub const MAX_TIMEOUT_S: f64 = 7.0 * 24.0 * 3600.0;

/// A served member's deadline from seconds, if above 0 and at most [`MAX_TIMEOUT_S`].
pub fn timeout_of(seconds: f64) -> Option<std::time::Duration> {
    (seconds > 0.0 && seconds <= MAX_TIMEOUT_S)
        .then(|| std::time::Duration::try_from_secs_f64(seconds).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_specs_keep_url_and_hf_colons() {
        let s = MemberSpec::parse(
            "openai+http://127.0.0.1:8000/v1#m:tok=hf:Org/Name:w=0.5:key=K:lookahead=2:timeout=1.5",
        )
        .unwrap();
        assert_eq!(s.model, "openai+http://127.0.0.1:8000/v1#m");
        assert_eq!(s.weight, 0.5);
        assert_eq!(s.tokenizer.as_deref(), Some("hf:Org/Name"));
        assert_eq!((s.api_key_env.as_deref(), s.lookahead), (Some("K"), 2));
        let r = s.remote().unwrap().unwrap();
        assert_eq!(r.base, "http://127.0.0.1:8000/v1");
        assert_eq!(r.timeout, std::time::Duration::from_millis(1500));
        let s = MemberSpec::parse("hf:Org/Name/f.gguf:w=2").unwrap();
        assert_eq!((s.model.as_str(), s.weight), ("hf:Org/Name/f.gguf", 2.0));
        assert!(s.remote().is_none());
        for (bad, says) in [
            ("a.gguf:tok=t", "served members"),
            (":w=1", "no model"),
            ("llamacpp+http://h:1:tok=t:lookahead=x", "token count"),
            ("llamacpp+http://h:1:tok=t:timeout=0", "seconds"),
            ("llamacpp+http://h:1:tok=t:timeout=1e30", "at most"),
            ("llamacpp+http://h:1:w=1:w=2", "twice"),
        ] {
            let e = MemberSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = MemberSpec::parse("llamacpp+http://h:1")
            .unwrap()
            .remote()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains(":tok="), "{e}");
        let s = MemberSpec::parse("llamacpp+http://h:1:lookahead=auto:tok=a").unwrap();
        assert_eq!(
            (s.lookahead, s.lookahead_auto),
            (RemoteSpec::AUTO_LOOKAHEAD, true)
        );
        let s = MemberSpec::parse("llamacpp+http://h:1:t=0.5:tok=a:b").unwrap();
        assert_eq!((s.temperature, s.tokenizer.as_deref()), (0.5, Some("a:b")));
    }

    #[test]
    fn member_spec_suffixes() {
        let s = MemberSpec::parse("a.gguf:w=0.5:t=2").unwrap();
        assert_eq!(
            (s.model.as_str(), s.weight, s.temperature),
            ("a.gguf", 0.5, 2.0)
        );
        let s = MemberSpec::parse("a.gguf:t=0.7:w=3").unwrap();
        assert_eq!(
            (s.model.as_str(), s.weight, s.temperature),
            ("a.gguf", 3.0, 0.7)
        );
        let s = MemberSpec::parse("hf:org/name:t=1.5").unwrap();
        assert_eq!((s.model.as_str(), s.temperature), ("hf:org/name", 1.5));
        let s = MemberSpec::parse("hf:org/name").unwrap();
        assert_eq!(
            (s.model.as_str(), s.weight, s.temperature),
            ("hf:org/name", 1.0, 1.0)
        );
        for bad in ["a:t=0", "a:t=-1", "a:t=hot", "a:w=1:w=2", ":t=1", "a:w=x"] {
            let err = MemberSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
