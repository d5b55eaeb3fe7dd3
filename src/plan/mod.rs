//! The planner: a validated spec becomes a DAG of content-addressed nodes, with size and
//! memory estimates, before anything runs. The plan is pure data; execution never mutates it.
//!
//! Nodes are appended in dependency order (every input precedes its node), so ids can be
//! computed in one pass and the node list is itself a topological order; the petgraph view
//! ([`Plan::graph`]) is checked acyclic all the same.

pub mod estimate;
pub mod id;
pub mod lookup;
pub mod node;
mod record;
pub mod render;
pub mod updates;

use std::collections::{BTreeMap, HashMap};

use petgraph::graph::DiGraph;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use estimate::Estimates;
pub use id::NodeId;
pub use lookup::{LocalLookup, ModelDims, ModelFacts, ModelLookup, NoLookup};
pub use node::{Node, NodeKind, Params, Windows};
pub use record::{ACTIVATIONS_DIR, artifact_path, model_slug};
pub use updates::{PlannedAdapter, step_of};

use crate::spec::{
    Analysis, Between, DataSource, Diagnostic, Hook, ModelInstance, OutputRepo, SweepSpec,
    expand_group,
};

/// One model's spectrum nodes by (hook, layer), in that order (so a base's is binary-searched).
type ModelSpectra = Vec<((Hook, Option<u32>), u32)>;

/// What the planner needs besides the spec.
pub struct PlanOptions<'a> {
    /// Where model facts (commit shas, dimensions) come from.
    pub lookup: &'a dyn ModelLookup,
    /// Content hash of the prompt data, when it can be known before running (inline data is
    /// hashed by the planner itself; a local file's hash is given by the caller).
    pub data_hash: Option<String>,
    /// Device class the run will use (`cpu`, `cuda`), part of capture pins.
    pub device_class: String,
}

/// One model revision in the plan, with what is known about it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedModel {
    /// The expanded model.
    pub instance: ModelInstance,
    /// Commit sha, if pinned.
    pub commit: Option<String>,
    /// Dimensions, if a config was at hand.
    pub dims: Option<ModelDims>,
    /// Layers captured, if the depth is known (or not needed).
    pub layers: Option<Vec<u32>>,
    /// Token windows in all, when known (from the tokenized data, or `max_tokens`).
    pub total_windows: Option<u64>,
    /// Token windows per shard.
    pub windows_per_shard: Option<u64>,
    /// Content hash of this model's token windows, when known.
    pub data_hash: Option<String>,
    /// The model as one path segment of artifact paths.
    pub slug: String,
    /// Number of token shards.
    pub shards: u32,
}

impl PlannedModel {
    /// `repo@revision`, for labels.
    pub fn label(&self) -> String {
        format!("{}@{}", self.instance.source, self.instance.revision)
    }
}

/// A plan: nodes in dependency order, models, estimates and what the planner found.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sweep name.
    pub name: String,
    /// Output repo.
    pub output: OutputRepo,
    /// Model revisions, in expansion order.
    pub models: Vec<PlannedModel>,
    /// Adapters, in expansion order, each trained on one of `models`.
    pub adapters: Vec<PlannedAdapter>,
    /// Nodes; inputs always precede the nodes that use them.
    pub nodes: Vec<Node>,
    /// Estimates.
    pub estimates: Estimates,
    /// Errors (the plan cannot run) and warnings, with document paths into the spec.
    pub diagnostics: Vec<Diagnostic>,
    data_hash: Option<String>,
    device_class: String,
    empty_pins: serde_json::Value,
    dtype: &'static str,
    pool: Option<&'static str>,
    seq_len: u32,
    prepend_bos: bool,
}

/// Hashes inline prompt data (texts or token ids) with the windowing settings.
pub fn inline_data_hash(spec: &SweepSpec) -> Option<String> {
    match &spec.data.source {
        DataSource::Texts(_) | DataSource::TokenIds(_) => {
            let record = id::canonical_json(&spec.data.source);
            Some(hex::encode(Sha256::digest(record.as_bytes())))
        }
        DataSource::File { .. } | DataSource::HubFile { .. } => None,
    }
}

/// Builds the plan. Problems the spec alone could not show (layers past a model's depth, a
/// config of another family, a plan over the Hub's limits) are in `diagnostics`.
pub fn build(spec: &SweepSpec, options: &PlanOptions) -> Plan {
    let mut diagnostics = Vec::new();
    let mut instances: Vec<ModelInstance> = Vec::new();
    let mut adapters = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for group in &spec.models {
        for instance in expand_group(group, &mut Vec::new()) {
            let Some(mut instance) =
                updates::with_looked_up_base(instance, options.lookup, &mut diagnostics)
            else {
                continue;
            };
            // An adapter's base is a model of the plan; many adapters share one base.
            if let Some(adapter) = instance.adapter.take() {
                adapters.push((instance.clone(), adapter));
                if !seen.insert((instance.source.clone(), instance.revision.clone())) {
                    continue;
                }
                instances.push(instance);
                continue;
            }
            if !seen.insert((instance.source.clone(), instance.revision.clone())) {
                diagnostics.push(Diagnostic::warning(
                    format!("/models/{}", group.index),
                    format!(
                        "`{}@{}` appears twice in the grid; planned once",
                        instance.source, instance.revision
                    ),
                ));
                continue;
            }
            instances.push(instance);
        }
    }
    let data_hash = inline_data_hash(spec).or_else(|| options.data_hash.clone());
    let models: Vec<PlannedModel> = instances
        .into_iter()
        .map(|instance| plan_model(spec, instance, options.lookup, &mut diagnostics))
        .collect();
    let mut plan = Plan {
        name: spec.name.clone(),
        output: spec.output.clone(),
        models,
        adapters: Vec::new(),
        nodes: Vec::new(),
        estimates: Estimates::default(),
        diagnostics,
        data_hash,
        device_class: options.device_class.clone(),
        empty_pins: serde_json::Value::Object(serde_json::Map::new()),
        dtype: spec.capture.as_ref().map_or("f32", |c| c.dtype.as_str()),
        pool: spec.capture.as_ref().and_then(|c| c.pool.pooled()),
        seq_len: spec.data.seq_len,
        prepend_bos: spec.data.prepend_bos,
    };
    plan.plan_adapters(adapters, options.lookup);
    plan.add_nodes(spec);
    plan.assign_ids();
    plan.estimates = estimate::estimate(spec, &plan);
    let refusals = estimate::refusals(spec, &plan);
    plan.diagnostics.extend(refusals);
    plan
}

impl Plan {
    /// The device class the plan was pinned for (`cpu`, `cuda`), part of every capture's pins.
    pub fn device_class(&self) -> &str {
        &self.device_class
    }
}

fn plan_model(
    spec: &SweepSpec,
    instance: ModelInstance,
    lookup: &dyn ModelLookup,
    d: &mut Vec<Diagnostic>,
) -> PlannedModel {
    let facts = lookup.lookup(&instance.source, &instance.revision);
    let at = format!("/models/{}", instance.group);
    let label = format!("{}@{}", instance.source, instance.revision);
    if let Some(problem) = &facts.problem {
        d.push(Diagnostic::error(
            format!("{at}/repo"),
            format!("cannot read the config of `{label}`: {problem}"),
        ));
    }
    let mut layers = None;
    if let Some(capture) = &spec.capture {
        if let Some(dims) = &facts.dims {
            if capture.hooks.contains(&Hook::ResidMid) && dims.parallel_residual {
                d.push(Diagnostic::error(
                    "/capture/hooks",
                    format!(
                        "`hook_resid_mid` does not exist in `{label}`: its blocks are parallel"
                    ),
                ));
            }
            match capture.layers.resolve(dims.n_layers) {
                Ok(resolved) => layers = Some(resolved),
                Err(bad) => d.push(
                    Diagnostic::error(
                        "/capture/layers",
                        format!(
                            "layer `{bad}` does not exist in `{label}`, which has {} layers",
                            dims.n_layers
                        ),
                    )
                    .with_help(format!(
                        "valid layers are 0..{} (or -1 for the last)",
                        dims.n_layers
                    )),
                ),
            }
        } else {
            // Without the depth, only selections that do not depend on it can be listed.
            layers = match &capture.layers {
                crate::spec::LayerSelection::Indices(i) if i.iter().all(|&x| x >= 0) => {
                    capture.layers.resolve(u32::MAX).ok()
                }
                crate::spec::LayerSelection::Range { end: Some(_), .. } => {
                    capture.layers.resolve(u32::MAX).ok()
                }
                _ => None,
            };
        }
    }
    // Exact windows once the data is tokenized for this model; else the `max_tokens` bound.
    let total_windows = facts.windows.or_else(|| {
        spec.data
            .max_tokens
            .map(|t| t / u64::from(spec.data.seq_len))
    });
    let (windows_per_shard, shards) = estimate::shards(
        spec,
        total_windows,
        facts.dims.as_ref(),
        layers.as_deref(),
        &label,
        d,
    );
    let slug = record::model_slug(&instance.source);
    PlannedModel {
        slug,
        instance,
        commit: facts.commit,
        dims: facts.dims,
        layers,
        total_windows,
        windows_per_shard,
        data_hash: facts.data_hash,
        shards,
    }
}

impl Plan {
    fn push(&mut self, kind: NodeKind, params: Params, inputs: Vec<u32>) -> u32 {
        let index = self.nodes.len() as u32;
        self.nodes.push(Node {
            kind,
            params,
            inputs,
            id: None,
        });
        index
    }

    /// Computes every id. A node's rank is one more than its highest-ranked input, so all
    /// nodes of one rank can be hashed in parallel once the ranks below are done.
    fn assign_ids(&mut self) {
        use rayon::prelude::*;
        let mut rank = vec![0u32; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            rank[i] = node
                .inputs
                .iter()
                .map(|&x| rank[x as usize] + 1)
                .max()
                .unwrap_or(0);
        }
        let levels = rank.iter().copied().max().map_or(0, |r| r + 1);
        for level in 0..levels {
            let ids: Vec<(usize, Option<NodeId>)> = (0..self.nodes.len())
                .into_par_iter()
                .filter(|&i| rank[i] == level)
                .map(|i| (i, self.compute_id(&self.nodes[i])))
                .collect();
            for (i, id) in ids {
                self.nodes[i].id = id;
            }
        }
    }

    fn add_nodes(&mut self, spec: &SweepSpec) {
        let top_k = spec.analyses.iter().find_map(|a| match a {
            Analysis::Spectrum { top_k } => Some(*top_k),
            _ => None,
        });
        let wants_spectra = spec
            .analyses
            .iter()
            .any(|a| !matches!(a, Analysis::UpdateGeometry(_)));
        // Per model, its spectrum nodes by (hook, layer), in that order: for overlaps.
        let mut spectra: Vec<ModelSpectra> = vec![Vec::new(); self.models.len()];
        let mut resolves = Vec::with_capacity(self.models.len());
        let mut commits = Vec::new();
        for m in 0..self.models.len() as u32 {
            let resolve = self.push(NodeKind::Resolve, Params::Resolve { model: m }, Vec::new());
            resolves.push(resolve);
            let mut produced = Vec::new();
            if let Some(capture) = &spec.capture {
                let model = &self.models[m as usize];
                let layers = model.layers.clone();
                let shards = model.shards;
                let windows_per_shard = model.windows_per_shard;
                let total = model.total_windows;
                let mut per_spectrum: BTreeMap<(Hook, Option<u32>), Vec<u32>> = BTreeMap::new();
                for shard in 0..shards {
                    let windows = match (total, windows_per_shard) {
                        (Some(total), Some(w)) => Windows::Range([
                            u64::from(shard) * w,
                            (u64::from(shard + 1) * w).min(total),
                        ]),
                        (Some(total), None) => Windows::Range([0, total]),
                        _ => Windows::All(node::AllWindows::All),
                    };
                    let cap = self.push(
                        NodeKind::Capture,
                        Params::Capture {
                            model: m,
                            shard,
                            windows,
                        },
                        vec![resolve],
                    );
                    let Some(layers) = &layers else { continue };
                    for &hook in &capture.hooks {
                        let hook_layers: Vec<Option<u32>> = if hook.is_per_layer() {
                            layers.iter().map(|&l| Some(l)).collect()
                        } else {
                            vec![None]
                        };
                        for layer in hook_layers {
                            let art = self.push(
                                NodeKind::Artifact,
                                Params::Artifact {
                                    model: m,
                                    shard,
                                    hook,
                                    layer,
                                },
                                vec![cap],
                            );
                            produced.push(art);
                            per_spectrum.entry((hook, layer)).or_default().push(art);
                        }
                    }
                }
                if wants_spectra {
                    for ((hook, layer), inputs) in per_spectrum {
                        let s = self.push(
                            NodeKind::Spectrum,
                            Params::Spectrum {
                                model: m,
                                hook,
                                layer,
                                top_k: top_k.unwrap_or(64),
                            },
                            inputs,
                        );
                        spectra[m as usize].push(((hook, layer), s));
                        produced.push(s);
                    }
                }
            }
            commits.push((m, produced));
        }
        let mut finals = Vec::new();
        self.add_weight_spectra(spec, &resolves, &mut commits);
        self.add_update_geometry(spec, &resolves, &mut commits);
        for (m, produced) in commits {
            let c = self.push(
                NodeKind::LedgerCommit,
                Params::LedgerCommit { model: Some(m) },
                produced,
            );
            finals.push(c);
        }
        finals.extend(self.add_overlaps(spec, &spectra));
        self.push(
            NodeKind::LedgerCommit,
            Params::LedgerCommit { model: None },
            finals,
        );
    }

    fn add_weight_spectra(
        &mut self,
        spec: &SweepSpec,
        resolves: &[u32],
        commits: &mut [(u32, Vec<u32>)],
    ) {
        let Some(weights) = &spec.weights else { return };
        for m in 0..self.models.len() as u32 {
            let model = &self.models[m as usize].instance;
            let base = match &weights.delta_from {
                Some(rev) if *rev == model.revision => continue,
                Some(rev) => {
                    let found = self.models.iter().position(|o| {
                        o.instance.source == model.source && &o.instance.revision == rev
                    });
                    match found {
                        Some(b) => Some(b as u32),
                        // This model was not swept at the base revision (e.g. excluded).
                        None => {
                            self.diagnostics.push(Diagnostic::warning(
                                "/weights/delta_from",
                                format!("`{}` has no revision `{rev}` in the grid; its weight deltas are skipped", model.source),
                            ));
                            continue;
                        }
                    }
                }
                None => None,
            };
            for module in &weights.modules {
                let mut inputs = vec![resolves[m as usize]];
                inputs.extend(base.map(|b| resolves[b as usize]));
                let w = self.push(
                    NodeKind::WeightSpectrum,
                    Params::WeightSpectrum {
                        model: m,
                        module: module.clone(),
                        delta_from: base,
                    },
                    inputs,
                );
                commits[m as usize].1.push(w);
            }
        }
    }

    fn add_overlaps(&mut self, spec: &SweepSpec, spectra: &[ModelSpectra]) -> Vec<u32> {
        let mut out = Vec::new();
        // (model, revision) → model index, so finding each model's base is not quadratic.
        let index: HashMap<(String, &str), u32> = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let key = (m.instance.source.to_string(), m.instance.revision.as_str());
                (key, i as u32)
            })
            .collect();
        let mut overlaps = Vec::new();
        for (a, analysis) in spec.analyses.iter().enumerate() {
            let Analysis::Overlap { between, base, k } = analysis else {
                continue;
            };
            let k = std::sync::Arc::new(k.clone());
            for other in 0..self.models.len() as u32 {
                let o = &self.models[other as usize].instance;
                let key = match between {
                    Between::Revision => (o.source.to_string(), base.as_str()),
                    Between::Model => (base.clone(), o.revision.as_str()),
                };
                let Some(&base_model) = index.get(&key) else {
                    continue;
                };
                if base_model != other {
                    overlaps.push((a, *between, k.clone(), base_model, other));
                }
            }
        }
        for (a, between, k, base_model, other) in overlaps {
            let (x, y) = (
                &self.models[base_model as usize],
                &self.models[other as usize],
            );
            if let (Some(x_dims), Some(y_dims)) = (&x.dims, &y.dims)
                && x_dims.d_model != y_dims.d_model
            {
                let message = format!(
                    "cannot compare `{}` (width {}) with `{}` (width {}): overlaps need equal widths",
                    x.label(),
                    x_dims.d_model,
                    y.label(),
                    y_dims.d_model
                );
                self.diagnostics
                    .push(Diagnostic::error(format!("/analyses/{a}/overlap"), message));
                continue;
            }
            let base_spectra = &spectra[base_model as usize];
            for &((hook, layer), so) in &spectra[other as usize] {
                let Ok(found) = base_spectra.binary_search_by(|(key, _)| key.cmp(&(hook, layer)))
                else {
                    continue;
                };
                let params = Params::Overlap {
                    base: base_model,
                    other,
                    hook,
                    layer,
                    between,
                    k: k.clone(),
                };
                out.push(self.push(NodeKind::Overlap, params, vec![base_spectra[found].1, so]));
            }
        }
        out
    }

    /// The petgraph view of the DAG (edges input → node).
    pub fn graph(&self) -> DiGraph<u32, ()> {
        let mut graph = DiGraph::with_capacity(
            self.nodes.len(),
            self.nodes.iter().map(|n| n.inputs.len()).sum(),
        );
        let indices: Vec<_> = (0..self.nodes.len() as u32)
            .map(|i| graph.add_node(i))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for &input in &node.inputs {
                graph.add_edge(indices[input as usize], indices[i], ());
            }
        }
        graph
    }

    /// Whether the plan can run: no error diagnostics.
    pub fn is_runnable(&self) -> bool {
        !self
            .diagnostics
            .iter()
            .any(|d| d.severity == crate::spec::Severity::Error)
    }

    /// The one check `plan` and `run` both make before anything runs, so that they refuse the
    /// same plans with the same diagnostics: `Err` with every diagnostic (the errors, and the
    /// warnings beside them) when the plan cannot run. What `run` knows beyond `plan` (commit
    /// shas, token counts) only adds facts to the same rules.
    pub fn refusal(&self) -> Result<(), Refusal> {
        if self.is_runnable() {
            Ok(())
        } else {
            Err(Refusal {
                diagnostics: self.diagnostics.clone(),
            })
        }
    }

    /// Number of nodes of each kind.
    pub fn counts(&self) -> BTreeMap<NodeKind, u64> {
        let mut counts = BTreeMap::new();
        for node in &self.nodes {
            *counts.entry(node.kind).or_insert(0) += 1;
        }
        counts
    }
}

/// A plan that cannot run (too many files for the Hub, a window that fits no budget, layers a
/// model does not have), with the diagnostics that say why and what to change.
#[derive(Debug, thiserror::Error)]
#[error("the plan is refused")]
pub struct Refusal {
    /// Every diagnostic of the plan, errors and warnings, with document paths into the spec.
    pub diagnostics: Vec<Diagnostic>,
}

/// The model a node belongs to, if one (overlaps and the final ledger commit span models).
pub fn node_model(node: &Node) -> Option<u32> {
    match &node.params {
        Params::Resolve { model }
        | Params::Capture { model, .. }
        | Params::Artifact { model, .. }
        | Params::Spectrum { model, .. }
        | Params::WeightSpectrum { model, .. }
        | Params::BaseSvd { model, .. }
        | Params::UpdateGeometry { model, .. } => Some(*model),
        Params::LedgerCommit { model } => *model,
        Params::Overlap { .. } => None,
    }
}
