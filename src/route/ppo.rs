//! The DER agent: an actor (next member) and a critic (expected return) over a state
//! vector, trained with PPO as in the paper's Algorithm 1: trajectories are collected
//! with the old networks into a replay buffer of size M; when it is full, M updates each
//! draw uniformly from it, maximise the clipped objective (Eq. 5) for the actor and
//! minimise the squared TD error `G_t − V(s_t)` (Eq. 6) for the critic; then the buffer
//! is emptied and the old networks take the new weights.
//!
//! The advantage is `G_t − V_old(s_t)`, the return to go; the paper writes `r_t` there,
//! which is the same on one-step routes and keeps later rewards in the actor's signal on
//! longer ones.

use super::layers::TwoLayer;
use candle_core::{Device, Result, Tensor, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;

/// PPO settings.
#[derive(Clone, Copy, Debug)]
pub struct PpoConfig {
    /// Clip range ε of the ratio (paper: 0.2).
    pub clip: f32,
    /// Width of the heads' hidden layer.
    pub hidden: usize,
    pub learning_rate: f64,
    /// Transitions drawn per update.
    pub batch: usize,
    /// Seed of the initial weights.
    pub seed: u64,
}

impl Default for PpoConfig {
    fn default() -> PpoConfig {
        PpoConfig {
            clip: 0.2,
            hidden: 64,
            learning_rate: 3e-3,
            batch: 16,
            seed: 0,
        }
    }
}

/// One step of a collected route.
#[derive(Clone, Debug)]
pub struct Transition {
    pub state: Vec<f32>,
    pub action: usize,
    /// log π_old(a|s) when it was taken.
    pub old_log_prob: f32,
    /// Return to go `G_t`.
    pub ret: f32,
    /// `G_t − V_old(s_t)`.
    pub advantage: f32,
}

/// Losses of one update.
#[derive(Clone, Copy, Debug)]
pub struct Losses {
    pub actor: f32,
    pub critic: f32,
}

pub struct Agent {
    actor: TwoLayer,
    critic: TwoLayer,
    old_actor: TwoLayer,
    old_critic: TwoLayer,
    actor_opt: AdamW,
    critic_opt: AdamW,
    config: PpoConfig,
    state_dim: usize,
    actions: usize,
}

fn row(state: &[f32]) -> Result<Tensor> {
    Tensor::from_slice(state, (1, state.len()), &Device::Cpu)
}

fn adamw(vars: Vec<candle_core::Var>, lr: f64) -> Result<AdamW> {
    AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
}

impl Agent {
    pub fn new(state_dim: usize, actions: usize, config: PpoConfig) -> Result<Agent> {
        let actor = TwoLayer::new(state_dim, config.hidden, actions, config.seed)?;
        let critic = TwoLayer::new(state_dim, config.hidden, 1, config.seed.wrapping_add(1))?;
        Ok(Agent {
            old_actor: actor.snapshot()?,
            old_critic: critic.snapshot()?,
            actor_opt: adamw(actor.vars(), config.learning_rate)?,
            critic_opt: adamw(critic.vars(), config.learning_rate)?,
            actor,
            critic,
            config,
            state_dim,
            actions,
        })
    }

    pub fn actions(&self) -> usize {
        self.actions
    }

    /// π(·|s) of the current actor (Eq. 2).
    pub fn probs(&self, state: &[f32]) -> Result<Vec<f32>> {
        let logits = self.actor.forward(&row(state)?)?;
        candle_nn::ops::softmax(&logits, D::Minus1)?
            .squeeze(0)?
            .to_vec1()
    }

    /// The most probable action of the current actor (test time).
    pub fn best(&self, state: &[f32]) -> Result<usize> {
        let p = self.probs(state)?;
        Ok(p.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0)
    }

    /// Samples an action from the old actor (collection), with its log-probability and
    /// the old critic's value of the state.
    pub fn act(&self, state: &[f32], rng: &mut impl Rng) -> Result<(usize, f32, f32)> {
        let x = row(state)?;
        let logp: Vec<f32> = candle_nn::ops::log_softmax(&self.old_actor.forward(&x)?, D::Minus1)?
            .squeeze(0)?
            .to_vec1()?;
        let u: f32 = rng.gen();
        let mut acc = 0.0;
        let mut action = logp.len() - 1;
        for (i, lp) in logp.iter().enumerate() {
            acc += lp.exp();
            if u < acc {
                action = i;
                break;
            }
        }
        let value = self
            .old_critic
            .forward(&x)?
            .flatten_all()?
            .to_vec1::<f32>()?[0];
        Ok((action, logp[action], value))
    }

    /// One PPO update of actor and critic on `batch`.
    pub fn update(&mut self, batch: &[Transition]) -> Result<Losses> {
        let n = batch.len();
        let states: Vec<f32> = batch.iter().flat_map(|t| t.state.iter().copied()).collect();
        let x = Tensor::from_vec(states, (n, self.state_dim), &Device::Cpu)?;
        let actions: Vec<u32> = batch.iter().map(|t| t.action as u32).collect();
        let actions = Tensor::from_vec(actions, (n, 1), &Device::Cpu)?;
        let vec1 = |f: fn(&Transition) -> f32| {
            Tensor::from_vec(batch.iter().map(f).collect::<Vec<_>>(), n, &Device::Cpu)
        };
        let old_logp = vec1(|t| t.old_log_prob)?;
        let adv = vec1(|t| t.advantage)?;
        let ret = vec1(|t| t.ret)?;

        // Eq. 5: maximise min(ρA, clip(ρ, 1 − ε, 1 + ε)A), ρ = π/π_old.
        let logp = candle_nn::ops::log_softmax(&self.actor.forward(&x)?, D::Minus1)?
            .gather(&actions, 1)?
            .squeeze(1)?;
        let ratio = (logp - old_logp)?.exp()?;
        let eps = self.config.clip as f64;
        let clipped = ratio.clamp(1.0 - eps, 1.0 + eps)?;
        let objective = ratio.mul(&adv)?.minimum(&clipped.mul(&adv)?)?;
        let actor_loss = objective.mean_all()?.neg()?;
        self.actor_opt.backward_step(&actor_loss)?;

        // Eq. 6: the squared TD error G_t − V(s_t).
        let value = self.critic.forward(&x)?.squeeze(1)?;
        let critic_loss = (ret - value)?.sqr()?.mean_all()?;
        self.critic_opt.backward_step(&critic_loss)?;
        Ok(Losses {
            actor: actor_loss.to_scalar()?,
            critic: critic_loss.to_scalar()?,
        })
    }

    /// Algorithm 1, lines 6–15: as many updates as the buffer holds transitions, each on
    /// a uniform draw of `batch` of them; then the buffer is emptied and the old
    /// networks take the new weights. Returns the last update's losses.
    pub fn train_on(
        &mut self,
        buffer: &mut Vec<Transition>,
        rng: &mut impl Rng,
    ) -> Result<Option<Losses>> {
        let mut last = None;
        for _ in 0..buffer.len() {
            let draw: Vec<Transition> = (0..self.config.batch.min(buffer.len()))
                .map(|_| buffer[rng.gen_range(0..buffer.len())].clone())
                .collect();
            last = Some(self.update(&draw)?);
        }
        buffer.clear();
        self.old_actor = self.actor.snapshot()?;
        self.old_critic = self.critic.snapshot()?;
        Ok(last)
    }

    /// The actor's and critic's weights by name (`actor.0.weight`, ...).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut t = Vec::new();
        for (name, net) in [("actor", &self.actor), ("critic", &self.critic)] {
            t.extend(net.named(name));
        }
        t
    }

    /// An agent with the weights of [`Agent::tensors`]; the shapes give the state width,
    /// the hidden width and the number of actions.
    pub fn from_tensors(t: &HashMap<String, Tensor>, config: PpoConfig) -> Result<Agent> {
        let first = get(t, "actor.0.weight")?;
        let last = get(t, "actor.1.weight")?;
        let (hidden, state_dim) = first.dims2()?;
        let actions = last.dims2()?.0;
        let mut agent = Agent::new(state_dim, actions, PpoConfig { hidden, ..config })?;
        agent.actor.set_named("actor", t)?;
        agent.critic.set_named("critic", t)?;
        agent.old_actor = agent.actor.snapshot()?;
        agent.old_critic = agent.critic.snapshot()?;
        Ok(agent)
    }

    /// Saves the actor and critic (with their shapes) as safetensors
    /// ([`crate::durable::write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = safetensors::serialize(self.tensors(), None)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        crate::durable::write_atomic(path, &bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
    }

    /// Loads what [`Agent::save`] wrote.
    pub fn load(path: &Path, config: PpoConfig) -> Result<Agent> {
        Agent::from_tensors(&candle_core::safetensors::load(path, &Device::Cpu)?, config)
    }
}

/// The tensor `name` of `t`, or an error naming it.
pub(crate) fn get(t: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    t.get(name)
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A 3-armed bandit (one-step routes): arm 1 pays most. PPO must learn to pull it.
    #[test]
    fn ppo_learns_the_best_arm_of_a_bandit() {
        let means = [0.2f32, 0.8, 0.5];
        let state = vec![1.0f32, 0.5, -0.5, 0.25];
        let mut agent = Agent::new(
            state.len(),
            3,
            PpoConfig {
                seed: 7,
                ..Default::default()
            },
        )
        .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let start = agent.probs(&state).unwrap();
        assert!(start.iter().all(|&p| p > 0.1), "{start:?}");
        let mut buffer = Vec::new();
        for _ in 0..40 {
            while buffer.len() < 32 {
                let (a, logp, v) = agent.act(&state, &mut rng).unwrap();
                let r = means[a] + rng.gen_range(-0.2f32..0.2);
                buffer.push(Transition {
                    state: state.clone(),
                    action: a,
                    old_log_prob: logp,
                    ret: r,
                    advantage: r - v,
                });
            }
            agent.train_on(&mut buffer, &mut rng).unwrap();
        }
        let p = agent.probs(&state).unwrap();
        assert!(p[1] > 0.9, "{p:?}");
        assert_eq!(agent.best(&state).unwrap(), 1);
    }

    /// The clipped objective: with ρ past 1 + ε and a positive advantage the gradient
    /// is cut, so one update moves the probability only a bounded amount.
    #[test]
    fn one_update_is_clipped() {
        let state = vec![0.3f32, -0.2];
        let mut agent = Agent::new(
            2,
            2,
            PpoConfig {
                learning_rate: 1.0,
                seed: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let before = agent.probs(&state).unwrap();
        let t = Transition {
            state: state.clone(),
            action: 0,
            // The old policy gave action 0 far less than now: ρ ≫ 1 + ε.
            old_log_prob: (before[0] / 10.0).ln(),
            ret: 1.0,
            advantage: 1.0,
        };
        let losses = agent.update(&[t]).unwrap();
        // Clipped: the objective is (1 + ε)·A and carries no gradient to the actor.
        assert!((losses.actor + 1.2).abs() < 1e-5, "{losses:?}");
        let after = agent.probs(&state).unwrap();
        assert!(
            (after[0] - before[0]).abs() < 1e-6,
            "{before:?} → {after:?}"
        );
    }

    #[test]
    fn saved_agents_load_with_the_same_policy() {
        let agent = Agent::new(
            5,
            3,
            PpoConfig {
                hidden: 8,
                seed: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let path =
            std::env::temp_dir().join(format!("tutti-agent-{}.safetensors", std::process::id()));
        agent.save(&path).unwrap();
        let back = Agent::load(&path, PpoConfig::default()).unwrap();
        let s = [0.1, 0.2, 0.3, 0.4, 0.5];
        assert_eq!(agent.probs(&s).unwrap(), back.probs(&s).unwrap());
        assert_eq!(back.actions(), 3);
        let _ = std::fs::remove_file(&path);
    }
}
