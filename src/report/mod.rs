//! Reports: the metrics tables of an output repo drawn as one self-contained HTML page (inline
//! SVG, no script, no network asset), or the numbers as CSV or JSON. Pure string building; the
//! CLI fetches the tables and files.

mod columns;
mod svg;
mod updates;

use std::fmt::Write as _;

use serde::Serialize;

use crate::ledger::tables::{OverlapRow, SpectrumRow, WeightRow};

pub use svg::{Guide, Plot, Series, render as render_svg};
pub use updates::{update_layer_plot, update_trajectory_plot};

/// What a report draws.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReportData {
    /// The repo as written (`local://ns/name@rev`).
    pub repo: String,
    /// Base URL of the repo's files, for links (`…/resolve/REV/`); empty for no links.
    pub file_base: String,
    /// Rows of `metrics/spectra.jsonl`.
    pub spectra: Vec<SpectrumRow>,
    /// Rows of `metrics/overlaps.jsonl`.
    pub overlaps: Vec<OverlapRow>,
    /// Rows of `metrics/weights.jsonl`.
    pub weights: Vec<WeightRow>,
    /// Rows of `metrics/updates.jsonl` (sweeps with adapters).
    pub updates: Vec<crate::ledger::updates::UpdateRow>,
    /// Rows of `metrics/updates_summary.jsonl`.
    pub update_summary: Vec<crate::ledger::updates::UpdateSummaryRow>,
    /// The chosen layer.
    pub layer: Option<u32>,
    /// Singular values of the chosen layer's spectra: label and values (non-increasing).
    pub layer_spectra: Vec<(String, Vec<f64>)>,
}

/// Why rows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A table line is not a row of the documented schema.
    #[error("`{path}` line {line} is not a valid row")]
    Row {
        /// Table path.
        path: String,
        /// 1-based line.
        line: usize,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Parses a JSONL table.
pub fn parse_rows<T: serde::de::DeserializeOwned>(
    path: &str,
    bytes: &[u8],
) -> Result<Vec<T>, ReportError> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|source| ReportError::Row {
                path: path.to_owned(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// Adds `point` to the series labelled `label`, starting it if it is new (series keep the order
/// their first points came in).
fn add_point(series: &mut Vec<Series>, label: String, point: (f64, f64)) {
    match series.iter_mut().find(|s| s.label == label) {
        Some(s) => s.points.push(point),
        None => series.push(Series {
            label,
            points: vec![point],
        }),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line per (model, revision, hook) of the centred spectra, `metric` against layer.
pub fn layer_plot(data: &ReportData, title: &str, metric: &dyn Fn(&SpectrumRow) -> f64) -> Plot {
    let mut series: Vec<Series> = Vec::new();
    for row in data
        .spectra
        .iter()
        .filter(|r| r.centring == "centred" && r.layer.is_some())
    {
        let label = format!("{}@{} {}", row.model, row.revision, row.hook);
        let point = (f64::from(row.layer.unwrap_or(0)), metric(row));
        add_point(&mut series, label, point);
    }
    Plot {
        title: title.to_owned(),
        x_label: "layer".to_owned(),
        y_label: title.to_owned(),
        log_y: false,
        series,
        guides: Vec::new(),
        markers: true,
    }
}

/// One line per (pair, hook, k) of the overlaps, γ against layer, with the random baselines
/// dashed.
pub fn overlap_plot(data: &ReportData) -> Plot {
    let mut series: Vec<Series> = Vec::new();
    let mut guides: Vec<Guide> = Vec::new();
    for row in data.overlaps.iter().filter(|r| r.layer.is_some()) {
        // The random baseline k/d, once per value: what γ of unrelated subspaces would be.
        if !guides.iter().any(|g| g.y == row.baseline) {
            let width = (row.k as f64 / row.baseline).round();
            guides.push(Guide {
                label: format!("k/d = {}/{width}", row.k),
                y: row.baseline,
            });
        }
        let label = format!(
            "{}@{} vs {}@{} {} k={}",
            row.model, row.revision, row.base_model, row.base_revision, row.hook, row.k
        );
        let point = (f64::from(row.layer.unwrap_or(0)), row.gamma);
        add_point(&mut series, label, point);
    }
    Plot {
        title: "subspace overlap γ".to_owned(),
        x_label: "layer".to_owned(),
        y_label: "γ (dashed: baseline k/d)".to_owned(),
        log_y: false,
        series,
        guides,
        markers: true,
    }
}

/// The training step a revision names (`step1000` → 1000), as Pythia's checkpoint branches do.
fn training_step(revision: &str) -> Option<f64> {
    revision
        .strip_prefix("step")
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n as f64)
}

/// One line per (model, hook, layer) of the centred spectra, `metric` against training step
/// (revisions named `stepN`; other revisions are left out).
pub fn trajectory_plot(
    data: &ReportData,
    title: &str,
    metric: &dyn Fn(&SpectrumRow) -> f64,
) -> Plot {
    let mut series: Vec<Series> = Vec::new();
    for row in data.spectra.iter().filter(|r| r.centring == "centred") {
        let Some(step) = training_step(&row.revision) else {
            continue;
        };
        let layer = row.layer.map_or("final".to_owned(), |l| l.to_string());
        let label = format!("{} {} layer {layer}", row.model, row.hook);
        let point = (step, metric(row));
        add_point(&mut series, label, point);
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Plot {
        title: format!("{title} against training step"),
        x_label: "training step".to_owned(),
        y_label: title.to_owned(),
        log_y: false,
        series,
        guides: Vec::new(),
        markers: true,
    }
}

/// The centred stable rank against training step, drawn when some line has two steps or more
/// (a sweep over `stepN` revisions); empty otherwise.
fn rank_trajectory(data: &ReportData) -> Plot {
    let mut plot = trajectory_plot(data, "stable rank", &|r| r.metrics.stable_rank);
    if !plot.series.iter().any(|s| s.points.len() > 1) {
        plot.series.clear();
    }
    plot
}

/// Singular values below this fraction of the largest are left out of the spectrum plot: an
/// eigenvalue of a Gram matrix is accurate to about `1e-16·λ₁`, so a singular value to about
/// `1e-8·σ₁` (docs/analysis.md).
const NOISE_FLOOR: f64 = 1e-8;

/// One line per entry of `data.layer_spectra`: singular values against index, log scale,
/// titled with `data.layer` (values below the noise floor left out).
pub fn spectrum_plot(data: &ReportData) -> Plot {
    Plot {
        title: format!(
            "singular values at layer {}",
            data.layer.map_or("–".to_owned(), |l| l.to_string())
        ),
        x_label: "index (values below 1e-8·σ₁ are rounding noise, not drawn)".to_owned(),
        y_label: "σ (log scale)".to_owned(),
        log_y: true,
        series: data
            .layer_spectra
            .iter()
            .map(|(label, values)| Series {
                label: label.clone(),
                points: values
                    .iter()
                    .enumerate()
                    // Below ~1e-8·σ₁ the Gram route gives rounding noise, not singular values
                    // (the d − n directions when fewer tokens than dimensions were seen).
                    .filter(|(_, v)| **v > NOISE_FLOOR * values.first().copied().unwrap_or(0.0))
                    .map(|(i, v)| (i as f64 + 1.0, *v))
                    .collect(),
            })
            .collect(),
        guides: Vec::new(),
        markers: false,
    }
}

/// One line per (model, revision, base, module, part) of the weight spectra: stable rank
/// against layer (weights outside the blocks, such as embeddings, are in the table only).
pub fn weight_plot(data: &ReportData) -> Plot {
    let mut series: Vec<Series> = Vec::new();
    for row in data.weights.iter().filter(|r| r.layer.is_some()) {
        let what = match &row.delta_from {
            Some(base) => format!("{}@{} − @{base}", row.model, row.revision),
            None => format!("{}@{}", row.model, row.revision),
        };
        let label = match &row.part {
            Some(part) => format!("{what} {}.{part}", row.module),
            None => format!("{what} {}", row.module),
        };
        let point = (row.layer.unwrap_or(0) as f64, row.metrics.stable_rank);
        add_point(&mut series, label, point);
    }
    let delta = data.weights.iter().any(|r| r.delta_from.is_some());
    Plot {
        title: if delta {
            "stable rank of weights and weight deltas".to_owned()
        } else {
            "stable rank of weights".to_owned()
        },
        x_label: "layer".to_owned(),
        y_label: "stable rank".to_owned(),
        log_y: false,
        series,
        guides: Vec::new(),
        markers: true,
    }
}

/// The HTML page: plots of stable and effective rank against layer, overlap against layer (with
/// the random baselines), the chosen layer's spectrum on a log scale, the stable rank of the
/// weights (or weight deltas) against layer, and the tables with links to the files.
pub fn render_html(data: &ReportData) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>hubsweep report: {repo}</title><style>\
         body{{font-family:sans-serif;margin:16px;color:#222}}\
         figure{{margin:8px 0}} table{{border-collapse:collapse;font-size:12px}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}\
         th{{background:#eee}} td.l{{text-align:left;overflow-wrap:anywhere}}\
         </style></head><body>\n<h1>hubsweep report</h1><p>{repo}</p>\n",
        repo = escape(&data.repo)
    );
    let plots = [
        (
            "stable-rank",
            layer_plot(data, "stable rank", &|r| r.metrics.stable_rank),
        ),
        (
            "effective-rank",
            layer_plot(data, "effective rank", &|r| r.metrics.effective_rank),
        ),
        ("overlap", overlap_plot(data)),
        ("spectrum", spectrum_plot(data)),
        ("weight-rank", weight_plot(data)),
        ("rank-trajectory", rank_trajectory(data)),
    ];
    let plots = plots.into_iter().chain(updates::update_plots(data));
    for (id, plot) in plots {
        if plot.series.is_empty() {
            continue;
        }
        let _ = writeln!(
            html,
            "<figure id=\"{id}\">{}</figure>",
            svg::render(&plot, 1100, 360)
        );
    }
    let link = |file: Option<&str>| match file {
        Some(f) if !data.file_base.is_empty() => format!(
            "<a href=\"{}{}\">{}</a>",
            escape(&data.file_base),
            escape(f),
            escape(f.rsplit('/').next().unwrap_or(f))
        ),
        Some(f) => escape(f),
        None => String::new(),
    };
    if !data.spectra.is_empty() {
        columns::html_table(&mut html, "spectra", columns::SPECTRA, &data.spectra, &link);
    }
    if !data.overlaps.is_empty() {
        columns::html_table(
            &mut html,
            "overlaps",
            columns::OVERLAPS,
            &data.overlaps,
            &link,
        );
    }
    if !data.weights.is_empty() {
        columns::html_table(&mut html, "weights", columns::WEIGHTS, &data.weights, &link);
    }
    if !data.updates.is_empty() {
        columns::html_table(&mut html, "updates", columns::UPDATES, &data.updates, &link);
    }
    html.push_str("</body></html>\n");
    html
}

/// The spectra, overlaps and weights rows as JSON.
pub fn render_json(data: &ReportData) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "repo": data.repo,
        "spectra": data.spectra,
        "overlaps": data.overlaps,
        "weights": data.weights,
        "updates": data.updates,
        "updates_summary": data.update_summary,
    }))
    .unwrap_or_default()
}

/// The spectra rows as CSV (the table the plots draw), then the overlaps and weights, each
/// section headed by a `# table` line.
pub fn render_csv(data: &ReportData) -> String {
    let mut out = String::new();
    columns::csv_section(&mut out, "spectra", columns::SPECTRA, &data.spectra);
    columns::csv_section(&mut out, "overlaps", columns::OVERLAPS, &data.overlaps);
    columns::csv_section(&mut out, "weights", columns::WEIGHTS, &data.weights);
    if !data.updates.is_empty() {
        columns::csv_section(&mut out, "updates", columns::UPDATES, &data.updates);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tables::ScalarMetrics;

    fn row(model: &str, layer: u32, stable_rank: f64) -> SpectrumRow {
        SpectrumRow {
            model: model.into(),
            revision: "main".into(),
            hook: "hook_resid_post".into(),
            layer: Some(layer),
            centring: "centred".into(),
            rows: 10,
            width: 4,
            metrics: ScalarMetrics {
                count: 4,
                frobenius_norm_sq: 1.0,
                spectral_norm: 1.0,
                stable_rank,
                effective_rank: stable_rank + 0.5,
                participation_ratio: 1.0,
                k90: 2,
                k99: 3,
            },
            node: "ab".into(),
            file: Some("spectra/x/layer000.safetensors".into()),
        }
    }

    #[test]
    fn the_trajectory_has_one_line_per_layer_ordered_by_training_step() {
        let at = |revision: &str, layer: u32, rank: f64| SpectrumRow {
            revision: revision.into(),
            ..row("a", layer, rank)
        };
        let data = ReportData {
            spectra: vec![
                at("step1000", 0, 2.0),
                at("step0", 0, 1.0),
                at("step1000", 1, 4.0),
                at("main", 0, 9.0),
            ],
            ..ReportData::default()
        };
        let plot = trajectory_plot(&data, "stable rank", &|r| r.metrics.stable_rank);
        let lines: Vec<(&str, &[(f64, f64)])> = plot
            .series
            .iter()
            .map(|s| (s.label.as_str(), s.points.as_slice()))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "a hook_resid_post layer 0",
                    &[(0.0, 1.0), (1000.0, 2.0)][..]
                ),
                ("a hook_resid_post layer 1", &[(1000.0, 4.0)][..]),
            ],
            "`main` names no step and is left out"
        );
    }

    #[test]
    fn the_page_draws_one_line_per_model_in_each_rank_plot() {
        let data = ReportData {
            repo: "local://ns/<name>".into(),
            file_base: "http://hub/ns/name/resolve/main/".into(),
            spectra: vec![
                row("a", 0, 1.5),
                row("a", 1, 2.5),
                row("b", 0, 3.0),
                row("b", 1, 1.0),
            ],
            layer: Some(1),
            layer_spectra: vec![("a".into(), vec![10.0, 1.0, 0.1, 0.0])],
            ..ReportData::default()
        };
        let html = render_html(&data);
        // Two rank plots × two models, plus the spectrum's one line.
        assert_eq!(html.matches("<polyline").count(), 5);
        assert!(html.contains("local://ns/&lt;name&gt;"), "text is escaped");
        assert!(html.contains(">stable rank</text>"));
        assert!(
            html.contains(
                "href=\"http://hub/ns/name/resolve/main/spectra/x/layer000.safetensors\""
            )
        );
        assert!(!html.contains("http-equiv") && !html.contains("<script"));
        let csv = render_csv(&data);
        assert_eq!(csv.lines().filter(|l| l.starts_with("\"a\"")).count(), 2);
    }

    #[test]
    fn the_page_draws_the_rank_trajectory_only_over_several_steps() {
        let at = |revision: &str, layer: u32, stable_rank: f64| SpectrumRow {
            revision: revision.into(),
            ..row("m", layer, stable_rank)
        };
        let mut data = ReportData {
            spectra: vec![at("step0", 0, 1.0), at("step0", 1, 2.0)],
            ..ReportData::default()
        };
        assert!(!render_html(&data).contains("id=\"rank-trajectory\""));
        data.spectra
            .extend([at("step1000", 0, 1.5), at("step1000", 1, 2.5)]);
        let html = render_html(&data);
        let start = html
            .find("<figure id=\"rank-trajectory\"")
            .expect("the trajectory");
        let figure = &html[start..start + html[start..].find("</figure>").unwrap()];
        assert_eq!(figure.matches("<polyline").count(), 2, "one line per layer");
    }
}
