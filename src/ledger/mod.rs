//! The checkable results ledger, kept in the output repo under `ledger/`:
//!
//! - `ledger/manifest.json` — spec text and hashes, tool and schema version, tolerances;
//! - `ledger/segments/{sha256 of content, 16 hex}.jsonl` — one record per line, appended in the
//!   same commit as the files the records describe (content-named, so concurrent writers never
//!   pick the same name);
//! - `ledger/index.jsonl` — every record once, sorted by id, rewritten at the end of a run;
//! - `metrics/*.jsonl` — flat tables derived from the records ([`tables`]), written with the
//!   index.
//!
//! Reading treats the files as hostile input: sizes are capped, every line is parsed with a
//! line number in the error, and nothing panics. See docs/ledger.md.

pub mod card;
pub mod record;
pub mod state;
pub mod tables;
pub mod updates;
pub mod verify;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use record::{FileRecord, Manifest, Record, SCHEMA_VERSION, SpecText, Timing, Tolerance, Tool};
pub use state::{LedgerState, PlanProgress, Progress, RepoFile, StateError};
pub use tables::{IndexFiles, index_files};

/// Folder of the ledger in the output repo.
pub const LEDGER_DIR: &str = "ledger";
/// Path of the manifest.
pub const MANIFEST_PATH: &str = "ledger/manifest.json";
/// Path of the compacted index.
pub const INDEX_PATH: &str = "ledger/index.jsonl";
/// Folder of the segments.
pub const SEGMENTS_DIR: &str = "ledger/segments";
/// Largest ledger file read (a segment, the index or the manifest).
pub const MAX_LEDGER_FILE_BYTES: usize = 512 << 20;
/// Largest single record line.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Why ledger content could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file larger than any ledger file should be.
    #[error("`{path}` is {size} bytes; ledger files are at most {MAX_LEDGER_FILE_BYTES} bytes")]
    TooLarge {
        /// File.
        path: String,
        /// Its size.
        size: usize,
    },
    /// Not JSON of the expected shape.
    #[error("`{path}` line {line}: not a valid ledger record")]
    Invalid {
        /// File.
        path: String,
        /// 1-based line (1 for whole-file documents).
        line: usize,
        /// Parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A line longer than any record should be.
    #[error("`{path}` line {line} is longer than {MAX_RECORD_BYTES} bytes")]
    LineTooLong {
        /// File.
        path: String,
        /// Line.
        line: usize,
    },
    /// A format this version cannot read.
    #[error(
        "`{path}` has ledger schema version {found}; this hubsweep reads version {SCHEMA_VERSION}"
    )]
    UnsupportedVersion {
        /// File.
        path: String,
        /// Version found.
        found: u32,
    },
}

/// Parses `ledger/manifest.json`.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, LedgerError> {
    if bytes.len() > MAX_LEDGER_FILE_BYTES {
        return Err(LedgerError::TooLarge {
            path: MANIFEST_PATH.into(),
            size: bytes.len(),
        });
    }
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|source| LedgerError::Invalid {
            path: MANIFEST_PATH.into(),
            line: 1,
            source,
        })?;
    if manifest.schema_version != SCHEMA_VERSION {
        return Err(LedgerError::UnsupportedVersion {
            path: MANIFEST_PATH.into(),
            found: manifest.schema_version,
        });
    }
    Ok(manifest)
}

/// Parses a JSONL file of records (a segment or the index). Blank lines are skipped.
pub fn parse_records(path: &str, bytes: &[u8]) -> Result<Vec<Record>, LedgerError> {
    if bytes.len() > MAX_LEDGER_FILE_BYTES {
        return Err(LedgerError::TooLarge {
            path: path.into(),
            size: bytes.len(),
        });
    }
    let mut records = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.len() > MAX_RECORD_BYTES {
            return Err(LedgerError::LineTooLong {
                path: path.into(),
                line: i + 1,
            });
        }
        let record = serde_json::from_slice(line).map_err(|source| LedgerError::Invalid {
            path: path.into(),
            line: i + 1,
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Serializes records as JSONL, one per line.
pub fn to_jsonl<'a>(records: impl IntoIterator<Item = &'a Record>) -> String {
    let mut out = String::new();
    for record in records {
        out.push_str(&serde_json::to_string(record).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// A segment: its content and the content-derived path it is committed at.
#[derive(Debug, Clone)]
pub struct Segment {
    /// `ledger/segments/{hash}.jsonl`.
    pub path: String,
    /// JSONL content.
    pub content: String,
}

/// Builds the segment that records `records` (in the given order).
pub fn segment(records: &[Record]) -> Segment {
    let content = to_jsonl(records);
    let digest = hex::encode(Sha256::digest(content.as_bytes()));
    Segment {
        path: format!("{SEGMENTS_DIR}/{}.jsonl", &digest[..16]),
        content,
    }
}

/// The compacted index: every record once (the last one read wins for a repeated id), sorted
/// by id.
pub fn compact<'a>(records: impl IntoIterator<Item = &'a Record>) -> String {
    to_jsonl(compacted(records))
}

/// Every node's last record, sorted by id: what [`compact`] writes.
pub fn compacted<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<&'a Record> {
    let by_id: BTreeMap<&str, &Record> = records.into_iter().map(|r| (r.id.as_str(), r)).collect();
    by_id.into_values().collect()
}

/// The largest magnitude of any number in a metrics value (nested arrays and objects
/// included): the scale that near-zero entries are compared against, since small eigenvalues
/// carry the rounding of the largest ones.
pub(crate) fn max_abs(value: &serde_json::Value) -> f64 {
    match value {
        serde_json::Value::Number(n) => n.as_f64().map_or(0.0, f64::abs),
        serde_json::Value::Array(a) => a.iter().map(max_abs).fold(0.0, f64::max),
        serde_json::Value::Object(o) => o.values().map(max_abs).fold(0.0, f64::max),
        _ => 0.0,
    }
}

/// Whether a repo path is a ledger segment.
pub fn is_segment_path(path: &str) -> bool {
    path.strip_prefix(SEGMENTS_DIR)
        .and_then(|p| p.strip_prefix('/'))
        .is_some_and(|name| name.ends_with(".jsonl") && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id_seed: &str) -> Record {
        let mut r = Record {
            id: String::new(),
            kind: "artifact".into(),
            version: 1,
            params: serde_json::json!({"hook": "hook_resid_post", "layer": 0, "seed": id_seed}),
            inputs: vec!["ab".repeat(32)],
            pins: serde_json::json!({}),
            files: vec![FileRecord {
                path: "acts/x.safetensors".into(),
                size: 10,
                sha256: "00".repeat(32),
            }],
            metrics: None,
            timing: Some(Timing {
                started: "2026-11-27T13:00:00Z".into(),
                seconds: 0.5,
            }),
            device: Some("cpu".into()),
            error: None,
        };
        r.id = r.recomputed_id();
        r
    }

    #[test]
    fn records_round_trip_and_ids_recompute() {
        let records = vec![record("b"), record("a")];
        let seg = segment(&records);
        assert!(is_segment_path(&seg.path));
        let back = parse_records(&seg.path, seg.content.as_bytes()).unwrap();
        assert_eq!(back, records);
        assert!(back.iter().all(|r| r.recomputed_id() == r.id));
        let mut edited = back[0].clone();
        edited.params["layer"] = serde_json::json!(1);
        assert_ne!(edited.recomputed_id(), edited.id);
    }

    #[test]
    fn index_is_sorted_and_deduplicated() {
        let (a, b) = (record("a"), record("b"));
        let index = compact([&b, &a, &b]);
        let back = parse_records(INDEX_PATH, index.as_bytes()).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back[0].id < back[1].id);
    }

    #[test]
    fn hostile_input_is_an_error_with_a_line() {
        let err = parse_records("s.jsonl", b"{\"id\": 1}\n").unwrap_err();
        assert!(matches!(err, LedgerError::Invalid { line: 1, .. }));
        let good = to_jsonl([&record("a")]);
        let err = parse_records("s.jsonl", format!("{good}\n\n{{").as_bytes()).unwrap_err();
        assert!(matches!(err, LedgerError::Invalid { line: 4, .. }), "{err}");
        assert!(parse_manifest(b"[]").is_err());
    }
}
