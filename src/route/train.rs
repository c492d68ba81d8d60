//! Training a route policy (the paper's Algorithm 1) on questions with a scorer.
//!
//! Before training, every member answers every question alone: those scores are the
//! calibration `best` picks from, and the first steps of most routes. Then, for each
//! epoch, each question (in a seeded order) is routed by the old actor's samples: a step
//! encodes the state, draws a member, asks it through the KTP, scores the answer and
//! takes the reward of Eq. 3–4, until the reward ends the route (the answer reached
//! `p0`, or the last step). The transitions go to the replay buffer; a full buffer trains
//! actor and critic (see [`super::ppo`]). Every answer state seen is an example for the
//! terminator (label: score ≥ p0), trained at the end on the unique states.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::file::{LearnedPolicy, PolicyMeta};
use super::ppo::{Agent, PpoConfig, Transition};
use super::question::RouteQuestion;
use super::reward::{returns, step_reward, RewardParams};
use super::run::RouteContext;
use super::terminator::Terminator;
use super::RouteError;

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    /// Passes over the questions.
    pub epochs: usize,
    pub ppo: PpoConfig,
    pub reward: RewardParams,
    /// Transitions collected before an update round (the paper's M).
    pub buffer: usize,
    /// Terminator training passes over its examples.
    pub terminator_epochs: usize,
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> TrainSettings {
        TrainSettings {
            epochs: 8,
            ppo: PpoConfig::default(),
            reward: RewardParams::default(),
            buffer: 64,
            terminator_epochs: 200,
            seed: 0,
        }
    }
}

/// One epoch's numbers (the reward curve).
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    /// Mean total reward of a route.
    pub mean_return: f32,
    /// Mean score of the routes' last answers.
    pub mean_final_score: f32,
    pub mean_steps: f32,
    /// Share of each member among the actions taken.
    pub action_share: Vec<f32>,
    /// Answers generated during the epoch (not found in the memo).
    pub generated: usize,
    pub seconds: f64,
}

/// What training measured.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Questions trained on.
    pub items: usize,
    pub calibration: Vec<f32>,
    pub epochs: Vec<EpochStats>,
    /// Unique answer states the terminator learned from, and how many were good enough.
    pub terminator_examples: usize,
    pub terminator_positives: usize,
    pub terminator_loss: f32,
    /// The terminator's accuracy on its own training states.
    pub terminator_accuracy: f32,
    pub generated: usize,
    pub seconds: f64,
}

/// Where training is.
#[derive(Clone, Debug)]
pub enum TrainProgress<'a> {
    /// Members answering alone: `done` of `total` answers.
    Calibrating {
        done: usize,
        total: usize,
    },
    /// `done` of `total` routes of epoch `epoch` (1-based) of `epochs`.
    Route {
        epoch: usize,
        epochs: usize,
        done: usize,
        total: usize,
    },
    Epoch(&'a EpochStats),
    Terminator,
}

/// Scores member answers: `(question index, answer) → P`.
pub type Scorer<'s> = dyn FnMut(usize, &str) -> Result<f32, RouteError> + 's;

/// Trains a policy for the members of `ctx` on `questions`.
pub fn train(
    ctx: &mut RouteContext,
    questions: &[RouteQuestion],
    score: &mut Scorer,
    settings: &TrainSettings,
    on_progress: &mut dyn FnMut(&TrainProgress),
) -> Result<(LearnedPolicy, TrainReport), RouteError> {
    let started = Instant::now();
    if questions.is_empty() {
        return Err(RouteError::Train("no questions to train on".into()));
    }
    if settings.epochs == 0 || settings.buffer == 0 {
        return Err(RouteError::Train(
            "epochs and the buffer size must be at least 1".into(),
        ));
    }
    let members = ctx.member_names();
    let params = ctx.member_parameters();
    let n = members.len();
    if n < 2 {
        return Err(RouteError::Train(
            "routing needs at least two members (-m A -m B)".into(),
        ));
    }
    let encoder = ctx
        .encoder()
        .ok_or_else(|| RouteError::Train("training needs a state encoder".into()))?;
    let (encoder_name, encoder_fp, dim) = (
        encoder.name().to_string(),
        encoder.fingerprint().to_string(),
        encoder.dim(),
    );

    // Calibration: every member alone on every question.
    let total = questions.len() * n;
    let mut calibration = vec![0.0f32; n];
    for (i, q) in questions.iter().enumerate() {
        for (slot, c) in calibration.iter_mut().enumerate() {
            let a = ctx.answer(q, None, slot)?;
            *c += score(i, &a.text)?;
            on_progress(&TrainProgress::Calibrating {
                done: i * n + slot + 1,
                total,
            });
        }
    }
    for c in calibration.iter_mut() {
        *c /= questions.len() as f32;
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let mut agent = Agent::new(
        dim,
        n,
        PpoConfig {
            seed: settings.seed,
            ..settings.ppo
        },
    )?;
    let mut buffer: Vec<Transition> = Vec::new();
    let mut states: BTreeMap<String, (Vec<f32>, bool)> = BTreeMap::new();
    let mut epochs = Vec::new();
    let mut order: Vec<usize> = (0..questions.len()).collect();
    for epoch in 1..=settings.epochs {
        let t0 = Instant::now();
        let generated0 = ctx.generated();
        order.shuffle(&mut rng);
        let (mut ret_sum, mut final_sum, mut steps_sum) = (0.0f32, 0.0f32, 0usize);
        let mut actions = vec![0usize; n];
        for (done, &i) in order.iter().enumerate() {
            let q = &questions[i];
            let mut previous: Option<(String, f32)> = None;
            let mut rewards = Vec::new();
            let mut taken = Vec::new();
            for t in 0..settings.reward.t_max {
                let prev_text = previous.as_ref().map(|p| p.0.clone());
                let state = ctx.state(q, prev_text.as_deref())?;
                let (action, log_prob, value) = agent.act(&state, &mut rng)?;
                actions[action] += 1;
                let answer = ctx.answer(q, prev_text.as_deref(), action)?;
                let p = score(i, &answer.text)?;
                let r = step_reward(
                    t,
                    p,
                    previous.as_ref().map(|p| p.1),
                    params[action] as f32 / 1e9,
                    &settings.reward,
                );
                rewards.push(r.reward);
                taken.push((state, action, log_prob, value));
                let key = super::prompt::state_text(&q.question, Some(&answer.text));
                if let std::collections::btree_map::Entry::Vacant(e) = states.entry(key) {
                    e.insert((ctx.state(q, Some(&answer.text))?, p >= settings.reward.p0));
                }
                previous = Some((answer.text, p));
                if r.done {
                    break;
                }
            }
            let g = returns(&rewards);
            ret_sum += g.first().copied().unwrap_or(0.0);
            final_sum += previous.map_or(0.0, |p| p.1);
            steps_sum += taken.len();
            for ((state, action, old_log_prob, value), ret) in taken.into_iter().zip(g) {
                buffer.push(Transition {
                    state,
                    action,
                    old_log_prob,
                    ret,
                    advantage: ret - value,
                });
            }
            if buffer.len() >= settings.buffer {
                agent.train_on(&mut buffer, &mut rng)?;
            }
            on_progress(&TrainProgress::Route {
                epoch,
                epochs: settings.epochs,
                done: done + 1,
                total: questions.len(),
            });
        }
        let taken_total: usize = actions.iter().sum();
        let stats = EpochStats {
            epoch,
            mean_return: ret_sum / questions.len() as f32,
            mean_final_score: final_sum / questions.len() as f32,
            mean_steps: steps_sum as f32 / questions.len() as f32,
            action_share: actions
                .iter()
                .map(|&a| a as f32 / taken_total.max(1) as f32)
                .collect(),
            generated: ctx.generated() - generated0,
            seconds: t0.elapsed().as_secs_f64(),
        };
        on_progress(&TrainProgress::Epoch(&stats));
        epochs.push(stats);
    }
    if !buffer.is_empty() {
        agent.train_on(&mut buffer, &mut rng)?;
    }

    on_progress(&TrainProgress::Terminator);
    let examples: Vec<(Vec<f32>, bool)> = states.into_values().collect();
    let positives = examples.iter().filter(|e| e.1).count();
    let mut terminator = Terminator::new(dim, settings.ppo.hidden, settings.seed ^ 0x7e7)?;
    let loss = terminator.train(&examples, settings.terminator_epochs, 1e-3, settings.seed)?;
    let mut right = 0usize;
    for (s, y) in &examples {
        if terminator.stop(s)? == *y {
            right += 1;
        }
    }
    let report = TrainReport {
        items: questions.len(),
        calibration: calibration.clone(),
        epochs,
        terminator_examples: examples.len(),
        terminator_positives: positives,
        terminator_loss: loss,
        terminator_accuracy: right as f32 / examples.len().max(1) as f32,
        generated: ctx.generated(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let policy = LearnedPolicy {
        agent,
        terminator,
        meta: PolicyMeta {
            members,
            parameters: params,
            encoder: encoder_name,
            encoder_fingerprint: encoder_fp,
            max_steps: settings.reward.t_max,
            p0: settings.reward.p0,
            calibration,
            items: questions.len(),
            epochs: settings.epochs,
            seed: settings.seed,
        },
    };
    Ok((policy, report))
}
