//! What `verify` found: the checks (rows of the table) and the failures, each naming the check,
//! the node and the file.

use std::collections::BTreeMap;
use std::time::Duration;

/// A family of checks (one row of the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckKind {
    /// The manifest parses and its spec hashes match its text.
    Manifest,
    /// Segments and index parse as ledger records.
    Records,
    /// Node ids recompute from their records.
    Ids,
    /// Every input of every node is recorded.
    Dag,
    /// Segments are named by their content and agree with the compacted index.
    Index,
    /// No node is recorded twice with different results.
    Duplicates,
    /// Every file sits under its own node.
    Paths,
    /// Every recorded file exists with the recorded LFS oid and size.
    Files,
    /// Downloaded content hashes to the recorded sha256 (deep).
    Hashes,
    /// safetensors headers are sound and match the record (deep).
    Headers,
    /// Spectra recompute from their artifacts (deep).
    Spectra,
    /// The dataset card's pins and counts agree with the ledger.
    Card,
}

impl CheckKind {
    /// Every check, in table order.
    pub const ALL: [CheckKind; 12] = [
        CheckKind::Manifest,
        CheckKind::Records,
        CheckKind::Ids,
        CheckKind::Dag,
        CheckKind::Index,
        CheckKind::Duplicates,
        CheckKind::Paths,
        CheckKind::Files,
        CheckKind::Card,
        CheckKind::Hashes,
        CheckKind::Headers,
        CheckKind::Spectra,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Manifest => "manifest",
            CheckKind::Records => "records",
            CheckKind::Ids => "ids",
            CheckKind::Dag => "dag",
            CheckKind::Index => "index",
            CheckKind::Duplicates => "duplicates",
            CheckKind::Paths => "paths",
            CheckKind::Files => "files",
            CheckKind::Hashes => "hashes",
            CheckKind::Headers => "headers",
            CheckKind::Spectra => "spectra",
            CheckKind::Card => "card",
        }
    }

    /// What the check asserts.
    pub fn describe(self) -> &'static str {
        match self {
            CheckKind::Manifest => "manifest parses; spec text matches its hashes",
            CheckKind::Records => "segments and index parse as ledger records",
            CheckKind::Ids => "node ids recompute from their records",
            CheckKind::Dag => "every input of every node is recorded",
            CheckKind::Index => "segments named by content; same records as the index",
            CheckKind::Duplicates => "no node recorded twice with different results",
            CheckKind::Paths => "every file's name ends in its node's id",
            CheckKind::Files => "every file exists with the recorded LFS oid and size",
            CheckKind::Hashes => "downloaded bytes hash to the recorded sha256",
            CheckKind::Headers => "safetensors headers sound; names, shapes, dtypes as recorded",
            CheckKind::Spectra => "spectra recompute from their artifacts within tolerance",
            CheckKind::Card => "README.md's pins, counts and configs agree with the ledger",
        }
    }

    /// Whether the check needs downloads.
    pub fn is_deep(self) -> bool {
        matches!(
            self,
            CheckKind::Hashes | CheckKind::Headers | CheckKind::Spectra
        )
    }
}

/// One failed check.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Which check.
    pub check: CheckKind,
    /// The node (`kind id12`), or `manifest`.
    pub node: Option<String>,
    /// The file in the repo.
    pub file: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// The commit checked.
    pub head: String,
    /// Distinct nodes recorded.
    pub nodes: usize,
    /// Nodes whose only records are failures (not an integrity problem; reported).
    pub failed_nodes: usize,
    /// Items checked per check.
    pub checked: BTreeMap<CheckKind, u64>,
    /// Everything that failed.
    pub failures: Vec<Failure>,
    /// Bytes downloaded and hashed (deep).
    pub bytes_hashed: u64,
    /// Wall time of the deep checks (downloads, hashing, recomputation), for throughput.
    pub deep_time: Duration,
    /// Whether the deep checks ran.
    pub deep: bool,
}

impl VerifyReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Failures of one check.
    pub fn failures_of(&self, check: CheckKind) -> usize {
        self.failures.iter().filter(|f| f.check == check).count()
    }

    pub(super) fn count(&mut self, check: CheckKind, n: u64) {
        *self.checked.entry(check).or_default() += n;
    }

    pub(super) fn fail(
        &mut self,
        check: CheckKind,
        node: Option<String>,
        file: Option<&str>,
        message: impl Into<String>,
    ) {
        self.failures.push(Failure {
            check,
            node,
            file: file.map(str::to_owned),
            message: message.into(),
        });
    }
}
