//! Size, file-count, commit and memory estimates, and the refusals they lead to.
//!
//! The Hub's limits (docs/hub.md, "Limits"): at most 100,000 files per repo, 10,000 entries per
//! folder, and about 128 commits per hour per repo; a commit carries at most 100 files here.

use serde::Serialize;

use super::Plan;
use super::lookup::ModelDims;
use super::node::{Params, Windows};
use crate::spec::units::format_bytes;
use crate::spec::{Diagnostic, Hook, SweepSpec};

/// Files one repo may hold on the Hub.
pub const MAX_FILES_PER_REPO: u64 = 100_000;
/// Entries one folder may hold on the Hub.
pub const MAX_FILES_PER_FOLDER: u64 = 10_000;
/// Files per commit we allow ourselves.
pub const FILES_PER_COMMIT: u64 = 100;
/// The Hub's commit rate limit per repo and hour.
pub const COMMITS_PER_HOUR: u64 = 128;

/// Estimates for a plan; `None` where a model's dimensions are unknown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Estimates {
    /// Model revisions in the plan.
    pub models: u64,
    /// Of those, how many have known dimensions.
    pub models_with_dimensions: u64,
    /// Artifact files planned (only for models whose layers are known).
    pub artifacts: u64,
    /// Largest artifact, bytes.
    pub max_artifact_bytes: Option<u64>,
    /// All artifacts together, bytes.
    pub total_artifact_bytes: Option<u64>,
    /// Files the output repo will hold (artifacts, spectra, weight spectra, ledger).
    pub files_in_repo: Option<u64>,
    /// Files the output repo holds at least, counted without model sizes: one per artifact,
    /// spectrum and weight spectrum node planned so far, and the ledger's.
    pub min_files_in_repo: u64,
    /// Largest number of entries in one folder.
    pub max_files_per_folder: Option<u64>,
    /// Commits needed at ≤100 files per commit.
    pub commits: Option<u64>,
    /// Hours of the Hub's commit budget (128/hour) those commits take at least.
    pub commit_hours: Option<f64>,
    /// Peak memory of the run: model weights, open artifacts and in-flight uploads, forward pass.
    pub peak_memory_bytes: Option<u64>,
}

/// Elements per token of a hook.
pub fn width(hook: Hook, dims: &ModelDims, seq_len: u32) -> u64 {
    match hook {
        Hook::ResidPre
        | Hook::ResidMid
        | Hook::ResidPost
        | Hook::AttnOut
        | Hook::MlpOut
        | Hook::LnFinalNormalized => dims.d_model,
        Hook::AttnZ => dims.d_model,
        Hook::MlpPost => dims.d_mlp,
        // One row of the pattern per query position: heads × key positions.
        Hook::AttnPattern => dims.n_heads * u64::from(seq_len),
    }
}

/// Windows per shard and shard count for one model. A shard is sized so that each artifact
/// stays within `limits.artifact_bytes` and one shard's open artifacts take at most half of
/// `limits.memory` (the other half is for uploads in flight).
pub fn shards(
    spec: &SweepSpec,
    total_windows: Option<u64>,
    dims: Option<&ModelDims>,
    layers: Option<&[u32]>,
    label: &str,
    d: &mut Vec<Diagnostic>,
) -> (Option<u64>, u32) {
    let Some(capture) = &spec.capture else {
        return (None, 0);
    };
    let seq_len = spec.data.seq_len;
    // What one window needs is known from the dimensions alone: refused here, `plan` and `run`
    // refuse it alike, whether or not the data is tokenized yet.
    let (Some(dims), Some(layers)) = (dims, layers) else {
        return (None, 1);
    };
    let dtype = capture.dtype.size();
    let per_window = |hook: Hook| rows_per_window(spec) * width(hook, dims, seq_len) * dtype;
    let largest = capture
        .hooks
        .iter()
        .map(|&h| per_window(h))
        .max()
        .unwrap_or(1);
    let open: u64 = capture
        .hooks
        .iter()
        .map(|&h| {
            per_window(h)
                * if h.is_per_layer() {
                    layers.len() as u64
                } else {
                    1
                }
        })
        .sum();
    let by_artifact = spec.limits.artifact_bytes / largest.max(1);
    let by_memory = (spec.limits.memory / 2) / open.max(1);
    if by_artifact == 0 {
        d.push(
            Diagnostic::error(
                "/limits/artifact_bytes",
                format!(
                    "one window of `{label}` at one hook is {}, more than `artifact_bytes` ({})",
                    format_bytes(largest),
                    format_bytes(spec.limits.artifact_bytes)
                ),
            )
            .with_help(format!(
                "raise `artifact_bytes` to at least {} or lower `seq_len`",
                format_bytes(largest)
            )),
        );
        return (None, 1);
    }
    if by_memory == 0 {
        d.push(
            Diagnostic::error(
                "/limits/memory",
                format!(
                    "one window of `{label}` fills {} of open artifacts ({} hooks × {} layers); `memory` is {}",
                    format_bytes(open),
                    capture.hooks.len(),
                    layers.len(),
                    format_bytes(spec.limits.memory)
                ),
            )
            .with_help(format!(
                "raise `memory` to at least {}, or capture fewer layers or hooks, or lower `seq_len`",
                format_bytes(open * 2)
            )),
        );
        return (None, 1);
    }
    let Some(total) = total_windows else {
        return (None, 1);
    };
    let windows = by_artifact.min(by_memory).min(total.max(1));
    (Some(windows), total.div_ceil(windows).max(1) as u32)
}

/// Files a plan writes, counted from its nodes alone (no model sizes needed): one per artifact,
/// spectrum and weight spectrum, and the ledger's. Exact when every model's layers and shards
/// are known; a lower bound otherwise (a model whose layers are unknown has no artifact nodes
/// yet, and an unknown token count means one shard).
#[derive(Debug, Default)]
struct FileCount {
    /// Files of nodes, without the ledger's.
    nodes: u64,
    /// Of those, files of per-layer hooks (cutting layers cuts them).
    per_layer: u64,
    /// Of those, artifact and spectrum files (cutting hooks cuts them).
    hooked: u64,
    /// Files of nodes by model group (`ModelGroup::index`).
    by_group: std::collections::BTreeMap<usize, u64>,
}

impl FileCount {
    fn of(plan: &Plan) -> FileCount {
        let mut count = FileCount::default();
        for node in &plan.nodes {
            let (model, layer) = match &node.params {
                Params::Artifact { model, layer, .. } | Params::Spectrum { model, layer, .. } => {
                    count.hooked += 1;
                    (*model, *layer)
                }
                Params::WeightSpectrum { model, .. }
                | Params::BaseSvd { model, .. }
                | Params::UpdateGeometry { model, .. } => (*model, None),
                _ => continue,
            };
            count.nodes += 1;
            count.per_layer += u64::from(layer.is_some());
            let group = plan.models[model as usize].instance.group;
            *count.by_group.entry(group).or_default() += 1;
        }
        count
    }

    /// Commits needed at ≤100 files each, the final one included.
    fn commits(&self) -> u64 {
        self.nodes.div_ceil(FILES_PER_COMMIT).max(1) + 1
    }

    /// Files in the repo: the nodes' and the ledger's (one segment per commit, the manifest and
    /// the compacted index).
    fn in_repo(&self) -> u64 {
        self.nodes + self.commits() + 2
    }
}

/// Activation rows an artifact stores per window: `seq_len`, or 1 when `capture.pool` pools.
fn rows_per_window(spec: &SweepSpec) -> u64 {
    match spec.capture.as_ref().map(|c| c.pool) {
        Some(crate::spec::Pool::Mean | crate::spec::Pool::Last) => 1,
        _ => u64::from(spec.data.seq_len),
    }
}

/// Computes the estimates of a built plan.
pub fn estimate(spec: &SweepSpec, plan: &Plan) -> Estimates {
    let mut e = Estimates {
        models: plan.models.len() as u64,
        ..Estimates::default()
    };
    e.models_with_dimensions = plan.models.iter().filter(|m| m.dims.is_some()).count() as u64;
    let all_known = plan
        .models
        .iter()
        .all(|m| m.dims.is_some() && (spec.capture.is_none() || m.layers.is_some()));
    let seq_len = spec.data.seq_len;
    let dtype = spec.capture.as_ref().map_or(4, |c| c.dtype.size());
    let mut total_bytes = 0u64;
    let mut max_bytes = 0u64;
    let mut windows_known = plan.models.iter().all(|m| m.total_windows.is_some());
    for node in &plan.nodes {
        if let Params::Artifact { model, hook, .. } = &node.params {
            e.artifacts += 1;
            let m = &plan.models[*model as usize];
            let windows = plan.nodes[node.inputs[0] as usize].params.windows_count();
            match (m.dims.as_ref(), windows) {
                (Some(dims), Some(w)) => {
                    let rows = w * rows_per_window(spec);
                    let bytes = rows * width(*hook, dims, seq_len) * dtype + 1024;
                    total_bytes += bytes;
                    max_bytes = max_bytes.max(bytes);
                }
                _ => windows_known = false,
            }
        }
    }
    let files = FileCount::of(plan);
    e.min_files_in_repo = files.in_repo();
    let max_folder = plan
        .models
        .iter()
        .map(|m| u64::from(m.shards).max(m.layers.as_ref().map_or(0, |l| l.len() as u64)))
        .max()
        .unwrap_or(0);
    if all_known {
        let commits = files.commits();
        e.files_in_repo = Some(files.in_repo());
        e.max_files_per_folder = Some(max_folder.max(commits));
        e.commits = Some(commits);
        e.commit_hours = Some(commits as f64 / COMMITS_PER_HOUR as f64);
        if windows_known || spec.capture.is_none() {
            e.total_artifact_bytes = Some(total_bytes);
            e.max_artifact_bytes = Some(max_bytes);
        }
        e.peak_memory_bytes = plan
            .models
            .iter()
            .filter_map(|m| {
                peak_memory(
                    spec,
                    m.dims.as_ref()?,
                    m.windows_per_shard,
                    m.layers.as_deref(),
                )
            })
            .max();
    }
    e
}

fn peak_memory(
    spec: &SweepSpec,
    dims: &ModelDims,
    windows: Option<u64>,
    layers: Option<&[u32]>,
) -> Option<u64> {
    let compute = spec.capture.as_ref().map_or(4, |c| c.dtype.size());
    let weights = dims.parameters() * compute;
    let seq = u64::from(spec.data.seq_len);
    let batch = u64::from(spec.compute.batch_size);
    // Forward working set: a batch's residual, qkv, MLP hidden and attention scores, twice over
    // for temporaries.
    let forward = 2 * 4 * batch * seq * (4 * dims.d_model + 2 * dims.d_mlp + dims.n_heads * seq);
    let artifacts = match (&spec.capture, windows, layers) {
        (Some(capture), Some(w), Some(layers)) => {
            let open: u64 = capture
                .hooks
                .iter()
                .map(|&h| {
                    w * rows_per_window(spec)
                        * width(h, dims, spec.data.seq_len)
                        * capture.dtype.size()
                        * if h.is_per_layer() {
                            layers.len() as u64
                        } else {
                            1
                        }
                })
                .sum();
            (2 * open).min(spec.limits.memory)
        }
        (Some(_), _, _) => spec.limits.memory,
        (None, _, _) => 0,
    };
    Some(weights + forward + artifacts)
}

impl Params {
    /// Windows covered by a capture node, when counted.
    pub fn windows_count(&self) -> Option<u64> {
        match self {
            Params::Capture {
                windows: Windows::Range([a, b]),
                ..
            } => Some(b - a),
            _ => None,
        }
    }
}

/// Plans the Hub cannot take, with numbers and which dimension of the sweep to cut. The file
/// count needs no model sizes: at least one file per artifact node, so a sweep over the Hub's
/// limit is refused by `plan` offline, not by the Hub hours into the run.
pub fn refusals(spec: &SweepSpec, plan: &Plan) -> Vec<Diagnostic> {
    let e = &plan.estimates;
    let mut out = Vec::new();
    let (files, at_least) = match e.files_in_repo {
        Some(files) => (files, ""),
        None => (e.min_files_in_repo, "at least "),
    };
    if files > MAX_FILES_PER_REPO {
        out.push(
            Diagnostic::error(
                "/output",
                format!(
                    "the plan writes {at_least}{files} files to `{}`; the Hub allows {MAX_FILES_PER_REPO} per repo",
                    spec.output
                ),
            )
            .with_help(cuts(spec, plan, &FileCount::of(plan))),
        );
    }
    if let Some(folder) = e.max_files_per_folder
        && folder > MAX_FILES_PER_FOLDER
    {
        out.push(
            Diagnostic::error("/limits", format!("one folder of the output would hold {folder} files; the Hub allows {MAX_FILES_PER_FOLDER}"))
                .with_help("raise `limits.artifact_bytes` so each (hook, layer) has fewer shards, or lower `data.max_tokens`"),
        );
    }
    out
}

/// Which dimension of the sweep to cut, and to how many values, for the files to fit: cutting
/// a dimension from `n` values to `k` keeps `k/n` of the files that depend on it.
fn cuts(spec: &SweepSpec, plan: &Plan, count: &FileCount) -> String {
    let ledger = count.in_repo() - count.nodes;
    // Files the nodes may take, the ledger's (at its current size, an upper bound) left aside.
    let room = MAX_FILES_PER_REPO.saturating_sub(ledger);
    // The most values a dimension of `n` may keep, when `affected` of the files depend on it.
    let keep = |n: u64, affected: u64| -> Option<u64> {
        let fixed = count.nodes - affected;
        let k = room.checked_sub(fixed)?.checked_mul(n)? / affected.max(1);
        (k >= 1 && k < n).then_some(k)
    };
    let mut options = Vec::new();
    for group in &spec.models {
        let affected = count.by_group.get(&group.index).copied().unwrap_or(0);
        for axis in group.axes.iter().filter(|a| a.values.len() > 1) {
            let n = axis.values.len() as u64;
            if let Some(k) = keep(n, affected) {
                options.push(format!(
                    "`{}` of /models/{} from {n} values to {k}",
                    axis.name, group.index
                ));
            }
        }
    }
    let layers = plan
        .models
        .iter()
        .filter_map(|m| m.layers.as_ref().map(|l| l.len() as u64))
        .max()
        .unwrap_or(0);
    if layers > 1
        && let Some(k) = keep(layers, count.per_layer)
    {
        options.push(format!("`capture.layers` from {layers} to {k}"));
    }
    let hooks = spec.capture.as_ref().map_or(0, |c| c.hooks.len() as u64);
    if hooks > 1
        && let Some(k) = keep(hooks, count.hooked)
    {
        options.push(format!("`capture.hooks` from {hooks} to {k}"));
    }
    let mut help = String::from("cut one dimension of the sweep: ");
    if options.is_empty() {
        help.push_str("no single one is enough");
    } else {
        help.push_str(&options.join(", or "));
    }
    if plan.models.iter().any(|m| m.shards > 1) {
        help.push_str("; raise `limits.artifact_bytes` (fewer, larger shards)");
    }
    help.push_str("; or split the sweep over several output repos");
    help
}
