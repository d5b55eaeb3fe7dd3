//! The columns of the three metrics tables (docs/metrics.md), by name and kind, for checking an
//! emit file before any table is read. A unit test holds them to the row types' fields.

use super::raw::RawTableName;
use crate::ledger::tables::{OVERLAPS_PATH, SPECTRA_PATH, WEIGHTS_PATH};

/// One of the metrics tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// `metrics/spectra.jsonl`.
    Spectra,
    /// `metrics/overlaps.jsonl`.
    Overlaps,
    /// `metrics/weights.jsonl`.
    Weights,
}

impl From<RawTableName> for TableKind {
    fn from(raw: RawTableName) -> Self {
        match raw {
            RawTableName::Spectra => Self::Spectra,
            RawTableName::Overlaps => Self::Overlaps,
            RawTableName::Weights => Self::Weights,
        }
    }
}

impl TableKind {
    /// Every table.
    pub const ALL: [TableKind; 3] = [Self::Spectra, Self::Overlaps, Self::Weights];

    /// Its name in an emit file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Spectra => "spectra",
            Self::Overlaps => "overlaps",
            Self::Weights => "weights",
        }
    }

    /// Its path in an output repo.
    pub fn path(self) -> &'static str {
        match self {
            Self::Spectra => SPECTRA_PATH,
            Self::Overlaps => OVERLAPS_PATH,
            Self::Weights => WEIGHTS_PATH,
        }
    }
}

/// Text columns hold strings (or null); the others numbers (or null).
const METRICS: &[&str] = &[
    "count",
    "frobenius_norm_sq",
    "spectral_norm",
    "stable_rank",
    "effective_rank",
    "participation_ratio",
    "k90",
    "k99",
];

const SPECTRA_TEXT: &[&str] = &["model", "revision", "hook", "centring", "node", "file"];
const SPECTRA_NUMBERS: &[&str] = &["layer", "rows", "width"];
const OVERLAPS_TEXT: &[&str] = &[
    "model",
    "revision",
    "base_model",
    "base_revision",
    "between",
    "hook",
    "centring",
    "node",
];
const OVERLAPS_NUMBERS: &[&str] = &["layer", "k", "gamma", "baseline", "ratio"];
const WEIGHTS_TEXT: &[&str] = &[
    "model",
    "revision",
    "delta_from",
    "pattern",
    "key",
    "module",
    "part",
    "node",
    "file",
    "tensor",
];
const WEIGHTS_NUMBERS: &[&str] = &["layer", "rows", "cols"];

/// A table's columns.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    text: &'static [&'static str],
    numbers: &'static [&'static str],
    metrics: bool,
}

impl Columns {
    /// The columns of `kind`.
    pub fn of(kind: TableKind) -> Self {
        match kind {
            TableKind::Spectra => Self {
                text: SPECTRA_TEXT,
                numbers: SPECTRA_NUMBERS,
                metrics: true,
            },
            TableKind::Overlaps => Self {
                text: OVERLAPS_TEXT,
                numbers: OVERLAPS_NUMBERS,
                metrics: false,
            },
            TableKind::Weights => Self {
                text: WEIGHTS_TEXT,
                numbers: WEIGHTS_NUMBERS,
                metrics: true,
            },
        }
    }

    /// The numeric columns.
    pub fn numeric(&self) -> impl Iterator<Item = &'static str> + '_ {
        let metrics: &'static [&'static str] = if self.metrics { METRICS } else { &[] };
        self.numbers.iter().chain(metrics).copied()
    }

    /// Every column.
    pub fn all(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.text.iter().copied().chain(self.numeric())
    }

    /// Whether `name` is a column.
    pub fn has(&self, name: &str) -> bool {
        self.all().any(|c| c == name)
    }

    /// Whether `name` is a numeric column.
    pub fn is_numeric(&self, name: &str) -> bool {
        self.numeric().any(|c| c == name)
    }

    /// The numeric columns, for hints.
    pub fn numeric_list(&self) -> String {
        list(self.numeric())
    }

    /// Every column, for hints.
    pub fn all_list(&self) -> String {
        list(self.all())
    }
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tables::{OverlapRow, ScalarMetrics, SpectrumRow, WeightRow};

    fn metrics() -> ScalarMetrics {
        ScalarMetrics {
            count: 1,
            frobenius_norm_sq: 1.0,
            spectral_norm: 1.0,
            stable_rank: 1.0,
            effective_rank: 1.0,
            participation_ratio: 1.0,
            k90: 1,
            k99: 1,
        }
    }

    fn keys(row: impl serde::Serialize) -> Vec<String> {
        let mut keys: Vec<String> = serde_json::to_value(row)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn columns(kind: TableKind) -> Vec<String> {
        let mut all: Vec<String> = Columns::of(kind).all().map(str::to_owned).collect();
        all.sort();
        all
    }

    #[test]
    fn the_columns_are_the_fields_of_the_row_types() {
        let text = String::new;
        let spectrum = SpectrumRow {
            model: text(),
            revision: text(),
            hook: text(),
            layer: Some(0),
            centring: text(),
            rows: 1,
            width: 1,
            metrics: metrics(),
            node: text(),
            file: None,
        };
        assert_eq!(keys(spectrum), columns(TableKind::Spectra));
        let overlap = OverlapRow {
            model: text(),
            revision: text(),
            base_model: text(),
            base_revision: text(),
            between: text(),
            hook: text(),
            layer: None,
            centring: text(),
            k: 1,
            gamma: 0.5,
            baseline: 0.1,
            ratio: 5.0,
            node: text(),
        };
        assert_eq!(keys(overlap), columns(TableKind::Overlaps));
        let weight = WeightRow {
            model: text(),
            revision: text(),
            delta_from: None,
            pattern: text(),
            key: text(),
            layer: None,
            module: text(),
            part: None,
            rows: 1,
            cols: 1,
            metrics: metrics(),
            node: text(),
            file: None,
            tensor: text(),
        };
        assert_eq!(keys(weight), columns(TableKind::Weights));
    }
}
