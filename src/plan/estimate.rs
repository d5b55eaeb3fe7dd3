//! Size, file-count, commit and memory estimates, and the refusals they lead to.
//!
//! The Hub's limits (docs/hub.md, "Limits"): at most 100,000 files per repo, 10,000 entries per
//! folder, and about 128 commits per hour per repo; a commit carries at most 100 files here.

use serde::Serialize;

use super::Plan;
use super::lookup::ModelDims;
use super::node::{NodeKind, Params, Windows};
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
    let Some(total) = total_windows else {
        return (None, 1);
    };
    let (Some(dims), Some(layers)) = (dims, layers) else {
        return (None, 1);
    };
    let dtype = capture.dtype.size();
    let per_window = |hook: Hook| u64::from(seq_len) * width(hook, dims, seq_len) * dtype;
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
    let windows = by_artifact.min(by_memory).min(total.max(1));
    (Some(windows), total.div_ceil(windows).max(1) as u32)
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
    let mut files = 0u64;
    let mut windows_known = plan.models.iter().all(|m| m.total_windows.is_some());
    for node in &plan.nodes {
        match &node.params {
            Params::Artifact { model, hook, .. } => {
                e.artifacts += 1;
                files += 1;
                let m = &plan.models[*model as usize];
                let windows = plan.nodes[node.inputs[0] as usize].params.windows_count();
                match (m.dims.as_ref(), windows) {
                    (Some(dims), Some(w)) => {
                        let bytes =
                            w * u64::from(seq_len) * width(*hook, dims, seq_len) * dtype + 1024;
                        total_bytes += bytes;
                        max_bytes = max_bytes.max(bytes);
                    }
                    _ => windows_known = false,
                }
            }
            _ if matches!(node.kind, NodeKind::Spectrum | NodeKind::WeightSpectrum) => files += 1,
            _ => {}
        }
    }
    let max_folder = plan
        .models
        .iter()
        .map(|m| u64::from(m.shards).max(m.layers.as_ref().map_or(0, |l| l.len() as u64)))
        .max()
        .unwrap_or(0);
    if all_known {
        let commits = files.div_ceil(FILES_PER_COMMIT).max(1) + 1;
        // Ledger: one segment per commit, the manifest and the compacted index.
        let files_in_repo = files + commits + 2;
        e.files_in_repo = Some(files_in_repo);
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
                    w * seq
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

/// Plans the Hub or the memory budget cannot take, with numbers and what to change.
pub fn refusals(spec: &SweepSpec, e: &Estimates) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let Some(files) = e.files_in_repo
        && files > MAX_FILES_PER_REPO
    {
        out.push(
            Diagnostic::error(
                "/output",
                format!("the plan writes {files} files to `{}`; the Hub allows {MAX_FILES_PER_REPO} per repo", spec.output),
            )
            .with_help("raise `limits.artifact_bytes` (fewer, larger shards), capture fewer layers or hooks, or split the sweep over several output repos"),
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
