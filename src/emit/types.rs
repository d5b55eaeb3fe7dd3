//! The validated emit file: what [`super::validate`] produces and the rest of emit reads.

use super::columns::TableKind;
use super::format::NumberFormat;
use crate::spec::HubKind;
use crate::spec::reference::RepoReference;

/// A validated emit file.
#[derive(Debug, Clone)]
pub struct EmitFile {
    /// The sources, in name order.
    pub sources: Vec<Source>,
    /// The values, in file order.
    pub values: Vec<ValueSpec>,
    /// The tables, in file order.
    pub tables: Vec<TableSpec>,
    /// The figures, in file order.
    pub figures: Vec<FigureSpec>,
    /// Values of `hf://` sources link to their metrics table.
    pub links: bool,
}

/// An output repo pinned to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its name in the emit file.
    pub name: String,
    /// The repo (its revision is the commit).
    pub reference: RepoReference,
    /// The full commit sha.
    pub commit: String,
}

impl Source {
    /// `local://datasets/NS/NAME@SHA`, as headers name it.
    pub fn display(&self) -> String {
        self.reference.to_string()
    }

    /// Whether it lives on the embedded hub.
    pub fn is_local(&self) -> bool {
        self.reference.hub == HubKind::Local
    }

    /// The download URL of `path` at the pinned commit on the Hub at `endpoint`; `None` for
    /// an embedded hub's repo, which has no lasting address.
    pub fn file_url(&self, endpoint: &str, path: &str) -> Option<String> {
        if self.is_local() {
            return None;
        }
        let kind = match self.reference.repo_type {
            Some(crate::spec::RepoType::Model) => "",
            _ => "datasets/",
        };
        Some(format!(
            "{}/{kind}{}/resolve/{}/{path}",
            endpoint.trim_end_matches('/'),
            self.reference.repo_id,
            self.commit
        ))
    }
}

/// Rows of one metrics table of one source.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Index into [`EmitFile::sources`].
    pub source: usize,
    /// The table.
    pub table: TableKind,
    /// Column → accepted values (a row matches when every column has one of them).
    pub filters: Vec<(String, Vec<serde_json::Value>)>,
    /// Document path of the item (`/values/2`), for diagnostics found on the data.
    pub path: String,
}

/// How a selection becomes one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Exactly one row must match.
    Single,
    /// Mean.
    Mean,
    /// Min.
    Min,
    /// Max.
    Max,
    /// Median.
    Median,
    /// Row count.
    Count,
    /// Min and max.
    Range,
}

/// What a value is computed from.
#[derive(Debug, Clone)]
pub enum ValueKind {
    /// A field of selected rows, aggregated.
    Direct {
        /// The rows.
        selection: Selection,
        /// The numeric column (`None` for a count).
        field: Option<String>,
        /// The aggregation.
        aggregate: Aggregate,
    },
    /// `a / b` of two direct values (indices into [`EmitFile::values`]).
    Ratio(usize, usize),
    /// `a − b` of two direct values.
    Difference(usize, usize),
}

/// One value to emit.
#[derive(Debug, Clone)]
pub struct ValueSpec {
    /// Macro name (letters only).
    pub macro_name: String,
    /// What it is computed from.
    pub kind: ValueKind,
    /// How it is written.
    pub format: NumberFormat,
    /// Document path (`/values/0`).
    pub path: String,
}

/// One table to emit.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// File stem.
    pub name: String,
    /// The rows.
    pub selection: Selection,
    /// The columns.
    pub columns: Vec<String>,
    /// Headings, one per column.
    pub headers: Vec<String>,
    /// Format of fractional numbers.
    pub format: NumberFormat,
}

/// What a figure draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotKind {
    /// A spectra metric against layer.
    Layers,
    /// Overlap against layer.
    Overlap,
    /// Weight stable rank against layer.
    Weights,
    /// A spectra metric against training step.
    Trajectory,
    /// A layer's singular values, one line per selected spectra row.
    Spectrum,
}

/// One figure to emit.
#[derive(Debug, Clone)]
pub struct FigureSpec {
    /// File stem.
    pub name: String,
    /// What is drawn.
    pub plot: PlotKind,
    /// The rows.
    pub selection: Selection,
    /// The spectra metric for `layers` and `trajectory`.
    pub field: String,
    /// Width and height in points.
    pub size: (u32, u32),
}
