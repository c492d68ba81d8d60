//! The reward of DER (Eq. 3–4): the answer's score, its increase over the previous
//! answer, the member's cost, and a bonus or penalty at the end of a route.

/// Reward settings. `alpha` (per billion parameters) and `p0` are the paper's; `beta`
/// and `gamma` are not given in its text and default to 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RewardParams {
    /// Cost weight per billion parameters invoked (paper: 0.001).
    pub alpha: f32,
    /// Weight of the score's increase over the previous answer.
    pub beta: f32,
    /// Bonus when the answer reaches `p0`, penalty when the last step does not.
    pub gamma: f32,
    /// Score at which the answer is good enough (paper: 0.73 with BERTScore; 1 for
    /// exact-match tasks, where the score is correctness).
    pub p0: f32,
    /// Longest route (paper: 4).
    pub t_max: usize,
}

impl Default for RewardParams {
    fn default() -> RewardParams {
        RewardParams {
            alpha: 0.001,
            beta: 1.0,
            gamma: 1.0,
            p0: 0.73,
            t_max: 4,
        }
    }
}

/// One step's reward and whether the route ends there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReward {
    pub reward: f32,
    pub done: bool,
}

/// The reward of step `t` (0-based) whose answer scores `score`, the previous answer
/// having scored `previous` (`None` at `t = 0`), by a member of `billions` parameters.
/// Step `t` is the route's `t + 1`-th, so the last allowed one is `t = t_max - 1`.
pub fn step_reward(
    t: usize,
    score: f32,
    previous: Option<f32>,
    billions: f32,
    p: &RewardParams,
) -> StepReward {
    let mut reward = score - p.alpha * billions;
    if let Some(prev) = previous.filter(|_| t > 0) {
        reward += p.beta * (score - prev);
    }
    let last = t + 1 >= p.t_max;
    if score >= p.p0 {
        StepReward {
            reward: reward + p.gamma,
            done: true,
        }
    } else if last {
        StepReward {
            reward: reward - p.gamma,
            done: true,
        }
    } else {
        StepReward {
            reward,
            done: false,
        }
    }
}

/// Returns to go `G_t = r_t + r_{t+1} + …` of a route's rewards (undiscounted, as the
/// routes are at most `t_max` long).
pub fn returns(rewards: &[f32]) -> Vec<f32> {
    let mut g = vec![0.0; rewards.len()];
    let mut acc = 0.0;
    for (i, r) in rewards.iter().enumerate().rev() {
        acc += r;
        g[i] = acc;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) {
        assert!((a - b).abs() < 1e-6, "{a} != {b}");
    }

    #[test]
    fn eq_3_and_4_by_hand() {
        let p = RewardParams {
            alpha: 0.001,
            beta: 0.5,
            gamma: 0.2,
            p0: 0.73,
            t_max: 4,
        };
        // t = 0, below p0: P − αC = 0.6 − 0.001·13.
        let r = step_reward(0, 0.6, None, 13.0, &p);
        close(r.reward, 0.587);
        assert!(!r.done);
        // t = 1, reaches p0: P + β·ΔP − αC + γ = 0.8 + 0.5·0.2 − 0.007 + 0.2.
        let r = step_reward(1, 0.8, Some(0.6), 7.0, &p);
        close(r.reward, 1.093);
        assert!(r.done);
        // Last step (t = 3 of 4), still below: P + β·ΔP − αC − γ = 0.5 − 0.05 − 0.012 − 0.2.
        let r = step_reward(3, 0.5, Some(0.6), 12.0, &p);
        close(r.reward, 0.238);
        assert!(r.done);
        // A score that falls is punished through β·ΔP.
        let r = step_reward(2, 0.4, Some(0.6), 0.0, &p);
        close(r.reward, 0.3);
        assert!(!r.done);
    }

    #[test]
    fn returns_to_go() {
        assert_eq!(returns(&[1.0, 2.0, 3.0]), vec![6.0, 5.0, 3.0]);
        assert!(returns(&[]).is_empty());
    }
}
