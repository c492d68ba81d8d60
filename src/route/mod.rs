//! Route mode: DER's sequential knowledge transfer ("Efficient Dynamic Ensembling for
//! Multiple LLM Experts"). Members answer one after another; each sees the question and
//! the previous member's answer through the Knowledge Transfer Prompt ([`prompt`]); a
//! small policy picks the next member and a terminator decides when the answer is good
//! enough.
//!
//! This module holds the parts that do not need a model: the prompt and state texts,
//! the reward of the paper's Eq. 3–4 ([`reward`]), the actor-critic heads trained with
//! PPO on candle's autograd ([`ppo`]) and the terminator classifier ([`terminator`]).
//! Both heads read a fixed-size state vector, the encoding of the state text.

pub mod ppo;
pub mod prompt;
pub mod reward;
pub mod terminator;

/// Small dense layers with seeded initialisation, shared by the actor, the critic and
/// the terminator (candle's own initialisers draw from an unseeded generator, and
/// training must be reproducible).
pub(crate) mod layers {
    use candle_core::{DType, Device, Result, Tensor, Var};
    use rand::{Rng, SeedableRng};

    /// `y = x Wᵀ + b`, trainable.
    pub struct Dense {
        pub w: Var,
        pub b: Var,
    }

    impl Dense {
        /// Uniform ±1/√in weights (PyTorch's `nn.Linear` default) and zero bias.
        pub fn new(inputs: usize, outputs: usize, rng: &mut rand::rngs::StdRng) -> Result<Dense> {
            let bound = 1.0 / (inputs as f32).sqrt();
            let w: Vec<f32> = (0..inputs * outputs)
                .map(|_| rng.gen_range(-bound..bound))
                .collect();
            let w = Tensor::from_vec(w, (outputs, inputs), &Device::Cpu)?;
            Ok(Dense {
                w: Var::from_tensor(&w)?,
                b: Var::zeros(outputs, DType::F32, &Device::Cpu)?,
            })
        }

        pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
            x.matmul(&self.w.as_tensor().t()?)?
                .broadcast_add(self.b.as_tensor())
        }

        pub fn vars(&self) -> [Var; 2] {
            [self.w.clone(), self.b.clone()]
        }

        /// An independent copy (the "old" network of PPO).
        pub fn snapshot(&self) -> Result<Dense> {
            Ok(Dense {
                w: Var::from_tensor(&self.w.as_tensor().copy()?)?,
                b: Var::from_tensor(&self.b.as_tensor().copy()?)?,
            })
        }
    }

    /// Two dense layers with a tanh between them: the heads of the paper ("two Linear
    /// layers" on the encoder's last hidden state).
    pub struct TwoLayer {
        pub first: Dense,
        pub second: Dense,
    }

    impl TwoLayer {
        pub fn new(inputs: usize, hidden: usize, outputs: usize, seed: u64) -> Result<TwoLayer> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            Ok(TwoLayer {
                first: Dense::new(inputs, hidden, &mut rng)?,
                second: Dense::new(hidden, outputs, &mut rng)?,
            })
        }

        pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
            self.second.forward(&self.first.forward(x)?.tanh()?)
        }

        pub fn vars(&self) -> Vec<Var> {
            self.first
                .vars()
                .into_iter()
                .chain(self.second.vars())
                .collect()
        }

        pub fn snapshot(&self) -> Result<TwoLayer> {
            Ok(TwoLayer {
                first: self.first.snapshot()?,
                second: self.second.snapshot()?,
            })
        }
    }
}
