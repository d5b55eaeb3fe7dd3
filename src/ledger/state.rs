//! What an output repo already holds: its files (with LFS oids) and its ledger records. A rerun
//! reads this first and skips every node whose record is there with its files present.

use std::collections::HashMap;

use super::{
    INDEX_PATH, LedgerError, MANIFEST_PATH, Manifest, Record, SEGMENTS_DIR, card, is_segment_path,
    parse_manifest, parse_records,
};
use crate::hub::{HubClient, HubError, Repo};

/// A file in the repo: its LFS sha256 (or `None` for a regular file) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// sha256 of the content, for LFS files.
    pub sha256: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// The ledger and files of a repo at one commit.
#[derive(Debug, Clone, Default)]
pub struct LedgerState {
    /// The commit read.
    pub head: Option<String>,
    /// The manifest, if committed.
    pub manifest: Option<Manifest>,
    /// Records by id: results supersede failures; among results the last read wins.
    pub records: HashMap<String, Record>,
    /// Every file of the repo.
    pub files: HashMap<String, RepoFile>,
    /// Segment paths read.
    pub segments: Vec<String>,
    /// The repo's dataset card (`README.md`), if it has one (see [`super::card`]).
    pub card: Option<String>,
}

/// Why the state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The Hub refused or failed.
    #[error("cannot read the output repo")]
    Hub(#[from] HubError),
    /// A ledger file is not valid.
    #[error("the output repo's ledger is damaged")]
    Ledger(#[from] LedgerError),
}

impl LedgerState {
    /// Reads the state of `repo` at `revision` (a repo that does not exist yet is empty).
    pub async fn read(client: &HubClient, repo: &Repo, revision: &str) -> Result<Self, StateError> {
        let head = match client.head(repo, revision).await {
            Ok(head) => head,
            Err(HubError::RepoNotFound { .. } | HubError::RevisionNotFound { .. }) => {
                return Ok(Self::default());
            }
            Err(err) => return Err(err.into()),
        };
        let mut state = Self {
            head: Some(head.clone()),
            ..Self::default()
        };
        for entry in client.list_tree(repo, &head, "", true).await? {
            if entry.is_file() {
                let (sha256, size) = match &entry.lfs {
                    Some(lfs) => (Some(lfs.oid.clone()), lfs.size),
                    None => (None, entry.size),
                };
                state
                    .files
                    .insert(entry.path.clone(), RepoFile { sha256, size });
            }
        }
        if state.files.contains_key(MANIFEST_PATH) {
            state.manifest = Some(parse_manifest(
                &client.download_bytes(repo, &head, MANIFEST_PATH).await?,
            )?);
        }
        if let Some(file) = state.files.get(card::CARD_PATH) {
            // A card larger than any card hubsweep writes is somebody else's: keep it unread.
            state.card = Some(match file.size <= card::MAX_CARD_BYTES as u64 {
                true => String::from_utf8_lossy(
                    &client.download_bytes(repo, &head, card::CARD_PATH).await?,
                )
                .into_owned(),
                false => String::new(),
            });
        }
        let mut documents = Vec::new();
        if state.files.contains_key(INDEX_PATH) {
            documents.push(INDEX_PATH.to_owned());
        }
        let mut segments: Vec<String> = state
            .files
            .keys()
            .filter(|p| is_segment_path(p))
            .cloned()
            .collect();
        segments.sort();
        documents.extend(segments.iter().cloned());
        state.segments = segments;
        for path in documents {
            let bytes = client.download_bytes(repo, &head, &path).await?;
            for record in parse_records(&path, &bytes)? {
                state.add(record);
            }
        }
        Ok(state)
    }

    /// Adds a record: a result replaces anything; a failure never replaces a result.
    pub fn add(&mut self, record: Record) {
        match self.records.get(&record.id) {
            Some(existing) if existing.error.is_none() && record.error.is_some() => {}
            _ => {
                self.records.insert(record.id.clone(), record);
            }
        }
    }

    /// Whether node `id` has a successful record whose files are all present in the repo with
    /// the recorded size and sha256.
    pub fn is_done(&self, id: &str) -> bool {
        let Some(record) = self.records.get(id) else {
            return false;
        };
        record.error.is_none()
            && record.files.iter().all(|f| {
                self.files.get(&f.path).is_some_and(|have| {
                    have.size == f.size && have.sha256.as_deref().is_none_or(|s| s == f.sha256)
                })
            })
    }

    /// Whether node `id` failed in an earlier run and has not succeeded since.
    pub fn has_failed(&self, id: &str) -> bool {
        self.records.get(id).is_some_and(|r| r.error.is_some())
    }

    /// Whether a segment folder exists at all (for messages).
    pub fn has_ledger(&self) -> bool {
        self.manifest.is_some() || self.files.keys().any(|p| p.starts_with(SEGMENTS_DIR))
    }
}
