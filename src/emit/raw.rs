//! Raw emit-file types: they mirror the YAML exactly, key for key. `schemas/emit.schema.json` is
//! generated from them and the structural check of an emit file runs against that schema (as
//! for sweep specs); only [`super::validate`] turns them into an [`super::EmitFile`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

pub use crate::spec::raw::{RawScalar, RawScalarOrList};

/// An emit file, as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "hubsweep emit file",
    description = "A paper's values, tables and figures, computed from pinned output repos by `hubsweep emit`."
)]
pub struct RawEmit {
    /// Output repos, by a short name: `local://NS/NAME@SHA` or `hf://datasets/NS/NAME@SHA`,
    /// each pinned to a full 40-hex commit sha.
    pub sources: BTreeMap<String, String>,
    /// Numbers, each written as one LaTeX macro and one entry of `values.json`.
    #[serde(default)]
    pub values: Vec<RawValue>,
    /// Tables, each written as LaTeX (booktabs), CSV and JSON.
    #[serde(default)]
    pub tables: Vec<RawTable>,
    /// Figures, each written as SVG and PDF.
    #[serde(default)]
    pub figures: Vec<RawFigure>,
    /// Make each value of an `hf://` source a link to the metrics table it was computed from
    /// (`\hubsweepsource{URL}{TEXT}`, drawn with `\href` when the document loads hyperref).
    #[serde(default)]
    pub links: bool,
}

/// A metrics table of an output repo (`metrics/NAME.jsonl`; columns in docs/metrics.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawTableName {
    /// `metrics/spectra.jsonl`: one row per (model, revision, hook, layer, centring).
    Spectra,
    /// `metrics/overlaps.jsonl`: one row per (pair, hook, layer, k).
    Overlaps,
    /// `metrics/weights.jsonl`: one row per weight matrix.
    Weights,
}

/// How the rows of a selection become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawAggregate {
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Median (the mean of the two middle values for an even count).
    Median,
    /// Number of rows selected (no `field` needed).
    Count,
    /// Smallest and largest, rendered `a--b`.
    Range,
}

/// How a number is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawFormat {
    /// `digits` decimals: `3.921`.
    Fixed,
    /// `digits` significant digits: `0.00392`, `3920`.
    Significant,
    /// Mantissa with `digits` decimals and a power of ten: `3.92e-3`.
    Scientific,
    /// Times 100 with `digits` decimals and a percent sign: `39.2%`.
    Percent,
    /// Rounded to an integer, thousands separated: `12,345`.
    Integer,
}

/// One value: a selection of rows, a field and an aggregation, or a ratio or difference of two
/// other values.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawValue {
    /// The LaTeX macro name, letters only (`srankNeox` gives `\srankNeox`).
    #[serde(rename = "macro")]
    pub macro_name: String,
    /// The source's name in `sources` (default: the only source).
    pub source: Option<String>,
    /// The metrics table the rows come from (default `spectra`).
    pub table: Option<RawTableName>,
    /// Which rows: column → value or list of values (`{hook: hook_resid_post, layer: [0, 1]}`).
    #[serde(default, rename = "where")]
    pub selection: BTreeMap<String, RawScalarOrList>,
    /// The numeric column (`stable_rank`, `gamma`, …); not needed with `aggregate: count`.
    pub field: Option<String>,
    /// How the selected rows combine; without it the selection must match exactly one row.
    pub aggregate: Option<RawAggregate>,
    /// `[a, b]`: the value `a / b` of two other values (macro names), instead of a selection.
    #[schemars(length(min = 2, max = 2))]
    pub ratio: Option<Vec<String>>,
    /// `[a, b]`: the value `a − b` of two other values (macro names), instead of a selection.
    #[schemars(length(min = 2, max = 2))]
    pub difference: Option<Vec<String>>,
    /// How the number is written (default `fixed`; `integer` for a count).
    pub format: Option<RawFormat>,
    /// Digits for `fixed`, `significant`, `scientific` and `percent` (default 3, at most 12).
    #[schemars(range(max = 12))]
    pub digits: Option<u8>,
}

/// One table: selected rows of a metrics table, chosen columns.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// File name stem: `tables/NAME.tex`, `.csv`, `.json` (letters, digits, `-`, `_`).
    pub name: String,
    /// The source's name in `sources` (default: the only source).
    pub source: Option<String>,
    /// The metrics table the rows come from (default `spectra`).
    pub table: Option<RawTableName>,
    /// Which rows: column → value or list of values.
    #[serde(default, rename = "where")]
    pub selection: BTreeMap<String, RawScalarOrList>,
    /// The columns, in order.
    #[schemars(length(min = 1))]
    pub columns: Vec<String>,
    /// Column headings (default: the column names); as many as `columns`.
    pub headers: Option<Vec<String>>,
    /// How fractional numbers are written (default `fixed`); integer columns stay integers.
    pub format: Option<RawFormat>,
    /// Digits for the format (default 3, at most 12).
    #[schemars(range(max = 12))]
    pub digits: Option<u8>,
}

/// What a figure draws: the report's plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawPlot {
    /// A spectra metric (`field`, default `stable_rank`) against layer, one line per
    /// (model, revision, hook), centred spectra.
    Layers,
    /// Subspace overlap γ against layer, with the random baselines.
    Overlap,
    /// Stable rank of weights (or weight deltas) against layer.
    Weights,
    /// A spectra metric (`field`) against training step: one line per (model, hook, layer),
    /// revisions named `stepN`.
    Trajectory,
    /// A layer's singular values (centred or raw, as the rows' `centring`), one line per
    /// selected row, read from its spectrum file; the selection names one `layer`.
    Spectrum,
}

/// One figure.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFigure {
    /// File name stem: `figures/NAME.svg` and `.pdf` (letters, digits, `-`, `_`).
    pub name: String,
    /// The source's name in `sources` (default: the only source).
    pub source: Option<String>,
    /// What is drawn.
    pub plot: RawPlot,
    /// Which rows of the plot's table.
    #[serde(default, rename = "where")]
    pub selection: BTreeMap<String, RawScalarOrList>,
    /// The spectra metric drawn by `layers` and `trajectory` (default `stable_rank`).
    pub field: Option<String>,
    /// Width and height in points (default 480 × 300).
    pub size: Option<RawSize>,
}

/// A figure's size in points (1/72 inch).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSize {
    /// Width.
    #[schemars(range(min = 100, max = 2000))]
    pub width: u32,
    /// Height.
    #[schemars(range(min = 100, max = 2000))]
    pub height: u32,
}
