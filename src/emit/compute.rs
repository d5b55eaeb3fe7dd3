//! Values, tables and figures computed from the sources' rows. Problems that only the data can
//! show (a selection that matches nothing, or several rows where one is needed) are
//! diagnostics at the item's document path, like the file's own errors.

use std::collections::BTreeSet;

use super::columns::TableKind;
use super::format::Written;
use super::source::{Row, SourceData};
use super::types::{Aggregate, EmitFile, FigureSpec, PlotKind, Selection, ValueKind};
use crate::report::{Plot, ReportData};
use crate::spec::diag::Diagnostic;

/// A computed number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// One number.
    One(f64),
    /// A range (min, max).
    Range(f64, f64),
}

/// One computed value.
#[derive(Debug, Clone)]
pub struct ValueResult {
    /// Its number.
    pub number: Number,
    /// Written in its format.
    pub written: Written,
    /// Indices of the sources it comes from.
    pub sources: BTreeSet<usize>,
    /// Node ids of the ledger records of its rows, sorted.
    pub nodes: BTreeSet<String>,
    /// Rows it was computed from.
    pub rows: usize,
}

/// One computed table.
#[derive(Debug, Clone)]
pub struct TableResult {
    /// The cells, one list per row, as the metrics table has them.
    pub cells: Vec<Vec<serde_json::Value>>,
    /// The node id of each row.
    pub nodes: Vec<String>,
}

/// Everything an emit file computes, in file order.
#[derive(Debug, Clone)]
pub struct Computed {
    /// One per [`EmitFile::values`].
    pub values: Vec<ValueResult>,
    /// One per [`EmitFile::tables`].
    pub tables: Vec<TableResult>,
    /// One per [`EmitFile::figures`]: the plot and the node ids of its rows.
    pub figures: Vec<(Plot, BTreeSet<String>)>,
}

fn matches(row: &Row, column: &str, accepted: &[serde_json::Value]) -> bool {
    let have = row.get(column).unwrap_or(&serde_json::Value::Null);
    accepted
        .iter()
        .any(|want| match (have.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => have == want,
        })
}

fn describe(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The rows of `selection`, or a diagnostic saying which filter matched nothing.
fn select<'a>(
    selection: &Selection,
    file: &EmitFile,
    data: &'a [SourceData],
) -> Result<Vec<&'a Row>, Diagnostic> {
    let rows = data[selection.source].rows(selection.table);
    let chosen: Vec<&Row> = rows
        .iter()
        .filter(|row| selection.filters.iter().all(|(c, v)| matches(row, c, v)))
        .collect();
    if !chosen.is_empty() {
        return Ok(chosen);
    }
    let table = selection.table.name();
    let source = &file.sources[selection.source].name;
    // Point at the first filter that no row satisfies on its own, with the values there are.
    for (column, accepted) in &selection.filters {
        if rows.iter().any(|row| matches(row, column, accepted)) {
            continue;
        }
        let present: BTreeSet<String> = rows
            .iter()
            .map(|r| describe(r.get(column).unwrap_or(&serde_json::Value::Null)))
            .collect();
        let wanted: Vec<String> = accepted.iter().map(describe).collect();
        let shown: Vec<String> = present.iter().take(12).map(|v| format!("`{v}`")).collect();
        let help = if present.is_empty() {
            format!("`{table}` of `{source}` has no rows")
        } else {
            format!("`{column}` has {}", shown.join(", "))
        };
        return Err(Diagnostic::error(
            format!(
                "{}/where/{}",
                selection.path,
                crate::spec::tree::escape_pointer(column)
            ),
            format!(
                "no row of `{table}` in `{source}` has `{column}` = `{}`",
                wanted.join("`, `")
            ),
        )
        .with_help(help));
    }
    Err(Diagnostic::error(
        if selection.filters.is_empty() {
            selection.path.clone()
        } else {
            format!("{}/where", selection.path)
        },
        format!("the selection matches no row of `{table}` in `{source}`"),
    )
    .with_help("each condition matches rows, but not together: loosen one"))
}

fn nodes_of(rows: &[&Row]) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|r| r.get("node").and_then(|n| n.as_str()).map(str::to_owned))
        .collect()
}

fn aggregate(values: &mut [f64], how: Aggregate) -> Number {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let (first, last) = (values[0], values[n - 1]);
    match how {
        Aggregate::Single | Aggregate::Min => Number::One(first),
        Aggregate::Max => Number::One(last),
        Aggregate::Mean => Number::One(values.iter().sum::<f64>() / n as f64),
        Aggregate::Median if n % 2 == 1 => Number::One(values[n / 2]),
        Aggregate::Median => Number::One((values[n / 2 - 1] + values[n / 2]) / 2.0),
        Aggregate::Count => Number::One(n as f64),
        Aggregate::Range => Number::Range(first, last),
    }
}

fn direct(
    file: &EmitFile,
    data: &[SourceData],
    path: &str,
    selection: &Selection,
    field: Option<&str>,
    how: Aggregate,
) -> Result<(Number, BTreeSet<String>, usize), Diagnostic> {
    let rows = select(selection, file, data)?;
    if how == Aggregate::Single && rows.len() > 1 {
        return Err(Diagnostic::error(
            format!("{path}/where"),
            format!(
                "the selection matches {} rows of `{}`; a value without `aggregate` needs exactly one",
                rows.len(),
                selection.table.name()
            ),
        )
        .with_help("narrow `where` (by `layer`, `centring`, `hook`, …) or add `aggregate: mean`"));
    }
    let mut numbers = Vec::with_capacity(rows.len());
    if let Some(field) = field {
        for row in &rows {
            match row.get(field).and_then(serde_json::Value::as_f64) {
                Some(x) => numbers.push(x),
                None => {
                    return Err(Diagnostic::error(
                        format!("{path}/field"),
                        format!("a selected row has no number in `{field}`"),
                    )
                    .with_help("narrow `where` to rows that have it"));
                }
            }
        }
    } else {
        numbers = vec![0.0; rows.len()];
    }
    let number = aggregate(&mut numbers, how);
    Ok((number, nodes_of(&rows), rows.len()))
}

fn values(file: &EmitFile, data: &[SourceData], out: &mut Vec<Diagnostic>) -> Vec<ValueResult> {
    // Direct values first: a ratio or difference may name a value written after it.
    let mut results: Vec<Option<ValueResult>> = file
        .values
        .iter()
        .map(|value| {
            let ValueKind::Direct {
                selection,
                field,
                aggregate,
            } = &value.kind
            else {
                return None;
            };
            let found = direct(
                file,
                data,
                &value.path,
                selection,
                field.as_deref(),
                *aggregate,
            );
            match found {
                Ok((number, nodes, rows)) => Some(ValueResult {
                    written: match number {
                        Number::One(x) => value.format.write(x),
                        Number::Range(a, b) => value.format.write_range(a, b),
                    },
                    number,
                    sources: BTreeSet::from([selection.source]),
                    nodes,
                    rows,
                }),
                Err(d) => {
                    out.push(d);
                    None
                }
            }
        })
        .collect();
    for (i, value) in file.values.iter().enumerate() {
        let (ValueKind::Ratio(a, b) | ValueKind::Difference(a, b)) = value.kind else {
            continue;
        };
        // An operand's own error is reported already.
        let (Some(x), Some(y)) = (&results[a], &results[b]) else {
            continue;
        };
        let (Number::One(p), Number::One(q)) = (x.number, y.number) else {
            out.push(
                Diagnostic::error(
                    &value.path,
                    "a range cannot be combined into a ratio or difference",
                )
                .with_help("combine values without `aggregate: range`"),
            );
            continue;
        };
        let number = match value.kind {
            ValueKind::Ratio(..) => p / q,
            _ => p - q,
        };
        results[i] = Some(ValueResult {
            number: Number::One(number),
            written: value.format.write(number),
            sources: x.sources.union(&y.sources).copied().collect(),
            nodes: x.nodes.union(&y.nodes).cloned().collect(),
            rows: x.rows + y.rows,
        });
    }
    results.into_iter().flatten().collect()
}

fn typed<T: serde::de::DeserializeOwned>(rows: &[&Row]) -> Vec<T> {
    rows.iter()
        .filter_map(|r| serde_json::from_value(serde_json::Value::Object((*r).clone())).ok())
        .collect()
}

/// The report's plot of a figure's rows.
fn figure(spec: &FigureSpec, rows: &[&Row]) -> Plot {
    let field = spec.field.clone();
    let metric = move |row: &crate::ledger::tables::SpectrumRow| {
        serde_json::to_value(&row.metrics)
            .ok()
            .and_then(|m| m.get(&field).and_then(serde_json::Value::as_f64))
            .unwrap_or(f64::NAN)
    };
    let title = spec.field.replace('_', " ");
    let data = ReportData {
        spectra: if spec.selection.table == TableKind::Spectra {
            typed(rows)
        } else {
            Vec::new()
        },
        overlaps: if spec.selection.table == TableKind::Overlaps {
            typed(rows)
        } else {
            Vec::new()
        },
        weights: if spec.selection.table == TableKind::Weights {
            typed(rows)
        } else {
            Vec::new()
        },
        ..ReportData::default()
    };
    match spec.plot {
        PlotKind::Layers => crate::report::layer_plot(&data, &title, &metric),
        PlotKind::Trajectory => crate::report::trajectory_plot(&data, &title, &metric),
        PlotKind::Overlap => crate::report::overlap_plot(&data),
        PlotKind::Weights => crate::report::weight_plot(&data),
        PlotKind::Spectrum => crate::report::spectrum_plot(&data),
    }
}

/// The spectrum files a spectrum figure's rows name (`None` for rows without one).
fn files_of<'a>(rows: &[&'a Row]) -> impl Iterator<Item = Option<&'a str>> {
    rows.iter()
        .map(|r| r.get("file").and_then(serde_json::Value::as_str))
}

/// The spectrum files each source's spectrum figures draw (one set per source, in order), to
/// read before [`compute`]; selections that match nothing are left to [`compute`] to report.
pub fn spectrum_files(file: &EmitFile, data: &[SourceData]) -> Vec<BTreeSet<String>> {
    let mut files = vec![BTreeSet::new(); data.len()];
    for spec in file.figures.iter().filter(|f| f.plot == PlotKind::Spectrum) {
        if let (Ok(rows), Some(set)) = (
            select(&spec.selection, file, data),
            files.get_mut(spec.selection.source),
        ) {
            set.extend(files_of(&rows).flatten().map(str::to_owned));
        }
    }
    files
}

/// The report's spectrum plot of a spectrum figure's rows: one line per row, its `centring`'s
/// singular values from its spectrum file (read into `data` by the caller).
fn spectrum_figure(
    spec: &FigureSpec,
    rows: &[&Row],
    data: &SourceData,
) -> Result<Plot, Diagnostic> {
    let text = |row: &Row, column: &str| row.get(column).map(describe).unwrap_or_default();
    let mut layer_spectra = Vec::new();
    for (row, file) in rows.iter().zip(files_of(rows)) {
        let values = file.and_then(|f| data.spectra.get(f)).ok_or_else(|| {
            Diagnostic::error(
                format!("{}/where", spec.selection.path),
                format!(
                    "the row of node `{}` has no spectrum file to draw",
                    text(row, "node")
                ),
            )
            .with_help("select rows of a sweep that kept its spectra (`file` is set)")
        })?;
        let centring = text(row, "centring");
        let (values, suffix) = if centring == "raw" {
            (&values.raw, " (raw)")
        } else {
            (&values.centred, "")
        };
        let label = format!(
            "{}@{} {}{suffix}",
            text(row, "model"),
            text(row, "revision"),
            text(row, "hook")
        );
        layer_spectra.push((label, values.clone()));
    }
    let layer = rows
        .iter()
        .find_map(|r| r.get("layer").and_then(serde_json::Value::as_u64))
        .and_then(|l| u32::try_from(l).ok());
    Ok(crate::report::spectrum_plot(&ReportData {
        layer,
        layer_spectra,
        ..ReportData::default()
    }))
}

/// Computes everything `file` emits from `data` (one entry per source, in order).
pub fn compute(file: &EmitFile, data: &[SourceData]) -> Result<Computed, Vec<Diagnostic>> {
    let mut out = Vec::new();
    let values = values(file, data, &mut out);
    let mut tables = Vec::new();
    for table in &file.tables {
        match select(&table.selection, file, data) {
            Ok(rows) => tables.push(TableResult {
                cells: rows
                    .iter()
                    .map(|row| {
                        table
                            .columns
                            .iter()
                            .map(|c| row.get(c).cloned().unwrap_or(serde_json::Value::Null))
                            .collect()
                    })
                    .collect(),
                nodes: rows
                    .iter()
                    .map(|r| r.get("node").map(describe).unwrap_or_default())
                    .collect(),
            }),
            Err(d) => out.push(d),
        }
    }
    let mut figures = Vec::new();
    for spec in &file.figures {
        match select(&spec.selection, file, data) {
            Ok(rows) => {
                let plot = if spec.plot == PlotKind::Spectrum {
                    match spectrum_figure(spec, &rows, &data[spec.selection.source]) {
                        Ok(plot) => plot,
                        Err(d) => {
                            out.push(d);
                            continue;
                        }
                    }
                } else {
                    figure(spec, &rows)
                };
                if plot.series.is_empty() {
                    out.push(
                        Diagnostic::error(
                            &spec.selection.path,
                            "the selected rows give the plot no line (no rows with a layer)",
                        )
                        .with_help("select rows of the blocks' layers"),
                    );
                }
                figures.push((plot, nodes_of(&rows)));
            }
            Err(d) => out.push(d),
        }
    }
    if out.is_empty() {
        Ok(Computed {
            values,
            tables,
            figures,
        })
    } else {
        Err(out)
    }
}
