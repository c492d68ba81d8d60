//! The learned policy file: the actor, the critic and the terminator as safetensors, with
//! what they were trained for in the header's metadata (the members in action order, the
//! state encoder, the route settings, each member's calibration score). Loading checks
//! the file against the ensemble and the encoder it is used with.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::ppo::{Agent, PpoConfig};
use super::terminator::Terminator;
use super::RouteError;

/// Metadata key of the policy's facts.
const META_KEY: &str = "tutti.route";

/// What a policy was trained for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PolicyMeta {
    /// Member names, in action order.
    pub members: Vec<String>,
    /// Parameters of each member (the cost of an action).
    pub parameters: Vec<u64>,
    pub encoder: String,
    pub encoder_fingerprint: String,
    pub max_steps: usize,
    /// Score at which an answer counts as good enough (the terminator's label).
    pub p0: f32,
    /// Each member's mean score alone on the training items (what `best` picks from).
    pub calibration: Vec<f32>,
    /// Training items and epochs.
    pub items: usize,
    pub epochs: usize,
    pub seed: u64,
}

/// A trained route policy.
pub struct LearnedPolicy {
    pub agent: Agent,
    pub terminator: Terminator,
    pub meta: PolicyMeta,
}

impl LearnedPolicy {
    /// Writes the policy to `path` ([`crate::durable::write_atomic`]: a kill or a power
    /// loss leaves the old file or the new one).
    pub fn save(&self, path: &Path) -> Result<(), RouteError> {
        let err = |reason: String| RouteError::PolicyFile {
            path: path.display().to_string(),
            reason,
        };
        let mut tensors: Vec<(String, Tensor)> = self.agent.tensors();
        tensors.extend(self.terminator.tensors());
        let meta = serde_json::to_string(&self.meta).map_err(|e| err(e.to_string()))?;
        let info = HashMap::from([(META_KEY.to_string(), meta)]);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let bytes = safetensors::serialize(tensors, Some(info)).map_err(|e| err(e.to_string()))?;
        crate::durable::write_atomic(path, &bytes).map_err(|e| err(e.to_string()))
    }

    /// Reads a policy written by [`LearnedPolicy::save`].
    pub fn load(path: &Path) -> Result<LearnedPolicy, RouteError> {
        let err = |reason: String| RouteError::PolicyFile {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| {
            err(format!(
                "{e}; train one with `tutti route train --out {}`",
                path.display()
            ))
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("not a safetensors file ({e})")))?;
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| err("not a tutti route policy (no `tutti.route` metadata)".into()))?;
        let meta: PolicyMeta =
            serde_json::from_str(meta).map_err(|e| err(format!("bad policy metadata: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
        let agent = Agent::from_tensors(&tensors, PpoConfig::default())
            .map_err(|e| err(format!("actor/critic: {e}")))?;
        let terminator =
            Terminator::from_tensors(&tensors).map_err(|e| err(format!("terminator: {e}")))?;
        if agent.actions() != meta.members.len() {
            return Err(err(format!(
                "the actor has {} outputs but the file names {} members",
                agent.actions(),
                meta.members.len()
            )));
        }
        Ok(LearnedPolicy {
            agent,
            terminator,
            meta,
        })
    }

    /// Checks that the policy fits an ensemble with these member names and this encoder.
    pub fn check(&self, members: &[String], encoder_fingerprint: &str) -> Result<(), RouteError> {
        if members != self.meta.members.as_slice() {
            return Err(RouteError::Policy {
                spec: "learned".into(),
                reason: format!(
                    "trained for members {:?} (in this order), given {:?}; pass the same -m list",
                    self.meta.members, members
                ),
            });
        }
        if encoder_fingerprint != self.meta.encoder_fingerprint {
            return Err(RouteError::Policy {
                spec: "learned".into(),
                reason: format!(
                    "trained with the state encoder `{}`; pass --encoder with that model",
                    self.meta.encoder
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> PolicyMeta {
        PolicyMeta {
            members: vec!["a".into(), "b".into(), "c".into()],
            parameters: vec![135_000_000, 270_000_000, 1_000_000_000],
            encoder: "enc".into(),
            encoder_fingerprint: "fp".into(),
            max_steps: 4,
            p0: 1.0,
            calibration: vec![0.1, 0.4, 0.2],
            items: 10,
            epochs: 2,
            seed: 3,
        }
    }

    #[test]
    fn save_load_round_trip_and_checks() {
        let dir = std::env::temp_dir().join(format!("tutti-policy-{}", std::process::id()));
        let path = dir.join("p.safetensors");
        let policy = LearnedPolicy {
            agent: Agent::new(8, 3, PpoConfig::default()).unwrap(),
            terminator: Terminator::new(8, 16, 1).unwrap(),
            meta: meta(),
        };
        policy.save(&path).unwrap();
        let back = LearnedPolicy::load(&path).unwrap();
        assert_eq!(back.meta, meta());
        let s: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
        assert_eq!(
            back.agent.probs(&s).unwrap(),
            policy.agent.probs(&s).unwrap()
        );
        assert_eq!(
            back.terminator.prob(&s).unwrap(),
            policy.terminator.prob(&s).unwrap()
        );
        let names: Vec<String> = meta().members;
        back.check(&names, "fp").unwrap();
        let e = back.check(&names[..2], "fp").unwrap_err().to_string();
        assert!(e.contains("same -m list"), "{e}");
        let e = back.check(&names, "other").unwrap_err().to_string();
        assert!(e.contains("--encoder"), "{e}");

        // A safetensors file that is not a policy, and a missing file.
        let plain = dir.join("plain.safetensors");
        policy.agent.save(&plain).unwrap();
        let e = LearnedPolicy::load(&plain).err().unwrap().to_string();
        assert!(e.contains("not a tutti route policy"), "{e}");
        let e = LearnedPolicy::load(&dir.join("none.safetensors"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tutti route train"), "{e}");
        std::fs::write(&plain, b"garbage").unwrap();
        let e = LearnedPolicy::load(&plain).err().unwrap().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Saves of one policy file at the same time (two trainings writing one --out)
    /// each succeed and leave a whole file, no temporary.
    #[test]
    fn concurrent_saves_of_one_path_all_succeed() {
        let dir = std::env::temp_dir().join(format!("tutti-policy-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.safetensors");
        let policy = LearnedPolicy {
            agent: Agent::new(64, 3, PpoConfig::default()).unwrap(),
            terminator: Terminator::new(64, 64, 1).unwrap(),
            meta: meta(),
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        (0..10)
                            .map(|_| policy.save(&path).map_err(|e| e.to_string()))
                            .collect::<Result<Vec<()>, String>>()
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        assert_eq!(LearnedPolicy::load(&path).unwrap().meta, meta());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["p.safetensors"]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
