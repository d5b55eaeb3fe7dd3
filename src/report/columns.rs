//! The columns of the report's tables, listed once: the HTML page and the CSV file write
//! the same columns in the same order, each cell formatted for its medium.

use std::fmt::Write as _;

use crate::ledger::tables::{OverlapRow, SpectrumRow, WeightRow};

/// One cell's value, before it is formatted for HTML or CSV.
pub(super) enum Cell<'a> {
    /// Text (escaped in HTML, quoted in CSV).
    Text(&'a str),
    /// A layer; `None` is the model's final hook point.
    Layer(Option<u64>),
    /// A count.
    Count(u64),
    /// A measurement, shown in HTML with this many decimals (CSV keeps every digit).
    Number(f64, usize),
    /// A file in the repo (a link in HTML when the repo has a URL).
    File(Option<&'a str>),
}

/// A column: its CSV name, its HTML heading, and its cell of a row.
pub(super) struct Column<Row> {
    pub name: &'static str,
    pub heading: &'static str,
    pub cell: fn(&Row) -> Cell<'_>,
}

const fn column<Row>(
    name: &'static str,
    heading: &'static str,
    cell: fn(&Row) -> Cell<'_>,
) -> Column<Row> {
    Column {
        name,
        heading,
        cell,
    }
}

/// A table's columns with the scalar metrics of its rows (`r.metrics`) between `$before` and
/// `$after`: every table that has metrics shows the same ones, in the same order.
macro_rules! with_metrics {
    ($($before:expr),+ ; $($after:expr),*) => {
        &[
            $($before,)+
            column("stable_rank", "stable rank", |r| Cell::Number(r.metrics.stable_rank, 3)),
            column("effective_rank", "effective rank", |r| {
                Cell::Number(r.metrics.effective_rank, 3)
            }),
            column("participation_ratio", "participation ratio", |r| {
                Cell::Number(r.metrics.participation_ratio, 3)
            }),
            column("k90", "k90", |r| Cell::Count(r.metrics.k90 as u64)),
            column("k99", "k99", |r| Cell::Count(r.metrics.k99 as u64)),
            column("spectral_norm", "σ₁", |r| Cell::Number(r.metrics.spectral_norm, 4)),
            $($after,)*
        ]
    };
}

/// The activation-spectrum table.
pub(super) const SPECTRA: &[Column<SpectrumRow>] = with_metrics![
    column("model", "model", |r| Cell::Text(&r.model)),
    column("revision", "revision", |r| Cell::Text(&r.revision)),
    column("hook", "hook", |r| Cell::Text(&r.hook)),
    column("layer", "layer", |r| Cell::Layer(r.layer.map(u64::from))),
    column("centring", "centring", |r| Cell::Text(&r.centring)),
    column("rows", "rows", |r| Cell::Count(r.rows)),
    column("width", "width", |r| Cell::Count(r.width as u64));
    column("file", "file", |r| Cell::File(r.file.as_deref()))
];

/// The overlap table.
pub(super) const OVERLAPS: &[Column<OverlapRow>] = &[
    column("model", "model", |r| Cell::Text(&r.model)),
    column("revision", "revision", |r| Cell::Text(&r.revision)),
    column("base_model", "base model", |r| Cell::Text(&r.base_model)),
    column("base_revision", "base revision", |r| {
        Cell::Text(&r.base_revision)
    }),
    column("hook", "hook", |r| Cell::Text(&r.hook)),
    column("layer", "layer", |r| Cell::Layer(r.layer.map(u64::from))),
    column("k", "k", |r| Cell::Count(r.k as u64)),
    column("gamma", "γ", |r| Cell::Number(r.gamma, 4)),
    column("baseline", "baseline", |r| Cell::Number(r.baseline, 4)),
    column("ratio", "ratio", |r| Cell::Number(r.ratio, 2)),
];

/// The weight-spectrum table.
pub(super) const WEIGHTS: &[Column<WeightRow>] = with_metrics![
    column("model", "model", |r| Cell::Text(&r.model)),
    column("revision", "revision", |r| Cell::Text(&r.revision)),
    column("delta_from", "delta from", |r| {
        Cell::Text(r.delta_from.as_deref().unwrap_or(""))
    }),
    column("key", "key", |r| Cell::Text(&r.key)),
    column("part", "part", |r| {
        Cell::Text(r.part.as_deref().unwrap_or(""))
    }),
    column("rows", "rows", |r| Cell::Count(r.rows as u64)),
    column("cols", "cols", |r| Cell::Count(r.cols as u64));
    column("file", "file", |r| Cell::File(r.file.as_deref()))
];

/// The update-geometry table (`metrics/updates.jsonl`).
pub(super) const UPDATES: &[Column<crate::ledger::updates::UpdateRow>] = &[
    column("adapter", "adapter", |r| Cell::Text(&r.adapter)),
    column("revision", "revision", |r| Cell::Text(&r.revision)),
    column("subfolder", "subfolder", |r| {
        Cell::Text(r.subfolder.as_deref().unwrap_or(""))
    }),
    column("step", "step", |r| Cell::Count(r.step)),
    column("key", "key", |r| Cell::Text(&r.key)),
    column("part", "part", |r| {
        Cell::Text(r.part.as_deref().unwrap_or(""))
    }),
    column("k", "k", |r| Cell::Text(&r.k_choice)),
    column("k_used", "k used", |r| Cell::Count(r.k as u64)),
    column("p_left", "p left", |r| Cell::Number(r.p_left, 4)),
    column("p_right", "p right", |r| Cell::Number(r.p_right, 4)),
    column("bonus_left", "bonus left", |r| {
        Cell::Number(r.bonus_left, 2)
    }),
    column("bonus_right", "bonus right", |r| {
        Cell::Number(r.bonus_right, 2)
    }),
    column("stable_rank_update", "stable rank ΔW", |r| {
        Cell::Number(r.stable_rank_update, 3)
    }),
];

/// Appends a CSV section: `# title`, the header, one line per row.
pub(super) fn csv_section<Row>(
    out: &mut String,
    title: &str,
    columns: &[Column<Row>],
    rows: &[Row],
) {
    let _ = writeln!(out, "# {title}");
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let _ = writeln!(out, "{}", names.join(","));
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match (c.cell)(row) {
                Cell::Text(text) => quote(text),
                Cell::File(file) => quote(file.unwrap_or("")),
                Cell::Layer(layer) => layer.map_or(String::new(), |l| l.to_string()),
                Cell::Count(n) => n.to_string(),
                Cell::Number(x, _) => x.to_string(),
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join(","));
    }
}

/// Appends an HTML table with `id`, under a heading of the same name; `link` draws a file.
pub(super) fn html_table<Row>(
    html: &mut String,
    id: &str,
    columns: &[Column<Row>],
    rows: &[Row],
    link: &dyn Fn(Option<&str>) -> String,
) {
    let _ = write!(html, "<h2>{id}</h2><table id=\"{id}\"><tr>");
    for column in columns {
        let _ = write!(html, "<th>{}</th>", column.heading);
    }
    html.push_str("</tr>\n");
    for row in rows {
        html.push_str("<tr>");
        for column in columns {
            let _ = match (column.cell)(row) {
                Cell::Text(text) => write!(html, "<td class=l>{}</td>", super::escape(text)),
                Cell::File(file) => write!(html, "<td class=l>{}</td>", link(file)),
                Cell::Layer(layer) => write!(
                    html,
                    "<td>{}</td>",
                    layer.map_or("final".into(), |l| l.to_string())
                ),
                Cell::Count(n) => write!(html, "<td>{n}</td>"),
                Cell::Number(x, decimals) => write!(html, "<td>{x:.decimals$}</td>"),
            };
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
}

/// A CSV field in double quotes (inner quotes doubled).
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}
