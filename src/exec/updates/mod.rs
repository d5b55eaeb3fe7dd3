//! Fine-tuning updates in a run: `base_svd` nodes (a base model's top singular vectors of the
//! weights one module pattern matches, once per base revision and pattern) and
//! `update_geometry` nodes (one adapter's updates ΔW = s·B·A of those weights: their spectra by
//! the low-rank route, and their alignment with the base's singular subspaces). Formulas:
//! `docs/analysis.md`; files: `docs/ledger.md`.
//!
//! A base's SVD computed by this run is kept in memory for the adapters that follow; one an
//! earlier run recorded is read back from the output repo. An update that fails (an adapter
//! with NaNs, one made for another base) fails its node alone: the others go on, and the
//! base model's ledger commit waits for a run that records them all.

pub mod pin;

use std::path::PathBuf;
use std::sync::Arc;

use rayon::prelude::*;

pub use pin::{PinnedAdapter, pin_adapters, with_adapter_base};

use super::weights::{MatrixPart, checkpoint_index, matrix_keys, matrix_parts, read_tensor};
use super::{PinnedModel, RunError};
use crate::analysis::{
    AnalysisError, Parallelism, SubspaceChoice, TruncatedSvd, WeightMatrix, match_weight_modules,
    update_geometry,
};
use crate::hub::client::error_chain;
use crate::ledger::updates::{BaseMatrix, BaseSvdMetrics, UpdateMatrix, UpdateNodeMetrics};
use crate::model::adapter::LoraAdapter;
use crate::model::weights::Weights;

mod run;
pub(super) use run::run_update_nodes;

/// Metadata key of a `base_svd` node's safetensors file.
pub const BASE_SVD_FORMAT: &str = "hubsweep.base_svd";
/// Metadata key of an `update_geometry` node's safetensors file.
pub const UPDATE_FORMAT: &str = "hubsweep.update_geometry";
/// Eigenvalues kept in each matrix's metrics (`top_eigenvalues`), as for weight spectra.
pub const TOP_K: usize = super::weights::WEIGHT_TOP_K;

pub use crate::ledger::updates::{BaseSvds, read_svds};

/// The inputs of one `base_svd` node.
#[derive(Debug, Clone)]
pub struct BaseSvdJob {
    /// The node's label, for errors.
    pub label: String,
    /// The base model.
    pub model: PinnedModel,
    /// Module pattern.
    pub module: String,
    /// Singular vector pairs kept.
    pub keep: usize,
}

/// The inputs of one `update_geometry` node.
#[derive(Debug, Clone)]
pub struct UpdateJob {
    /// The node's label, for errors.
    pub label: String,
    /// The folder holding the adapter's two files.
    pub adapter_dir: PathBuf,
    /// The base model.
    pub base: PinnedModel,
    /// Module pattern.
    pub module: String,
    /// Subspace sizes.
    pub k: Vec<SubspaceChoice>,
    /// What the node's metrics say of the adapter (its matrices are filled in).
    pub header: UpdateNodeMetrics,
}

/// Computes a `base_svd` node: its metrics, its SVDs, and its file's bytes. Matrices are read
/// and decomposed in parallel, one per rayon thread.
pub fn compute_base_svd(job: &BaseSvdJob) -> Result<(BaseSvdMetrics, BaseSvds, Vec<u8>), RunError> {
    let analysis = |source| RunError::Analysis {
        label: job.label.clone(),
        source,
    };
    let config = &job.model.config;
    let index = checkpoint_index(&job.model.files.weights)?;
    let matches = match match_weight_modules(matrix_keys(&index), std::slice::from_ref(&job.module))
    {
        Ok(matches) => matches,
        Err(AnalysisError::UnmatchedModules { .. }) => Vec::new(),
        Err(e) => return Err(analysis(e)),
    };
    let decomposed: Vec<Vec<(BaseMatrix, TruncatedSvd)>> = matches
        .par_iter()
        .map(|found| {
            let entry = &index[&found.key];
            let (rows, cols) = (entry.shape[0], entry.shape[1]);
            let weight = read_tensor(&found.key, entry)?;
            let (cols, parts) =
                matrix_parts(config, &found.module, weight, rows, cols).map_err(analysis)?;
            parts
                .into_iter()
                .map(|(part, data, rows): MatrixPart| {
                    let matrix = WeightMatrix::new(&data, rows, cols).map_err(analysis)?;
                    let svd = TruncatedSvd::of_weight(matrix, job.keep, Parallelism::Sequential)
                        .map_err(|source| RunError::Analysis {
                            label: format!("{}, `{}`", job.label, found.key),
                            source,
                        })?;
                    let tensor = tensor_name(&found.key, part);
                    let result = BaseMatrix {
                        key: found.key.clone(),
                        layer: found.layer,
                        module: found.module.clone(),
                        part: part.map(str::to_owned),
                        rows,
                        cols,
                        kept: svd.kept(),
                        tensor,
                        metrics: svd.metrics(TOP_K),
                    };
                    Ok((result, svd))
                })
                .collect()
        })
        .collect::<Result<_, RunError>>()?;
    let mut metrics = BaseSvdMetrics {
        keep: job.keep,
        matrices: Vec::new(),
    };
    let mut svds = BaseSvds::new();
    for (matrix, svd) in decomposed.into_iter().flatten() {
        svds.insert(matrix.tensor.clone(), svd);
        metrics.matrices.push(matrix);
    }
    let stored: Vec<(&str, &TruncatedSvd, usize)> = metrics
        .matrices
        .iter()
        .map(|m| (m.tensor.as_str(), &svds[&m.tensor], m.kept))
        .collect();
    let header = serde_json::json!({ "version": 1, "keep": job.keep });
    let bytes =
        serialize(&stored, BASE_SVD_FORMAT, &header).map_err(|reason| RunError::Capture {
            label: job.label.clone(),
            reason,
        })?;
    Ok((metrics, svds, bytes))
}

/// Computes an `update_geometry` node against its base's SVDs: its metrics and its file's
/// bytes (each update's singular values and its top singular vectors, as many as its largest
/// usable `k`).
pub fn compute_update(
    job: &UpdateJob,
    base: &BaseSvds,
) -> Result<(UpdateNodeMetrics, Vec<u8>), RunError> {
    let failed = |reason: String| RunError::Capture {
        label: job.label.clone(),
        reason,
    };
    let adapter = LoraAdapter::open(&job.adapter_dir).map_err(|e| failed(error_chain(&e)))?;
    let weights = Weights::read(
        &job.base.files.weights,
        &candle_core::Device::Cpu,
        candle_core::DType::F64,
    )
    .map_err(|e| failed(error_chain(&e)))?;
    let updates = adapter
        .updates(&job.base.config, &weights)
        .map_err(|e| failed(error_chain(&e)))?;
    let keys: Vec<&str> = updates.iter().map(|u| u.base_key.as_str()).collect();
    let selected: std::collections::BTreeSet<String> =
        match match_weight_modules(keys, std::slice::from_ref(&job.module)) {
            Ok(matches) => matches.into_iter().map(|m| m.key).collect(),
            Err(AnalysisError::UnmatchedModules { .. }) => Default::default(),
            Err(source) => {
                return Err(RunError::Analysis {
                    label: job.label.clone(),
                    source,
                });
            }
        };
    let results: Vec<(UpdateMatrix, TruncatedSvd, usize)> = updates
        .par_iter()
        .filter(|u| selected.contains(&u.base_key))
        .map(|u| {
            let tensor = tensor_name(&u.base_key, u.part);
            let analysis = |source| RunError::Analysis {
                label: format!("{}, `{tensor}`", job.label),
                source,
            };
            let base_svd = base.get(&tensor).ok_or_else(|| {
                failed(format!(
                    "the base's SVD has no `{tensor}` (a base_svd node of another pattern?)"
                ))
            })?;
            let svd =
                TruncatedSvd::of_low_rank(&u.update, Parallelism::Sequential).map_err(analysis)?;
            let geometry = update_geometry(base_svd, &svd, &job.k).map_err(analysis)?;
            let stored = geometry.alignments.iter().map(|a| a.k).max().unwrap_or(0);
            let matrix = UpdateMatrix {
                key: u.base_key.clone(),
                layer: u.layer,
                module: u.module.clone(),
                part: u.part.map(str::to_owned),
                rows: u.update.d_out(),
                cols: u.update.d_in(),
                rank: u.update.rank(),
                scale: u.update.scale(),
                tensor,
                metrics: svd.metrics(TOP_K),
                geometry,
            };
            Ok((matrix, svd, stored))
        })
        .collect::<Result<_, RunError>>()?;
    let mut metrics = job.header.clone();
    let stored: Vec<(&str, &TruncatedSvd, usize)> = results
        .iter()
        .map(|(m, svd, kept)| (m.tensor.as_str(), svd, *kept))
        .collect();
    let header = serde_json::json!({ "version": 1, "k": job.k });
    let bytes = serialize(&stored, UPDATE_FORMAT, &header).map_err(failed)?;
    metrics.matrices = results.into_iter().map(|(m, _, _)| m).collect();
    Ok((metrics, bytes))
}

/// `{key}` for a whole matrix, `{key}.{part}` for a part of a fused one.
fn tensor_name(key: &str, part: Option<&str>) -> String {
    match part {
        Some(part) => format!("{key}.{part}"),
        None => key.to_owned(),
    }
}

/// A node's file: per matrix, `{tensor}.sigma` (every singular value), `{tensor}.u`
/// (`[kept, rows]`: one left singular vector per row) and `{tensor}.v` (`[kept, cols]`), all
/// F64, and one metadata key (deterministic bytes).
fn serialize(
    matrices: &[(&str, &TruncatedSvd, usize)],
    format: &str,
    header: &serde_json::Value,
) -> Result<Vec<u8>, String> {
    use safetensors::{Dtype, tensor::TensorView};
    let le = |values: &[f64]| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let mut raw: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (tensor, svd, kept) in matrices {
        let kept = (*kept).min(svd.kept());
        raw.push((
            format!("{tensor}.sigma"),
            le(&svd.singular_values),
            vec![svd.singular_values.len()],
        ));
        raw.push((
            format!("{tensor}.u"),
            le(&svd.left.values()[..kept * svd.rows]),
            vec![kept, svd.rows],
        ));
        raw.push((
            format!("{tensor}.v"),
            le(&svd.right.values()[..kept * svd.cols]),
            vec![kept, svd.cols],
        ));
    }
    let views = raw
        .iter()
        .map(|(name, bytes, shape)| {
            TensorView::new(Dtype::F64, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = std::collections::HashMap::from([(format.to_owned(), header.to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// The SVDs of a base, shared between the nodes of one run.
pub type SharedBaseSvds = Arc<BaseSvds>;
