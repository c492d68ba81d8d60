//! Route mode: DER's sequential knowledge transfer ("Efficient Dynamic Ensembling for
//! Multiple LLM Experts"). Members answer one after another; each sees the question and
//! the previous member's answer through the Knowledge Transfer Prompt ([`prompt`]); a
//! small policy picks the next member and a terminator decides when the answer is good
//! enough.
//!
//! One route, top to bottom:
//!
//! 1. [`question`]: the question and how each step's prompt frames the Knowledge
//!    Transfer Prompt ([`prompt`]);
//! 2. [`policy`]: who answers next — fixed, random, best, or learned, whose actor reads
//!    the state `[Q: x, A: ŷ]` encoded by a frozen small model ([`encoder`]) and whose
//!    terminator ([`terminator`]) stops the route;
//! 3. [`run`]: the chosen member answers through the engine ([`crate::engine::Request`]
//!    with the step's prompt and that member alone); the last answer is the route's.
//!
//! Training ([`mod@train`]) follows the paper's Algorithm 1: rewards of Eq. 3–4
//! ([`reward`]), PPO on candle's autograd ([`ppo`]); the result is one safetensors file
//! ([`mod@file`]).
//!
//! ```no_run
//! use tutti::engine::{Ensemble, MemberSpec, Request};
//! use tutti::route::{Policy, PolicySpec, RouteContext, RouteQuestion, RouteSettings};
//! let mut ens = Ensemble::builder()
//!     .member(MemberSpec::new("models-cache/SmolLM2-135M-Instruct.Q4_1.gguf"))
//!     .member(MemberSpec::new("models-cache/gemma-3-270m-q4_k_m.gguf"))
//!     .build()?;
//! let names: Vec<String> = ens.members().iter().map(|m| m.name().to_string()).collect();
//! let mut policy = Policy::resolve(&PolicySpec::parse("fixed:0,1")?, &names, None, 0)?;
//! let base = Request::raw("").max_tokens(64);
//! let mut ctx = RouteContext::new(&mut ens, base, None)?;
//! let q = RouteQuestion::chat("What is the capital of Australia?");
//! let out = ctx.run(&mut policy, &q, &RouteSettings::default(), &mut |_| {})?;
//! println!("{} ({} steps, {} parameters)", out.answer, out.steps.len(), out.parameters);
//! # Ok::<(), tutti::route::RouteError>(())
//! ```

pub mod encoder;
pub mod file;
pub mod policy;
pub mod ppo;
pub mod prompt;
pub mod question;
pub mod reward;
pub mod run;
pub mod terminator;
pub mod train;

pub use encoder::StateEncoder;
pub use file::{LearnedPolicy, PolicyMeta};
pub use policy::{Policy, PolicySpec};
pub use question::RouteQuestion;
pub use run::{RouteContext, RouteOutcome, RouteSettings, RouteStep};
pub use train::{train, TrainProgress, TrainReport, TrainSettings};

use crate::engine::EngineError;

/// Errors of route mode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("state encoder `{model}`: {reason}")]
    Encoder { model: String, reason: String },
    #[error("policy `{spec}`: {reason}")]
    Policy { spec: String, reason: String },
    #[error("policy file {path}: {reason}")]
    PolicyFile { path: String, reason: String },
    #[error("{0}")]
    Settings(String),
    #[error("route training: {0}")]
    Train(String),
    #[error("policy network: {0}")]
    Tensor(#[from] candle_core::Error),
}

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

        /// The four tensors as `PREFIX.0.weight`, `PREFIX.0.bias`, `PREFIX.1.weight`,
        /// `PREFIX.1.bias`.
        pub fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
            vec![
                (
                    format!("{prefix}.0.weight"),
                    self.first.w.as_tensor().clone(),
                ),
                (format!("{prefix}.0.bias"), self.first.b.as_tensor().clone()),
                (
                    format!("{prefix}.1.weight"),
                    self.second.w.as_tensor().clone(),
                ),
                (
                    format!("{prefix}.1.bias"),
                    self.second.b.as_tensor().clone(),
                ),
            ]
        }

        /// Takes the weights [`TwoLayer::named`] wrote (shapes must match).
        pub fn set_named(
            &mut self,
            prefix: &str,
            t: &std::collections::HashMap<String, Tensor>,
        ) -> Result<()> {
            let get = |k: String| super::ppo::get(t, &k);
            self.first.w.set(&get(format!("{prefix}.0.weight"))?)?;
            self.first.b.set(&get(format!("{prefix}.0.bias"))?)?;
            self.second.w.set(&get(format!("{prefix}.1.weight"))?)?;
            self.second.b.set(&get(format!("{prefix}.1.bias"))?)?;
            Ok(())
        }
    }
}
