//! Raw emit file → [`EmitFile`]: names, sources, columns, fields and formats checked, every
//! problem collected as a [`Diagnostic`] at its document path (located by the caller).

use std::collections::{BTreeMap, HashMap};

use super::columns::{Columns, TableKind};
use super::format::NumberFormat;
use super::raw::{
    RawAggregate, RawEmit, RawFormat, RawPlot, RawScalar, RawScalarOrList, RawTableName,
};
use crate::spec::diag::{Diagnostic, did_you_mean};
use crate::spec::reference::{Reference, RepoReference};
use crate::spec::{HubKind, RepoType};

use super::types::{
    Aggregate, EmitFile, FigureSpec, PlotKind, Selection, Source, TableSpec, ValueKind, ValueSpec,
};

const DEFAULT_DIGITS: u8 = 3;

fn is_file_stem(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The letters-only spelling of a name with digits (`srank70m` → `srankSevenZerom`).
fn letters_only(name: &str) -> String {
    const WORDS: [&str; 10] = [
        "Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine",
    ];
    name.chars()
        .filter_map(|c| match c.to_digit(10) {
            Some(d) => Some(WORDS[d as usize].to_owned()),
            None if c.is_ascii_alphabetic() => Some(c.to_string()),
            None => None,
        })
        .collect()
}

fn number_format(
    format: Option<RawFormat>,
    digits: Option<u8>,
    default: RawFormat,
) -> NumberFormat {
    NumberFormat {
        kind: format.unwrap_or(default),
        digits: digits.unwrap_or(DEFAULT_DIGITS),
    }
}

fn scalar_json(value: &RawScalar) -> serde_json::Value {
    match value {
        RawScalar::String(s) => serde_json::Value::String(s.clone()),
        RawScalar::Integer(i) => serde_json::Value::from(*i),
        RawScalar::Number(n) => serde_json::Value::from(*n),
        RawScalar::Bool(b) => serde_json::Value::Bool(*b),
    }
}

/// Checks a raw emit file; the file when there is no error, and every diagnostic.
pub fn validate(raw: &RawEmit) -> (Option<EmitFile>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let sources = sources(raw, &mut out);
    let names: HashMap<&str, usize> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let checker = Checker {
        names: &names,
        written: raw.sources.keys().map(String::as_str).collect(),
    };
    let values = values(raw, &checker, &mut out);
    let tables = tables(raw, &checker, &mut out);
    let figures = figures(raw, &checker, &mut out);
    if raw.values.is_empty() && raw.tables.is_empty() && raw.figures.is_empty() {
        out.push(
            Diagnostic::error("", "the file emits nothing")
                .with_help("add `values:`, `tables:` or `figures:`"),
        );
    }
    let valid = !out
        .iter()
        .any(|d| d.severity == crate::spec::Severity::Error);
    let file = valid.then_some(EmitFile {
        sources,
        values,
        tables,
        figures,
        links: raw.links,
    });
    (file, out)
}

fn tables(raw: &RawEmit, checker: &Checker<'_>, out: &mut Vec<Diagnostic>) -> Vec<TableSpec> {
    let mut stems = HashMap::new();
    let mut tables = Vec::new();
    for (i, table) in raw.tables.iter().enumerate() {
        let path = format!("/tables/{i}");
        checker.stem(&table.name, &path, "tables", &mut stems, out);
        let kind = TableKind::from(table.table.unwrap_or(RawTableName::Spectra));
        let selection =
            checker.selection(table.source.as_deref(), kind, &table.selection, &path, out);
        for (j, column) in table.columns.iter().enumerate() {
            checker.column(kind, column, &format!("{path}/columns/{j}"), out);
        }
        let headers = match &table.headers {
            Some(h) if h.len() != table.columns.len() => {
                out.push(
                    Diagnostic::error(
                        format!("{path}/headers"),
                        format!("{} headers for {} columns", h.len(), table.columns.len()),
                    )
                    .with_help("give one heading per column, or none"),
                );
                h.clone()
            }
            Some(h) => h.clone(),
            None => table.columns.clone(),
        };
        if let Some(selection) = selection {
            tables.push(TableSpec {
                name: table.name.clone(),
                selection,
                columns: table.columns.clone(),
                headers,
                format: number_format(table.format, table.digits, RawFormat::Fixed),
            });
        }
    }
    tables
}

fn figures(raw: &RawEmit, checker: &Checker<'_>, out: &mut Vec<Diagnostic>) -> Vec<FigureSpec> {
    let mut stems = HashMap::new();
    let mut figures = Vec::new();
    for (i, figure) in raw.figures.iter().enumerate() {
        let path = format!("/figures/{i}");
        checker.stem(&figure.name, &path, "figures", &mut stems, out);
        let (plot, kind) = match figure.plot {
            RawPlot::Layers => (PlotKind::Layers, TableKind::Spectra),
            RawPlot::Trajectory => (PlotKind::Trajectory, TableKind::Spectra),
            RawPlot::Overlap => (PlotKind::Overlap, TableKind::Overlaps),
            RawPlot::Weights => (PlotKind::Weights, TableKind::Weights),
            RawPlot::Spectrum => (PlotKind::Spectrum, TableKind::Spectra),
        };
        if plot == PlotKind::Spectrum {
            one_layer(figure.selection.get("layer"), &path, out);
        }
        let field = figure
            .field
            .clone()
            .unwrap_or_else(|| "stable_rank".to_owned());
        if figure.field.is_some() {
            if matches!(plot, PlotKind::Layers | PlotKind::Trajectory) {
                checker.field(kind, &field, &format!("{path}/field"), out);
            } else {
                out.push(
                    Diagnostic::error(
                        format!("{path}/field"),
                        "`field` is for `layers` and `trajectory` plots",
                    )
                    .on_key(),
                );
            }
        }
        let selection = checker.selection(
            figure.source.as_deref(),
            kind,
            &figure.selection,
            &path,
            out,
        );
        if let Some(selection) = selection {
            figures.push(FigureSpec {
                name: figure.name.clone(),
                plot,
                selection,
                field,
                size: figure
                    .size
                    .as_ref()
                    .map_or((480, 300), |s| (s.width, s.height)),
            });
        }
    }
    figures
}

/// A spectrum figure draws one layer: its selection must name exactly one.
fn one_layer(layer: Option<&RawScalarOrList>, path: &str, out: &mut Vec<Diagnostic>) {
    let help = "a spectrum figure draws one layer's singular values: add `layer: N` to `where`";
    match layer {
        None => out.push(
            Diagnostic::error(
                format!("{path}/plot"),
                "a `spectrum` figure needs a selection that names one `layer`",
            )
            .with_help(help),
        ),
        Some(RawScalarOrList::List(list)) if list.len() != 1 => out.push(
            Diagnostic::error(
                format!("{path}/where/layer"),
                format!("a `spectrum` figure draws one layer, not {}", list.len()),
            )
            .with_help(help),
        ),
        Some(_) => {}
    }
}

fn sources(raw: &RawEmit, out: &mut Vec<Diagnostic>) -> Vec<Source> {
    if raw.sources.is_empty() {
        out.push(
            Diagnostic::error("/sources", "no source is named")
                .with_help("name an output repo pinned to a commit: `qs: local://NS/NAME@SHA`"),
        );
    }
    let mut sources = Vec::new();
    for (name, text) in &raw.sources {
        let path = format!("/sources/{}", crate::spec::tree::escape_pointer(name));
        if !is_file_stem(name) {
            out.push(
                Diagnostic::error(&path, format!("source name `{name}` is not a plain name"))
                    .on_key()
                    .with_help("use letters, digits, `-` and `_`"),
            );
        }
        let pin_help = "pin the repo to a full commit sha: `local://NS/NAME@SHA`; `hubsweep verify REPO` prints the head's sha";
        let reference = match Reference::parse(text) {
            Ok(Reference::Repo(repo)) => repo,
            Ok(Reference::Folder(_)) | Err(_) => {
                out.push(
                    Diagnostic::error(&path, format!("`{text}` is not a repo"))
                        .with_help("write `local://NS/NAME@SHA` or `hf://datasets/NS/NAME@SHA`"),
                );
                continue;
            }
        };
        let repo_type = match (reference.repo_type, reference.hub) {
            (Some(kind), _) => kind,
            (None, HubKind::Local) => RepoType::Dataset,
            (None, HubKind::Hf) => {
                out.push(
                    Diagnostic::error(&path, format!("`{text}` does not say dataset or model"))
                        .with_help(format!("write `hf://datasets/{}@SHA`", reference.repo_id)),
                );
                continue;
            }
        };
        let commit = reference.revision.clone().unwrap_or_default();
        let pinned = commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit());
        if !pinned {
            out.push(
                Diagnostic::error(&path, format!("`{text}` is not pinned to a commit"))
                    .with_help(pin_help),
            );
            continue;
        }
        sources.push(Source {
            name: name.clone(),
            reference: RepoReference {
                repo_type: Some(repo_type),
                revision: Some(commit.to_ascii_lowercase()),
                ..reference
            },
            commit: commit.to_ascii_lowercase(),
        });
    }
    sources
}

fn values(raw: &RawEmit, checker: &Checker<'_>, out: &mut Vec<Diagnostic>) -> Vec<ValueSpec> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, value) in raw.values.iter().enumerate() {
        let path = format!("/values/{i}/macro");
        let name = value.macro_name.as_str();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic()) {
            let suggestion = letters_only(name);
            let help = if suggestion.is_empty() {
                "LaTeX macro names are letters only".to_owned()
            } else {
                format!("LaTeX macro names are letters only: write `{suggestion}`")
            };
            out.push(
                Diagnostic::error(&path, format!("macro name `{name}` is not letters only"))
                    .with_help(help),
            );
        } else if let Some(first) = seen.get(name) {
            out.push(
                Diagnostic::error(&path, format!("macro `{name}` is defined twice")).with_help(
                    format!("the first is value {first}; give this one another name"),
                ),
            );
        } else {
            seen.insert(name, i);
        }
    }
    let mut specs = Vec::new();
    for (i, value) in raw.values.iter().enumerate() {
        let path = format!("/values/{i}");
        let derived = [("ratio", &value.ratio), ("difference", &value.difference)];
        let operands: Vec<_> = derived
            .iter()
            .filter_map(|(key, v)| v.as_ref().map(|v| (*key, v)))
            .collect();
        let default_format = if value.aggregate == Some(RawAggregate::Count) {
            RawFormat::Integer
        } else {
            RawFormat::Fixed
        };
        let format = number_format(value.format, value.digits, default_format);
        let kind = match operands.as_slice() {
            [] => checker.direct(value, &path, out),
            [(key, names)] => {
                let has_selection = value.field.is_some()
                    || value.aggregate.is_some()
                    || !value.selection.is_empty()
                    || value.table.is_some()
                    || value.source.is_some();
                if has_selection {
                    out.push(
                        Diagnostic::error(
                            format!("{path}/{key}"),
                            format!("`{key}` combines two values; this value also selects rows"),
                        )
                        .on_key()
                        .with_help(
                            "a value is either a selection or a ratio/difference of two others",
                        ),
                    );
                }
                let mut index = |j: usize| -> Option<usize> {
                    let name = names.get(j)?;
                    let at = format!("{path}/{key}/{j}");
                    match raw.values.iter().position(|v| &v.macro_name == name) {
                        Some(k) if operand_is_direct(&raw.values[k]) => Some(k),
                        Some(_) => {
                            out.push(
                                Diagnostic::error(at, format!("`{name}` is itself derived"))
                                    .with_help("combine values that select rows"),
                            );
                            None
                        }
                        None => {
                            let macros = raw.values.iter().map(|v| v.macro_name.as_str());
                            let mut d =
                                Diagnostic::error(at, format!("no value is named `{name}`"));
                            if let Some(hint) = did_you_mean(name, macros) {
                                d = d.with_help(hint);
                            }
                            out.push(d);
                            None
                        }
                    }
                };
                match (index(0), index(1)) {
                    (Some(a), Some(b)) if *key == "ratio" => Some(ValueKind::Ratio(a, b)),
                    (Some(a), Some(b)) => Some(ValueKind::Difference(a, b)),
                    _ => None,
                }
            }
            _ => {
                out.push(
                    Diagnostic::error(&path, "a value is either a ratio or a difference, not both")
                        .with_help("keep one of `ratio` and `difference`"),
                );
                None
            }
        };
        if let Some(kind) = kind {
            specs.push(ValueSpec {
                macro_name: value.macro_name.clone(),
                kind,
                format,
                path,
            });
        }
    }
    specs
}

fn operand_is_direct(value: &super::raw::RawValue) -> bool {
    value.ratio.is_none() && value.difference.is_none()
}

/// What the item checks share: the sources by name.
struct Checker<'a> {
    names: &'a HashMap<&'a str, usize>,
    /// Every source name written, valid or not (an invalid one has its own diagnostic).
    written: Vec<&'a str>,
}

impl Checker<'_> {
    fn direct(
        &self,
        value: &super::raw::RawValue,
        path: &str,
        out: &mut Vec<Diagnostic>,
    ) -> Option<ValueKind> {
        let kind = TableKind::from(value.table.unwrap_or(RawTableName::Spectra));
        let aggregate = match value.aggregate {
            None => Aggregate::Single,
            Some(RawAggregate::Mean) => Aggregate::Mean,
            Some(RawAggregate::Min) => Aggregate::Min,
            Some(RawAggregate::Max) => Aggregate::Max,
            Some(RawAggregate::Median) => Aggregate::Median,
            Some(RawAggregate::Count) => Aggregate::Count,
            Some(RawAggregate::Range) => Aggregate::Range,
        };
        let field_ok = match (&value.field, aggregate) {
            (Some(field), _) => self.field(kind, field, &format!("{path}/field"), out),
            (None, Aggregate::Count) => true,
            (None, _) => {
                out.push(
                    Diagnostic::error(path, "the value names no `field`").with_help(format!(
                        "name the numeric column, one of {}",
                        Columns::of(kind).numeric_list()
                    )),
                );
                false
            }
        };
        let selection = self.selection(value.source.as_deref(), kind, &value.selection, path, out);
        Some(ValueKind::Direct {
            selection: selection?,
            field: value.field.clone().filter(|_| field_ok),
            aggregate,
        })
    }

    fn stem(
        &self,
        name: &str,
        path: &str,
        what: &str,
        seen: &mut HashMap<String, usize>,
        out: &mut Vec<Diagnostic>,
    ) {
        if !is_file_stem(name) {
            out.push(
                Diagnostic::error(
                    format!("{path}/name"),
                    format!("`{name}` is not a file name"),
                )
                .with_help("use letters, digits, `-` and `_`"),
            );
        } else if seen.insert(name.to_owned(), 0).is_some() {
            out.push(
                Diagnostic::error(
                    format!("{path}/name"),
                    format!("two {what} are named `{name}`"),
                )
                .with_help("give each its own name: it names its files"),
            );
        }
    }

    fn field(&self, kind: TableKind, field: &str, path: &str, out: &mut Vec<Diagnostic>) -> bool {
        let columns = Columns::of(kind);
        if columns.is_numeric(field) {
            return true;
        }
        let message = if columns.has(field) {
            format!("`{field}` of `{}` is not a number", kind.name())
        } else {
            format!("unknown metric `{field}` in table `{}`", kind.name())
        };
        let help = did_you_mean(field, columns.numeric())
            .unwrap_or_else(|| format!("the numeric columns are {}", columns.numeric_list()));
        out.push(Diagnostic::error(path, message).with_help(help));
        false
    }

    fn column(&self, kind: TableKind, column: &str, path: &str, out: &mut Vec<Diagnostic>) -> bool {
        let columns = Columns::of(kind);
        if columns.has(column) {
            return true;
        }
        let help = did_you_mean(column, columns.all())
            .unwrap_or_else(|| format!("the columns are {}", columns.all_list()));
        out.push(
            Diagnostic::error(
                path,
                format!("unknown column `{column}` in table `{}`", kind.name()),
            )
            .with_help(help),
        );
        false
    }

    fn selection(
        &self,
        source: Option<&str>,
        kind: TableKind,
        filters: &BTreeMap<String, RawScalarOrList>,
        path: &str,
        out: &mut Vec<Diagnostic>,
    ) -> Option<Selection> {
        let source = match source {
            Some(name) => match self.names.get(name) {
                Some(i) => Some(*i),
                None if self.written.contains(&name) => None,
                None => {
                    let mut d = Diagnostic::error(
                        format!("{path}/source"),
                        format!("no source is named `{name}`"),
                    );
                    if let Some(hint) = did_you_mean(name, self.written.iter().copied()) {
                        d = d.with_help(hint);
                    }
                    out.push(d);
                    None
                }
            },
            None if self.written.len() == 1 => self.names.values().next().copied(),
            None if self.written.is_empty() => None,
            None => {
                out.push(
                    Diagnostic::error(path, "with several sources, each item names its `source`")
                        .with_help("add `source: NAME`"),
                );
                None
            }
        };
        let mut ok = true;
        let mut parsed = Vec::new();
        for (column, accepted) in filters {
            let at = format!("{path}/where/{}", crate::spec::tree::escape_pointer(column));
            if !self.column(kind, column, &at, out) {
                // A `where` key names the column: point at the key, not its value.
                if let Some(last) = out.last_mut() {
                    last.on_key = true;
                }
                ok = false;
                continue;
            }
            let values = match accepted {
                RawScalarOrList::One(one) => vec![scalar_json(one)],
                RawScalarOrList::List(list) => list.iter().map(scalar_json).collect(),
            };
            parsed.push((column.clone(), values));
        }
        Some(Selection {
            source: source?,
            table: kind,
            filters: parsed,
            path: path.to_owned(),
        })
        .filter(|_| ok)
    }
}
