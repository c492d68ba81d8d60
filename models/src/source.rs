//! Where a model comes from: a local folder, a local `.gguf` file, a `tokenizer.json`,
//! or `hf:ORG/NAME[@REV][/FILE.gguf]` fetched through the Hugging Face cache.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A resolved, local model location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// An HF-style folder: `config.json`, `*.safetensors`, `tokenizer.json`.
    Folder(PathBuf),
    /// A single GGUF file (weights, config and tokenizer inside).
    Gguf(PathBuf),
    /// A bare `tokenizer.json` (enough for vocabulary work, not for generation).
    TokenizerFile(PathBuf),
}

impl ModelSource {
    /// Resolves a user spec, downloading `hf:` specs into the HF cache when needed.
    pub fn resolve(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::BadSource {
                spec: spec.into(),
                reason: "empty model spec".into(),
            });
        }
        if let Some(rest) = spec.strip_prefix("hf:") {
            return HubSpec::parse(spec, rest)?.fetch();
        }
        Self::local(Path::new(spec))
    }

    fn local(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        if path.is_dir() {
            if path.join("config.json").exists() || path.join("tokenizer.json").exists() {
                return Ok(ModelSource::Folder(path.to_path_buf()));
            }
            let ggufs = list_with_ext(path, "gguf");
            return match ggufs.len() {
                1 => Ok(ModelSource::Gguf(ggufs[0].clone())),
                0 => Err(Error::BadSource {
                    spec: path.display().to_string(),
                    reason: "folder has no config.json, tokenizer.json or .gguf file".into(),
                }),
                n => Err(Error::BadSource {
                    spec: path.display().to_string(),
                    reason: format!("folder holds {n} .gguf files; name one of them"),
                }),
            };
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.to_ascii_lowercase().ends_with(".gguf") {
            Ok(ModelSource::Gguf(path.to_path_buf()))
        } else if name.ends_with(".json") {
            Ok(ModelSource::TokenizerFile(path.to_path_buf()))
        } else {
            // Sniff the magic so a renamed GGUF still works.
            let mut magic = [0u8; 4];
            let is_gguf = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .map(|_| &magic == b"GGUF")
                .unwrap_or(false);
            if is_gguf {
                Ok(ModelSource::Gguf(path.to_path_buf()))
            } else {
                Err(Error::BadSource {
                    spec: path.display().to_string(),
                    reason: "expected a model folder, a .gguf file or a tokenizer.json".into(),
                })
            }
        }
    }

    /// A short name for logs and reports (file or folder name).
    pub fn display_name(&self) -> String {
        let p = match self {
            ModelSource::Folder(p) | ModelSource::Gguf(p) | ModelSource::TokenizerFile(p) => p,
        };
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    }
}

pub(crate) fn list_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `hf:ORG/NAME[@REV][/FILE.gguf]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HubSpec {
    spec: String,
    repo: String,
    revision: Option<String>,
    file: Option<String>,
    /// A dataset repository rather than a model's.
    dataset: bool,
}

impl HubSpec {
    fn parse(spec: &str, rest: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadSource {
            spec: spec.into(),
            reason: format!("{reason}; expected hf:ORG/NAME[@REV][/FILE.gguf]"),
        };
        let mut parts = rest.splitn(3, '/');
        let org = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("missing org"))?;
        let name_rev = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("missing name"))?;
        let file = parts.next().filter(|s| !s.is_empty()).map(String::from);
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) if !n.is_empty() && !r.is_empty() => (n, Some(r.to_string())),
            Some(_) => return Err(bad("empty name or revision")),
            None => (name_rev, None),
        };
        Ok(Self {
            spec: spec.into(),
            repo: format!("{org}/{name}"),
            revision,
            file,
            dataset: false,
        })
    }

    fn repo(&self) -> hf_hub::Repo {
        let kind = if self.dataset {
            hf_hub::RepoType::Dataset
        } else {
            hf_hub::RepoType::Model
        };
        let revision = self.revision.clone().unwrap_or_else(|| "main".into());
        hf_hub::Repo::with_revision(self.repo.clone(), kind, revision)
    }

    fn offline() -> bool {
        std::env::var("HF_HUB_OFFLINE")
            .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
            .unwrap_or(false)
    }

    /// Fetches one file: from the cache when offline, else through the API (which
    /// also reuses the cache).
    fn get(&self, file: &str, required: bool) -> Result<Option<PathBuf>> {
        if Self::offline() {
            let cached = hf_hub::Cache::from_env().repo(self.repo()).get(file);
            return match cached {
                Some(p) => Ok(Some(p)),
                None if required => Err(Error::NotCached {
                    spec: format!("{} ({file})", self.spec),
                }),
                None => Ok(None),
            };
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| Error::Download {
                spec: self.spec.clone(),
                reason: e.to_string(),
            })?;
        match api.repo(self.repo()).get(file) {
            Ok(p) => Ok(Some(p)),
            Err(_) if !required => Ok(None),
            Err(e) => Err(Error::Download {
                spec: format!("{} ({file})", self.spec),
                reason: format!("{e} (set HF_HUB_OFFLINE=1 to use only the local cache)"),
            }),
        }
    }

    fn fetch(&self) -> Result<ModelSource> {
        if let Some(file) = &self.file {
            let path = self.get(file, true)?.ok_or_else(|| Error::NotCached {
                spec: self.spec.clone(),
            })?;
            return ModelSource::local(&path);
        }
        let config = self
            .get("config.json", true)?
            .ok_or_else(|| Error::NotCached {
                spec: self.spec.clone(),
            })?;
        self.get("tokenizer.json", true)?;
        self.get("tokenizer_config.json", false)?;
        self.get("generation_config.json", false)?;
        if let Some(index) = self.get("model.safetensors.index.json", false)? {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            for shard in shard_files(&text).map_err(|reason| Error::BadSource {
                spec: self.spec.clone(),
                reason,
            })? {
                self.get(&shard, true)?;
            }
        } else {
            self.get("model.safetensors", true)?;
        }
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(ModelSource::Folder(dir))
    }
}

/// What a Hugging Face repository holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// Fetches one file of a Hugging Face repository (`ORG/NAME`, at `revision` or `main`)
/// into the HF cache, or finds it there when `HF_HUB_OFFLINE` is set.
pub fn fetch_hub_file(
    repo: &str,
    kind: RepoKind,
    revision: Option<&str>,
    file: &str,
) -> Result<PathBuf> {
    let spec = HubSpec {
        spec: format!("hf:{repo}"),
        repo: repo.to_string(),
        revision: revision.map(String::from),
        file: Some(file.to_string()),
        dataset: kind == RepoKind::Dataset,
    };
    spec.get(file, true)?.ok_or_else(|| Error::NotCached {
        spec: format!("hf:{repo} ({file})"),
    })
}

/// Shard file names listed by a `model.safetensors.index.json`, deduplicated, sorted.
pub(crate) fn shard_files(index_json: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| format!("bad safetensors index: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("safetensors index has no weight_map")?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_specs() {
        let s = HubSpec::parse("hf:a/b@main/x.gguf", "a/b@main/x.gguf").unwrap();
        assert_eq!(s.repo, "a/b");
        assert_eq!(s.revision.as_deref(), Some("main"));
        assert_eq!(s.file.as_deref(), Some("x.gguf"));
        let s = HubSpec::parse("hf:a/b", "a/b").unwrap();
        assert_eq!((s.revision, s.file), (None, None));
        assert!(HubSpec::parse("hf:a", "a").is_err());
        assert!(HubSpec::parse("hf:a/@x", "a/@x").is_err());
    }

    #[test]
    fn offline_uncached_is_a_clear_error() {
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var("HF_HOME", std::env::temp_dir().join("tutti-empty-hf-home"));
        let err = ModelSource::resolve("hf:nobody/nothing-here")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the local Hugging Face cache"), "{err}");
    }

    #[test]
    fn missing_path() {
        let err = ModelSource::resolve("/definitely/not/here.gguf").unwrap_err();
        assert!(matches!(err, Error::FileNotFound { .. }));
    }

    #[test]
    fn shards_are_deduplicated() {
        let idx = r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#;
        assert_eq!(
            shard_files(idx).unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
    }
}
