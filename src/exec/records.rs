//! Ledger records of plan nodes, paths of analysis files, and small helpers of the run.

use std::collections::HashSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::capture::{artifact_layout, model_metadata};
use super::pin::PinnedModel;
use crate::ledger::{Record, Timing, Tolerance};
use crate::plan::{Node, Params, Plan, Windows, estimate};
use crate::spec::{ModelInstance, SweepSpec};

/// The record of a node from its canonical plan record (same id, params, inputs and pins), with
/// timing when `started` is given. Nodes reaching here are pinned (the run checks that first).
pub fn record(plan: &Plan, node: &Node, started: Option<Instant>) -> Record {
    let canonical: serde_json::Value = plan
        .record(node)
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or_default();
    let inputs = canonical["inputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Record {
        id: node.id.map(|id| id.to_hex()).unwrap_or_default(),
        kind: node.kind.as_str().to_owned(),
        version: node.kind.version(),
        params: canonical["params"].clone(),
        inputs,
        pins: canonical["pins"].clone(),
        files: Vec::new(),
        metrics: None,
        timing: started.map(|s| Timing {
            started: now_rfc3339_minus(s.elapsed()),
            seconds: s.elapsed().as_secs_f64(),
        }),
        device: None,
        error: None,
    }
}

/// Bytes of the activation artifacts still to make — each file whole, header and token ids
/// included, exactly as capture will write it — for the progress total.
pub fn pending_artifact_bytes(
    spec: &SweepSpec,
    plan: &Plan,
    pinned: &[(ModelInstance, PinnedModel)],
    done: &HashSet<usize>,
) -> u64 {
    let Some(capture) = &spec.capture else {
        return 0;
    };
    plan.nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !done.contains(i))
        .filter_map(|(_, node)| {
            let Params::Artifact {
                model, hook, layer, ..
            } = node.params
            else {
                return None;
            };
            let (instance, pinned) = pinned.get(model as usize)?;
            let dims = plan.models[model as usize].dims?;
            let seq_len = pinned.windows.seq_len();
            let windows = match plan.nodes[node.inputs[0] as usize].params {
                Params::Capture {
                    windows: Windows::Range([first, last]),
                    ..
                } => (first as usize, last as usize),
                Params::Capture {
                    windows: Windows::All(_),
                    ..
                } => (0, pinned.windows.n_windows()),
                _ => return None,
            };
            let metadata = model_metadata(
                &instance.source.to_string(),
                &pinned.commit,
                &instance.revision,
            );
            let (specs, metadata) = artifact_layout(
                &metadata,
                &node.id.map(|id| id.to_hex()).unwrap_or_default(),
                &hook.full_name(layer.map(|l| l as usize)),
                windows,
                (windows.1 - windows.0) * seq_len,
                estimate::width(hook, &dims, seq_len as u32) as usize,
                capture.dtype,
                capture.pool,
            );
            crate::sink::safetensors::file_size(&specs, &metadata)
                .ok()
                .map(|size| size as u64)
        })
        .sum()
}

/// Tolerances `reproduce` applies by default, recorded in the manifest.
pub fn default_tolerances() -> Vec<Tolerance> {
    vec![
        // The same binary on the same CPU is deterministic: artifacts must match bitwise.
        Tolerance {
            device: "cpu".into(),
            dtype: "f32".into(),
            relative: 1e-9,
            bitwise: true,
        },
        Tolerance {
            device: "cpu".into(),
            dtype: "f16".into(),
            relative: 1e-9,
            bitwise: true,
        },
        Tolerance {
            device: "cpu".into(),
            dtype: "bf16".into(),
            relative: 1e-9,
            bitwise: true,
        },
        // GPU kernels reorder sums: compare metrics, not bytes.
        Tolerance {
            device: "cuda".into(),
            dtype: "f32".into(),
            relative: 1e-4,
            bitwise: false,
        },
        Tolerance {
            device: "cuda".into(),
            dtype: "f16".into(),
            relative: 1e-2,
            bitwise: false,
        },
        Tolerance {
            device: "cuda".into(),
            dtype: "bf16".into(),
            relative: 2e-2,
            bitwise: false,
        },
    ]
}

/// Now, in RFC 3339 UTC (the Hub's timestamp shape).
pub fn now_rfc3339() -> String {
    now_rfc3339_minus(std::time::Duration::ZERO)
}

fn now_rfc3339_minus(ago: std::time::Duration) -> String {
    let secs = SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::hub::server::iso8601(secs)
}
