//! Relative-representation maps: tokens of two models are compared through their
//! similarity profiles over anchor tokens that both vocabularies share.
//!
//! A token's *relative vector* is the cosine similarity of its (input = tied output)
//! embedding row with the anchors' rows, computed in its own model. Two relative
//! vectors, `x A_Aᵀ` and `y A_Bᵀ`, have the dot product `x M yᵀ` with `M = A_Aᵀ A_B`
//! (`hidden A × hidden B`), the anchors' cross-similarity. relrep-v4 compares tokens in
//! the singular basis of `M = U S Vᵀ` with the shared directions weighted by `S^p`:
//! a token `x` of A becomes `x U S^(p/2)`, a token `y` of B becomes `y V S^(p/2)`, and
//! `x` maps to the `y` of highest cosine (with CSLS hubness correction, below).
//! `p = 1` is the relative vectors' own dot product; [`RelRepConfig::sv_power`]
//! `p = 2` (default) leans further on the directions in which the two models' anchor
//! profiles agree most — the re-weighting step of supervised cross-lingual embedding
//! mappings (Artetxe et al., 2018), applied to relative vectors.
//!
//! Anchors: surfaces that are canonical candidates in both vocabularies (EOS and
//! byte-fallback tokens excluded), ranked by the larger of their two ids (BPE merge order
//! ≈ corpus frequency), and [`RelRepConfig::anchors`] of them (default 16,384) taken at
//! even spacing over that ranking, so frequent and content tokens are both covered.
//! Only through the anchors does the method see which bytes the two vocabularies
//! share; every other token is placed by its embedding alone.
//!
//! Per-model preprocessing (each side uses only its own rows): mean-centring over its
//! candidates and *whitening* with its own candidate covariance (`W = L⁻ᵀ`, Cholesky,
//! tiny ridge), then unit length. Without whitening a few high-variance directions
//! dominate every cosine and the profiles of two unrelated models do not line up.
//!
//! Computation: relative vectors are never materialised. Set-up needs the anchor rows'
//! `hidden × hidden` cross product and one symmetric eigen-decomposition of that size
//! (faer, on the host in f64, as are the whitening's Cholesky factorisations); the
//! preprocessing and projection fold into one `hidden × r` affine map per side, so
//! memory does not grow with the number of anchors and scores are `r`-wide matmuls
//! (`r ≤ min hidden`), chunked by [`RelRepConfig::block_elems`] on the embeddings'
//! device. [`RelRep::setup_times`] reports each stage; `benches/relrep.rs` measures
//! them up to hidden 4,096. [`RelRep::lookup`] maps single candidates lazily and
//! memoises them; [`RelRep::full_map`] maps every candidate.
//!
//! Hubness: a few B tokens are nearest to very many queries. CSLS picks
//! `argmax_y 2·cos(x, y) − r(y)`, `r(y)` = mean of `y`'s [`RelRepConfig::csls_k`] highest
//! cosines with an evenly spaced sample of [`RelRepConfig::csls_sample`] A candidates,
//! among the query's `SHORTLIST` (64) best targets by plain cosine; `r(y)` is computed the
//! first time `y` is shortlisted and kept. The reported score is the plain cosine.
//!
//! Measurements (held-out = random shared tokens that are not anchors; identity =
//! mapped to the B token with the same bytes; SmolLM2-135M Q4_1 and Gemma-3-270M
//! Q4_K_M; CPU, 2 cores). Rows marked † are numpy prototypes on one draw of 2,000
//! held-out tokens; the others are this code (500 tokens before v4, 2,000 since, the
//! draw of `tests/align_relrep.rs`):
//!
//! | variant                                            | Gemma→SmolLM2 | SmolLM2→Gemma |
//! |----------------------------------------------------|------|------|
//! | v2: centred, feature-standardised, 1,024 anchors   | 6.6% | 2.0% |
//! | v2 with 4,096 / 16,384 anchors                      | 11% / 14% | – |
//! | most frequent anchors instead of even spacing       | 0.2–2% | – |
//! | centred only, all ~45k anchors (+CSLS)             | 6.6% (8.2%) | – |
//! | whitened (anchor-row covariance), 4,096, +CSLS k=10 | 79% | – |
//! | whitened (candidate covariance), 4,096, plain / CSLS k=10 | 81% / 87% | – |
//! | same, 16,384 anchors, plain                        | 83.4% | – |
//! | 16,384, CSLS sample 4,096, k = 3 / 10 / 30         | 89.6 / 88.4 / 87.4% | – |
//! | v3: 16,384, CSLS sample 16,384, k = 3 / 10 / 30     | 92.8% / 90.6 / 88.8% | 94.0% |
//! | † v3, k = 1 / 2 / 3 / 5                             | 91.5 / 92.1 / 92.0 / 91.8% | 94.3% (k=3) |
//! | 32,768 anchors, CSLS sample 4,096, k = 3           | 90.0% | – |
//! | † least-squares linear map on the anchors (ridge 0 / 1 / 10), + CSLS k=3 | 91.0 / 91.2 / 90.9% | – |
//! | reference: orthogonal Procrustes on all anchors    | 77% | 85% |
//! | † singular basis, `p` = 0 / 0.5 / 1 / 1.5, CSLS k=3 | 87.4 / 91.4 / 93.5 / 95.2% | 94.6% (p=1) |
//! | † `p` = 2 / 2.5 / 3 / 4, CSLS k=3                   | 95.5 / 95.7 / 95.8 / 94.4% | 95.1 / – / 94.2 / – |
//! | † `p` = 2, k = 0 / 1 / 2 / 5                        | 89.7 / 94.8 / 95.6 / 95.3% | – |
//! | † `p` = 2, 8,192 anchors                            | 94.3% | – |
//! | **v4 (default): `p` = 2, 16,384 anchors, CSLS k=3** | **95.25%** (1905/2000; 473/500 = 94.6%) | **95.25%** (1905/2000; 478/500 = 95.6%) |
//!
//! (`p = 0` is an orthogonal map in the whitened spaces; `p = 1` differs from v3 only
//! in normalising by the projected norm instead of the relative vector's.) `p` between
//! 2 and 3 is a flat optimum in the Gemma→SmolLM2 direction; 2 is better in the other.
//! The remaining errors are mostly a word against the same word with(out) a leading
//! space or with other capitalisation (`exchange` → ` exchange`, ` Strict` →
//! ` strict`), whose embeddings are nearly the same in both models. Set-up time on
//! 2 loaded CPU cores (debug test profile): ≈15 s Gemma→SmolLM2 and ≈35 s SmolLM2→Gemma,
//! plus CSLS penalties as targets get shortlisted; seconds on a GPU.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{DType, DeviceLocation, Tensor, D};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{get_global_parallelism, Mat, MatRef};
use rayon::prelude::*;

use super::{eos_target, AlignError, AlignMethod, TokenMap, NONE};
use crate::vocab::Vocab;

/// Parameters of a relrep map (part of its cache key).
#[derive(Clone, Debug, PartialEq)]
pub struct RelRepConfig {
    /// Maximum number of anchor tokens. Memory does not grow with it (see the module
    /// docs); time grows linearly, but only in the `hidden × hidden` set-up products.
    pub anchors: usize,
    /// Mean-centre embedding rows (mean over the side's candidates) before the cosines.
    pub center: bool,
    /// Whiten each side's (centred) embedding rows with that side's own candidate
    /// covariance before the cosines.
    pub whiten: bool,
    /// Power of the singular values of the anchors' cross-similarity that weights the
    /// shared directions (1 = the plain relative-vector dot product, 2 = default).
    pub sv_power: f64,
    /// CSLS neighbourhood size for hubness reduction (0 = plain cosine argmax).
    pub csls_k: usize,
    /// Number of A candidates (evenly spaced) that estimate each B target's CSLS
    /// neighbourhood similarity.
    pub csls_sample: usize,
    /// Upper bound on the elements of one score block (A rows × B candidates).
    pub block_elems: usize,
}

impl Default for RelRepConfig {
    fn default() -> Self {
        RelRepConfig {
            anchors: DEFAULT_ANCHORS,
            center: true,
            whiten: true,
            sv_power: DEFAULT_SV_POWER,
            csls_k: 3,
            csls_sample: 16384,
            block_elems: 1 << 26,
        }
    }
}

/// Default anchor budget (see the module docs for the measurements behind it).
pub const DEFAULT_ANCHORS: usize = 16384;

/// Default singular-value power (see the module docs for the measurements behind it).
pub const DEFAULT_SV_POWER: f64 = 2.0;

/// Relative ridge added to the covariance diagonal before whitening.
const WHITEN_RIDGE: f64 = 1e-6;

impl RelRepConfig {
    /// The parameters that change the result, as a cache-key string. Its version
    /// counts the numerics too, scores included: `relrep-v5` is the method described
    /// in the module docs as relrep-v4, computed with faer's decompositions (same
    /// targets on a 6,083-token spread of the demo pair, scores within 1e-6).
    pub fn key_string(&self) -> String {
        format!(
            "relrep-v5;anchors={};center={};whiten={};sv_power={};csls_k={};csls_sample={}",
            self.anchors, self.center, self.whiten, self.sv_power, self.csls_k, self.csls_sample
        )
    }
}

/// Fails unless both tensors live on the same device.
pub fn check_same_device(a: DeviceLocation, b: DeviceLocation) -> Result<(), AlignError> {
    if a == b {
        Ok(())
    } else {
        Err(AlignError::DeviceMismatch {
            a: format!("{a:?}"),
            b: format!("{b:?}"),
        })
    }
}

/// Anchor pairs (A id, B id): shared canonical surfaces with embedding rows on both
/// sides, EOS and byte-fallback tokens excluded, ranked by (max(id A, id B), id A), then
/// `n` of them taken at even spacing over that ranking.
pub fn select_anchors(
    a: &Vocab,
    b: &Vocab,
    rows_a: usize,
    rows_b: usize,
    n: usize,
) -> Vec<(u32, u32)> {
    let mut pairs: Vec<(u32, u32)> = a
        .canonical_surfaces()
        .into_iter()
        .filter(|&(ia, _)| (ia as usize) < rows_a && !a.is_byte_fallback(ia) && !a.is_eos(ia))
        .filter_map(|(ia, s)| b.id_of(s).map(|ib| (ia, ib)))
        .filter(|&(_, ib)| (ib as usize) < rows_b && !b.is_byte_fallback(ib) && !b.is_eos(ib))
        .collect();
    pairs.sort_unstable_by_key(|&(ia, ib)| (ia.max(ib), ia));
    if pairs.len() <= n || n == 0 {
        pairs.truncate(n);
        return pairs;
    }
    // Evenly spaced over the ranking: the most frequent anchors alone are mostly
    // fragments and function words, whose profiles do not tell content words apart
    // (measured, relrep-v2: 0.7% vs 8.7% held-out identity between SmolLM2 and Gemma 3).
    let step = pairs.len() as f64 / n as f64;
    (0..n).map(|i| pairs[(i as f64 * step) as usize]).collect()
}

/// Rows of `e` at `ids`.
fn rows(e: &Tensor, ids: &[u32]) -> Result<Tensor, AlignError> {
    let idx = Tensor::from_slice(ids, ids.len(), e.device())?;
    Ok(e.index_select(&idx, 0)?)
}

/// L2-normalises each row (zero rows stay zero).
fn normalize_rows(x: &Tensor) -> Result<Tensor, AlignError> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// `W` (`n × n`, row-major) with `Wᵀ (C + ρ·I) W = I` for a symmetric positive
/// semi-definite `C` (`n × n`, row-major, lower triangle read), `ρ =`
/// `WHITEN_RIDGE·max(diag C)`: `W = L⁻ᵀ` for the Cholesky factor `L` of `C + ρ·I`.
/// Relrep features are cosines, invariant under a rotation of one side, so any
/// whitening would do and Cholesky is the cheapest. When rounding has left `C + ρ·I`
/// indefinite (nearly rank-deficient embeddings), the eigen-decomposition `C = V Λ Vᵀ`
/// gives `W = V (max(Λ, 0) + ρ)^(-1/2)` instead.
pub fn whitening(c: &[f64], n: usize) -> Result<Vec<f64>, AlignError> {
    check_square(c, n, "covariance")?;
    let max_diag = (0..n).map(|i| c[i * n + i]).fold(0.0f64, f64::max);
    let ridge = (WHITEN_RIDGE * max_diag).max(1e-30);
    let reg = Mat::from_fn(n, n, |i, j| c[i * n + j] + if i == j { ridge } else { 0.0 });
    if let Ok(llt) = reg.llt(faer::Side::Lower) {
        let mut inv = Mat::<f64>::zeros(n, n);
        invert_lower_triangular(inv.as_mut(), llt.L(), get_global_parallelism());
        // Row i of W = L⁻ᵀ is column i of L⁻¹.
        let inv = &inv;
        return Ok((0..n)
            .flat_map(|i| (0..n).map(move |k| inv[(k, i)]))
            .collect());
    }
    let (values, vectors) = sym_eigen(c, n)?;
    let scale: Vec<f64> = values
        .iter()
        .map(|&v| 1.0 / (v.max(0.0) + ridge).sqrt())
        .collect();
    // W[i][j] = V[i][j]·scale[j], and V[i][j] is entry i of the j-th eigenvector.
    Ok((0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            vectors[j * n + i] * scale[j]
        })
        .collect())
}

/// Eigen-decomposition of a symmetric `n × n` matrix (row-major, lower triangle read):
/// the eigenvalues in non-decreasing order and the unit eigenvectors as rows
/// (`vectors[j·n..(j+1)·n]` belongs to `values[j]`).
pub fn sym_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>), AlignError> {
    check_square(a, n, "matrix")?;
    let evd = MatRef::from_row_major_slice(a, n, n)
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| {
            AlignError::BadEmbeddings(format!(
                "symmetric eigen-decomposition of a {n} × {n} matrix failed ({e:?}); \
                 the embeddings are too ill-conditioned for relrep; align with min-ed instead"
            ))
        })?;
    let values = evd.S().column_vector().iter().copied().collect();
    let u = evd.U();
    let vectors = (0..n)
        .flat_map(|j| (0..n).map(move |i| u[(i, j)]))
        .collect();
    Ok((values, vectors))
}

/// Fails unless `a` holds `n × n` finite numbers: the decompositions would panic on a
/// wrong length and return garbage on NaN (which a corrupt embedding table yields).
fn check_square(a: &[f64], n: usize, what: &str) -> Result<(), AlignError> {
    if a.len() != n * n {
        return Err(AlignError::BadEmbeddings(format!(
            "a {n} × {n} {what} needs {} entries, got {}",
            n * n,
            a.len()
        )));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(AlignError::BadEmbeddings(format!(
            "the {what} derived from the embeddings has NaN or infinite entries; \
             check the model file's embedding table"
        )));
    }
    Ok(())
}

/// Projections `(P_A [hidden A, r], P_B [hidden B, r])` of the two preprocessed spaces
/// into the singular basis of the anchors' cross-similarity `M = A_Aᵀ A_B = U S Vᵀ`:
/// `P_A = U S^(p/2)`, `P_B = V S^(p/2)`, so that `x P_A · y P_B = x U Sᵖ Vᵀ yᵀ`
/// (`p = 1`: the relative vectors' dot product `x A_Aᵀ A_B yᵀ`). The decomposition
/// runs on the smaller Gram matrix of `M`; the other side's singular vectors follow
/// as `U = M V S⁻¹` (or `V = Mᵀ U S⁻¹`), with directions of negligible singular value
/// dropped.
fn sv_projections(
    cross: &Tensor,
    power: f64,
    times: &mut SetupTimes,
) -> Result<(Tensor, Tensor), AlignError> {
    let mut t = Instant::now();
    let (ha, hb) = cross.dims2()?;
    let dev = cross.device().clone();
    let small_is_a = ha <= hb;
    let (gram, n) = if small_is_a {
        (cross.matmul(&cross.t()?)?, ha)
    } else {
        (cross.t()?.matmul(cross)?, hb)
    };
    let g: Vec<f64> = gram
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    times.gram += lap(&mut t);
    let (values, vt) = sym_eigen(&g, n)?;
    times.eigen += lap(&mut t);
    let max_v = values.iter().copied().fold(0.0f64, f64::max);
    let keep: Vec<usize> = (0..n).filter(|&j| values[j] > 1e-10 * max_v).collect();
    if keep.is_empty() {
        return Err(AlignError::BadEmbeddings(
            "the anchors' embeddings carry no shared direction".into(),
        ));
    }
    let r = keep.len();
    // Columns: the small side's singular vectors, weighted by S^(p/2), and the same
    // vectors weighted by S^(p/2 - 1), which `M` (or `Mᵀ`) turns into the other side's.
    let mut own = vec![0.0f32; n * r];
    let mut via = vec![0.0f32; n * r];
    for (col, &j) in keep.iter().enumerate() {
        let sigma = values[j].sqrt();
        let w_own = sigma.powf(power / 2.0);
        let w_via = sigma.powf(power / 2.0 - 1.0);
        for i in 0..n {
            own[i * r + col] = (vt[j * n + i] * w_own) as f32;
            via[i * r + col] = (vt[j * n + i] * w_via) as f32;
        }
    }
    let own = Tensor::from_vec(own, (n, r), &dev)?;
    let via = Tensor::from_vec(via, (n, r), &dev)?;
    let pair = if small_is_a {
        let other = cross.t()?.matmul(&via)?;
        (own, other)
    } else {
        let other = cross.matmul(&via)?;
        (other, own)
    };
    times.gram += lap(&mut t);
    Ok(pair)
}

/// A side's rows to the shared basis: `x ↦ x·mat − offset`.
struct Projector {
    mat: Tensor,
    offset: Option<Tensor>,
}

impl Projector {
    fn parts(&self) -> Result<ProjectorParts, AlignError> {
        let (rows, cols) = self.mat.dims2()?;
        Ok(ProjectorParts {
            rows,
            cols,
            mat: self.mat.flatten_all()?.to_vec1::<f32>()?,
            offset: match &self.offset {
                Some(o) => Some(o.flatten_all()?.to_vec1::<f32>()?),
                None => None,
            },
        })
    }

    fn from_parts(p: &ProjectorParts, dev: &candle_core::Device) -> Result<Projector, AlignError> {
        if p.mat.len() != p.rows * p.cols || p.offset.as_ref().is_some_and(|o| o.len() != p.cols) {
            return Err(AlignError::BadEmbeddings(format!(
                "a prepared {} × {} projection with {} entries",
                p.rows,
                p.cols,
                p.mat.len()
            )));
        }
        Ok(Projector {
            mat: Tensor::from_slice(&p.mat, (p.rows, p.cols), dev)?,
            offset: match &p.offset {
                Some(o) => Some(Tensor::from_slice(o, (1, p.cols), dev)?),
                None => None,
            },
        })
    }
}

/// One side's affine map into the shared basis as plain numbers: `rows × cols`
/// row-major (`rows` = the side's hidden size, `cols` = the basis' dimension `r`) and
/// the offset subtracted after it (`cols` numbers), when the side is centred.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectorParts {
    pub rows: usize,
    pub cols: usize,
    pub mat: Vec<f32>,
    pub offset: Option<Vec<f32>>,
}

/// What [`RelRep::new`] derives at length from the two embedding tables (means,
/// covariances, whitening, the anchors' cross-similarity and its decomposition): both
/// sides' affine maps into the shared basis, and the candidates mapped so far. Kept on
/// disk ([`crate::align::cache::MapCache::store_prepared`]), it lets
/// [`RelRep::from_prepared`] skip all of that; what remains is one pass over the tables
/// (B's projected targets and A's CSLS sample), with the same numbers as
/// [`RelRep::new`], and only when a candidate is looked up that was not mapped before.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub a: ProjectorParts,
    pub b: ProjectorParts,
    /// `(A id, B id, cosine)` of the candidates mapped so far, by A id.
    pub mapped: Vec<(u32, u32, f32)>,
}

/// One model's side: its embedding table and the per-model preprocessing (mean,
/// whitening).
struct Side {
    emb: Tensor,
    mean: Option<Tensor>,
    white: Option<Tensor>,
    /// Preprocessed anchor rows `[anchors, hidden]`.
    anchors: Tensor,
    rows: usize,
}

impl Side {
    fn new(
        e: &Tensor,
        candidates: &[u32],
        anchor_ids: &[u32],
        cfg: &RelRepConfig,
        times: &mut SetupTimes,
    ) -> Result<Side, AlignError> {
        let mut t = Instant::now();
        let (rows_n, hidden) = e.dims2()?;
        let e = e.to_dtype(DType::F32)?;
        let dev = e.device().clone();
        let chunk = (cfg.block_elems / hidden.max(1)).clamp(1, 1 << 16);
        let n = candidates.len().max(1) as f64;
        let mean = if cfg.center || cfg.whiten {
            let mut sum = Tensor::zeros((1, hidden), DType::F32, &dev)?;
            for c in candidates.chunks(chunk) {
                sum = (sum + rows(&e, c)?.sum_keepdim(0)?)?;
            }
            Some((sum / n)?)
        } else {
            None
        };
        let mut side = Side {
            emb: e,
            mean: if cfg.center { mean.clone() } else { None },
            white: None,
            anchors: Tensor::zeros((1, hidden), DType::F32, &dev)?,
            rows: rows_n,
        };
        if cfg.whiten {
            // Covariance of the centred candidate rows, accumulated in f64 on the host
            // from per-chunk products on the device.
            let m = mean.as_ref().expect("mean computed when whitening");
            let mut cov = vec![0.0f64; hidden * hidden];
            for c in candidates.chunks(chunk) {
                let x = rows(&side.emb, c)?.broadcast_sub(m)?;
                let p = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
                for (acc, v) in cov.iter_mut().zip(p) {
                    *acc += v as f64;
                }
            }
            cov.iter_mut().for_each(|v| *v /= n);
            times.covariance += lap(&mut t);
            let w: Vec<f32> = whitening(&cov, hidden)?
                .into_iter()
                .map(|v| v as f32)
                .collect();
            side.white = Some(Tensor::from_vec(w, (hidden, hidden), &dev)?);
            times.whiten += lap(&mut t);
        } else {
            times.covariance += lap(&mut t);
        }
        side.anchors = side.prep(anchor_ids)?;
        times.cross += lap(&mut t);
        Ok(side)
    }

    /// A side that only projects (its preprocessing is folded into a prepared
    /// [`Projector`]).
    fn plain(e: &Tensor) -> Result<Side, AlignError> {
        let (rows, hidden) = e.dims2()?;
        let e = e.to_dtype(DType::F32)?;
        let dev = e.device().clone();
        Ok(Side {
            emb: e,
            mean: None,
            white: None,
            anchors: Tensor::zeros((1, hidden), DType::F32, &dev)?,
            rows,
        })
    }

    /// Preprocessed rows of `ids`: centred, whitened, unit length. Relrep features of
    /// a token are the dot products of its row with the anchors' rows (cosines).
    fn prep(&self, ids: &[u32]) -> Result<Tensor, AlignError> {
        let mut x = rows(&self.emb, ids)?;
        if let Some(m) = &self.mean {
            x = x.broadcast_sub(m)?;
        }
        if let Some(w) = &self.white {
            x = x.matmul(w)?;
        }
        normalize_rows(&x)
    }

    /// The preprocessing followed by `proj` (from [`sv_projections`]) as one affine map.
    /// [`Side::prep`]'s unit-length step is dropped: a positive factor per row
    /// disappears in the final normalisation, and one `hidden × r` product per row
    /// instead of two halves the cost of projecting a 262k-row vocabulary.
    fn projector(&self, proj: &Tensor) -> Result<Projector, AlignError> {
        let mat = match &self.white {
            Some(w) => w.matmul(proj)?,
            None => proj.clone(),
        };
        let offset = match &self.mean {
            Some(m) => Some(m.matmul(&mat)?),
            None => None,
        };
        Ok(Projector { mat, offset })
    }

    /// Rows of `ids` in the shared singular basis, unit length.
    fn projected(&self, ids: &[u32], p: &Projector) -> Result<Tensor, AlignError> {
        let mut x = rows(&self.emb, ids)?.matmul(&p.mat)?;
        if let Some(o) = &p.offset {
            x = x.broadcast_sub(o)?;
        }
        normalize_rows(&x)
    }
}

/// CSLS re-ranks only each query's [`SHORTLIST`] nearest targets by plain cosine, so
/// penalties are needed only for targets that appear in some shortlist (a few thousand
/// for a few hundred lazy lookups instead of all 262k of a large vocabulary). Measured
/// on 2,000 held-out Gemma 3 → SmolLM2 queries: 64 picks the same target as CSLS over
/// all targets for every query (32: 99.95%, 8: 99.55%).
const SHORTLIST: usize = 64;

/// Indices of the `n` largest values of `row` (ties: lower index first), unordered
/// except that a single result is the argmax.
fn shortlist(row: &[f32], n: usize) -> Vec<usize> {
    let n = n.clamp(1, row.len().max(1));
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(n);
    // Position and value of the weakest entry kept so far.
    let mut weakest = (0usize, f32::NEG_INFINITY);
    for (j, &v) in row.iter().enumerate() {
        if top.len() < n {
            top.push((v, j));
            if top.len() == n {
                weakest = weakest_of(&top);
            }
        } else if v > weakest.1 {
            top[weakest.0] = (v, j);
            weakest = weakest_of(&top);
        }
    }
    top.into_iter().map(|(_, j)| j).collect()
}

/// The entry that the next larger value replaces: the smallest value, and among equal
/// values the highest index, so that ties keep lower indices.
fn weakest_of(top: &[(f32, usize)]) -> (usize, f32) {
    let mut w = 0;
    for (i, &(v, j)) in top.iter().enumerate() {
        let (wv, wj) = top[w];
        if v < wv || (v == wv && j > wj) {
            w = i;
        }
    }
    (w, top[w].0)
}

/// Mean of the `k` largest values of each row of a row-major `[rows, cols]` block.
fn top_k_means(data: &[f32], cols: usize, k: usize) -> Vec<f32> {
    let k = k.clamp(1, cols.max(1));
    data.chunks(cols.max(1))
        .map(|row| {
            let mut r = row.to_vec();
            r.select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x));
            r[..k].iter().sum::<f32>() / k as f32
        })
        .collect()
}

/// Wall time of each stage of [`RelRep::new`], for benchmarks and diagnostics. The
/// stages run where the embeddings live; on an asynchronous device a stage's time can
/// include work queued by the one before (the host-side decompositions synchronise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetupTimes {
    /// Anchor selection and the candidate lists.
    pub select: Duration,
    /// Both sides' candidate means and covariances (`candidates × hidden²` products).
    pub covariance: Duration,
    /// Both sides' whitening matrices from their covariances (Cholesky, `hidden³`).
    pub whiten: Duration,
    /// The anchors' preprocessed rows and their cross-similarity `A_Aᵀ A_B`.
    pub cross: Duration,
    /// The cross-similarity's smaller Gram matrix, and the other side's singular
    /// vectors from the decomposition.
    pub gram: Duration,
    /// The Gram matrix's symmetric eigen-decomposition (`min hidden³`).
    pub eigen: Duration,
    /// The per-side affine maps, B's projected targets and the CSLS sample.
    pub project: Duration,
}

impl SetupTimes {
    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.select
            + self.covariance
            + self.whiten
            + self.cross
            + self.gram
            + self.eigen
            + self.project
    }
}

/// Time since `*t`, restarting the clock.
fn lap(t: &mut Instant) -> Duration {
    let now = Instant::now();
    let d = now - *t;
    *t = now;
    d
}

/// What every lookup compares against: made once, from B's whole table.
struct Targets {
    /// B targets' projected unit rows, transposed: `[r, targets]`.
    tb: Tensor,
    /// CSLS: A's evenly spaced sample, projected `[sample, r]`, and `k`.
    csls: Option<(Tensor, usize)>,
}

/// What making [`Targets`] needs beyond the alignment itself.
struct TargetSource {
    b: Side,
    /// Rows per projection chunk.
    chunk: usize,
    /// A's evenly spaced CSLS sample and `k` (none without CSLS).
    sample: Option<(Vec<u32>, usize)>,
}

/// A relrep alignment A → B over two embedding matrices, for full maps and for lazy,
/// memoised per-candidate lookups.
pub struct RelRep {
    a: Side,
    /// A's rows to the shared singular basis.
    proj_a: Projector,
    /// B's rows to it (kept for [`RelRep::prepared`]).
    proj_b: Projector,
    b_ids: Vec<u32>,
    /// B's projected targets and the CSLS sample, made on first need.
    targets: OnceLock<Targets>,
    /// What making them takes; dropped once they are made (it holds B's table).
    target_source: Mutex<Option<TargetSource>>,
    /// Time spent making them.
    target_time: Mutex<Duration>,
    /// CSLS penalty per B target (mean of its `k` highest cosines with A's sample),
    /// computed on first need; NaN = not yet.
    penalty: Mutex<Vec<f32>>,
    anchors: Vec<(u32, u32)>,
    a_ok: Vec<bool>,
    eos_a_target: Option<u32>,
    a_eos: Vec<u32>,
    b_len: usize,
    block_elems: usize,
    memo: Mutex<HashMap<u32, Option<(u32, f32)>>>,
    times: SetupTimes,
}

impl RelRep {
    /// Prepares the alignment. `ea` and `eb` are embedding matrices `[rows, hidden]`
    /// (row i = token i; rows may be fewer or more than the vocabulary's ids) on one
    /// device.
    pub fn new(
        a: &Vocab,
        ea: &Tensor,
        b: &Vocab,
        eb: &Tensor,
        cfg: &RelRepConfig,
    ) -> Result<RelRep, AlignError> {
        RelRep::build(a, ea, b, eb, cfg, None)
    }

    /// [`RelRep::new`] from what an earlier `new` over the same vocabularies, tables
    /// and configuration prepared ([`RelRep::prepared`]): the same alignment, without
    /// the set-up's decompositions.
    pub fn from_prepared(
        a: &Vocab,
        ea: &Tensor,
        b: &Vocab,
        eb: &Tensor,
        cfg: &RelRepConfig,
        prepared: &Prepared,
    ) -> Result<RelRep, AlignError> {
        RelRep::build(a, ea, b, eb, cfg, Some(prepared))
    }

    /// What [`RelRep::from_prepared`] needs to make this alignment again.
    pub fn prepared(&self) -> Result<Prepared, AlignError> {
        let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        let mut mapped: Vec<(u32, u32, f32)> = memo
            .iter()
            .filter_map(|(&a, hit)| hit.map(|(b, cos)| (a, b, cos)))
            .collect();
        mapped.sort_unstable_by_key(|m| m.0);
        Ok(Prepared {
            a: self.proj_a.parts()?,
            b: self.proj_b.parts()?,
            mapped,
        })
    }

    fn build(
        a: &Vocab,
        ea: &Tensor,
        b: &Vocab,
        eb: &Tensor,
        cfg: &RelRepConfig,
        prepared: Option<&Prepared>,
    ) -> Result<RelRep, AlignError> {
        check_same_device(ea.device().location(), eb.device().location())?;
        let mut times = SetupTimes::default();
        let mut t = Instant::now();
        let shape_of = |e: &Tensor, who: &str| -> Result<usize, AlignError> {
            match e.dims() {
                [r, h] if *r > 0 && *h > 0 => Ok(*r),
                d => Err(AlignError::BadEmbeddings(format!(
                    "{who}: expected [rows, hidden], got {d:?}"
                ))),
            }
        };
        let rows_a = shape_of(ea, "A")?;
        let rows_b = shape_of(eb, "B")?;
        const MIN_ANCHORS: usize = 16;
        let anchors = select_anchors(a, b, rows_a, rows_b, cfg.anchors);
        if anchors.len() < MIN_ANCHORS.min(cfg.anchors.max(1)) {
            return Err(AlignError::TooFewAnchors {
                found: anchors.len(),
                needed: MIN_ANCHORS.min(cfg.anchors.max(1)),
            });
        }
        let a_cands: Vec<u32> = a
            .candidates()
            .filter(|&i| (i as usize) < rows_a && !a.is_eos(i))
            .collect();
        let b_cands: Vec<u32> = b
            .candidates()
            .filter(|&i| (i as usize) < rows_b && !b.is_eos(i))
            .collect();
        let b_ids: Vec<u32> = b
            .canonical_surfaces()
            .into_iter()
            .map(|(i, _)| i)
            .filter(|&i| (i as usize) < rows_b)
            .collect();
        if a_cands.is_empty() || b_ids.is_empty() {
            return Err(AlignError::BadEmbeddings(
                "no candidate token has an embedding row".into(),
            ));
        }
        let anchor_a: Vec<u32> = anchors.iter().map(|p| p.0).collect();
        let anchor_b: Vec<u32> = anchors.iter().map(|p| p.1).collect();
        times.select = lap(&mut t);
        let (side_a, side_b, proj_a, proj_b) = match prepared {
            Some(p) => {
                let (side_a, side_b) = (Side::plain(ea)?, Side::plain(eb)?);
                for (parts, e, who) in [(&p.a, ea, "A"), (&p.b, eb, "B")] {
                    let (_, hidden) = e.dims2()?;
                    if parts.rows != hidden || parts.cols != p.a.cols {
                        return Err(AlignError::BadEmbeddings(format!(
                            "{who}: a prepared projection of {} × {} for hidden size {hidden}",
                            parts.rows, parts.cols
                        )));
                    }
                }
                let dev = ea.device();
                let proj_a = Projector::from_parts(&p.a, dev)?;
                let proj_b = Projector::from_parts(&p.b, dev)?;
                t = Instant::now();
                (side_a, side_b, proj_a, proj_b)
            }
            None => {
                let side_a = Side::new(ea, &a_cands, &anchor_a, cfg, &mut times)?;
                let side_b = Side::new(eb, &b_cands, &anchor_b, cfg, &mut times)?;
                t = Instant::now();
                let cross = side_a.anchors.t()?.matmul(&side_b.anchors)?;
                times.cross += lap(&mut t);
                let (proj_a, proj_b) = sv_projections(&cross, cfg.sv_power, &mut times)?;
                t = Instant::now();
                let proj_a = side_a.projector(&proj_a)?;
                let proj_b = side_b.projector(&proj_b)?;
                (side_a, side_b, proj_a, proj_b)
            }
        };
        let (_, hidden_b) = eb.dims2()?;
        let chunk = (cfg.block_elems / hidden_b.max(1)).clamp(1, 1 << 16);
        let sample = (cfg.csls_k > 0 && cfg.csls_sample > 0).then(|| {
            let s = cfg.csls_sample.min(a_cands.len());
            let step = a_cands.len() as f64 / s as f64;
            let ids: Vec<u32> = (0..s)
                .map(|i| a_cands[(i as f64 * step) as usize])
                .collect();
            (ids, cfg.csls_k)
        });
        let n_t = b_ids.len();
        let mut rr = RelRep {
            a: side_a,
            proj_a,
            proj_b,
            b_ids,
            targets: OnceLock::new(),
            target_source: Mutex::new(Some(TargetSource {
                b: side_b,
                chunk,
                sample,
            })),
            target_time: Mutex::new(Duration::ZERO),
            penalty: Mutex::new(vec![f32::NAN; n_t]),
            anchors,
            a_ok: vec![false; a.len()],
            eos_a_target: eos_target(b),
            a_eos: a
                .eos_ids()
                .iter()
                .copied()
                .filter(|&e| a.is_candidate(e))
                .collect(),
            b_len: b.len(),
            block_elems: cfg.block_elems.max(1),
            memo: Mutex::new(HashMap::new()),
            times: SetupTimes::default(),
        };
        for &i in &a_cands {
            rr.a_ok[i as usize] = true;
        }
        times.project = lap(&mut t);
        rr.times = times;
        match prepared {
            // A fresh preparation makes everything now; from a cached one, the
            // candidates it mapped before need no projection, and the rest make it on
            // first need.
            None => {
                rr.made_targets()?;
            }
            Some(p) => {
                let mut memo = rr.memo.lock().unwrap_or_else(|e| e.into_inner());
                for &(a_id, b_id, cos) in &p.mapped {
                    if rr.is_mappable(a_id) && (b_id as usize) < rr.b_len {
                        memo.insert(a_id, Some((b_id, cos)));
                    }
                }
            }
        }
        Ok(rr)
    }

    /// B's projected targets and the CSLS sample, made now if they are not yet.
    fn made_targets(&self) -> Result<&Targets, AlignError> {
        if let Some(t) = self.targets.get() {
            return Ok(t);
        }
        // One maker at a time; a waiting thread then finds them made.
        let mut source = self.target_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = self.targets.get() {
            return Ok(t);
        }
        let src = source.as_ref().ok_or_else(|| {
            AlignError::BadEmbeddings("relrep targets were not made and cannot be".into())
        })?;
        let started = Instant::now();
        let mut parts = Vec::new();
        for c in self.b_ids.chunks(src.chunk) {
            parts.push(src.b.projected(c, &self.proj_b)?);
        }
        let tb = Tensor::cat(&parts, 0)?.t()?.contiguous()?;
        let csls = match &src.sample {
            Some((sample, k)) => {
                let mut parts = Vec::new();
                for c in sample.chunks(src.chunk) {
                    parts.push(self.queries(c)?);
                }
                Some((Tensor::cat(&parts, 0)?.t()?.contiguous()?, *k))
            }
            None => None,
        };
        let took = started.elapsed();
        *self.target_time.lock().unwrap_or_else(|p| p.into_inner()) += took;
        tracing::info!(
            "relrep: {} targets projected in {:.1} s for candidates not mapped before",
            self.b_ids.len(),
            took.as_secs_f64()
        );
        *source = None;
        Ok(self.targets.get_or_init(|| Targets { tb, csls }))
    }

    /// A queries `[ids, r]`: unit rows in the shared basis, so that their dot product
    /// with a B target's column of `tb` is the cosine of the two.
    fn queries(&self, ids: &[u32]) -> Result<Tensor, AlignError> {
        self.a.projected(ids, &self.proj_a)
    }

    /// The anchor pairs (A id, B id) in use.
    pub fn anchors(&self) -> &[(u32, u32)] {
        &self.anchors
    }

    /// How long each stage of [`RelRep::new`] took (`project` includes the targets'
    /// projection, whenever it ran).
    pub fn setup_times(&self) -> SetupTimes {
        let mut t = self.times.clone();
        t.project += *self.target_time.lock().unwrap_or_else(|p| p.into_inner());
        t
    }

    /// Number of B tokens that can be targets.
    pub fn targets(&self) -> usize {
        self.b_ids.len()
    }

    /// Best B target and its relative-vector cosine for A candidates `ids` (all must be
    /// mappable); the choice is by CSLS score when enabled.
    fn best(&self, ids: &[u32]) -> Result<Vec<(u32, f32)>, AlignError> {
        let n_t = self.b_ids.len();
        let Targets { tb, csls } = self.made_targets()?;
        let cos = self
            .queries(ids)?
            .matmul(tb)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let Some((sample, k)) = csls else {
            return Ok(cos
                .par_chunks(n_t)
                .map(|row| {
                    let j = shortlist(row, 1)[0];
                    (self.b_ids[j], row[j])
                })
                .collect());
        };
        let lists: Vec<Vec<usize>> = cos
            .par_chunks(n_t)
            .map(|row| shortlist(row, SHORTLIST))
            .collect();
        let mut pen = self.penalty.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing: Vec<u32> = lists
            .iter()
            .flatten()
            .filter(|&&j| pen[j].is_nan())
            .map(|&j| j as u32)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let (_, s) = sample.dims2()?;
        for block in missing.chunks((self.block_elems / s.max(1)).max(1)) {
            let idx = Tensor::from_slice(block, block.len(), tb.device())?;
            // [targets in block, sample]: one row per B target.
            let sims = tb.index_select(&idx, 1)?.t()?.matmul(sample)?;
            let data = sims.flatten_all()?.to_vec1::<f32>()?;
            for (&j, p) in block.iter().zip(top_k_means(&data, s, *k)) {
                pen[j as usize] = p;
            }
        }
        Ok(cos
            .chunks(n_t)
            .zip(&lists)
            .map(|(row, list)| {
                // CSLS: 2 cos(x, y) − r_B(y); r_A(x) is constant per query. Ties go to
                // the lower target index.
                let mut best = list[0];
                let mut best_score = f32::NEG_INFINITY;
                for &j in list {
                    let v = 2.0 * row[j] - pen[j];
                    if v > best_score || (v == best_score && j < best) {
                        best = j;
                        best_score = v;
                    }
                }
                (self.b_ids[best], row[best])
            })
            .collect())
    }

    fn rows_per_block(&self) -> usize {
        (self.block_elems / self.b_ids.len().max(1)).clamp(1, 4096)
    }

    /// Maps many A ids at once (memoised); EOS goes to B's EOS, non-candidates and
    /// tokens without an embedding row to `None`.
    pub fn lookup_many(&self, ids: &[u32]) -> Result<Vec<Option<(u32, f32)>>, AlignError> {
        let mut todo: Vec<u32> = Vec::new();
        {
            let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
            for &id in ids {
                if self.is_mappable(id) && !memo.contains_key(&id) && !todo.contains(&id) {
                    todo.push(id);
                }
            }
        }
        for chunk in todo.chunks(self.rows_per_block()) {
            let found = self.best(chunk)?;
            let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
            for (&id, f) in chunk.iter().zip(found) {
                memo.insert(id, Some(f));
            }
        }
        let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ids
            .iter()
            .map(|&id| {
                if self.a_eos.contains(&id) {
                    self.eos_a_target.map(|e| (e, 1.0))
                } else {
                    memo.get(&id).copied().flatten()
                }
            })
            .collect())
    }

    /// How many candidates are mapped (and memoised) so far.
    pub fn mapped_count(&self) -> usize {
        let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        memo.values().filter(|m| m.is_some()).count()
    }

    /// Maps one A id (memoised).
    pub fn lookup(&self, id: u32) -> Result<Option<u32>, AlignError> {
        Ok(self.lookup_many(&[id])?[0].map(|(t, _)| t))
    }

    fn is_mappable(&self, id: u32) -> bool {
        self.a_ok.get(id as usize).copied().unwrap_or(false) && (id as usize) < self.a.rows
    }

    /// The full map over all A candidates, block by block; `progress` receives
    /// increments over A candidates.
    pub fn full_map(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<TokenMap, AlignError> {
        let n = self.a_ok.len();
        let mut targets = vec![NONE; n];
        let mut scores = vec![0.0f32; n];
        let ids: Vec<u32> = (0..n as u32).filter(|&i| self.is_mappable(i)).collect();
        for chunk in ids.chunks(self.rows_per_block()) {
            for (&id, (t, s)) in chunk.iter().zip(self.best(chunk)?) {
                targets[id as usize] = t;
                scores[id as usize] = s;
            }
            progress(chunk.len() as u64);
        }
        if let Some(e) = self.eos_a_target {
            for &id in &self.a_eos {
                targets[id as usize] = e;
                scores[id as usize] = 1.0;
            }
        }
        Ok(TokenMap::from_parts(
            AlignMethod::RelRep,
            self.b_len,
            targets,
            scores,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::tests::vocab_from;
    use candle_core::Device;

    /// Pseudo-random normal-ish matrix from a seed.
    fn noise(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..rows * cols)
            .map(|_| {
                let mut acc = 0.0f32;
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    acc += (s % 10_000) as f32 / 10_000.0 - 0.5;
                }
                acc
            })
            .collect()
    }

    /// Householder reflection I - 2vvᵀ/|v|² of dimension `n`.
    fn householder(n: usize, seed: u64, dev: &Device) -> Tensor {
        let v = noise(1, n, seed);
        let norm2: f32 = v.iter().map(|x| x * x).sum();
        let mut m = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = f32::from(i == j) - 2.0 * v[i] * v[j] / norm2;
            }
        }
        Tensor::from_vec(m, (n, n), dev).unwrap()
    }

    /// Two "models" whose embeddings are the same latent vectors under different
    /// rotations, scales, offsets and widths: relrep must recover the identity on
    /// shared tokens that are not anchors.
    #[test]
    fn recovers_identity_across_rotated_spaces() {
        let pieces: Vec<String> = (0..120).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let a = vocab_from(&refs, &[]);
        // B lists the same surfaces in reverse order plus extra tokens.
        let mut pb: Vec<String> = pieces.iter().rev().cloned().collect();
        pb.extend((0..30).map(|i| format!("x{i}")));
        let b = vocab_from(&pb.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        let dev = Device::Cpu;
        let latent = Tensor::from_vec(noise(150, 24, 7), (150, 24), &dev).unwrap();
        let offset_a = Tensor::from_vec(noise(1, 24, 3), (1, 24), &dev).unwrap();
        let ea = latent
            .narrow(0, 0, 120)
            .unwrap()
            .broadcast_add(&offset_a)
            .unwrap();
        // Row order of B: token i of B = surface t(119 - i) for i < 120.
        let order: Vec<u32> = (0..120).rev().chain(120..150).collect();
        let rot = householder(24, 11, &dev)
            .matmul(&householder(24, 13, &dev))
            .unwrap();
        let eb = (rows(&latent, &order).unwrap().matmul(&rot).unwrap() * 3.0)
            .unwrap()
            .pad_with_zeros(1, 0, 8)
            .unwrap();
        let cfg = RelRepConfig {
            anchors: 40,
            ..RelRepConfig::default()
        };
        let rr = RelRep::new(&a, &ea, &b, &eb, &cfg).unwrap();
        assert_eq!(rr.anchors().len(), 40);
        let times = rr.setup_times();
        assert!(times.whiten > Duration::ZERO && times.eigen > Duration::ZERO);
        assert!(times.total() >= times.covariance + times.project);
        let map = rr.full_map(&|_| {}).unwrap();
        let anchor_a: Vec<u32> = rr.anchors().iter().map(|p| p.0).collect();
        let mut right = 0;
        let mut total = 0;
        for id in 0..120u32 {
            if anchor_a.contains(&id) {
                continue;
            }
            total += 1;
            if map.map(id) == Some(119 - id) {
                right += 1;
            }
        }
        assert!(right * 100 >= total * 95, "{right}/{total}");
        // Lazy lookups agree with the full map and are memoised.
        for id in [0u32, 5, 77, 119] {
            assert_eq!(rr.lookup(id).unwrap(), map.map(id));
        }
        assert_eq!(rr.memo.lock().unwrap().len(), 4);
        assert_eq!(rr.lookup(10_000).unwrap(), None);

        // The same alignment again from its preparation: the same map, bit for bit,
        // without the decompositions.
        let prepared = rr.prepared().unwrap();
        assert_eq!(
            prepared.mapped.len(),
            4,
            "the memoised candidates travel with it"
        );
        let again = RelRep::from_prepared(&a, &ea, &b, &eb, &cfg, &prepared).unwrap();
        assert_eq!(again.setup_times().eigen, Duration::ZERO);
        assert_eq!(again.anchors(), rr.anchors());
        // The candidates mapped before answer without projecting B's vocabulary.
        for id in [0u32, 5, 77, 119] {
            assert_eq!(again.lookup(id).unwrap(), map.map(id));
        }
        assert!(
            again.targets.get().is_none(),
            "no projection for known candidates"
        );
        assert_eq!(again.lookup(6).unwrap(), map.map(6));
        assert!(
            again.targets.get().is_some(),
            "a new candidate makes the targets"
        );
        assert_eq!(again.full_map(&|_| {}).unwrap(), map);
        // A preparation for other embeddings is refused.
        let narrow = ea.narrow(1, 0, 20).unwrap();
        assert!(RelRep::from_prepared(&a, &narrow, &b, &eb, &cfg, &prepared).is_err());
    }

    /// `a · b` for row-major `n × n` matrices.
    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0f64; n * n];
        for i in 0..n {
            for k in 0..n {
                let x = a[i * n + k];
                for j in 0..n {
                    c[i * n + j] += x * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|k| a[(k % n) * n + k / n]).collect()
    }

    /// Largest entry of `|a − b|`.
    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn identity(n: usize) -> Vec<f64> {
        (0..n * n).map(|k| f64::from(k / n == k % n)).collect()
    }

    /// `Rᵀ R / m` for a pseudo-random `m × n` `R` whose column `zero` (if any) is all
    /// zeros, like an embedding dimension that no token uses: symmetric positive
    /// semi-definite, singular when a column is zero or `m < n`.
    fn wishart(n: usize, m: usize, seed: u64, zero: Option<usize>) -> Vec<f64> {
        let mut r: Vec<f64> = noise(m, n, seed).into_iter().map(f64::from).collect();
        if let Some(z) = zero {
            (0..m).for_each(|k| r[k * n + z] = 0.0);
        }
        let rt: Vec<f64> = (0..n * m).map(|k| r[(k % m) * n + k / m]).collect();
        let mut c = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                c[i * n + j] = (0..m).map(|k| rt[i * m + k] * r[k * n + j]).sum::<f64>() / m as f64;
            }
        }
        c
    }

    /// A random orthogonal `n × n` matrix (row-major): a product of reflections.
    fn orthogonal(n: usize, seed: u64) -> Vec<f64> {
        let mut q = identity(n);
        for s in 0..3 {
            let v: Vec<f64> = noise(1, n, seed + s).into_iter().map(f64::from).collect();
            let norm2: f64 = v.iter().map(|x| x * x).sum();
            let h: Vec<f64> = (0..n * n)
                .map(|k| f64::from(k / n == k % n) - 2.0 * v[k / n] * v[k % n] / norm2)
                .collect();
            q = matmul(&q, &h, n);
        }
        q
    }

    /// `Wᵀ (C + ρ·I) W` for the ridge of [`whitening`].
    fn whitened_covariance(c: &[f64], w: &[f64], n: usize) -> Vec<f64> {
        let max_diag = (0..n).map(|i| c[i * n + i]).fold(0.0f64, f64::max);
        let ridge = WHITEN_RIDGE * max_diag;
        let mut reg = c.to_vec();
        (0..n).for_each(|i| reg[i * n + i] += ridge);
        matmul(&transpose(w, n), &matmul(&reg, w, n), n)
    }

    #[test]
    fn whitening_maps_a_covariance_to_the_identity() {
        let n = 48;
        let c = wishart(n, 3 * n, 31, None);
        let w = whitening(&c, n).unwrap();
        let d = max_diff(&whitened_covariance(&c, &w, n), &identity(n));
        assert!(d < 1e-9, "{d}");
        // W = L⁻ᵀ is upper triangular: the Cholesky route, not the fallback.
        assert!((0..n).all(|i| (0..i).all(|j| w[i * n + j] == 0.0)));

        // A dimension that no row uses: the ridge keeps the factorisation defined.
        let c = wishart(n, 3 * n, 37, Some(5));
        let w = whitening(&c, n).unwrap();
        let d = max_diff(&whitened_covariance(&c, &w, n), &identity(n));
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn whitening_of_a_slightly_indefinite_matrix_clamps_its_eigenvalues() {
        // C = Q Λ Qᵀ with one eigenvalue below −ridge, as rounding can leave a
        // rank-deficient covariance: Cholesky fails, and the eigen route whitens
        // C⁺ = Q max(Λ, 0) Qᵀ.
        let n = 24;
        let q = orthogonal(n, 41);
        let lambda: Vec<f64> = (0..n)
            .map(|i| if i == 3 { -1e-3 } else { 0.5 + i as f64 })
            .collect();
        let scaled = |l: &dyn Fn(f64) -> f64| -> Vec<f64> {
            let ql: Vec<f64> = (0..n * n).map(|k| q[k] * l(lambda[k % n])).collect();
            matmul(&ql, &transpose(&q, n), n)
        };
        let c = scaled(&|l| l);
        let c_plus = scaled(&|l| l.max(0.0));
        let w = whitening(&c, n).unwrap();
        assert!(w.iter().all(|v| v.is_finite()));
        assert!(
            (0..n).any(|i| (0..i).any(|j| w[i * n + j] != 0.0)),
            "not the triangular Cholesky route"
        );
        let d = max_diff(&whitened_covariance(&c_plus, &w, n), &identity(n));
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn eigen_reconstructs_symmetric_matrices() {
        let n = 40;
        // Symmetric with negative and repeated eigenvalues as well as positive ones.
        let r: Vec<f64> = noise(n, n, 21).into_iter().map(f64::from).collect();
        let mut s: Vec<f64> = (0..n * n).map(|k| r[k] + r[(k % n) * n + k / n]).collect();
        for i in 0..n {
            s[i * n + i] += if i % 7 == 0 { 9.0 } else { 0.0 };
        }
        let (values, vt) = sym_eigen(&s, n).unwrap();
        assert!(values.windows(2).all(|p| p[0] <= p[1]), "ascending");
        assert!(values[0] < 0.0 && values[n - 1] > 0.0);
        // V Λ Vᵀ = S and Vᵀ V = I (rows of vt are the eigenvectors).
        let v = transpose(&vt, n);
        let vl: Vec<f64> = (0..n * n).map(|k| v[k] * values[k % n]).collect();
        let d = max_diff(&matmul(&vl, &vt, n), &s);
        assert!(d < 1e-10, "reconstruction {d}");
        let d = max_diff(&matmul(&vt, &v, n), &identity(n));
        assert!(d < 1e-12, "orthonormality {d}");
        // A diagonal matrix: its entries, sorted, and unit vectors.
        let diag: Vec<f64> = (0..9)
            .map(|k| {
                if k % 4 == 0 {
                    [3.0, -1.0, 2.0][k / 4]
                } else {
                    0.0
                }
            })
            .collect();
        let (values, _) = sym_eigen(&diag, 3).unwrap();
        assert_eq!(values, vec![-1.0, 2.0, 3.0]);
    }

    #[test]
    fn decompositions_reject_bad_input() {
        let mut c = wishart(6, 12, 3, None);
        c[7] = f64::NAN;
        for err in [whitening(&c, 6).unwrap_err(), sym_eigen(&c, 6).unwrap_err()] {
            assert!(matches!(err, AlignError::BadEmbeddings(_)), "{err}");
            assert!(err.to_string().contains("NaN"), "{err}");
        }
        let err = sym_eigen(&[1.0, 0.0, 0.0], 2).unwrap_err();
        assert!(err.to_string().contains("needs 4 entries, got 3"), "{err}");
        assert!(whitening(&[1.0; 5], 2).is_err());
    }

    #[test]
    fn shortlist_keeps_the_largest_values_and_lower_indices_on_ties() {
        let row = [0.5f32, 0.9, 0.1, 0.9, 0.7, 0.5, 0.3];
        let mut top = shortlist(&row, 3);
        top.sort_unstable();
        assert_eq!(top, vec![1, 3, 4]);
        let mut top = shortlist(&row, 4);
        top.sort_unstable();
        assert_eq!(top, vec![0, 1, 3, 4]);
        assert_eq!(shortlist(&row, 1), vec![1]);
        assert_eq!(shortlist(&row, 100).len(), row.len());
    }

    #[test]
    fn device_mismatch_is_reported() {
        let err =
            check_same_device(DeviceLocation::Cpu, DeviceLocation::Cuda { gpu_id: 0 }).unwrap_err();
        assert!(matches!(err, AlignError::DeviceMismatch { .. }));
        assert!(err.to_string().contains("same device"));
        assert!(check_same_device(DeviceLocation::Cpu, DeviceLocation::Cpu).is_ok());
    }

    #[test]
    fn too_few_anchors_and_bad_shapes() {
        let a = vocab_from(&["a", "b"], &[]);
        let b = vocab_from(&["c", "d"], &[]);
        let e = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let err = RelRep::new(&a, &e, &b, &e, &RelRepConfig::default())
            .err()
            .unwrap();
        assert!(
            matches!(err, AlignError::TooFewAnchors { found: 0, .. }),
            "{err}"
        );
        let flat = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
        let err = RelRep::new(&a, &flat, &b, &e, &RelRepConfig::default())
            .err()
            .unwrap();
        assert!(matches!(err, AlignError::BadEmbeddings(_)), "{err}");
    }
}
