//! Comparing a rerun with the ledger: the rebuilt plan's ids against the recorded ones, then
//! each rerun node's files (sha256 from both ledgers) and metrics (within a tolerance).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::ledger::{Record, Tolerance, max_abs};
use crate::plan::id::canonical_json;
use crate::plan::{NodeKind, Plan};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As recorded (or within tolerance).
    Ok,
    /// Different from the record.
    Fail,
    /// Not compared (the ledger has no result for the node).
    Skip,
}

impl Status {
    /// As printed in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the comparison table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Node id (hex) in the rebuilt plan, or the recorded one for a node the plan lacks.
    pub node: String,
    /// Its label in the plan (`artifact MODEL@REV blocks.0.hook_resid_post shard 0`).
    pub label: String,
    /// Node kind.
    pub kind: String,
    /// What is compared: `id`, `rerun`, `file PATH`, `files`, `metrics`, `metric PATH`, `record`.
    pub check: String,
    /// What the ledger says.
    pub expected: String,
    /// What the rebuild or rerun gave.
    pub got: String,
    /// Outcome.
    pub status: Status,
}

fn short(text: &str) -> &str {
    &text[..text.len().min(12)]
}

/// The canonical parts of a record that a rebuilt node's id covers, for naming what differs.
fn id_parts(record: &Record) -> [(&'static str, serde_json::Value); 3] {
    [
        ("params", record.params.clone()),
        ("inputs", serde_json::json!(record.inputs)),
        ("pins", record.pins.clone()),
    ]
}

/// Checks that every node of the rebuilt plan has its id recorded, and every successful
/// recorded node is in the plan. Returns the rows (failures and skips only) and the indices of
/// the plan nodes whose id the ledger records with a result.
pub fn check_ids(plan: &Plan, records: &HashMap<String, Record>) -> (Vec<Row>, HashSet<usize>) {
    let mut rows = Vec::new();
    let mut matched = HashSet::new();
    let ids: Vec<String> = plan
        .nodes
        .iter()
        .map(|n| n.id.map(|id| id.to_hex()).unwrap_or_default())
        .collect();
    // Exact matches first, so that a node under another id is paired only with a record no
    // node of the plan claims.
    let mut claimed: HashSet<&str> = ids
        .iter()
        .filter(|id| records.contains_key(*id))
        .map(String::as_str)
        .collect();
    // Records by kind and canonical parameters, to find the twin of a node under another id.
    let mut by_params: HashMap<(&str, String), Vec<&Record>> = HashMap::new();
    for record in records.values() {
        by_params
            .entry((record.kind.as_str(), canonical_json(&record.params)))
            .or_default()
            .push(record);
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        let id = &ids[i];
        let row = |check: &str, expected: String, got: String, status| Row {
            node: id.clone(),
            label: plan.label(node),
            kind: node.kind.as_str().to_owned(),
            check: check.to_owned(),
            expected,
            got,
            status,
        };
        match records.get(id) {
            Some(record) if record.error.is_none() => {
                matched.insert(i);
            }
            Some(record) => rows.push(row(
                "record",
                format!(
                    "a result (the run failed it: {})",
                    record.error.as_deref().unwrap_or_default()
                ),
                "not rerun".into(),
                Status::Skip,
            )),
            None => {
                // The same node (kind and parameters) under another id: a pin or an input moved.
                let key = (node.kind.as_str(), canonical_json(&plan.params_json(node)));
                let twin = by_params.get(&key).and_then(|twins| {
                    twins
                        .iter()
                        .copied()
                        .find(|r| !claimed.contains(r.id.as_str()))
                });
                match twin {
                    Some(recorded) => {
                        claimed.insert(recorded.id.as_str());
                        let canonical: serde_json::Value = plan
                            .record(node)
                            .and_then(|r| serde_json::from_str(&r).ok())
                            .unwrap_or_default();
                        let differs: Vec<&str> = id_parts(recorded)
                            .iter()
                            .filter(|(name, value)| canonical[*name] != *value)
                            .map(|(name, _)| *name)
                            .collect();
                        rows.push(row(
                            "id",
                            short(&recorded.id).to_owned(),
                            format!("{} ({} differ)", short(id), differs.join(", ")),
                            Status::Fail,
                        ));
                    }
                    None => rows.push(row(
                        "id",
                        "(not in the ledger)".into(),
                        short(id).to_owned(),
                        // A node the run never reached has nothing to compare with; if the
                        // spec changed, the recorded nodes missing from the plan fail below.
                        Status::Skip,
                    )),
                }
            }
        }
    }
    let mut unclaimed: Vec<&Record> = records
        .values()
        .filter(|r| r.error.is_none() && !claimed.contains(r.id.as_str()))
        .collect();
    unclaimed.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
    for record in unclaimed {
        rows.push(Row {
            node: record.id.clone(),
            label: format!("{} {}", record.kind, record.params),
            kind: record.kind.clone(),
            check: "id".into(),
            expected: short(&record.id).to_owned(),
            got: "(not in the rebuilt plan)".into(),
            status: Status::Fail,
        });
    }
    (rows, matched)
}

/// Compares the rerun of one plan node with its record.
pub fn compare_node(
    plan: &Plan,
    index: usize,
    recorded: &Record,
    rerun: Option<&Record>,
    tolerance: &Tolerance,
) -> Vec<Row> {
    let node = &plan.nodes[index];
    let row = |check: String, expected: String, got: String, status| Row {
        node: recorded.id.clone(),
        label: plan.label(node),
        kind: recorded.kind.clone(),
        check,
        expected,
        got,
        status,
    };
    let rerun = match rerun {
        Some(r) if r.error.is_none() => r,
        Some(r) => {
            return vec![row(
                "rerun".into(),
                "a result".into(),
                format!("failed: {}", r.error.as_deref().unwrap_or_default()),
                Status::Fail,
            )];
        }
        None => {
            return vec![row(
                "rerun".into(),
                "a result".into(),
                "no record (the rerun did not reach it)".into(),
                Status::Fail,
            )];
        }
    };
    let mut rows = Vec::new();
    for file in &recorded.files {
        let expected = format!("{} ({} B)", short(&file.sha256), file.size);
        let (got, status) = match rerun.files.iter().find(|f| f.path == file.path) {
            None => ("missing".to_owned(), Status::Fail),
            Some(f) if f.sha256 == file.sha256 && f.size == file.size => {
                (expected.clone(), Status::Ok)
            }
            Some(f) if tolerance.bitwise => {
                (format!("{} ({} B)", short(&f.sha256), f.size), Status::Fail)
            }
            // Off the CPU, bytes may differ by rounding: the metrics carry the comparison.
            Some(f) => (
                format!("{} ({} B), not bitwise here", short(&f.sha256), f.size),
                Status::Ok,
            ),
        };
        rows.push(row(format!("file {}", file.path), expected, got, status));
    }
    for file in &rerun.files {
        if !recorded.files.iter().any(|f| f.path == file.path) {
            rows.push(row(
                format!("file {}", file.path),
                "(not recorded)".into(),
                short(&file.sha256).to_owned(),
                Status::Fail,
            ));
        }
    }
    if recorded.metrics.is_some() || rerun.metrics.is_some() {
        let (a, b) = (
            recorded.metrics.clone().unwrap_or_default(),
            rerun.metrics.clone().unwrap_or_default(),
        );
        let scale = max_abs(&a);
        let mut differences = Vec::new();
        compare_values(&a, &b, tolerance.relative, scale, "", &mut differences);
        let count = count_values(&a);
        if differences.is_empty() {
            let got = if a == b {
                "identical".to_owned()
            } else {
                format!("within relative {:e}", tolerance.relative)
            };
            rows.push(row(
                "metrics".into(),
                match count {
                    1 => "1 value".to_owned(),
                    n => format!("{n} values"),
                },
                got,
                Status::Ok,
            ));
        } else {
            for (at, expected, got) in differences {
                rows.push(row(format!("metric {at}"), expected, got, Status::Fail));
            }
        }
    }
    if rows.is_empty() {
        // Nothing but the record itself (a capture's output is its artifacts; ledger commits
        // mark progress): the rerun recorded the same id.
        rows.push(row(
            "record".into(),
            short(&recorded.id).to_owned(),
            short(&rerun.id).to_owned(),
            Status::Ok,
        ));
    }
    rows
}

/// A capture's summary row over the artifacts it wrote: how many match the ledger.
pub fn capture_row(plan: &Plan, capture: usize, artifact_rows: &[&Row]) -> Row {
    let node = &plan.nodes[capture];
    let files: Vec<&&Row> = artifact_rows
        .iter()
        .filter(|r| r.check.starts_with("file "))
        .collect();
    let differ: Vec<&str> = files
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| r.check.trim_start_matches("file "))
        .collect();
    Row {
        node: node.id.map(|id| id.to_hex()).unwrap_or_default(),
        label: plan.label(node),
        kind: NodeKind::Capture.as_str().to_owned(),
        check: "files".into(),
        expected: format!("{} as recorded", files.len()),
        got: if differ.is_empty() {
            format!("{} as recorded", files.len())
        } else {
            format!("{} differ: {}", differ.len(), differ.join(" "))
        },
        status: if differ.is_empty() {
            Status::Ok
        } else {
            Status::Fail
        },
    }
}

fn count_values(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(a) => a.iter().map(count_values).sum(),
        serde_json::Value::Object(o) => o.values().map(count_values).sum(),
        _ => 1,
    }
}

/// Collects `(path, expected, got)` for every leaf that differs: integers and strings exactly,
/// floats within `relative` of the larger magnitude, with a floor of `relative × 1e-6 ×
/// scale` (the largest value of the record) so that values rounding to near zero compare
/// against the rounding of the large ones.
fn compare_values(
    expected: &serde_json::Value,
    got: &serde_json::Value,
    relative: f64,
    scale: f64,
    at: &str,
    out: &mut Vec<(String, String, String)>,
) {
    use serde_json::Value;
    let child = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match (expected, got) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = child(key);
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => compare_values(x, y, relative, scale, &path, out),
                    (x, y) => out.push((path, shown(x), shown(y))),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare_values(x, y, relative, scale, &format!("{at}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_i64(), y.as_i64()) {
                (Some(p), Some(q)) => p == q,
                _ => {
                    let (p, q) = (
                        x.as_f64().unwrap_or(f64::NAN),
                        y.as_f64().unwrap_or(f64::NAN),
                    );
                    let diff = (p - q).abs();
                    diff <= relative * p.abs().max(q.abs()) || diff <= relative * 1e-6 * scale
                }
            };
            if !same {
                out.push((at.to_owned(), x.to_string(), y.to_string()));
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push((at.to_owned(), shown(Some(a)), shown(Some(b)))),
    }
}

fn shown(value: Option<&serde_json::Value>) -> String {
    match value {
        None => "(absent)".into(),
        Some(serde_json::Value::Array(a)) => format!("[{} values]", a.len()),
        Some(v) => {
            let text = v.to_string();
            if text.len() > 40 {
                format!("{}…", &text[..text.floor_char_boundary(40)])
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn differences(a: serde_json::Value, b: serde_json::Value, rel: f64) -> Vec<String> {
        let mut out = Vec::new();
        compare_values(&a, &b, rel, max_abs(&a), "", &mut out);
        out.into_iter().map(|(at, _, _)| at).collect()
    }

    #[test]
    fn integers_and_strings_compare_exactly_floats_within_tolerance() {
        let a = serde_json::json!({"k90": 3, "commit": "ab", "raw": {"top": [100.0, 1e-12]}});
        assert!(differences(a.clone(), a.clone(), 0.0).is_empty());
        let b =
            serde_json::json!({"k90": 3, "commit": "ab", "raw": {"top": [100.0 + 1e-8, 1.05e-12]}});
        // 1e-8 on 100 is 1e-10 relative; 5e-14 off near zero is under 1e-9 × 1e-6 × 100.
        assert!(differences(a.clone(), b.clone(), 1e-9).is_empty());
        assert_eq!(
            differences(a.clone(), b, 1e-12),
            ["raw.top[0]", "raw.top[1]"]
        );
        let c = serde_json::json!({"k90": 4, "commit": "ac", "raw": {"top": [100.0]}});
        assert_eq!(differences(a, c, 1.0), ["commit", "k90", "raw.top"]);
    }
}
