//! Who answers next: the route policies.
//!
//! - `fixed:A,B,…`: these members in this order (indices from 0 or member names);
//! - `random`: a uniformly drawn member at every step, `--max-steps` steps (seeded);
//! - `best`: the member with the best calibration score, alone; the scores come from a
//!   policy file (`best:POLICY.safetensors`, measured on its training items) or, in
//!   `tutti bench`, from the members' own rows of the same run (an oracle choice);
//! - `learned:POLICY.safetensors`: the PPO actor picks the next member from the encoded
//!   state and the terminator stops the route.

use std::fmt;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};

use super::file::LearnedPolicy;
use super::RouteError;

/// A policy as written on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicySpec {
    Fixed(Vec<String>),
    Random,
    Best(Option<PathBuf>),
    Learned(PathBuf),
}

impl PolicySpec {
    pub fn parse(s: &str) -> Result<PolicySpec, RouteError> {
        let bad = |reason: &str| RouteError::Policy {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (s.trim(), None),
        };
        match (kind, arg) {
            ("fixed", Some(list)) => {
                let members: Vec<String> = list.split(',').map(|m| m.trim().to_string()).collect();
                if members.iter().any(|m| m.is_empty()) {
                    return Err(bad("name members by index or name, e.g. fixed:0,1"));
                }
                Ok(PolicySpec::Fixed(members))
            }
            ("random", None) => Ok(PolicySpec::Random),
            ("best", None) => Ok(PolicySpec::Best(None)),
            ("best", Some(p)) if !p.is_empty() => Ok(PolicySpec::Best(Some(p.into()))),
            ("learned", Some(p)) if !p.is_empty() => Ok(PolicySpec::Learned(p.into())),
            _ => Err(bad(
                "expected fixed:A,B,…, random, best[:POLICY.safetensors] or learned:POLICY.safetensors",
            )),
        }
    }

    /// Whether the policy reads the encoded state (and so needs an encoder).
    pub fn needs_encoder(&self) -> bool {
        matches!(self, PolicySpec::Learned(_))
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = |p: &PathBuf| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
        };
        match self {
            PolicySpec::Fixed(m) => write!(f, "fixed:{}", m.join(",")),
            PolicySpec::Random => f.write_str("random"),
            PolicySpec::Best(None) => f.write_str("best"),
            PolicySpec::Best(Some(p)) => write!(f, "best:{}", file(p)),
            PolicySpec::Learned(p) => write!(f, "learned:{}", file(p)),
        }
    }
}

/// A policy ready to route an ensemble's members.
pub enum Policy {
    Fixed(Vec<usize>),
    Random(Box<rand::rngs::StdRng>),
    Best(usize),
    Learned(Box<LearnedPolicy>),
}

/// The slot of `name` among `members`: an index, an exact name, or a unique prefix.
pub fn member_slot(name: &str, members: &[String]) -> Result<usize, String> {
    if let Ok(i) = name.parse::<usize>() {
        return if i < members.len() {
            Ok(i)
        } else {
            Err(format!(
                "member {i} does not exist ({} members, counted from 0)",
                members.len()
            ))
        };
    }
    if let Some(i) = members.iter().position(|m| m == name) {
        return Ok(i);
    }
    let hits: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].starts_with(name))
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => Err(format!(
            "no member `{name}`; members: {}",
            members.join(", ")
        )),
        _ => Err(format!(
            "`{name}` names several members; members: {}",
            members.join(", ")
        )),
    }
}

/// The index of the highest score (the first of equals).
pub fn argmax(scores: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| s > scores[b]) {
            best = Some(i);
        }
    }
    best
}

impl Policy {
    /// Resolves `spec` for an ensemble whose members are `members`. `calibration`
    /// (each member's score) is what a bare `best` picks from; `seed` seeds `random`.
    pub fn resolve(
        spec: &PolicySpec,
        members: &[String],
        calibration: Option<&[f32]>,
        seed: u64,
    ) -> Result<Policy, RouteError> {
        let bad = |reason: String| RouteError::Policy {
            spec: spec.to_string(),
            reason,
        };
        match spec {
            PolicySpec::Fixed(list) => Ok(Policy::Fixed(
                list.iter()
                    .map(|m| member_slot(m, members))
                    .collect::<Result<_, _>>()
                    .map_err(bad)?,
            )),
            PolicySpec::Random => Ok(Policy::Random(Box::new(rand::rngs::StdRng::seed_from_u64(
                seed,
            )))),
            PolicySpec::Best(None) => {
                let scores = calibration.ok_or_else(|| {
                    bad("needs calibration scores: pass best:POLICY.safetensors (scores from its training run)".into())
                })?;
                Ok(Policy::Best(
                    argmax(scores).ok_or_else(|| bad("no members".into()))?,
                ))
            }
            PolicySpec::Best(Some(path)) => {
                let p = LearnedPolicy::load(path)?;
                if p.meta.members != members {
                    return Err(bad(format!(
                        "calibrated on members {:?}, given {:?}",
                        p.meta.members, members
                    )));
                }
                Ok(Policy::Best(
                    argmax(&p.meta.calibration).ok_or_else(|| bad("no members".into()))?,
                ))
            }
            PolicySpec::Learned(path) => Ok(Policy::Learned(Box::new(LearnedPolicy::load(path)?))),
        }
    }

    /// The next member at step `t` (0-based), or `None` to stop. `state` is the encoded
    /// state (learned policies only); `stop_at` is the terminator's threshold.
    pub fn next(
        &mut self,
        t: usize,
        members: usize,
        state: Option<&[f32]>,
        stop_at: f32,
    ) -> Result<Decision, RouteError> {
        Ok(match self {
            Policy::Fixed(list) => Decision::of(list.get(t).copied()),
            Policy::Random(rng) => Decision::of(Some(rng.gen_range(0..members))),
            Policy::Best(slot) => Decision::of((t == 0).then_some(*slot)),
            Policy::Learned(p) => {
                let state = state.ok_or_else(|| RouteError::Policy {
                    spec: "learned".into(),
                    reason: "needs a state encoder".into(),
                })?;
                let stop_prob = if t > 0 {
                    Some(p.terminator.prob(state)?)
                } else {
                    None
                };
                if stop_prob.is_some_and(|s| s >= stop_at) {
                    Decision {
                        member: None,
                        stop_prob,
                    }
                } else {
                    Decision {
                        member: Some(p.agent.best(state)?),
                        stop_prob,
                    }
                }
            }
        })
    }
}

/// A policy's decision at one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The member that answers next; `None` ends the route.
    pub member: Option<usize>,
    /// The terminator's probability that the current answer is good enough.
    pub stop_prob: Option<f32>,
}

impl Decision {
    fn of(member: Option<usize>) -> Decision {
        Decision {
            member,
            stop_prob: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for s in [
            "fixed:0,1",
            "random",
            "best",
            "best:p.safetensors",
            "learned:p.safetensors",
        ] {
            assert_eq!(PolicySpec::parse(s).unwrap().to_string(), s);
        }
        for s in [
            "fixed:",
            "fixed:0,,1",
            "learned",
            "learned:",
            "greedy",
            "random:3",
        ] {
            let e = PolicySpec::parse(s).unwrap_err().to_string();
            assert!(e.contains("policy"), "{s}: {e}");
        }
        assert!(PolicySpec::parse("learned:x").unwrap().needs_encoder());
    }

    #[test]
    fn members_by_index_name_or_prefix() {
        let m = vec!["SmolLM2-135M".to_string(), "gemma-3-270m".to_string()];
        assert_eq!(member_slot("1", &m), Ok(1));
        assert_eq!(member_slot("gemma", &m), Ok(1));
        assert_eq!(member_slot("SmolLM2-135M", &m), Ok(0));
        assert!(member_slot("2", &m).unwrap_err().contains("counted from 0"));
        assert!(member_slot("llama", &m).unwrap_err().contains("members:"));
    }

    #[test]
    fn fixed_best_and_random_routes() {
        let m = vec!["a".to_string(), "b".to_string()];
        let mut p = Policy::resolve(&PolicySpec::parse("fixed:b,a").unwrap(), &m, None, 0).unwrap();
        let steps: Vec<_> = (0..3)
            .map(|t| p.next(t, 2, None, 0.5).unwrap().member)
            .collect();
        assert_eq!(steps, vec![Some(1), Some(0), None]);

        let spec = PolicySpec::parse("best").unwrap();
        assert!(Policy::resolve(&spec, &m, None, 0).is_err());
        let mut p = Policy::resolve(&spec, &m, Some(&[0.2, 0.6]), 0).unwrap();
        assert_eq!(p.next(0, 2, None, 0.5).unwrap().member, Some(1));
        assert_eq!(p.next(1, 2, None, 0.5).unwrap().member, None);

        let draw = |seed| {
            let mut p = Policy::resolve(&PolicySpec::Random, &m, None, seed).unwrap();
            (0..16)
                .map(|t| p.next(t, 2, None, 0.5).unwrap().member.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(draw(3).contains(&0) && draw(3).contains(&1));
        assert_eq!(argmax(&[0.1, 0.3, 0.3]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
