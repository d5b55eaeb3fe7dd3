//! What `base_svd` and `update_geometry` nodes record, and the two metrics tables made of them:
//! `metrics/updates.jsonl` (one row per adapter checkpoint, matrix and subspace size) and
//! `metrics/updates_summary.jsonl` (per adapter checkpoint, module, part and size: mean, min and
//! max over layers). Schema: `docs/metrics.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analysis::{SpectrumMetrics, TruncatedSvd, UpdateGeometry};

/// Path of the update-geometry table.
pub const UPDATES_PATH: &str = "metrics/updates.jsonl";
/// Path of its per-layer aggregates.
pub const UPDATES_SUMMARY_PATH: &str = "metrics/updates_summary.jsonl";

/// One base matrix inside a `base_svd` node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseMatrix {
    /// Checkpoint key.
    pub key: String,
    /// Layer, for keys inside the blocks.
    pub layer: Option<usize>,
    /// Module path.
    pub module: String,
    /// `query`, `key` or `value` for a part of a fused QKV weight.
    pub part: Option<String>,
    /// Rows (`d_out`).
    pub rows: usize,
    /// Columns (`d_in`).
    pub cols: usize,
    /// Singular vector pairs stored.
    pub kept: usize,
    /// Tensor-name prefix in the node's file (`{tensor}.sigma`, `.u`, `.v`).
    pub tensor: String,
    /// Spectrum metrics of the base weight.
    pub metrics: SpectrumMetrics,
}

/// What a `base_svd` node records (`metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSvdMetrics {
    /// Singular vector pairs asked for.
    pub keep: usize,
    /// One entry per matrix, by layer then module.
    pub matrices: Vec<BaseMatrix>,
}

/// One update inside an `update_geometry` node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateMatrix {
    /// The base checkpoint's key of the weight it updates.
    pub key: String,
    /// Layer.
    pub layer: Option<usize>,
    /// Module path.
    pub module: String,
    /// `query`, `key` or `value` for a part of a fused QKV update.
    pub part: Option<String>,
    /// `d_out`.
    pub rows: usize,
    /// `d_in`.
    pub cols: usize,
    /// LoRA rank `r` of the module.
    pub rank: usize,
    /// Scale `α/r` (or `α/√r`).
    pub scale: f64,
    /// Tensor-name prefix in the node's file.
    pub tensor: String,
    /// Spectrum metrics of ΔW.
    pub metrics: SpectrumMetrics,
    /// Geometry against the base weight.
    pub geometry: UpdateGeometry,
}

/// What an `update_geometry` node records (`metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateNodeMetrics {
    /// Adapter repo as in the spec.
    pub adapter: String,
    /// Adapter revision.
    pub revision: String,
    /// Folder in the adapter's repo.
    pub subfolder: Option<String>,
    /// Training step (from `checkpoint-N` / `stepN`, else the adapter's position).
    pub step: u64,
    /// One entry per update, by layer then module.
    pub matrices: Vec<UpdateMatrix>,
}

/// A row of `metrics/updates.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRow {
    /// Base model repo.
    pub model: String,
    /// Base revision.
    pub base_revision: String,
    /// Adapter repo.
    pub adapter: String,
    /// Adapter revision.
    pub revision: String,
    /// Folder in the adapter's repo.
    pub subfolder: Option<String>,
    /// Training step.
    pub step: u64,
    /// The module pattern that selected it.
    pub pattern: String,
    /// Base checkpoint key.
    pub key: String,
    /// Module path.
    pub module: String,
    /// `query`/`key`/`value` for a part of a fused QKV update.
    pub part: Option<String>,
    /// Layer.
    pub layer: Option<usize>,
    /// The size as asked (`5`, `srank`).
    pub k_choice: String,
    /// The size used.
    pub k: usize,
    /// `‖U_Wᵀ U_ΔW‖²_F / k`.
    pub p_left: f64,
    /// The same with right singular vectors.
    pub p_right: f64,
    /// `k / d_out`.
    pub baseline_left: f64,
    /// `k / d_in`.
    pub baseline_right: f64,
    /// `p_left / baseline_left`.
    pub bonus_left: f64,
    /// `p_right / baseline_right`.
    pub bonus_right: f64,
    /// Stable rank of ΔW.
    pub stable_rank_update: f64,
    /// Effective rank of ΔW.
    pub effective_rank_update: f64,
    /// LoRA rank.
    pub rank: usize,
    /// Node id.
    pub node: String,
}

/// Mean, min and max of one metric over layers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Self {
        let n = values.len().max(1) as f64;
        Self {
            mean: values.iter().sum::<f64>() / n,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// A row of `metrics/updates_summary.jsonl`: one (adapter checkpoint, module, part, size) over
/// its layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateSummaryRow {
    /// Base model repo.
    pub model: String,
    /// Base revision.
    pub base_revision: String,
    /// Adapter repo.
    pub adapter: String,
    /// Adapter revision.
    pub revision: String,
    /// Folder in the adapter's repo.
    pub subfolder: Option<String>,
    /// Training step.
    pub step: u64,
    /// Module path.
    pub module: String,
    /// `query`/`key`/`value`, or `null` for whole matrices.
    pub part: Option<String>,
    /// The size as asked.
    pub k_choice: String,
    /// Layers aggregated.
    pub layers: usize,
    /// `p_left` over layers.
    pub p_left: Spread,
    /// `p_right` over layers.
    pub p_right: Spread,
    /// `bonus_left` over layers.
    pub bonus_left: Spread,
    /// `bonus_right` over layers.
    pub bonus_right: Spread,
    /// Stable rank of ΔW over layers.
    pub stable_rank_update: Spread,
}

/// A base's (or an update's) SVDs by tensor name (`{key}` or `{key}.{part}`).
pub type BaseSvds = BTreeMap<String, TruncatedSvd>;

/// Reads back the SVDs of a `base_svd` (or `update_geometry`) file, by tensor name.
pub fn read_svds(bytes: &[u8]) -> Result<BaseSvds, String> {
    let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let read = |name: &str| -> Result<(Vec<f64>, Vec<usize>), String> {
        let view = tensors.tensor(name).map_err(|e| e.to_string())?;
        if view.dtype() != safetensors::Dtype::F64 {
            return Err(format!("tensor `{name}` is not F64"));
        }
        let values = view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Ok((values, view.shape().to_vec()))
    };
    let mut out = BaseSvds::new();
    for name in tensors.names() {
        let Some(tensor) = name.strip_suffix(".sigma") else {
            continue;
        };
        let (singular_values, _) = read(name)?;
        let (u, u_shape) = read(&format!("{tensor}.u"))?;
        let (v, v_shape) = read(&format!("{tensor}.v"))?;
        let (&[_, rows], &[_, cols]) = (u_shape.as_slice(), v_shape.as_slice()) else {
            return Err(format!("`{tensor}`: its vectors are not matrices"));
        };
        let basis = |width, values| {
            crate::analysis::Eigenbasis::from_columns(width, values)
                .map_err(|e| format!("`{tensor}`: {e}"))
        };
        out.insert(
            tensor.to_owned(),
            TruncatedSvd {
                rows,
                cols,
                singular_values,
                left: basis(rows, u)?,
                right: basis(cols, v)?,
            },
        );
    }
    Ok(out)
}

/// The rows of one `update_geometry` node's metrics.
pub fn rows(
    model: &str,
    base_revision: &str,
    pattern: &str,
    metrics: &UpdateNodeMetrics,
    node: &str,
) -> Vec<UpdateRow> {
    let mut out = Vec::new();
    for matrix in &metrics.matrices {
        for a in &matrix.geometry.alignments {
            out.push(UpdateRow {
                model: model.to_owned(),
                base_revision: base_revision.to_owned(),
                adapter: metrics.adapter.clone(),
                revision: metrics.revision.clone(),
                subfolder: metrics.subfolder.clone(),
                step: metrics.step,
                pattern: pattern.to_owned(),
                key: matrix.key.clone(),
                module: matrix.module.clone(),
                part: matrix.part.clone(),
                layer: matrix.layer,
                k_choice: a.choice.to_string(),
                k: a.k,
                p_left: a.p_left,
                p_right: a.p_right,
                baseline_left: a.baseline_left,
                baseline_right: a.baseline_right,
                bonus_left: a.bonus_left,
                bonus_right: a.bonus_right,
                stable_rank_update: matrix.geometry.stable_rank_update,
                effective_rank_update: matrix.metrics.effective_rank,
                rank: matrix.rank,
                node: node.to_owned(),
            });
        }
    }
    out
}

/// The per-layer aggregates of `rows`, in the order their groups first appear.
pub fn summary(rows: &[UpdateRow]) -> Vec<UpdateSummaryRow> {
    type Key<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        Option<&'a str>,
        &'a str,
    );
    let mut order: Vec<Key> = Vec::new();
    let mut groups: BTreeMap<Key, Vec<&UpdateRow>> = BTreeMap::new();
    for row in rows {
        let key = (
            row.model.as_str(),
            row.base_revision.as_str(),
            row.adapter.as_str(),
            row.revision.as_str(),
            row.subfolder.as_deref(),
            row.module.as_str(),
            row.part.as_deref(),
            row.k_choice.as_str(),
        );
        let group = groups.entry(key).or_default();
        if group.is_empty() {
            order.push(key);
        }
        group.push(row);
    }
    order
        .into_iter()
        .map(|key| {
            let group = &groups[&key];
            let spread = |f: fn(&UpdateRow) -> f64| {
                Spread::of(&group.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let first = group[0];
            UpdateSummaryRow {
                model: first.model.clone(),
                base_revision: first.base_revision.clone(),
                adapter: first.adapter.clone(),
                revision: first.revision.clone(),
                subfolder: first.subfolder.clone(),
                step: first.step,
                module: first.module.clone(),
                part: first.part.clone(),
                k_choice: first.k_choice.clone(),
                layers: group.len(),
                p_left: spread(|r| r.p_left),
                p_right: spread(|r| r.p_right),
                bonus_left: spread(|r| r.bonus_left),
                bonus_right: spread(|r| r.bonus_right),
                stable_rank_update: spread(|r| r.stable_rank_update),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(layer: usize, p: f64, k_choice: &str) -> UpdateRow {
        UpdateRow {
            model: "m".into(),
            base_revision: "main".into(),
            adapter: "a".into(),
            revision: "main".into(),
            subfolder: Some("checkpoint-1".into()),
            step: 1,
            pattern: "q".into(),
            key: format!("l.{layer}.q.weight"),
            module: "q".into(),
            part: None,
            layer: Some(layer),
            k_choice: k_choice.into(),
            k: 2,
            p_left: p,
            p_right: p / 2.0,
            baseline_left: 0.1,
            baseline_right: 0.1,
            bonus_left: p * 10.0,
            bonus_right: p * 5.0,
            stable_rank_update: 1.5,
            effective_rank_update: 2.0,
            rank: 4,
            node: "n".into(),
        }
    }

    #[test]
    fn the_summary_aggregates_each_size_over_layers() {
        let rows = vec![
            row(0, 0.2, "5"),
            row(0, 0.9, "srank"),
            row(1, 0.4, "5"),
            row(2, 0.6, "5"),
        ];
        let summary = summary(&rows);
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0].k_choice, "5");
        assert_eq!(summary[0].layers, 3);
        assert!((summary[0].p_left.mean - 0.4).abs() < 1e-15);
        assert_eq!(summary[0].p_left.min, 0.2);
        assert_eq!(summary[0].p_left.max, 0.6);
        assert_eq!(summary[1].layers, 1);
        assert_eq!(summary[1].p_right.max, 0.45);
    }
}
