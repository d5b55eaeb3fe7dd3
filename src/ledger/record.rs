//! Ledger documents: the manifest and one record per node. Plain JSON, readable with `jq` and
//! Python; the schema is `schemas/ledger.schema.json`, generated from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plan::id::canonical_json;

/// Version of the ledger format; readers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// `ledger/manifest.json`: what produced the results, enough to rebuild the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Ledger format version.
    pub schema_version: u32,
    /// The tool that wrote it.
    pub tool: Tool,
    /// Sweep name.
    pub sweep: String,
    /// Output repo, as in the spec.
    pub output: String,
    /// The spec, verbatim, with its hashes.
    pub spec: SpecText,
    /// Comparison tolerances for `reproduce`, per device class and dtype.
    #[serde(default)]
    pub tolerances: Vec<Tolerance>,
}

/// Tool name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// `hubsweep`.
    pub name: String,
    /// Crate version.
    pub version: String,
}

/// The spec as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecText {
    /// File name it was read from.
    pub file_name: String,
    /// Full text.
    pub text: String,
    /// sha256 of `text`.
    pub sha256: String,
    /// sha256 of the spec's canonical JSON (keys sorted): unchanged by reformatting.
    pub canonical_sha256: String,
}

/// A tolerance for comparing recomputed metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Device class (`cpu`, `cuda`).
    pub device: String,
    /// Compute dtype (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// Relative tolerance for metrics.
    pub relative: f64,
    /// Whether artifacts must be bitwise equal.
    pub bitwise: bool,
}

/// One file a node produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, equal to the Hub's LFS oid.
    pub sha256: String,
}

/// Timing of a node's execution (outside the id: a rerun at another time has the same id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Start, RFC 3339 UTC.
    pub started: String,
    /// Wall seconds.
    pub seconds: f64,
}

/// One node's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Node id: sha256 of the canonical JSON of `{inputs, kind, params, pins, version}`.
    pub id: String,
    /// Node kind.
    pub kind: String,
    /// Kind version.
    pub version: u32,
    /// Parameters.
    pub params: serde_json::Value,
    /// Input node ids.
    pub inputs: Vec<String>,
    /// Pins (commit shas, data hash, dtype, device class).
    pub pins: serde_json::Value,
    /// Files produced.
    #[serde(default)]
    pub files: Vec<FileRecord>,
    /// Metrics (analysis nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    /// Timing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// Device it ran on (`cpu`, `cuda:0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Why the node failed; a record with an error marks a failure, not a result (a later
    /// record of the same id without one supersedes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
struct IdRecord<'a> {
    inputs: &'a [String],
    kind: &'a str,
    params: &'a serde_json::Value,
    pins: &'a serde_json::Value,
    version: u32,
}

impl Record {
    /// The id this record's content hashes to; equal to `id` unless the record was altered.
    pub fn recomputed_id(&self) -> String {
        let record = IdRecord {
            inputs: &self.inputs,
            kind: &self.kind,
            params: &self.params,
            pins: &self.pins,
            version: self.version,
        };
        hex::encode(Sha256::digest(canonical_json(&record).as_bytes()))
    }
}

/// Any ledger document (the schema's root).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LedgerDocument {
    /// `ledger/manifest.json`.
    Manifest(Manifest),
    /// A line of a segment or of the index.
    Record(Record),
}

/// The JSON Schema of ledger documents, as committed in `schemas/ledger.schema.json`.
pub fn schema_text() -> String {
    let mut text =
        serde_json::to_string_pretty(&schemars::schema_for!(LedgerDocument)).unwrap_or_default();
    text.push('\n');
    text
}
