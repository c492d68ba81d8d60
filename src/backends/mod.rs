//! What runs a member, behind the engine's [`Backend`] trait: a candle model in this
//! process ([`LocalModel`]) or a model behind an OpenAI-compatible or llama.cpp server
//! ([`RemoteModel`]). [`MemberSpec::load`] picks one from a spec.

pub mod local;
pub mod remote;

pub use local::LocalModel;
pub use remote::{Protocol, RemoteModel, RemoteSpec};

use tutti_models::{Architecture, DTypeSpec, DeviceSpec, LoadOptions, Model};

use crate::engine::{Backend, EngineError, MemberSpec, Result};

impl MemberSpec {
    /// Errors name the member by its file or folder name (the model error that follows
    /// gives the full path).
    pub(crate) fn err(&self, source: tutti_models::Error) -> EngineError {
        let name = std::path::Path::new(&self.model)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.model.clone());
        EngineError::Model {
            member: name,
            source,
        }
    }

    /// What makes two local members the same loaded model (`None` for a served one).
    pub(crate) fn load_key(&self) -> Option<LoadKey> {
        if RemoteSpec::is_remote(&self.model) {
            return None;
        }
        Some(LoadKey {
            model: self.model.clone(),
            device: self.device,
            dtype: self.dtype,
            arch: self.arch,
        })
    }

    /// Loads the member's backend (connects to a served member's server).
    pub fn load(&self) -> Result<Box<dyn Backend>> {
        if let Some(remote) = self.remote() {
            return Ok(Box::new(remote?.connect()?));
        }
        let device = self.device.open().map_err(|e| self.err(e))?;
        let opts = LoadOptions {
            device,
            dtype: self.dtype.dtype(),
            arch: self.arch,
            ..LoadOptions::default()
        };
        let model = Model::load(&self.model, &opts).map_err(|e| self.err(e))?;
        Ok(Box::new(LocalModel::new(model)))
    }
}

/// The load settings of a local member: members with equal keys share one set of weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadKey {
    model: String,
    device: DeviceSpec,
    dtype: DTypeSpec,
    arch: Option<Architecture>,
}
