//! The report's plots of fine-tuning updates (`metrics/updates.jsonl` and its summary): the
//! stable rank of each update and its alignment bonus against layer, and the layer means of
//! both against training step across an adapter's checkpoints.

use super::{Plot, ReportData, add_point};
use crate::ledger::updates::{UpdateRow, UpdateSummaryRow};

/// The subspace size the per-layer plots show: `srank` when the sweep asked for it, else the
/// first size of the table.
fn shown_k(rows: &[UpdateRow]) -> Option<&str> {
    rows.iter()
        .find(|r| r.k_choice == "srank")
        .or_else(|| rows.first())
        .map(|r| r.k_choice.as_str())
}

/// An adapter checkpoint as a label: `repo@revision[/subfolder]`.
fn checkpoint(adapter: &str, revision: &str, subfolder: Option<&str>) -> String {
    match subfolder {
        Some(folder) => format!("{adapter}@{revision}/{folder}"),
        None => format!("{adapter}@{revision}"),
    }
}

fn module_label(module: &str, part: Option<&str>) -> String {
    match part {
        Some(part) => format!("{module}.{part}"),
        None => module.to_owned(),
    }
}

/// One line per (adapter checkpoint, module) of whole matrices: `metric` against layer, at the
/// shown subspace size.
pub fn update_layer_plot(
    data: &ReportData,
    title: &str,
    y_label: &str,
    metric: fn(&UpdateRow) -> f64,
) -> Plot {
    let mut series = Vec::new();
    if let Some(k) = shown_k(&data.updates) {
        for row in &data.updates {
            let Some(layer) = row.layer else { continue };
            if row.k_choice != k || row.part.is_some() {
                continue;
            }
            let label = format!(
                "{} {}",
                checkpoint(&row.adapter, &row.revision, row.subfolder.as_deref()),
                module_label(&row.module, row.part.as_deref())
            );
            add_point(&mut series, label, (layer as f64, metric(row)));
        }
    }
    Plot {
        title: match shown_k(&data.updates) {
            Some(k) => format!("{title} (k = {k})"),
            None => title.to_owned(),
        },
        x_label: "layer".to_owned(),
        y_label: y_label.to_owned(),
        log_y: false,
        series,
        guides: Vec::new(),
        markers: true,
    }
}

/// One line per (adapter repo and revision, module) of whole matrices: the layer mean of
/// `metric` against training step, at the shown subspace size; empty unless some adapter has
/// several checkpoints.
pub fn update_trajectory_plot(
    data: &ReportData,
    title: &str,
    metric: fn(&UpdateSummaryRow) -> f64,
) -> Plot {
    let mut series = Vec::new();
    let k = data
        .update_summary
        .iter()
        .find(|r| r.k_choice == "srank")
        .or_else(|| data.update_summary.first())
        .map(|r| r.k_choice.clone());
    for row in &data.update_summary {
        if Some(&row.k_choice) != k.as_ref() || row.part.is_some() {
            continue;
        }
        let label = format!("{}@{} {}", row.adapter, row.revision, row.module);
        add_point(&mut series, label, (row.step as f64, metric(row)));
    }
    series.retain(|s| s.points.len() > 1);
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Plot {
        title: format!("{title} against training step (mean over layers)"),
        x_label: "training step".to_owned(),
        y_label: title.to_owned(),
        log_y: false,
        series,
        guides: Vec::new(),
        markers: true,
    }
}

/// The update plots of the page, with their element ids.
pub fn update_plots(data: &ReportData) -> Vec<(&'static str, Plot)> {
    vec![
        (
            "update-rank",
            update_layer_plot(data, "stable rank of the update ΔW", "stable rank", |r| {
                r.stable_rank_update
            }),
        ),
        (
            "update-bonus",
            update_layer_plot(
                data,
                "alignment with the base, output side (bonus = p / random)",
                "bonus",
                |r| r.bonus_left,
            ),
        ),
        (
            "update-trajectory",
            update_trajectory_plot(data, "stable rank of ΔW", |r| r.stable_rank_update.mean),
        ),
        (
            "update-bonus-trajectory",
            update_trajectory_plot(data, "output-side bonus", |r| r.bonus_left.mean),
        ),
    ]
}
