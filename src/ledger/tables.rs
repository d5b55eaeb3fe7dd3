//! The metrics tables: flat JSONL files under `metrics/` in the output repo, one row per
//! measured thing, so that the Hub's dataset viewer, `datasets.load_dataset("json", …)` and
//! pandas read them without knowing the ledger. Schema: `docs/metrics.md`.
//!
//! They are derived from the ledger records of the plan's nodes (every run rewrites them from
//! the whole ledger, so a resumed run's tables cover every finished node).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Record;
use crate::analysis::{ActivationMetrics, SpectrumMetrics, SubspaceOverlap, SvdMethod};
use crate::plan::{Params, Plan};

/// Path of the activation-spectrum table.
pub const SPECTRA_PATH: &str = "metrics/spectra.jsonl";
/// Path of the overlap table.
pub const OVERLAPS_PATH: &str = "metrics/overlaps.jsonl";
/// Path of the weight-spectrum table.
pub const WEIGHTS_PATH: &str = "metrics/weights.jsonl";

/// One matrix's result inside a weight-spectrum node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixResult {
    /// Checkpoint key.
    pub key: String,
    /// Layer, for keys inside the blocks.
    pub layer: Option<usize>,
    /// Module path (`attention.query_key_value`, `self_attn.q_proj`).
    pub module: String,
    /// `query`, `key` or `value` for a part of a fused QKV weight; `None` for the whole matrix.
    pub part: Option<String>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// The name of its singular values in the node's safetensors file.
    pub tensor: String,
    /// Summary metrics.
    pub metrics: SpectrumMetrics,
}

/// What a weight-spectrum node records in the ledger (`metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightNodeMetrics {
    /// How singular values were computed.
    pub method: SvdMethod,
    /// The base revision of a delta.
    pub delta_from: Option<String>,
    /// One entry per matrix, by layer then module.
    pub matrices: Vec<MatrixResult>,
}

/// The scalar metrics of one spectrum, flattened into a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalarMetrics {
    /// Number of singular values.
    pub count: usize,
    /// `‖X‖_F²`.
    pub frobenius_norm_sq: f64,
    /// `σ₁`.
    pub spectral_norm: f64,
    /// `‖X‖_F² / σ₁²`.
    pub stable_rank: f64,
    /// Roy & Vetterli effective rank.
    pub effective_rank: f64,
    /// `(Σλ)² / Σλ²`.
    pub participation_ratio: f64,
    /// Directions holding 90% of `Σλ`.
    pub k90: usize,
    /// Directions holding 99% of `Σλ`.
    pub k99: usize,
}

impl From<&SpectrumMetrics> for ScalarMetrics {
    fn from(m: &SpectrumMetrics) -> Self {
        Self {
            count: m.count,
            frobenius_norm_sq: m.frobenius_norm_sq,
            spectral_norm: m.spectral_norm,
            stable_rank: m.stable_rank,
            effective_rank: m.effective_rank,
            participation_ratio: m.participation_ratio,
            k90: m.k90,
            k99: m.k99,
        }
    }
}

/// A row of `metrics/spectra.jsonl`: one (model, revision, hook, layer, centring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpectrumRow {
    /// Model repo as in the spec.
    pub model: String,
    /// Revision as in the spec.
    pub revision: String,
    /// Hook name.
    pub hook: String,
    /// Layer (`null` for `ln_final`).
    pub layer: Option<u32>,
    /// `raw` (`XᵀX`) or `centred` (PCA).
    pub centring: String,
    /// Tokens accumulated.
    pub rows: u64,
    /// Width `d`.
    pub width: usize,
    /// The metrics.
    #[serde(flatten)]
    pub metrics: ScalarMetrics,
    /// Node id.
    pub node: String,
    /// The spectrum's file in the repo.
    pub file: Option<String>,
}

/// A row of `metrics/overlaps.jsonl`: one (pair, hook, layer, k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlapRow {
    /// Model of the compared spectrum.
    pub model: String,
    /// Its revision.
    pub revision: String,
    /// Model of the base spectrum.
    pub base_model: String,
    /// Its revision.
    pub base_revision: String,
    /// `revision` or `model`.
    pub between: String,
    /// Hook name.
    pub hook: String,
    /// Layer.
    pub layer: Option<u32>,
    /// Which decomposition was compared (`centred`).
    pub centring: String,
    /// Subspace size.
    pub k: usize,
    /// `γ = ‖U_aᵀ U_b‖_F² / k`.
    pub gamma: f64,
    /// `k / d`.
    pub baseline: f64,
    /// `γ / baseline`.
    pub ratio: f64,
    /// Node id.
    pub node: String,
}

/// A row of `metrics/weights.jsonl`: one matrix (or fused part) of one model revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightRow {
    /// Model repo as in the spec.
    pub model: String,
    /// Revision.
    pub revision: String,
    /// Base revision of a delta, `null` for the weights themselves.
    pub delta_from: Option<String>,
    /// The module pattern that selected it.
    pub pattern: String,
    /// Checkpoint key.
    pub key: String,
    /// Layer (`null` outside the blocks).
    pub layer: Option<usize>,
    /// Module path.
    pub module: String,
    /// `query`/`key`/`value` for a part of a fused QKV weight.
    pub part: Option<String>,
    /// Matrix rows.
    pub rows: usize,
    /// Matrix columns.
    pub cols: usize,
    /// The metrics.
    #[serde(flatten)]
    pub metrics: ScalarMetrics,
    /// Node id.
    pub node: String,
    /// The node's file in the repo, and the tensor name in it.
    pub file: Option<String>,
    /// Tensor name in `file`.
    pub tensor: String,
}

fn jsonl<T: Serialize>(rows: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        if let Ok(line) = serde_json::to_vec(row) {
            out.extend(line);
            out.push(b'\n');
        }
    }
    out
}

/// The three tables (path and bytes) from the records of `plan`'s nodes; records of failed
/// nodes and nodes of other plans are left out. Rows follow the plan's order.
pub fn tables(plan: &Plan, records: &HashMap<String, &Record>) -> Vec<(String, Vec<u8>)> {
    let (mut spectra, mut overlaps, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    let mut updates = Vec::new();
    let has_updates = plan
        .nodes
        .iter()
        .any(|n| matches!(n.params, Params::UpdateGeometry { .. }));
    for node in &plan.nodes {
        let Some(id) = node.id.map(|id| id.to_hex()) else {
            continue;
        };
        let Some(record) = records.get(&id).filter(|r| r.error.is_none()) else {
            continue;
        };
        let Some(metrics) = &record.metrics else {
            continue;
        };
        let file = record.files.first().map(|f| f.path.clone());
        let model = |m: u32| {
            let i = &plan.models[m as usize].instance;
            (i.source.to_string(), i.revision.clone())
        };
        match &node.params {
            Params::Spectrum {
                model: m,
                hook,
                layer,
                ..
            } => {
                let Ok(activation) = serde_json::from_value::<ActivationMetrics>(metrics.clone())
                else {
                    continue;
                };
                let (model, revision) = model(*m);
                for (centring, m) in [("raw", &activation.raw), ("centred", &activation.centred)] {
                    spectra.push(SpectrumRow {
                        model: model.clone(),
                        revision: revision.clone(),
                        hook: hook.name().to_owned(),
                        layer: *layer,
                        centring: centring.to_owned(),
                        rows: activation.rows,
                        width: activation.width,
                        metrics: m.into(),
                        node: id.clone(),
                        file: file.clone(),
                    });
                }
            }
            Params::Overlap {
                base,
                other,
                hook,
                layer,
                between,
                ..
            } => {
                let Ok(values) =
                    serde_json::from_value::<Vec<SubspaceOverlap>>(metrics["overlaps"].clone())
                else {
                    continue;
                };
                let centring = metrics["centring"].as_str().unwrap_or("centred").to_owned();
                let ((model, revision), (base_model, base_revision)) =
                    (model(*other), model(*base));
                let between = serde_json::to_value(between)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                for value in values {
                    overlaps.push(OverlapRow {
                        model: model.clone(),
                        revision: revision.clone(),
                        base_model: base_model.clone(),
                        base_revision: base_revision.clone(),
                        between: between.clone(),
                        hook: hook.name().to_owned(),
                        layer: *layer,
                        centring: centring.clone(),
                        k: value.k,
                        gamma: value.gamma,
                        baseline: value.baseline,
                        ratio: value.ratio,
                        node: id.clone(),
                    });
                }
            }
            Params::WeightSpectrum {
                model: m, module, ..
            } => {
                let Ok(node_metrics) = serde_json::from_value::<WeightNodeMetrics>(metrics.clone())
                else {
                    continue;
                };
                let (model, revision) = model(*m);
                for matrix in node_metrics.matrices {
                    weights.push(WeightRow {
                        model: model.clone(),
                        revision: revision.clone(),
                        delta_from: node_metrics.delta_from.clone(),
                        pattern: module.clone(),
                        key: matrix.key,
                        layer: matrix.layer,
                        module: matrix.module,
                        part: matrix.part,
                        rows: matrix.rows,
                        cols: matrix.cols,
                        metrics: (&matrix.metrics).into(),
                        node: id.clone(),
                        file: file.clone(),
                        tensor: matrix.tensor,
                    });
                }
            }
            Params::UpdateGeometry {
                model: m, module, ..
            } => {
                let Ok(node_metrics) =
                    serde_json::from_value::<super::updates::UpdateNodeMetrics>(metrics.clone())
                else {
                    continue;
                };
                let (model, revision) = model(*m);
                updates.extend(super::updates::rows(
                    &model,
                    &revision,
                    module,
                    &node_metrics,
                    &id,
                ));
            }
            _ => {}
        }
    }
    let mut out = vec![
        (SPECTRA_PATH.to_owned(), jsonl(&spectra)),
        (OVERLAPS_PATH.to_owned(), jsonl(&overlaps)),
        (WEIGHTS_PATH.to_owned(), jsonl(&weights)),
    ];
    // Only sweeps with adapters have these two (the others' repos stay as they were).
    if has_updates {
        let summary = super::updates::summary(&updates);
        out.push((super::updates::UPDATES_PATH.to_owned(), jsonl(&updates)));
        out.push((
            super::updates::UPDATES_SUMMARY_PATH.to_owned(),
            jsonl(&summary),
        ));
    }
    out
}

/// The files written in the one commit that closes a sweep, all derived from `records` (every
/// record of the ledger): the compacted index, the flat metrics tables beside it, and the
/// dataset card (`README.md`, unless the repo's `existing_card` is somebody else's: then
/// `card_left_alone` says so and the card is not in `files`).
pub fn index_files(
    plan: &Plan,
    manifest: &super::Manifest,
    records: &[Record],
    existing_card: Option<&str>,
) -> IndexFiles {
    let compacted = super::compacted(records.iter());
    let mut files = vec![(
        super::INDEX_PATH.to_owned(),
        Bytes::from(super::to_jsonl(compacted.iter().copied())),
    )];
    let by_id: HashMap<String, &Record> = records.iter().map(|r| (r.id.clone(), r)).collect();
    let tables = tables(plan, &by_id);
    let mut card_left_alone = false;
    match super::card::update(manifest, &compacted, &tables, existing_card) {
        super::card::CardUpdate::Write(card) => {
            files.push((super::card::CARD_PATH.to_owned(), Bytes::from(card)));
        }
        super::card::CardUpdate::Unchanged => {}
        super::card::CardUpdate::LeftAlone => card_left_alone = true,
    }
    files.extend(
        tables
            .into_iter()
            .map(|(path, bytes)| (path, Bytes::from(bytes))),
    );
    IndexFiles {
        files,
        card_left_alone,
    }
}

/// What [`index_files`] gives.
#[derive(Debug, Clone)]
pub struct IndexFiles {
    /// Repo path and bytes of every file to commit with the index.
    pub files: Vec<(String, Bytes)>,
    /// The repo has a `README.md` hubsweep did not write: it is left as it is.
    pub card_left_alone: bool,
}
