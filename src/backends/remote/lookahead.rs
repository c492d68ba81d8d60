//! Fewer round trips to a served member: the greedy continuation a lookahead request
//! brought back ([`Ahead`]), the planner that decides per request whether lookahead
//! pays ([`LookaheadPlanner`]), and the watch that notices a server whose prefix cache
//! is not reused ([`ReuseWatch`]).

use std::sync::Arc;

use serde_json::Value;

use crate::engine::SparseLogits;

/// The greedy continuation of the last request and the distributions along it.
pub(super) struct Ahead {
    /// The context the request was made for.
    pub(super) context: Vec<u32>,
    /// How many of the looked-ahead distributions answered a step.
    pub(super) used: usize,
    /// The server's greedy ids after it.
    pub(super) tokens: Vec<u32>,
    /// `dists[j]`: the distribution after `context + tokens[..j]`.
    pub(super) dists: Vec<Arc<SparseLogits>>,
}

/// Decides, request by request, whether a served member with `lookahead = auto` asks
/// for its lookahead tokens. Lookahead trades server work (1 + L tokens per request)
/// for round trips; it pays only when a round trip costs more than the decode steps
/// that end up unused. Both are measured: the wall time of one-token requests and of
/// lookahead requests that only extend the previous context, and how many looked-ahead
/// tokens the ensemble used (a geometric run: each is used with probability `q` after
/// the one before it was).
#[derive(Debug)]
pub(crate) struct LookaheadPlanner {
    max: usize,
    plain_ms: Option<f64>,
    ahead_ms: Option<f64>,
    /// Looked-ahead tokens used, and runs that ended before the last one (decayed).
    used: f64,
    broken: f64,
    requests: usize,
}

impl LookaheadPlanner {
    /// Weight of a new timing in the running averages.
    const ALPHA: f64 = 0.2;
    /// Every this many requests the other choice is tried, to follow changes in load.
    const EXPLORE_EVERY: usize = 16;
    /// Decay of the acceptance counts, so that a change of text is followed.
    const DECAY: f64 = 0.95;

    pub(crate) fn new(max: usize) -> LookaheadPlanner {
        LookaheadPlanner {
            max,
            plain_ms: None,
            ahead_ms: None,
            used: 0.0,
            broken: 0.0,
            requests: 0,
        }
    }

    /// Probability that a looked-ahead token is used, given that the one before it
    /// was (an even prior before anything is known).
    pub(super) fn keep(&self) -> f64 {
        (self.used + 1.0) / (self.used + self.broken + 2.0)
    }

    /// Expected tokens used from a request of `1 + max` tokens.
    pub(super) fn expected_run(&self) -> f64 {
        let q = self.keep();
        (0..=self.max).map(|j| q.powi(j as i32)).sum()
    }

    /// Lookahead for the next request: 0 or `max`.
    pub(crate) fn choose(&mut self) -> usize {
        self.requests += 1;
        let (w1, wl) = match (self.plain_ms, self.ahead_ms) {
            (None, _) => return 0,
            (Some(_), None) => return self.max,
            (Some(a), Some(b)) => (a, b),
        };
        // Tokens per millisecond of each choice.
        let best = if self.expected_run() / wl > 1.0 / w1 {
            self.max
        } else {
            0
        };
        if self.requests.is_multiple_of(Self::EXPLORE_EVERY) {
            self.max - best
        } else {
            best
        }
    }

    /// A request that only extended the previous context took `ms` with `lookahead`.
    pub(crate) fn timed(&mut self, lookahead: usize, ms: f64) {
        let slot = if lookahead == 0 {
            &mut self.plain_ms
        } else {
            &mut self.ahead_ms
        };
        *slot = Some(match *slot {
            Some(old) => old + Self::ALPHA * (ms - old),
            None => ms,
        });
    }

    /// Of `offered` looked-ahead tokens, the ensemble used the first `used`.
    pub(crate) fn outcome(&mut self, offered: usize, used: usize) {
        if offered == 0 {
            return;
        }
        self.used = self.used * Self::DECAY + used.min(offered) as f64;
        self.broken = self.broken * Self::DECAY + f64::from(u8::from(used < offered));
    }
}

/// Notices a server that re-evaluates more than the new ids of each step, from the
/// `timings.prompt_n` llama-server reports: its prefix cache is not doing its job and
/// every step costs several forwards.
#[derive(Default)]
pub(super) struct ReuseWatch {
    /// The ids of the previous request.
    pub(super) last: Vec<u32>,
    /// Consecutive requests that re-evaluated more than their new ids.
    slow: usize,
    warned: bool,
}

impl ReuseWatch {
    /// Consecutive over-evaluating requests before the warning (a single one happens
    /// when a server evicts its cache).
    const PATIENCE: usize = 3;

    /// Records one request; returns `(evaluated, new)` the first time the server has
    /// re-evaluated more than the new ids `PATIENCE` times in a row.
    pub(super) fn record(&mut self, context: &[u32], answer: &Value) -> Option<(u64, usize)> {
        let common = self
            .last
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count();
        let new = context.len() - common;
        self.last.clear();
        self.last.extend_from_slice(context);
        let evaluated = answer
            .pointer("/timings/prompt_n")
            .and_then(Value::as_u64)?;
        // llama-server re-evaluates the last id when the whole prompt is cached.
        if common > 0 && evaluated > new.max(1) as u64 + 1 {
            self.slow += 1;
        } else {
            self.slow = 0;
        }
        if self.slow >= Self::PATIENCE && !self.warned {
            self.warned = true;
            return Some((evaluated, new));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    pub(super) fn warns_once_when_the_prefix_is_re_evaluated() {
        let answer = |n: u64| json!({"timings": {"prompt_n": n}});
        let mut w = ReuseWatch::default();
        let mut ctx: Vec<u32> = (0..20).collect();
        assert_eq!(
            w.record(&ctx, &answer(20)),
            None,
            "the first request prefills"
        );
        // One new id per step, evaluated as one or two: the cache works.
        for n in [1, 2, 1] {
            ctx.push(7);
            assert_eq!(w.record(&ctx, &answer(n)), None);
        }
        // Six evaluated for one new id, three times in a row: one warning.
        let mut warned = Vec::new();
        for _ in 0..6 {
            ctx.push(7);
            warned.extend(w.record(&ctx, &answer(6)));
        }
        assert_eq!(warned, vec![(6, 1)]);
        // A rollback re-evaluates what changed, which is not a failure of the cache.
        let mut w = ReuseWatch::default();
        w.record(&ctx, &answer(30));
        for k in 0..4 {
            ctx.truncate(ctx.len() - 3);
            ctx.extend([100 + k; 3]);
            assert_eq!(w.record(&ctx, &answer(3)), None);
        }
        // Servers without timings are never judged.
        let mut w = ReuseWatch::default();
        for _ in 0..5 {
            ctx.push(1);
            assert_eq!(w.record(&ctx, &json!({})), None);
        }
    }

    /// Feeds a planner `n` requests whose times follow `r + s·tokens` and whose
    /// looked-ahead tokens are used with probability `q` each (deterministic: the run
    /// length is the expected one, rounded); returns the share of requests that looked
    /// ahead.
    pub(super) fn plan(r: f64, s: f64, q: f64, n: usize) -> f64 {
        let mut p = LookaheadPlanner::new(4);
        let run = (1..=4).map(|j| q.powi(j)).sum::<f64>().round() as usize;
        let mut ahead = 0;
        for _ in 0..n {
            let l = p.choose();
            p.timed(l, r + s * (1 + l) as f64);
            if l > 0 {
                ahead += 1;
                p.outcome(l, run);
            }
        }
        ahead as f64 / n as f64
    }

    #[test]
    pub(super) fn lookahead_is_asked_for_where_it_pays() {
        // Loopback CPU server: 2 ms round trip, 15 ms per token: never worth it (only
        // the exploring requests look ahead).
        assert!(plan(2.0, 15.0, 0.7, 200) < 0.1);
        // Across a network, 60 ms round trip: worth it.
        assert!(plan(60.0, 15.0, 0.7, 200) > 0.9);
        // A GPU server (decode 5 ms) on a LAN (10 ms): worth it when the ensemble
        // follows the server, not when it always leaves its path at once.
        assert!(plan(10.0, 5.0, 0.9, 200) > 0.9);
        assert!(plan(10.0, 5.0, 0.0, 200) < 0.1);
        // Before anything is measured: one plain request, then one looking ahead.
        let mut p = LookaheadPlanner::new(3);
        assert_eq!(p.choose(), 0);
        p.timed(0, 10.0);
        assert_eq!(p.choose(), 3);
    }
}
