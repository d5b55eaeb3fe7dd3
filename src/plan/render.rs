//! Plan renderings: a readable summary, JSON for tools, DOT for graphviz, and `--explain`.
//! These build strings; printing is the CLI's job.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::node::NodeKind;
use super::{Node, NodeId, Plan};
use crate::spec::units::format_bytes;

/// How many models the text summary lists before it abbreviates.
const MODELS_LISTED: usize = 20;

fn unknown_or<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

/// A readable summary: counts by kind and by model, sizes, warnings. Never one line per node.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plan `{}` → {}", plan.name, plan.output);
    let e = &plan.estimates;
    let _ = writeln!(
        out,
        "\nmodels: {} (dimensions known for {})",
        e.models, e.models_with_dimensions
    );
    for m in plan.models.iter().take(MODELS_LISTED) {
        let layers = match &m.layers {
            Some(l) if l.is_empty() => "no layers".to_owned(),
            Some(l) => format!("{} layers ({}..={})", l.len(), l[0], l[l.len() - 1]),
            None => "layers unknown".to_owned(),
        };
        let pin = m.commit.as_deref().map_or_else(
            || "unpinned".to_owned(),
            |c| format!("commit {}", &c[..12.min(c.len())]),
        );
        let shards = if m.shards == 1 {
            "1 shard".to_owned()
        } else {
            format!("{} shards", m.shards)
        };
        let _ = writeln!(out, "  {:<48} {}, {}, {}", m.label(), layers, shards, pin);
    }
    if plan.models.len() > MODELS_LISTED {
        let _ = writeln!(out, "  … and {} more", plan.models.len() - MODELS_LISTED);
    }
    if !plan.adapters.is_empty() {
        let _ = writeln!(out, "\nadapters: {}", plan.adapters.len());
        for a in plan.adapters.iter().take(MODELS_LISTED) {
            let pin = a.commit.as_deref().map_or_else(
                || "unpinned".to_owned(),
                |c| format!("commit {}", &c[..12.min(c.len())]),
            );
            let base = plan.models[a.base as usize].label();
            let _ = writeln!(out, "  {:<48} step {}, on {base}, {pin}", a.label(), a.step);
        }
        if plan.adapters.len() > MODELS_LISTED {
            let _ = writeln!(out, "  … and {} more", plan.adapters.len() - MODELS_LISTED);
        }
    }
    let counts = plan.counts();
    let total: u64 = counts.values().sum();
    let _ = writeln!(out, "\nnodes: {total}");
    for kind in NodeKind::ALL {
        if let Some(n) = counts.get(&kind) {
            let _ = writeln!(out, "  {:<16} {n}", kind.as_str());
        }
    }
    let unpinned = plan.nodes.iter().filter(|n| n.id.is_none()).count();
    if unpinned > 0 {
        let _ = writeln!(
            out,
            "  ({unpinned} unpinned: their ids are known once `run` resolves revisions to commit shas)"
        );
    }
    let _ = writeln!(out, "\nestimates:");
    let bytes = |b: Option<u64>| b.map_or_else(|| "unknown".to_owned(), format_bytes);
    let _ = writeln!(
        out,
        "  artifacts        {} (largest {}, total {})",
        e.artifacts,
        bytes(e.max_artifact_bytes),
        bytes(e.total_artifact_bytes)
    );
    let files = e.files_in_repo.map_or_else(
        || format!("at least {}", e.min_files_in_repo),
        |files| files.to_string(),
    );
    let _ = writeln!(
        out,
        "  files in repo    {files} (at most {} in one folder)",
        unknown_or(e.max_files_per_folder)
    );
    let hours = e.commit_hours.map(|h| {
        if h < 1.0 {
            format!("{:.0} min", h * 60.0)
        } else {
            format!("{h:.1} h")
        }
    });
    let _ = writeln!(
        out,
        "  commits          {} (≤100 files each; ≥ {} of the Hub's 128/hour)",
        unknown_or(e.commits),
        unknown_or(hours)
    );
    let _ = writeln!(out, "  peak memory      {}", bytes(e.peak_memory_bytes));
    if e.models_with_dimensions < e.models {
        let _ = writeln!(
            out,
            "  (sizes are unknown for models whose config.json is not at hand: a local folder or the HF cache)"
        );
    }
    out
}

/// The plan as JSON: `{"name","output","models",["adapters",]"nodes":[{"id","kind","label","inputs",
/// "params"}],"counts","estimates","diagnostics"}`, pretty-printed. An unpinned node has
/// `"id": null`, and inputs that are unpinned are named by label.
///
/// Streamed: each node is rendered while it is written, so a plan of a million nodes takes no
/// more memory as JSON than as a plan (the whole document is never held).
pub fn write_json<W: std::io::Write>(plan: &Plan, out: W) -> std::io::Result<()> {
    let counts: BTreeMap<&str, u64> = plan
        .counts()
        .into_iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let document = JsonPlan {
        name: &plan.name,
        output: plan.output.to_string(),
        models: &plan.models,
        adapters: &plan.adapters,
        nodes: JsonNodes(plan),
        counts,
        estimates: &plan.estimates,
        diagnostics: &plan.diagnostics,
    };
    let mut serializer = serde_json::Serializer::pretty(out);
    document.serialize(&mut serializer)?;
    let mut out = serializer.into_inner();
    out.write_all(b"\n")?;
    out.flush()
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    name: &'a str,
    output: String,
    models: &'a [super::PlannedModel],
    /// Absent for sweeps without adapters (their plans read as before).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    adapters: &'a [super::PlannedAdapter],
    nodes: JsonNodes<'a>,
    counts: BTreeMap<&'static str, u64>,
    estimates: &'a super::Estimates,
    diagnostics: &'a [crate::spec::Diagnostic],
}

/// The nodes, serialized one at a time.
struct JsonNodes<'a>(&'a Plan);

impl Serialize for JsonNodes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let plan = self.0;
        serializer.collect_seq(plan.nodes.iter().map(|node| JsonNode {
            id: node.id,
            kind: node.kind.as_str(),
            label: plan.label(node),
            inputs: JsonInputs(plan, node),
            params: plan.any_params(node),
            unpinned: node.id.is_none(),
        }))
    }
}

#[derive(Serialize)]
struct JsonNode<'a> {
    id: Option<NodeId>,
    kind: &'static str,
    label: String,
    inputs: JsonInputs<'a>,
    params: super::record::AnyParams<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unpinned: bool,
}

/// A node's inputs: ids, or labels of unpinned inputs.
struct JsonInputs<'a>(&'a Plan, &'a Node);

impl Serialize for JsonInputs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let JsonInputs(plan, node) = *self;
        serializer.collect_seq(node.inputs.iter().map(|&i| {
            let input = &plan.nodes[i as usize];
            input.id.map_or_else(|| plan.label(input), |id| id.to_hex())
        }))
    }
}

/// The DAG in graphviz DOT.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph plan {\n  rankdir=LR;\n  node [shape=box, fontsize=10];\n");
    for (i, node) in plan.nodes.iter().enumerate() {
        let label = plan.label(node).replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(out, "  n{i} [label=\"{label}\"];");
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        for input in &node.inputs {
            let _ = writeln!(out, "  n{input} -> n{i};");
        }
    }
    out.push_str("}\n");
    out
}

/// Why `--explain` found no single node.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Nothing matched.
    #[error("no node id starts with `{0}` and no label contains it")]
    NotFound(String),
    /// Several matched.
    #[error("`{query}` matches {count} nodes; give more of the id")]
    Ambiguous {
        /// The query.
        query: String,
        /// How many matched.
        count: usize,
    },
}

/// The record behind a node: matched by id prefix (at least 4 hex digits) or label substring.
pub fn explain(plan: &Plan, query: &str) -> Result<String, ExplainError> {
    let query_lower = query.to_ascii_lowercase();
    let is_hex = query.len() >= 4 && query.bytes().all(|b| b.is_ascii_hexdigit());
    let matches: Vec<&Node> = plan
        .nodes
        .iter()
        .filter(|n| {
            if is_hex {
                n.id.is_some_and(|id| id.to_hex().starts_with(&query_lower))
            } else {
                plan.label(n).contains(query)
            }
        })
        .collect();
    let node = match matches.as_slice() {
        [] => return Err(ExplainError::NotFound(query.to_owned())),
        [one] => *one,
        many => {
            // An exact label wins over labels that merely contain it.
            match many.iter().find(|n| plan.label(n) == query) {
                Some(exact) => *exact,
                None => {
                    return Err(ExplainError::Ambiguous {
                        query: query.to_owned(),
                        count: many.len(),
                    });
                }
            }
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "node   {}", plan.label(node));
    match (node.id, plan.record(node)) {
        (Some(id), Some(record)) => {
            let _ = writeln!(
                out,
                "id     {id}  (sha256 of the record below, as one line)"
            );
            let pretty: serde_json::Value = serde_json::from_str(&record).unwrap_or_default();
            let _ = writeln!(
                out,
                "record {}",
                serde_json::to_string_pretty(&pretty).unwrap_or(record)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "id     unpinned: a commit sha or data hash it depends on is not known before `run`"
            );
            let _ = writeln!(
                out,
                "params {}",
                serde_json::to_string_pretty(&plan.params_json(node)).unwrap_or_default()
            );
        }
    }
    Ok(out)
}
