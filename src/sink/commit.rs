//! The commit stage of the sink.
//!
//! Artifacts arrive closed and hashed, and the uploader ([`super::upload`]) sends each as an
//! LFS object as soon as it arrives. The committer batches finished files with their ledger records into
//! commits: at most `max_files` files each (the segment included), after `flush_after` of
//! quiet, never more than `commits_per_hour` in any hour, each carrying a new ledger segment
//! with the records of the files it adds, on top of the head it last saw (`parentCommit`; a
//! moved branch is re-read and the commit re-sent). A rate-limit answer the client does not sit
//! out (too long a wait, or past its attempts) is waited out here, and the same commit re-sent.
//! A record is committed only once all its inputs are committed, so the ledger's DAG is closed
//! after every commit, whatever happens next.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::Artifact;
use crate::hub::{CommitOperation, CommitOptions, HubClient, HubError, Repo};
use crate::ledger::{LedgerState, Record, segment};

/// Rate-limit answers that came back from the client (see [`rate_limit_wait`]) one commit
/// waits out before the run reports the error.
const MAX_RATE_LIMITED_WAITS: u32 = 8;

/// The wait a commit refused for the rate limit asks for: a 429 whose wait is longer than the
/// client sits out, or the last of the client's attempts (no `Retry-After`: a minute).
fn rate_limit_wait(error: &HubError) -> Option<Duration> {
    match error {
        HubError::RateLimited { retry_after, .. } => {
            Some(retry_after.unwrap_or(Duration::from_secs(60)))
        }
        HubError::RetriesExhausted { last, .. } => rate_limit_wait(last),
        _ => None,
    }
}

/// How commits are batched and paced.
#[derive(Debug, Clone)]
pub struct CommitPolicy {
    /// Files per commit at most, the ledger segment included (the Hub advises ≤ 100).
    pub max_files: usize,
    /// Commit what is ready after this long without a new file.
    pub flush_after: Duration,
    /// Commits per rolling hour at most (the Hub allows 128 per repo).
    pub commits_per_hour: usize,
    /// Attempts when the branch moved under us.
    pub max_parent_retries: u32,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        Self {
            max_files: 100,
            flush_after: Duration::from_secs(2),
            commits_per_hour: 120,
            max_parent_retries: 20,
        }
    }
}

/// What the sink reports, for progress and logs.
#[derive(Debug, Clone)]
pub enum SinkEvent {
    /// An artifact reached the Hub (`sent`: bytes were transferred; else the Hub had them).
    Uploaded {
        /// Repo path.
        path: String,
        /// Size.
        bytes: u64,
        /// Whether bytes were sent.
        sent: bool,
    },
    /// A commit landed.
    Committed {
        /// Commit id.
        commit: String,
        /// Files added.
        files: usize,
        /// Records added.
        records: usize,
    },
    /// Waiting for the commit rate limit.
    Throttled {
        /// How long.
        wait: Duration,
    },
    /// An upload failed for good; its record is replaced by a failure record.
    UploadFailed {
        /// Repo path.
        path: String,
        /// Why.
        error: String,
    },
}

/// An artifact to upload, with the record of the node that produced it.
pub struct UploadJob {
    /// Repo path.
    pub path: String,
    /// The bytes and their hash.
    pub artifact: Artifact,
    /// The record (its `files` are filled in by the sink).
    pub record: Record,
    /// Memory reserved for the artifact, released once it is uploaded.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Something for the committer: a record and the files it adds.
#[derive(Debug, Clone)]
pub struct Committable {
    /// The record.
    pub record: Record,
    /// Extra regular files to add in the same commit (e.g. the manifest).
    pub regular: Vec<(String, Bytes)>,
}

/// Totals of a sink's work.
#[derive(Debug, Clone, Default)]
pub struct SinkTotals {
    /// Bytes transferred.
    pub bytes_sent: u64,
    /// Objects the Hub already had.
    pub objects_deduplicated: u64,
    /// Commits made.
    pub commits: u64,
    /// Records committed.
    pub records: u64,
    /// The branch head after the last commit.
    pub head: Option<String>,
    /// Records never committed because an input never was (their ids).
    pub stranded: Vec<String>,
    /// Wall time with at least one upload in flight.
    pub upload_busy: Duration,
}

/// A callback for sink events.
pub type SinkEvents = Arc<dyn Fn(&SinkEvent) + Send + Sync>;

/// The committer: see the module docs.
pub struct Committer {
    client: HubClient,
    repo: Repo,
    revision: String,
    policy: CommitPolicy,
    events: SinkEvents,
    head: Option<String>,
    committed: HashSet<String>,
    waiting: VecDeque<Committable>,
    ready: Vec<Committable>,
    recent: VecDeque<Instant>,
    totals: SinkTotals,
    /// Segments whose records are known (read at start or committed by us).
    seen_segments: HashSet<String>,
    /// Every record this run committed, for the index.
    pub written: Vec<Record>,
}

impl Committer {
    /// A committer of `repo@revision` on top of the ledger as `state` read it: its head, the
    /// ids with a result already committed (a failure record does not count: the node is
    /// retried) and the segments already read.
    pub fn new(
        client: HubClient,
        repo: Repo,
        revision: String,
        state: &LedgerState,
        policy: CommitPolicy,
        events: SinkEvents,
    ) -> Self {
        Self {
            client,
            repo,
            revision,
            policy,
            events,
            head: state.head.clone(),
            committed: state
                .records
                .iter()
                .filter(|(_, record)| record.error.is_none())
                .map(|(id, _)| id.clone())
                .collect(),
            waiting: VecDeque::new(),
            ready: Vec::new(),
            recent: VecDeque::new(),
            totals: SinkTotals::default(),
            written: Vec::new(),
            seen_segments: state.segments.iter().cloned().collect(),
        }
    }

    /// Runs until `incoming` closes, then commits what is ready and returns the totals.
    pub async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Committable>,
    ) -> Result<(Self, SinkTotals), HubError> {
        let mut last_arrival = Instant::now();
        loop {
            let timeout = self
                .policy
                .flush_after
                .saturating_sub(last_arrival.elapsed());
            tokio::select! {
                item = incoming.recv() => match item {
                    Some(item) => {
                        last_arrival = Instant::now();
                        self.waiting.push_back(item);
                        self.promote();
                        if self.ready_files() + 1 >= self.policy.max_files {
                            self.commit_ready().await?;
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep(timeout), if !self.ready.is_empty() => {
                    self.commit_ready().await?;
                    last_arrival = Instant::now();
                }
            }
        }
        self.promote();
        while !self.ready.is_empty() {
            self.commit_ready().await?;
            self.promote();
        }
        self.totals.stranded = self.waiting.iter().map(|c| c.record.id.clone()).collect();
        let totals = self.totals.clone();
        Ok((self, totals))
    }

    fn ready_files(&self) -> usize {
        self.ready
            .iter()
            .map(|c| c.record.files.len() + c.regular.len())
            .sum()
    }

    /// Moves records whose inputs are all committed (or committed in a ready batch) to ready.
    fn promote(&mut self) {
        let mut scheduled: HashSet<String> =
            self.ready.iter().map(|c| c.record.id.clone()).collect();
        loop {
            let before = self.waiting.len();
            let mut still = VecDeque::new();
            while let Some(item) = self.waiting.pop_front() {
                // A failure record claims nothing about its inputs; results need theirs.
                let inputs_done = item.record.error.is_some()
                    || item
                        .record
                        .inputs
                        .iter()
                        .all(|i| self.committed.contains(i) || scheduled.contains(i));
                if inputs_done {
                    scheduled.insert(item.record.id.clone());
                    self.ready.push(item);
                } else {
                    still.push_back(item);
                }
            }
            self.waiting = still;
            if self.waiting.len() == before || self.waiting.is_empty() {
                break;
            }
        }
    }

    /// Commits everything ready, in batches of at most `max_files` files (records keep their
    /// order, so inputs always land in the same or an earlier commit).
    async fn commit_ready(&mut self) -> Result<(), HubError> {
        let mut ready = std::mem::take(&mut self.ready);
        while !ready.is_empty() {
            let mut files = 0;
            let mut take = 0;
            // The ledger segment is a file of the commit too.
            let room = self.policy.max_files.saturating_sub(1).max(1);
            for item in &ready {
                let n = item.record.files.len() + item.regular.len();
                if take > 0 && files + n > room {
                    break;
                }
                files += n;
                take += 1;
            }
            let batch: Vec<Committable> = ready.drain(..take).collect();
            self.commit_batch(&batch).await?;
        }
        Ok(())
    }

    /// Extra files (an updated index) for the last commit of a run.
    pub async fn commit_files(
        &mut self,
        summary: &str,
        regular: Vec<(String, Bytes)>,
    ) -> Result<(), HubError> {
        let operations: Vec<CommitOperation> = regular
            .into_iter()
            .map(|(path, content)| CommitOperation::AddRegular { path, content })
            .collect();
        self.commit_operations(summary, &operations, true).await
    }

    async fn commit_batch(&mut self, batch: &[Committable]) -> Result<(), HubError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Records another writer committed meanwhile are not recorded twice.
            let batch: Vec<&Committable> = batch
                .iter()
                .filter(|c| c.record.error.is_some() || !self.committed.contains(&c.record.id))
                .collect();
            if batch.is_empty() {
                return Ok(());
            }
            match self.try_commit_batch(&batch).await {
                Err(HubError::ParentMismatch { .. })
                    if attempt < self.policy.max_parent_retries =>
                {
                    self.head = Some(self.client.head(&self.repo, &self.revision).await?);
                    self.read_new_segments().await?;
                }
                other => return other,
            }
        }
    }

    /// Reads the segments committed by others since we last looked.
    async fn read_new_segments(&mut self) -> Result<(), HubError> {
        let head = self.head.clone().unwrap_or_else(|| self.revision.clone());
        let entries = match self
            .client
            .list_tree(&self.repo, &head, crate::ledger::SEGMENTS_DIR, false)
            .await
        {
            Ok(entries) => entries,
            Err(HubError::EntryNotFound { .. }) => return Ok(()),
            Err(err) => return Err(err),
        };
        for entry in entries {
            if !crate::ledger::is_segment_path(&entry.path)
                || self.seen_segments.contains(&entry.path)
            {
                continue;
            }
            let bytes = self
                .client
                .download_bytes(&self.repo, &head, &entry.path)
                .await?;
            // A damaged segment of another writer is verify's business, not a reason to stop.
            for record in crate::ledger::parse_records(&entry.path, &bytes).unwrap_or_default() {
                if record.error.is_none() {
                    self.committed.insert(record.id);
                }
            }
            self.seen_segments.insert(entry.path);
        }
        Ok(())
    }

    async fn try_commit_batch(&mut self, batch: &[&Committable]) -> Result<(), HubError> {
        let records: Vec<Record> = batch.iter().map(|c| c.record.clone()).collect();
        let seg = segment(&records);
        let mut operations = Vec::new();
        for item in batch {
            for (path, content) in &item.regular {
                operations.push(CommitOperation::AddRegular {
                    path: path.clone(),
                    content: content.clone(),
                });
            }
            for file in &item.record.files {
                operations.push(CommitOperation::AddLfs {
                    path: file.path.clone(),
                    sha256: file.sha256.clone(),
                    size: file.size,
                });
            }
        }
        operations.push(CommitOperation::AddRegular {
            path: seg.path.clone(),
            content: Bytes::from(seg.content),
        });
        let files = operations.len() - 1;
        let summary = format!("hubsweep: {} records, {files} files", records.len());
        self.commit_operations(&summary, &operations, false).await?;
        self.seen_segments.insert(seg.path.clone());
        for record in records {
            if record.error.is_none() {
                self.committed.insert(record.id.clone());
            }
            self.written.push(record);
        }
        self.totals.records += batch.len() as u64;
        (self.events)(&SinkEvent::Committed {
            commit: self.head.clone().unwrap_or_default(),
            files,
            records: batch.len(),
        });
        Ok(())
    }

    /// Commits on top of the last head seen. With `reparent`, a moved branch is re-read and the
    /// commit re-sent (for files that do not depend on what others wrote, like the index); without,
    /// the mismatch goes back to the caller, which re-reads what others recorded first.
    async fn commit_operations(
        &mut self,
        summary: &str,
        operations: &[CommitOperation],
        reparent: bool,
    ) -> Result<(), HubError> {
        self.throttle().await;
        let mut attempt = 0;
        let mut rate_limited = 0;
        loop {
            attempt += 1;
            let options = CommitOptions {
                summary: summary.to_owned(),
                description: String::new(),
                parent_commit: self.head.clone(),
                create_pr: false,
            };
            match self
                .client
                .commit(&self.repo, &self.revision, operations, &options)
                .await
            {
                Ok(info) => {
                    self.head = Some(info.commit_oid);
                    self.recent.push_back(Instant::now());
                    self.totals.commits += 1;
                    self.totals.head = self.head.clone();
                    return Ok(());
                }
                // Another writer moved the branch: these files do not conflict with theirs, so
                // re-read the head and re-send.
                Err(HubError::ParentMismatch { .. })
                    if reparent && attempt < self.policy.max_parent_retries =>
                {
                    self.head = Some(self.client.head(&self.repo, &self.revision).await?);
                }
                // The repo's commit quota is spent (by other writers too) for longer than the
                // client sits out, or for all its attempts: wait as the Hub asks and send the
                // same commit again. The files finished meanwhile queue up, so the commits
                // after it carry more.
                Err(err) => match rate_limit_wait(&err) {
                    Some(wait) if rate_limited < MAX_RATE_LIMITED_WAITS => {
                        rate_limited += 1;
                        (self.events)(&SinkEvent::Throttled { wait });
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(err),
                },
            }
        }
    }

    /// Waits while this run has made `commits_per_hour` commits in the last hour.
    async fn throttle(&mut self) {
        let hour = Duration::from_secs(3600);
        while self.recent.front().is_some_and(|t| t.elapsed() >= hour) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.commits_per_hour
            && let Some(oldest) = self.recent.front()
        {
            let wait = hour.saturating_sub(oldest.elapsed());
            (self.events)(&SinkEvent::Throttled { wait });
            tokio::time::sleep(wait).await;
            self.recent.pop_front();
        }
    }

    /// Totals so far (the commits of [`Committer::commit_files`] included).
    pub fn totals(&self) -> SinkTotals {
        self.totals.clone()
    }

    /// The branch head after the last commit.
    pub fn head(&self) -> Option<&str> {
        self.head.as_deref()
    }
}
