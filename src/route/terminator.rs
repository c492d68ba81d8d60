//! The terminator: a binary classifier on the state vector that predicts whether the
//! current answer already scores at least `p0`, trained on the routes' states and used
//! at test time to stop a route.

use super::layers::TwoLayer;
use candle_core::{Device, Result, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;

pub struct Terminator {
    net: TwoLayer,
    state_dim: usize,
}

impl Terminator {
    pub fn new(state_dim: usize, hidden: usize, seed: u64) -> Result<Terminator> {
        Ok(Terminator {
            net: TwoLayer::new(state_dim, hidden, 1, seed)?,
            state_dim,
        })
    }

    /// P(score ≥ p0 | state).
    pub fn prob(&self, state: &[f32]) -> Result<f32> {
        let x = Tensor::from_slice(state, (1, state.len()), &Device::Cpu)?;
        candle_nn::ops::sigmoid(&self.net.forward(&x)?)?
            .flatten_all()?
            .to_vec1::<f32>()
            .map(|v| v[0])
    }

    /// The weights by name (`terminator.0.weight`, ...).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.net.named("terminator")
    }

    /// A terminator with the weights of [`Terminator::tensors`].
    pub fn from_tensors(t: &std::collections::HashMap<String, Tensor>) -> Result<Terminator> {
        let first = super::ppo::get(t, "terminator.0.weight")?;
        let (hidden, state_dim) = first.dims2()?;
        let mut term = Terminator::new(state_dim, hidden, 0)?;
        term.net.set_named("terminator", t)?;
        Ok(term)
    }

    /// Whether to stop: the predicted probability is at least one half.
    pub fn stop(&self, state: &[f32]) -> Result<bool> {
        Ok(self.prob(state)? >= 0.5)
    }

    /// Binary cross-entropy training over `(state, reached p0)` examples, shuffled each
    /// epoch from `seed`, in minibatches of 32. Returns the last epoch's mean loss.
    pub fn train(
        &mut self,
        examples: &[(Vec<f32>, bool)],
        epochs: usize,
        learning_rate: f64,
        seed: u64,
    ) -> Result<f32> {
        let mut opt = AdamW::new(
            self.net.vars(),
            ParamsAdamW {
                lr: learning_rate,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..examples.len()).collect();
        let mut last = 0.0;
        for _ in 0..epochs {
            order.shuffle(&mut rng);
            let (mut sum, mut batches) = (0.0, 0);
            for chunk in order.chunks(32) {
                let x: Vec<f32> = chunk
                    .iter()
                    .flat_map(|&i| examples[i].0.iter().copied())
                    .collect();
                let y: Vec<f32> = chunk
                    .iter()
                    .map(|&i| f32::from(u8::from(examples[i].1)))
                    .collect();
                let x = Tensor::from_vec(x, (chunk.len(), self.state_dim), &Device::Cpu)?;
                let y = Tensor::from_vec(y, chunk.len(), &Device::Cpu)?;
                let logits = self.net.forward(&x)?.squeeze(1)?;
                let loss = bce_with_logits(&logits, &y)?;
                opt.backward_step(&loss)?;
                sum += loss.to_scalar::<f32>()?;
                batches += 1;
            }
            last = sum / batches.max(1) as f32;
        }
        Ok(last)
    }
}

/// Mean binary cross-entropy from logits in the stable form
/// `max(z, 0) − z·y + ln(1 + e^(−|z|))` (the sigmoid-then-log form overflows to NaN once
/// the classifier is confident).
fn bce_with_logits(z: &Tensor, y: &Tensor) -> Result<Tensor> {
    let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((z.relu()? - z.mul(y)?)? + soft)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn stable_cross_entropy_by_hand() {
        let z = Tensor::new(&[0.0f32, 2.0, -30.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1.0f32, 0.0, 1.0], &Device::Cpu).unwrap();
        // ln 2, 2 + ln(1 + e^-2), 30 + ln(1 + e^-30).
        let want = (2f32.ln() + 2.0 + (1.0 + (-2f32).exp()).ln() + 30.0) / 3.0;
        let got: f32 = bce_with_logits(&z, &y).unwrap().to_scalar().unwrap();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// Synthetic states whose label is a linear rule of the features: the trained
    /// terminator gets held-out states right.
    #[test]
    fn learns_a_synthetic_stopping_rule() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut draw = |n: usize| -> Vec<(Vec<f32>, bool)> {
            (0..n)
                .map(|_| {
                    let s: Vec<f32> = (0..6).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                    let good = s[0] + 0.5 * s[3] - 0.3 * s[5] > 0.1;
                    (s, good)
                })
                .collect()
        };
        let (train, test) = (draw(600), draw(200));
        let mut t = Terminator::new(6, 16, 9).unwrap();
        let loss = t.train(&train, 60, 1e-2, 2).unwrap();
        assert!(loss < 0.2, "{loss}");
        let right = test
            .iter()
            .filter(|(s, y)| t.stop(s).unwrap() == *y)
            .count();
        assert!(right >= 190, "{right}/200");
    }
}
