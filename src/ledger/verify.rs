//! `hubsweep verify`: check a published ledger without trusting its authors.
//!
//! Shallow (no artifact downloads): the manifest and every record parse as the ledger types
//! (unknown fields refused), the spec text hashes to the recorded hashes, node ids recompute,
//! the DAG is closed, segments are named by their content and agree with the compacted index,
//! no node is recorded twice with different results, every recorded file sits under its own
//! node (its name ends in the node id's first 12 hex) and exists at the revision with the LFS
//! oid and size of the record.
//!
//! Deep, in addition: every recorded file is downloaded into memory (never to disk),
//! re-hashed, its safetensors header parsed as hostile input ([`header`]) and checked against
//! the record's parameters, and every spectrum is recomputed from its input artifacts and
//! compared with the recorded singular values and metrics within the manifest's tolerance.

pub mod header;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use sha2::{Digest, Sha256};

use super::{
    INDEX_PATH, MANIFEST_PATH, Manifest, Record, SEGMENTS_DIR, is_segment_path, parse_manifest,
    parse_records,
};
use crate::analysis::{GramAccumulator, Spectrum};
use crate::hub::{HubClient, HubError, Repo};

/// What to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Download, re-hash, parse and recompute.
    pub deep: bool,
    /// Files checked at once in deep mode.
    pub concurrency: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            deep: false,
            concurrency: 4,
        }
    }
}

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
}

impl CheckKind {
    /// Every check, in table order.
    pub const ALL: [CheckKind; 11] = [
        CheckKind::Manifest,
        CheckKind::Records,
        CheckKind::Ids,
        CheckKind::Dag,
        CheckKind::Index,
        CheckKind::Duplicates,
        CheckKind::Paths,
        CheckKind::Files,
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

    fn count(&mut self, check: CheckKind, n: u64) {
        *self.checked.entry(check).or_default() += n;
    }

    fn fail(
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

/// Why verify could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The repo or revision does not exist (or is not visible with this token).
    #[error("`{repo}` has no revision `{revision}`, or the repo does not exist")]
    NotFound {
        /// The repo.
        repo: String,
        /// The revision.
        revision: String,
        /// The Hub's answer.
        #[source]
        source: HubError,
    },
    /// The Hub refused or failed.
    #[error("cannot read `{repo}`")]
    Hub {
        /// The repo.
        repo: String,
        /// Cause.
        #[source]
        source: HubError,
    },
}

/// The label of a node in messages: `kind id12`.
pub fn node_label(record: &Record) -> String {
    format!("{} {}", record.kind, short(&record.id))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A repo file as the tree lists it.
#[derive(Debug, Clone)]
struct TreeFile {
    oid: Option<String>,
    size: u64,
}

/// Verifies `repo` at `revision`. See the module docs.
pub async fn verify(
    client: &HubClient,
    repo: &Repo,
    revision: &str,
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let repo_name = format!("{}/{}", repo.id.namespace(), repo.id.name());
    let hub = |source| VerifyError::Hub {
        repo: repo_name.clone(),
        source,
    };
    let head = match client.head(repo, revision).await {
        Ok(head) => head,
        Err(source @ (HubError::RepoNotFound { .. } | HubError::RevisionNotFound { .. })) => {
            return Err(VerifyError::NotFound {
                repo: repo_name,
                revision: revision.to_owned(),
                source,
            });
        }
        Err(source) => return Err(hub(source)),
    };
    let mut report = VerifyReport {
        head: head.clone(),
        deep: options.deep,
        ..VerifyReport::default()
    };
    let mut tree: HashMap<String, TreeFile> = HashMap::new();
    for entry in client.list_tree(repo, &head, "", true).await.map_err(hub)? {
        if entry.is_file() {
            let (oid, size) = match &entry.lfs {
                Some(lfs) => (Some(lfs.oid.clone()), lfs.size),
                None => (None, entry.size),
            };
            tree.insert(entry.path.clone(), TreeFile { oid, size });
        }
    }

    let manifest = check_manifest(client, repo, &head, &tree, &mut report)
        .await
        .map_err(hub)?;

    // Segments, then the index.
    let mut segment_paths: Vec<&String> = tree.keys().filter(|p| is_segment_path(p)).collect();
    segment_paths.sort();
    let mut from_segments: Vec<(String, Record)> = Vec::new();
    for path in segment_paths {
        let bytes = client
            .download_bytes(repo, &head, path)
            .await
            .map_err(hub)?;
        report.count(CheckKind::Records, 1);
        report.count(CheckKind::Index, 1);
        let digest = hex::encode(Sha256::digest(&bytes));
        let expected = format!("{SEGMENTS_DIR}/{}.jsonl", &digest[..16]);
        if *path != expected {
            report.fail(
                CheckKind::Index,
                None,
                Some(path),
                format!("the segment's content hashes to `{expected}`: it was rewritten"),
            );
        }
        match parse_records(path, &bytes) {
            Ok(records) => from_segments.extend(records.into_iter().map(|r| (path.clone(), r))),
            Err(e) => report.fail(
                CheckKind::Records,
                None,
                Some(path),
                crate::hub::client::error_chain(&e),
            ),
        }
    }
    let index = if tree.contains_key(INDEX_PATH) {
        let bytes = client
            .download_bytes(repo, &head, INDEX_PATH)
            .await
            .map_err(hub)?;
        report.count(CheckKind::Records, 1);
        match parse_records(INDEX_PATH, &bytes) {
            Ok(records) => Some(records),
            Err(e) => {
                report.fail(
                    CheckKind::Records,
                    None,
                    Some(INDEX_PATH),
                    crate::hub::client::error_chain(&e),
                );
                None
            }
        }
    } else {
        report.fail(
            CheckKind::Index,
            None,
            Some(INDEX_PATH),
            "the compacted index is missing",
        );
        None
    };

    // Every record read, with the file it came from.
    let mut all: Vec<(String, Record)> = from_segments.clone();
    if let Some(index) = &index {
        check_index(index, &from_segments, &mut report);
        let mut segment_ids: HashMap<&str, Vec<&Record>> = HashMap::new();
        for (_, r) in &from_segments {
            segment_ids.entry(r.id.as_str()).or_default().push(r);
        }
        for record in index {
            let known = segment_ids
                .get(record.id.as_str())
                .is_some_and(|rs| rs.iter().any(|r| *r == record));
            if !known {
                all.push((INDEX_PATH.to_owned(), record.clone()));
            }
        }
    }

    // The successful record of each node (the first read).
    let mut results: HashMap<String, (String, Record)> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    for (file, record) in &all {
        report.count(CheckKind::Ids, 1);
        check_record_fields(file, record, &mut report);
        if record.recomputed_id() != record.id {
            report.fail(
                CheckKind::Ids,
                Some(node_label(record)),
                Some(file),
                format!(
                    "the record hashes to `{}`, not to its id: it was edited",
                    short(&record.recomputed_id())
                ),
            );
        }
        if record.error.is_some() {
            failed.insert(record.id.clone());
            continue;
        }
        report.count(CheckKind::Duplicates, 1);
        match results.get(&record.id) {
            Some((_, first)) if first.files != record.files || first.metrics != record.metrics => {
                report.fail(
                    CheckKind::Duplicates,
                    Some(node_label(record)),
                    Some(file),
                    "recorded twice with different files or metrics",
                );
            }
            Some(_) => {}
            None => {
                results.insert(record.id.clone(), (file.clone(), record.clone()));
            }
        }
    }
    report.nodes = results.len();
    report.failed_nodes = failed
        .iter()
        .filter(|id| !results.contains_key(*id))
        .count();

    let mut ordered: Vec<&(String, Record)> = results.values().collect();
    ordered.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    for (file, record) in &ordered {
        for input in &record.inputs {
            report.count(CheckKind::Dag, 1);
            if !results.contains_key(input) {
                report.fail(
                    CheckKind::Dag,
                    Some(node_label(record)),
                    Some(file),
                    format!("input `{}` has no successful record", short(input)),
                );
            }
        }
        for f in &record.files {
            report.count(CheckKind::Paths, 1);
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            let stem = name.strip_suffix(".safetensors").unwrap_or(name);
            if !stem.ends_with(&format!("-{}", short(&record.id))) {
                report.fail(
                    CheckKind::Paths,
                    Some(node_label(record)),
                    Some(&f.path),
                    format!(
                        "the file's name does not end in the node's id `{}`: it belongs to another node",
                        short(&record.id)
                    ),
                );
            }
            report.count(CheckKind::Files, 1);
            match tree.get(&f.path) {
                None => report.fail(
                    CheckKind::Files,
                    Some(node_label(record)),
                    Some(&f.path),
                    format!("recorded but not in the repo at `{}`", short(&head)),
                ),
                Some(have) => {
                    if have.oid.as_deref() != Some(f.sha256.as_str()) {
                        report.fail(
                            CheckKind::Files,
                            Some(node_label(record)),
                            Some(&f.path),
                            format!(
                                "the Hub's LFS oid is `{}`, the record says `{}`",
                                have.oid.as_deref().unwrap_or("(not an LFS file)"),
                                f.sha256
                            ),
                        );
                    } else if have.size != f.size {
                        report.fail(
                            CheckKind::Files,
                            Some(node_label(record)),
                            Some(&f.path),
                            format!(
                                "the Hub's size is {}, the record says {}",
                                have.size, f.size
                            ),
                        );
                    }
                }
            }
        }
    }

    if options.deep {
        let records: HashMap<String, Record> = results
            .into_iter()
            .map(|(id, (_, record))| (id, record))
            .collect();
        deep(
            client,
            repo,
            &head,
            &records,
            manifest.as_ref(),
            options,
            &mut report,
        )
        .await;
    }
    Ok(report)
}

async fn check_manifest(
    client: &HubClient,
    repo: &Repo,
    head: &str,
    tree: &HashMap<String, TreeFile>,
    report: &mut VerifyReport,
) -> Result<Option<Manifest>, HubError> {
    report.count(CheckKind::Manifest, 1);
    let node = Some("manifest".to_owned());
    if !tree.contains_key(MANIFEST_PATH) {
        report.fail(
            CheckKind::Manifest,
            node,
            Some(MANIFEST_PATH),
            "missing: this repo has no ledger",
        );
        return Ok(None);
    }
    let bytes = client.download_bytes(repo, head, MANIFEST_PATH).await?;
    let manifest = match parse_manifest(&bytes) {
        Ok(m) => m,
        Err(e) => {
            report.fail(
                CheckKind::Manifest,
                node,
                Some(MANIFEST_PATH),
                crate::hub::client::error_chain(&e),
            );
            return Ok(None);
        }
    };
    let text = &manifest.spec.text;
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    if sha != manifest.spec.sha256 {
        report.fail(
            CheckKind::Manifest,
            node.clone(),
            Some(MANIFEST_PATH),
            format!(
                "the spec text hashes to `{}`, the manifest says `{}`: the spec was edited",
                short(&sha),
                short(&manifest.spec.sha256)
            ),
        );
    }
    let loaded = crate::spec::load(&manifest.spec.file_name, text.as_bytes());
    let canonical = loaded
        .tree
        .as_ref()
        .map(|t| crate::plan::id::canonical_json(&t.to_json()))
        .unwrap_or_default();
    let canonical = hex::encode(Sha256::digest(canonical.as_bytes()));
    if canonical != manifest.spec.canonical_sha256 {
        report.fail(
            CheckKind::Manifest,
            node.clone(),
            Some(MANIFEST_PATH),
            format!(
                "the spec's canonical form hashes to `{}`, the manifest says `{}`",
                short(&canonical),
                short(&manifest.spec.canonical_sha256)
            ),
        );
    }
    if loaded.spec.is_none() {
        report.fail(
            CheckKind::Manifest,
            node,
            Some(MANIFEST_PATH),
            "the recorded spec is not a valid spec",
        );
    }
    Ok(Some(manifest))
}

/// Field formats the types cannot express (ids and hashes are 64 lowercase hex digits).
fn check_record_fields(file: &str, record: &Record, report: &mut VerifyReport) {
    report.count(CheckKind::Records, 1);
    let mut bad = Vec::new();
    if !is_hex64(&record.id) {
        bad.push("`id` is not 64 hex digits".to_owned());
    }
    if let Some(input) = record.inputs.iter().find(|i| !is_hex64(i)) {
        bad.push(format!("input `{input}` is not 64 hex digits"));
    }
    for f in &record.files {
        if !is_hex64(&f.sha256) {
            bad.push(format!(
                "file `{}` has a sha256 that is not 64 hex digits",
                f.path
            ));
        }
    }
    for message in bad {
        report.fail(
            CheckKind::Records,
            Some(node_label(record)),
            Some(file),
            message,
        );
    }
}

/// The index holds every node of the segments once, sorted, each equal to one of its records
/// in the segments.
fn check_index(index: &[Record], segments: &[(String, Record)], report: &mut VerifyReport) {
    let mut by_id: HashMap<&str, Vec<&(String, Record)>> = HashMap::new();
    for entry in segments {
        by_id.entry(entry.1.id.as_str()).or_default().push(entry);
    }
    let mut previous: Option<&str> = None;
    let mut indexed = HashSet::new();
    for record in index {
        report.count(CheckKind::Index, 1);
        if previous.is_some_and(|p| p >= record.id.as_str()) {
            report.fail(
                CheckKind::Index,
                Some(node_label(record)),
                Some(INDEX_PATH),
                "the index is not sorted by id, or repeats it",
            );
        }
        previous = Some(&record.id);
        indexed.insert(record.id.as_str());
        match by_id.get(record.id.as_str()) {
            None => report.fail(
                CheckKind::Index,
                Some(node_label(record)),
                Some(INDEX_PATH),
                "in the index but in no segment (a segment was dropped?)",
            ),
            Some(found) if !found.iter().any(|(_, r)| r == record) => report.fail(
                CheckKind::Index,
                Some(node_label(record)),
                Some(INDEX_PATH),
                format!(
                    "differs from its record in `{}`",
                    found.first().map_or("", |(p, _)| p.as_str())
                ),
            ),
            Some(_) => {}
        }
    }
    let mut missing: Vec<&(String, Record)> = segments
        .iter()
        .filter(|(_, r)| !indexed.contains(r.id.as_str()))
        .collect();
    missing.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    missing.dedup_by(|a, b| a.1.id == b.1.id);
    for (path, record) in missing {
        report.fail(
            CheckKind::Index,
            Some(node_label(record)),
            Some(path),
            "in a segment but not in the index",
        );
    }
}

/// The relative tolerance of metrics recomputed from artifacts stored in `dtype`.
fn tolerance(manifest: Option<&Manifest>, device: Option<&str>, dtype: &str) -> f64 {
    let class = match device {
        Some(d) if d.starts_with("cuda") => "cuda",
        _ => "cpu",
    };
    let recorded = manifest
        .and_then(|m| {
            m.tolerances
                .iter()
                .find(|t| t.device == class && t.dtype == dtype)
        })
        .map_or(1e-6, |t| t.relative);
    // Spectra are accumulated from the f32 activations before they are stored; from a
    // half-precision artifact the recomputation sees rounded values.
    let storage = match dtype {
        "f16" => 1e-2,
        "bf16" => 2e-2,
        _ => 0.0,
    };
    recorded.max(storage).max(1e-9)
}

/// Outcome of checking one group of files in deep mode.
#[derive(Default)]
struct DeepOutcome {
    checked: Vec<(CheckKind, u64)>,
    failures: Vec<Failure>,
    bytes: u64,
}

impl DeepOutcome {
    fn fail(&mut self, check: CheckKind, record: &Record, file: &str, message: String) {
        self.failures.push(Failure {
            check,
            node: Some(node_label(record)),
            file: Some(file.to_owned()),
            message,
        });
    }
}

/// A unit of deep work: a spectrum with its input artifacts, or a lone file.
enum Group {
    Spectrum(Record, Vec<Record>),
    Lone(Record),
}

#[allow(clippy::too_many_arguments)]
async fn deep(
    client: &HubClient,
    repo: &Repo,
    head: &str,
    records: &HashMap<String, Record>,
    manifest: Option<&Manifest>,
    options: &VerifyOptions,
    report: &mut VerifyReport,
) {
    // Capture pushes activations into the Gram matrix one batch at a time; pushing the same
    // chunks in the same order reproduces the same sums.
    let batch_windows = manifest
        .and_then(|m| crate::spec::load(&m.spec.file_name, m.spec.text.as_bytes()).spec)
        .map(|s| (s.compute.batch_size as usize).max(1) * s.data.seq_len as usize);
    let mut grouped = HashSet::new();
    let mut groups = Vec::new();
    let mut ids: Vec<&String> = records.keys().collect();
    ids.sort();
    for id in &ids {
        let record = &records[*id];
        if record.kind != "spectrum" || record.files.is_empty() {
            continue;
        }
        let inputs: Vec<Record> = record
            .inputs
            .iter()
            .filter_map(|i| records.get(i).cloned())
            .collect();
        grouped.extend(inputs.iter().map(|r| r.id.clone()));
        grouped.insert(record.id.clone());
        groups.push(Group::Spectrum(record.clone(), inputs));
    }
    for id in ids {
        let record = &records[id];
        if !record.files.is_empty() && !grouped.contains(id) {
            groups.push(Group::Lone(record.clone()));
        }
    }
    let manifest = manifest.cloned().map(Arc::new);
    let outcomes: Vec<DeepOutcome> = futures::stream::iter(groups)
        .map(|group| {
            let (client, repo, head, manifest) = (
                client.clone(),
                repo.clone(),
                head.to_owned(),
                manifest.clone(),
            );
            async move {
                let mut out = DeepOutcome::default();
                match group {
                    Group::Lone(record) => {
                        for file in &record.files {
                            let _ =
                                fetch_checked(&client, &repo, &head, &record, file, &mut out).await;
                        }
                    }
                    Group::Spectrum(spectrum, inputs) => {
                        check_spectrum(
                            &client,
                            &repo,
                            &head,
                            &spectrum,
                            &inputs,
                            manifest.as_deref(),
                            batch_windows,
                            &mut out,
                        )
                        .await;
                    }
                }
                out
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    for outcome in outcomes {
        for (check, n) in outcome.checked {
            report.count(check, n);
        }
        report.failures.extend(outcome.failures);
        report.bytes_hashed += outcome.bytes;
    }
}

/// Downloads a recorded file, re-hashes it and checks its header against the record; the
/// bytes and header when both hold.
async fn fetch_checked(
    client: &HubClient,
    repo: &Repo,
    head: &str,
    record: &Record,
    file: &super::FileRecord,
    out: &mut DeepOutcome,
) -> Option<(Bytes, header::Header)> {
    out.checked.push((CheckKind::Hashes, 1));
    let bytes = match client.download_bytes(repo, head, &file.path).await {
        Ok(b) => b,
        Err(e) => {
            out.fail(
                CheckKind::Hashes,
                record,
                &file.path,
                format!("cannot download: {}", crate::hub::client::error_chain(&e)),
            );
            return None;
        }
    };
    out.bytes += bytes.len() as u64;
    let hashed = bytes.clone();
    let digest = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&hashed)))
        .await
        .unwrap_or_default();
    if digest != file.sha256 || bytes.len() as u64 != file.size {
        out.fail(
            CheckKind::Hashes,
            record,
            &file.path,
            format!(
                "the content ({} bytes) hashes to `{digest}`, the record says `{}` ({} bytes)",
                bytes.len(),
                file.sha256,
                file.size
            ),
        );
        return None;
    }
    out.checked.push((CheckKind::Headers, 1));
    let parsed = match header::parse(&bytes, bytes.len() as u64) {
        Ok(h) => h,
        Err(e) => {
            out.fail(CheckKind::Headers, record, &file.path, e.to_string());
            return None;
        }
    };
    if let Err(message) = header_matches(record, &parsed) {
        out.fail(CheckKind::Headers, record, &file.path, message);
        return None;
    }
    Some((bytes, parsed))
}

/// Tensor names, dtypes and shapes a record's parameters call for.
fn header_matches(record: &Record, header: &header::Header) -> Result<(), String> {
    let tensor = |name: &str| {
        header
            .tensor(name)
            .ok_or_else(|| format!("no tensor `{name}`"))
    };
    match record.kind.as_str() {
        "artifact" => {
            if let Some(id) = header.metadata.get("node_id")
                && *id != record.id
            {
                return Err(format!("the file says it is node `{}`", short(id)));
            }
            let ids = tensor("token_ids")?;
            let acts = tensor("activations")?;
            if ids.dtype != "I32" || ids.shape.len() != 1 {
                return Err(format!(
                    "`token_ids` is {} {:?}, expected I32 [tokens]",
                    ids.dtype, ids.shape
                ));
            }
            let dtype = record.params["dtype"]
                .as_str()
                .unwrap_or("f32")
                .to_uppercase();
            if acts.dtype != dtype || acts.shape.len() != 2 || acts.shape[0] != ids.shape[0] {
                return Err(format!(
                    "`activations` is {} {:?}, expected {dtype} [{}, width]",
                    acts.dtype, acts.shape, ids.shape[0]
                ));
            }
            if header.tensors.len() != 2 {
                return Err(format!(
                    "{} tensors, expected `token_ids` and `activations`",
                    header.tensors.len()
                ));
            }
        }
        "spectrum" => {
            let mean = tensor("mean")?;
            let [width] = mean.shape[..] else {
                return Err(format!("`mean` has shape {:?}", mean.shape));
            };
            for name in ["raw.singular_values", "centred.singular_values", "mean"] {
                let t = tensor(name)?;
                if t.dtype != "F64" || t.shape != [width] {
                    return Err(format!(
                        "`{name}` is {} {:?}, expected F64 [{width}]",
                        t.dtype, t.shape
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Rows of an artifact's activations as f32 (the dtypes capture writes).
fn activation_rows(bytes: &[u8], header: &header::Header) -> Option<(Vec<f32>, usize, usize)> {
    let acts = header.tensor("activations")?;
    let (rows, width) = (acts.shape[0] as usize, acts.shape[1] as usize);
    let start = usize::try_from(header.data_start + acts.offsets.0).ok()?;
    let end = usize::try_from(header.data_start + acts.offsets.1).ok()?;
    let data = bytes.get(start..end)?;
    let values = match acts.dtype.as_str() {
        "F32" => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some((values, rows, width))
}

#[allow(clippy::too_many_arguments)]
async fn check_spectrum(
    client: &HubClient,
    repo: &Repo,
    head: &str,
    spectrum: &Record,
    inputs: &[Record],
    manifest: Option<&Manifest>,
    batch_rows: Option<usize>,
    out: &mut DeepOutcome,
) {
    let mut gram: Option<GramAccumulator> = None;
    let mut complete = inputs.len() == spectrum.inputs.len();
    let mut dtype = "f32".to_owned();
    for artifact in inputs {
        for file in &artifact.files {
            let Some((bytes, parsed)) =
                fetch_checked(client, repo, head, artifact, file, out).await
            else {
                complete = false;
                continue;
            };
            if let Some(d) = artifact.params["dtype"].as_str() {
                d.clone_into(&mut dtype);
            }
            let Some((values, rows, width)) = activation_rows(&bytes, &parsed) else {
                complete = false;
                continue;
            };
            drop(bytes);
            let acc = gram.get_or_insert_with(|| GramAccumulator::new(width));
            let chunk = batch_rows.unwrap_or(rows).max(1);
            let mut pushed = Ok(());
            for start in (0..rows).step_by(chunk) {
                let n = chunk.min(rows - start);
                pushed = acc.push_rows(&values[start * width..(start + n) * width], n, width);
                if pushed.is_err() {
                    break;
                }
            }
            if let Err(e) = pushed {
                out.fail(CheckKind::Spectra, artifact, &file.path, e.to_string());
                complete = false;
            }
        }
    }
    for file in &spectrum.files {
        let Some((bytes, _)) = fetch_checked(client, repo, head, spectrum, file, out).await else {
            continue;
        };
        out.checked.push((CheckKind::Spectra, 1));
        if !complete {
            out.fail(
                CheckKind::Spectra,
                spectrum,
                &file.path,
                "cannot recompute: an input artifact is missing or damaged".into(),
            );
            continue;
        }
        let Some(acc) = gram.take() else {
            continue;
        };
        let top_k = spectrum.params["top_k"].as_u64().unwrap_or(64) as usize;
        let tol = tolerance(manifest, spectrum.device.as_deref(), &dtype);
        let recorded = spectrum.metrics.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let stored = Spectrum::from_safetensors(&bytes).map_err(|e| e.to_string())?;
            let fresh = acc.finish(top_k).map_err(|e| e.to_string())?;
            compare_spectra(&stored, &fresh, recorded.as_ref(), tol)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(message) = outcome {
            out.fail(CheckKind::Spectra, spectrum, &file.path, message);
        }
    }
}

fn compare_spectra(
    stored: &Spectrum,
    fresh: &Spectrum,
    recorded: Option<&serde_json::Value>,
    tol: f64,
) -> Result<(), String> {
    if stored.rows != fresh.rows || stored.width() != fresh.width() {
        return Err(format!(
            "the file has {} rows × {}, the artifacts give {} × {}",
            stored.rows,
            stored.width(),
            fresh.rows,
            fresh.width()
        ));
    }
    for (name, a, b) in [
        (
            "raw.singular_values",
            &stored.raw.singular_values,
            &fresh.raw.singular_values,
        ),
        (
            "centred.singular_values",
            &stored.centred.singular_values,
            &fresh.centred.singular_values,
        ),
        ("mean", &stored.mean, &fresh.mean),
    ] {
        let scale = a.iter().chain(b.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
        if let Some((i, (x, y))) = a
            .iter()
            .zip(b.iter())
            .enumerate()
            .find(|(_, (x, y))| (*x - *y).abs() > tol * scale)
        {
            return Err(format!(
                "`{name}`[{i}] is {x} in the file, {y} recomputed (relative tolerance {tol:e})"
            ));
        }
    }
    let fresh_metrics = serde_json::to_value(fresh.metrics()).unwrap_or_default();
    let Some(recorded) = recorded else {
        return Err("the record has no metrics".into());
    };
    let scale = max_abs(&fresh_metrics);
    compare_json(recorded, &fresh_metrics, tol, scale, "metrics")
}

fn max_abs(value: &serde_json::Value) -> f64 {
    match value {
        serde_json::Value::Number(n) => n.as_f64().map_or(0.0, f64::abs),
        serde_json::Value::Array(a) => a.iter().map(max_abs).fold(0.0, f64::max),
        serde_json::Value::Object(o) => o.values().map(max_abs).fold(0.0, f64::max),
        _ => 0.0,
    }
}

/// Compares recorded and recomputed metrics: integers exactly, floats within `tol` relative
/// to the larger of the two values, with a floor of `tol × scale` for values near zero (small
/// eigenvalues carry the rounding of the largest ones).
fn compare_json(
    recorded: &serde_json::Value,
    fresh: &serde_json::Value,
    tol: f64,
    scale: f64,
    at: &str,
) -> Result<(), String> {
    use serde_json::Value;
    match (recorded, fresh) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: HashSet<&String> = a.keys().chain(b.keys()).collect();
            let mut keys: Vec<&String> = keys.into_iter().collect();
            keys.sort();
            for key in keys {
                let path = format!("{at}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => compare_json(x, y, tol, scale, &path)?,
                    _ => {
                        return Err(format!(
                            "`{path}` is in only one of record and recomputation"
                        ));
                    }
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Err(format!(
                    "`{at}` has {} values recorded, {} recomputed",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare_json(x, y, tol, scale, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_u64(), y.as_u64()) {
                (Some(p), Some(q)) => p == q,
                _ => {
                    let (p, q) = (
                        x.as_f64().unwrap_or(f64::NAN),
                        y.as_f64().unwrap_or(f64::NAN),
                    );
                    (p - q).abs() <= tol * p.abs().max(q.abs()).max(scale * 1e-6)
                        || (p - q).abs() <= tol * scale
                }
            };
            if same {
                Ok(())
            } else {
                Err(format!(
                    "`{at}` is {x} in the record, {y} recomputed (relative tolerance {tol:e})"
                ))
            }
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("`{at}` is {a} in the record, {b} recomputed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_compare_within_tolerance_and_integers_exactly() {
        let a = serde_json::json!({"k90": 3, "spectral_norm": 10.0, "top": [100.0, 1e-12]});
        let b = serde_json::json!({"k90": 3, "spectral_norm": 10.0 + 1e-10, "top": [100.0, 2e-12]});
        assert!(compare_json(&a, &b, 1e-9, 100.0, "m").is_ok());
        let c = serde_json::json!({"k90": 4, "spectral_norm": 10.0, "top": [100.0, 1e-12]});
        assert!(compare_json(&a, &c, 1e-9, 100.0, "m").is_err());
        let d = serde_json::json!({"k90": 3, "spectral_norm": 10.1, "top": [100.0, 1e-12]});
        let err = compare_json(&a, &d, 1e-9, 100.0, "m").unwrap_err();
        assert!(err.contains("m.spectral_norm"), "{err}");
    }
}
