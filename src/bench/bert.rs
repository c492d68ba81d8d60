//! A BERT-family encoder (BERT, RoBERTa layouts) run through candle, and BERTScore
//! (Zhang et al., 2020) on top of it: every token of the candidate and of the
//! reference is embedded by one hidden layer, each token is matched greedily to its
//! most cosine-similar token on the other side, precision = mean over candidate
//! tokens, recall = mean over reference tokens, F1 their harmonic mean. Special tokens
//! (`[CLS]`/`[SEP]`, `<s>`/`</s>`) are excluded; no idf weighting, no baseline rescaling.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::BenchError;

/// The default encoder: BERT base (uncased), whose layer 9 is the recommended
/// BERTScore layer for it.
pub const DEFAULT_MODEL: &str = "hf:google-bert/bert-base-uncased";
pub const DEFAULT_LAYER: usize = 9;

fn enc<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> BenchError + '_ {
    move |e| BenchError::Encoder(format!("{what}: {e}"))
}

#[derive(Debug, Deserialize)]
struct BertConfig {
    #[serde(default = "bert")]
    model_type: String,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    pad_token_id: Option<usize>,
    max_position_embeddings: usize,
}

fn bert() -> String {
    "bert".into()
}

fn default_eps() -> f64 {
    1e-12
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln1: LayerNorm,
    up: Linear,
    down: Linear,
    ln2: LayerNorm,
}

/// A loaded encoder with its tokenizer.
pub struct Encoder {
    tokenizer: tokenizers::Tokenizer,
    word: candle_nn::Embedding,
    position: candle_nn::Embedding,
    token_type: Option<candle_nn::Embedding>,
    ln: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    /// RoBERTa numbers positions from `padding_idx + 1`.
    position_offset: usize,
    max_positions: usize,
    device: Device,
}

fn linear(vb: &VarBuilder, name: &str) -> Result<Linear, BenchError> {
    let vb = vb.pp(name);
    let w = vb.get_unchecked("weight").map_err(enc(name))?;
    let b = vb.get_unchecked("bias").ok();
    Ok(Linear::new(w, b))
}

fn layer_norm(vb: &VarBuilder, name: &str, eps: f64) -> Result<LayerNorm, BenchError> {
    let vb = vb.pp(name);
    let w = vb.get_unchecked("weight").map_err(enc(name))?;
    let b = vb.get_unchecked("bias").map_err(enc(name))?;
    Ok(LayerNorm::new(w, b, eps))
}

fn embedding(vb: &VarBuilder, name: &str) -> Result<candle_nn::Embedding, BenchError> {
    let w = vb.pp(name).get_unchecked("weight").map_err(enc(name))?;
    let dim = w.dim(1).map_err(enc(name))?;
    Ok(candle_nn::Embedding::new(w, dim))
}

impl Encoder {
    /// Loads a folder (`config.json`, `model.safetensors`, `tokenizer.json`) or an
    /// `hf:ORG/NAME` spec (fetched into the HF cache).
    pub fn load(spec: &str, device: &Device) -> Result<Encoder, BenchError> {
        let dir = match tutti_models::ModelSource::resolve(spec).map_err(enc(spec))? {
            tutti_models::ModelSource::Folder(d) => d,
            other => {
                return Err(BenchError::Encoder(format!(
                    "{spec}: expected a folder with config.json, model.safetensors and tokenizer.json, got {other:?}"
                )))
            }
        };
        Self::load_dir(&dir, device)
    }

    fn load_dir(dir: &Path, device: &Device) -> Result<Encoder, BenchError> {
        let shown = dir.display().to_string();
        let cfg_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(enc(&format!("{shown}/config.json")))?;
        let cfg: BertConfig =
            serde_json::from_str(&cfg_text).map_err(enc(&format!("{shown}/config.json")))?;
        if !matches!(cfg.model_type.as_str(), "bert" | "roberta" | "xlm-roberta") {
            return Err(BenchError::Encoder(format!(
                "{shown}: model_type `{}` is not a BERT-family encoder (bert, roberta, xlm-roberta)",
                cfg.model_type
            )));
        }
        if let Some(act) = cfg.hidden_act.as_deref().filter(|a| *a != "gelu") {
            return Err(BenchError::Encoder(format!(
                "{shown}: activation `{act}` is not supported (gelu only)"
            )));
        }
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(BenchError::Encoder(format!(
                "{shown}: no model.safetensors (convert pytorch_model.bin, or pick an encoder that ships safetensors)"
            )));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(enc(&format!("{shown}/tokenizer.json")))?;
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .map_err(enc(&shown))?;
        // Checkpoints of the *ForMaskedLM classes nest the encoder under a prefix.
        let vb = ["", "bert", "roberta"]
            .iter()
            .map(|p| if p.is_empty() { vb.clone() } else { vb.pp(*p) })
            .find(|v| v.contains_tensor("embeddings.word_embeddings.weight"))
            .ok_or_else(|| {
                BenchError::Encoder(format!(
                    "{shown}: no embeddings.word_embeddings.weight tensor"
                ))
            })?;
        let eps = cfg.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            layers.push(Layer {
                q: linear(&l, "attention.self.query")?,
                k: linear(&l, "attention.self.key")?,
                v: linear(&l, "attention.self.value")?,
                o: linear(&l, "attention.output.dense")?,
                ln1: layer_norm(&l, "attention.output.LayerNorm", eps)?,
                up: linear(&l, "intermediate.dense")?,
                down: linear(&l, "output.dense")?,
                ln2: layer_norm(&l, "output.LayerNorm", eps)?,
            });
        }
        let roberta = cfg.model_type != "bert";
        Ok(Encoder {
            tokenizer,
            word: embedding(&emb, "word_embeddings")?,
            position: embedding(&emb, "position_embeddings")?,
            token_type: embedding(&emb, "token_type_embeddings").ok(),
            ln: layer_norm(&emb, "LayerNorm", eps)?,
            layers,
            heads: cfg.num_attention_heads,
            position_offset: if roberta {
                cfg.pad_token_id.unwrap_or(1) + 1
            } else {
                0
            },
            max_positions: cfg.max_position_embeddings,
            device: device.clone(),
        })
        .and_then(|e| {
            if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
                return Err(BenchError::Encoder(format!(
                    "{shown}: hidden_size {} is not divisible by {} heads",
                    cfg.hidden_size, cfg.num_attention_heads
                )));
            }
            Ok(e)
        })
    }

    /// Number of hidden layers (valid layers for [`Encoder::hidden`] are 0..=this).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token ids with the tokenizer's special tokens, cut to the position limit.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, BenchError> {
        let e = self
            .tokenizer
            .encode(text, true)
            .map_err(enc("tokenizing"))?;
        let mut ids = e.get_ids().to_vec();
        let max = self.max_positions.saturating_sub(self.position_offset);
        if ids.len() > max {
            // Keep the final special token so the sequence stays well formed.
            let last = ids[ids.len() - 1];
            ids.truncate(max);
            if let Some(l) = ids.last_mut() {
                *l = last;
            }
        }
        Ok(ids)
    }

    /// Hidden states after `layer` layers (0 = embeddings), `[tokens, hidden]`.
    pub fn hidden(&self, ids: &[u32], layer: usize) -> Result<Tensor, BenchError> {
        if layer > self.layers.len() {
            return Err(BenchError::Encoder(format!(
                "layer {layer} requested but the encoder has {} layers",
                self.layers.len()
            )));
        }
        self.forward(ids, layer).map_err(enc("encoder forward"))
    }

    fn forward(&self, ids: &[u32], upto: usize) -> candle_core::Result<Tensor> {
        let n = ids.len();
        let input = Tensor::new(ids, &self.device)?;
        let pos: Vec<u32> = (0..n).map(|i| (i + self.position_offset) as u32).collect();
        let pos = Tensor::new(pos.as_slice(), &self.device)?;
        let mut x = (self.word.forward(&input)? + self.position.forward(&pos)?)?;
        if let Some(tt) = &self.token_type {
            let zeros = Tensor::zeros(n, DType::U32, &self.device)?;
            x = (x + tt.forward(&zeros)?)?;
        }
        let mut x = self.ln.forward(&x)?;
        let hidden = x.dim(1)?;
        let hd = hidden / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in self.layers.iter().take(upto) {
            let split = |t: Tensor| {
                t.reshape((n, self.heads, hd))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let q = split(l.q.forward(&x)?)?;
            let k = split(l.k.forward(&x)?)?;
            let v = split(l.v.forward(&x)?)?;
            let att = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * scale)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let ctx = att.matmul(&v)?.transpose(0, 1)?.reshape((n, hidden))?;
            x = l.ln1.forward(&(l.o.forward(&ctx)? + &x)?)?;
            let h = l.up.forward(&x)?.gelu_erf()?;
            x = l.ln2.forward(&(l.down.forward(&h)? + &x)?)?;
        }
        Ok(x)
    }
}

/// BERTScore of one candidate against one reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BertScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Scores texts with one encoder layer.
pub struct BertScorer {
    encoder: Encoder,
    layer: usize,
}

impl BertScorer {
    pub fn new(encoder: Encoder, layer: usize) -> Result<BertScorer, BenchError> {
        if layer == 0 || layer > encoder.num_layers() {
            return Err(BenchError::Encoder(format!(
                "--bertscore-layer {layer} is out of range: the encoder has layers 1..={}",
                encoder.num_layers()
            )));
        }
        Ok(BertScorer { encoder, layer })
    }

    /// Normalised embeddings of the text's tokens, special tokens removed.
    fn embed(&self, text: &str) -> Result<Option<Tensor>, BenchError> {
        let ids = self.encoder.encode(text)?;
        if ids.len() <= 2 {
            return Ok(None);
        }
        let h = self.encoder.hidden(&ids, self.layer)?;
        let inner = h
            .narrow(0, 1, ids.len() - 2)
            .and_then(|t| {
                let norm = t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                t.broadcast_div(&norm)
            })
            .map_err(enc("normalising embeddings"))?;
        Ok(Some(inner))
    }

    /// The encoder layer whose states are compared.
    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn score(&self, candidate: &str, reference: &str) -> Result<BertScore, BenchError> {
        let zero = BertScore {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
        let (Some(c), Some(r)) = (self.embed(candidate)?, self.embed(reference)?) else {
            return Ok(zero);
        };
        let mean_max = |sim: &Tensor, dim: usize| -> candle_core::Result<f64> {
            sim.max(dim)?.mean_all()?.to_scalar::<f32>().map(f64::from)
        };
        let (p, r) = r
            .t()
            .and_then(|rt| c.matmul(&rt))
            .and_then(|sim| Ok((mean_max(&sim, 1)?, mean_max(&sim, 0)?)))
            .map_err(enc("similarity"))?;
        let f1 = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        Ok(BertScore {
            precision: p,
            recall: r,
            f1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/bert")
    }

    #[derive(Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
        hidden_states: Vec<Vec<Vec<f32>>>,
    }

    #[derive(Deserialize)]
    struct Pair {
        candidate: String,
        reference: String,
        layer: usize,
        precision: f64,
        recall: f64,
        f1: f64,
    }

    #[derive(Deserialize)]
    struct Cases {
        cases: Vec<Case>,
        bertscore: Vec<Pair>,
    }

    fn cases() -> Cases {
        let text = std::fs::read_to_string(fixture().join("cases.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn encoder_matches_transformers_at_every_layer() {
        let e = Encoder::load(fixture().to_str().unwrap(), &Device::Cpu).unwrap();
        let cs = cases();
        let mut worst = 0f32;
        for c in &cs.cases {
            assert_eq!(e.encode(&c.text).unwrap(), c.ids, "{}", c.text);
            for (layer, want) in c.hidden_states.iter().enumerate() {
                let got: Vec<Vec<f32>> = e.hidden(&c.ids, layer).unwrap().to_vec2().unwrap();
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    worst = worst.max((g - w).abs());
                }
            }
        }
        assert!(worst < 1e-4, "max |Δ| {worst}");
        assert!(e.hidden(&cs.cases[0].ids, 4).is_err());
    }

    #[test]
    fn bertscore_matches_the_reference_formula() {
        let cs = cases();
        for p in &cs.bertscore {
            let e = Encoder::load(fixture().to_str().unwrap(), &Device::Cpu).unwrap();
            let s = BertScorer::new(e, p.layer).unwrap();
            let got = s.score(&p.candidate, &p.reference).unwrap();
            for (g, w) in [
                (got.precision, p.precision),
                (got.recall, p.recall),
                (got.f1, p.f1),
            ] {
                assert!(
                    (g - w).abs() < 1e-4,
                    "{} / {}: {g} vs {w}",
                    p.candidate,
                    p.reference
                );
            }
        }
        let e = Encoder::load(fixture().to_str().unwrap(), &Device::Cpu).unwrap();
        let s = BertScorer::new(e, 3).unwrap();
        assert_eq!(s.score("", "the cat").unwrap().f1, 0.0);
        let same = s.score("the cat sat", "the cat sat").unwrap();
        assert!((same.f1 - 1.0).abs() < 1e-5);
        let e = Encoder::load(fixture().to_str().unwrap(), &Device::Cpu).unwrap();
        assert!(BertScorer::new(e, 0).is_err());
    }

    #[test]
    fn bad_encoder_folders_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("tutti-bert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 8}"#).unwrap();
        let err = Encoder::load(dir.to_str().unwrap(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a BERT-family encoder"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
