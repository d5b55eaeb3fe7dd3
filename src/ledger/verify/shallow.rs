//! The shallow checks: everything that needs only the tree listing and the ledger's own files
//! (manifest, segments, index), no artifact downloads.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::report::{CheckKind, VerifyReport};
use super::{node_label, short};
use crate::hub::{HubClient, HubError, Repo};
use crate::ledger::{
    INDEX_PATH, MANIFEST_PATH, Manifest, Record, SEGMENTS_DIR, card, is_segment_path,
    parse_manifest, parse_records,
};

/// A repo file as the tree lists it.
#[derive(Debug, Clone)]
pub(super) struct TreeFile {
    oid: Option<String>,
    size: u64,
}

/// Every file of the commit, by path, from one recursive tree listing (pages of the largest
/// size the Hub serves, 1,000 entries).
pub(super) async fn list_files(
    client: &HubClient,
    repo: &Repo,
    head: &str,
) -> Result<HashMap<String, TreeFile>, HubError> {
    let entries = client.list_tree(repo, head, "", true).await?;
    let mut tree = HashMap::with_capacity(entries.len());
    for entry in entries {
        if entry.is_file() {
            let (oid, size) = match entry.lfs {
                Some(lfs) => (Some(lfs.oid), lfs.size),
                None => (None, entry.size),
            };
            tree.insert(entry.path, TreeFile { oid, size });
        }
    }
    Ok(tree)
}

pub(super) async fn check_manifest(
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

/// Every record of the segments (each with the segment it came from), then the index's records
/// that no segment holds (with [`INDEX_PATH`]); checks segment names and the index on the way.
pub(super) async fn read_records(
    client: &HubClient,
    repo: &Repo,
    head: &str,
    tree: &HashMap<String, TreeFile>,
    report: &mut VerifyReport,
) -> Result<Vec<(String, Record)>, HubError> {
    let mut segment_paths: Vec<&String> = tree.keys().filter(|p| is_segment_path(p)).collect();
    segment_paths.sort();
    let mut all: Vec<(String, Record)> = Vec::new();
    for path in segment_paths {
        let bytes = client.download_bytes(repo, head, path).await?;
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
            Ok(records) => all.extend(records.into_iter().map(|r| (path.clone(), r))),
            Err(e) => report.fail(
                CheckKind::Records,
                None,
                Some(path),
                crate::hub::client::error_chain(&e),
            ),
        }
    }
    if !tree.contains_key(INDEX_PATH) {
        report.fail(
            CheckKind::Index,
            None,
            Some(INDEX_PATH),
            "the compacted index is missing",
        );
        return Ok(all);
    }
    let bytes = client.download_bytes(repo, head, INDEX_PATH).await?;
    report.count(CheckKind::Records, 1);
    let index = match parse_records(INDEX_PATH, &bytes) {
        Ok(records) => records,
        Err(e) => {
            report.fail(
                CheckKind::Records,
                None,
                Some(INDEX_PATH),
                crate::hub::client::error_chain(&e),
            );
            return Ok(all);
        }
    };
    check_index(&index, &all, report);
    let unknown: Vec<Record> = {
        let mut segment_ids: HashMap<&str, Vec<&Record>> = HashMap::new();
        for (_, r) in &all {
            segment_ids.entry(r.id.as_str()).or_default().push(r);
        }
        index
            .into_iter()
            .filter(|record| {
                !segment_ids
                    .get(record.id.as_str())
                    .is_some_and(|rs| rs.contains(&record))
            })
            .collect()
    };
    all.extend(unknown.into_iter().map(|r| (INDEX_PATH.to_owned(), r)));
    Ok(all)
}

/// The successful record of each node (the first read), with the file it came from; checks
/// field formats, ids and duplicates, and counts the nodes.
pub(super) fn check_records(
    all: Vec<(String, Record)>,
    report: &mut VerifyReport,
) -> HashMap<String, (String, Record)> {
    let mut results: HashMap<String, (String, Record)> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    for (file, record) in all {
        report.count(CheckKind::Ids, 1);
        check_record_fields(&file, &record, report);
        let recomputed = record.recomputed_id();
        if recomputed != record.id {
            report.fail(
                CheckKind::Ids,
                Some(node_label(&record)),
                Some(&file),
                format!(
                    "the record hashes to `{}`, not to its id: it was edited",
                    short(&recomputed)
                ),
            );
        }
        if record.error.is_some() {
            failed.insert(record.id);
            continue;
        }
        report.count(CheckKind::Duplicates, 1);
        match results.get(&record.id) {
            Some((_, first)) if first.files != record.files || first.metrics != record.metrics => {
                report.fail(
                    CheckKind::Duplicates,
                    Some(node_label(&record)),
                    Some(&file),
                    "recorded twice with different files or metrics",
                );
            }
            Some(_) => {}
            // Moved, not cloned: the records are not needed elsewhere, and there are many.
            None => {
                results.insert(record.id.clone(), (file, record));
            }
        }
    }
    report.nodes = results.len();
    report.failed_nodes = failed
        .iter()
        .filter(|id| !results.contains_key(*id))
        .count();
    results
}

/// The DAG is closed; every file sits under its own node and is in the tree with the
/// recorded LFS oid and size.
pub(super) fn check_nodes(
    results: &HashMap<String, (String, Record)>,
    tree: &HashMap<String, TreeFile>,
    head: &str,
    report: &mut VerifyReport,
) {
    let mut ordered: Vec<&(String, Record)> = results.values().collect();
    ordered.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    for (file, record) in ordered {
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
            let id12 = short(&record.id);
            let owned = stem
                .strip_suffix(id12)
                .is_some_and(|rest| rest.ends_with('-'));
            if !owned {
                report.fail(
                    CheckKind::Paths,
                    Some(node_label(record)),
                    Some(&f.path),
                    format!(
                        "the file's name does not end in the node's id `{id12}`: it belongs to another node"
                    ),
                );
            }
            report.count(CheckKind::Files, 1);
            let failure = match tree.get(&f.path) {
                None => Some(format!("recorded but not in the repo at `{}`", short(head))),
                Some(have) if have.oid.as_deref() != Some(f.sha256.as_str()) => Some(format!(
                    "the Hub's LFS oid is `{}`, the record says `{}`",
                    have.oid.as_deref().unwrap_or("(not an LFS file)"),
                    f.sha256
                )),
                Some(have) if have.size != f.size => Some(format!(
                    "the Hub's size is {}, the record says {}",
                    have.size, f.size
                )),
                Some(_) => None,
            };
            if let Some(message) = failure {
                report.fail(
                    CheckKind::Files,
                    Some(node_label(record)),
                    Some(&f.path),
                    message,
                );
            }
        }
    }
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A card hubsweep wrote must claim what the ledger holds (docs/ledger.md); a card somebody
/// else wrote, or none, is not checked.
pub(super) async fn check_card(
    client: &HubClient,
    repo: &Repo,
    head: &str,
    tree: &HashMap<String, TreeFile>,
    results: &HashMap<String, (String, Record)>,
    report: &mut VerifyReport,
) -> Result<(), HubError> {
    let Some(file) = tree.get(card::CARD_PATH) else {
        return Ok(());
    };
    if file.size > card::MAX_CARD_BYTES as u64 {
        return Ok(());
    }
    let bytes = client.download_bytes(repo, head, card::CARD_PATH).await?;
    let text = String::from_utf8_lossy(&bytes);
    if card::authorship(Some(&text)) != card::Authorship::Hubsweep {
        return Ok(());
    }
    report.count(CheckKind::Card, 1);
    let mut actual = card::Claims::from_records(results.values().map(|(_, record)| record));
    actual.failed = report.failed_nodes as u64;
    for finding in card::check(&text, &actual, |path| tree.contains_key(path)) {
        report.fail(
            CheckKind::Card,
            Some("card".to_owned()),
            Some(card::CARD_PATH),
            finding.message,
        );
    }
    Ok(())
}
