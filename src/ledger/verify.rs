//! `hubsweep verify`: check a published ledger without trusting its authors.
//!
//! Shallow (no artifact downloads, `shallow.rs`): the manifest and every record parse as the
//! ledger types (unknown fields refused), the spec text hashes to the recorded hashes, node ids
//! recompute, the DAG is closed, segments are named by their content and agree with the
//! compacted index, no node is recorded twice with different results, every recorded file sits
//! under its own node (its name ends in the node id's first 12 hex) and exists at the revision
//! with the LFS oid and size of the record.
//!
//! Deep, in addition (`deep.rs`): every recorded file is streamed into memory (never to disk)
//! and hashed as it arrives, its safetensors header parsed as hostile input ([`header`]) and
//! checked against the record's parameters, and every spectrum is recomputed from its input
//! artifacts and compared with the recorded singular values and metrics within the manifest's
//! tolerance (`spectra.rs`).
//!
//! The outcome is a [`VerifyReport`]: counts per check and every failure.

mod deep;
pub mod header;
mod report;
mod shallow;
mod spectra;
mod updates;

use std::collections::HashMap;

pub use report::{CheckKind, Failure, VerifyReport};

use super::Record;
use crate::hub::{HubClient, HubError, Repo};

/// What to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Download, re-hash, parse and recompute.
    pub deep: bool,
    /// Files hashed at once in deep mode (one more is downloaded ahead of them).
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
    let started = std::time::Instant::now();
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
    let tree = shallow::list_files(client, repo, &head)
        .await
        .map_err(hub)?;
    tracing::debug!(files = tree.len(), elapsed = ?started.elapsed(), "listed the tree");
    let manifest = shallow::check_manifest(client, repo, &head, &tree, &mut report)
        .await
        .map_err(hub)?;
    let records = shallow::read_records(client, repo, &head, &tree, &mut report)
        .await
        .map_err(hub)?;
    tracing::debug!(records = records.len(), elapsed = ?started.elapsed(), "read the ledger");
    let results = shallow::check_records(records, &mut report);
    shallow::check_nodes(&results, &tree, &head, &mut report);
    shallow::check_card(client, repo, &head, &tree, &results, &mut report)
        .await
        .map_err(hub)?;
    tracing::debug!(nodes = results.len(), elapsed = ?started.elapsed(), "shallow checks done");

    if options.deep {
        let deep_started = std::time::Instant::now();
        let records: HashMap<String, Record> = results
            .into_iter()
            .map(|(id, (_, record))| (id, record))
            .collect();
        deep::check(
            client,
            repo,
            &head,
            &records,
            manifest.as_ref(),
            options,
            &mut report,
        )
        .await;
        report.deep_time = deep_started.elapsed();
        tracing::debug!(bytes = report.bytes_hashed, elapsed = ?report.deep_time, "deep checks done");
    }
    Ok(report)
}
