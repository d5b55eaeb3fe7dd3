//! The sink's front door: [`Sink::start`] spawns the uploader and the committer and hands the
//! producer its two senders; [`Sink::finish`] closes them in order (uploads first, then the
//! records they forward), writes the files that go with the ledger's index when asked, and
//! returns the totals of everything the sink did.
//!
//! ```text
//! producer ─► SinkSenders::uploads ─► upload stage ─┐
//!          └► SinkSenders::records ─────────────────┴► committer ─► Hub (commits + segments)
//! ```

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::commit::{CommitPolicy, Committable, Committer, SinkEvents, SinkTotals, UploadJob};
use super::upload::{UploadTotals, upload_stage};
use crate::hub::{HubClient, HubError, Repo};
use crate::ledger::{LedgerState, Manifest, Record, index_files};
use crate::plan::Plan;

/// Closed artifacts queue here for an upload slot. What bounds them is the memory budget their
/// permits hold, not this channel: a queue as short as the upload slots made capture wait at
/// the end of every shard until all but a few of its artifacts had been sent.
const QUEUE: usize = 1024;

/// Where a sink writes and how.
#[derive(Clone)]
pub struct SinkSettings {
    /// Client of the output repo's Hub.
    pub client: HubClient,
    /// The output repo.
    pub repo: Repo,
    /// The branch written.
    pub revision: String,
    /// Uploads in flight at once.
    pub upload_slots: usize,
    /// Commit batching and pacing.
    pub commits: CommitPolicy,
}

/// What a producer pushes into a running sink.
#[derive(Clone)]
pub struct SinkSenders {
    /// Artifacts to upload, each with the record of its node.
    pub uploads: mpsc::Sender<UploadJob>,
    /// Records (with regular files) to commit directly.
    pub records: mpsc::Sender<Committable>,
}

/// The ledger index to write when the sink finishes: the plan the tables are laid out by, the
/// run's manifest (the card shows it), and the ledger as it was read before the run (the index
/// holds its records and the new ones).
pub struct FinalIndex<'a> {
    /// The pinned plan.
    pub plan: &'a Plan,
    /// The run's manifest.
    pub manifest: &'a Manifest,
    /// The ledger before the run.
    pub before: &'a LedgerState,
}

/// What a finished sink did.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Bytes, commits (the index's included), head, stranded records.
    pub totals: SinkTotals,
    /// The index commit left the repo's `README.md` alone: somebody else wrote it.
    pub card_left_alone: bool,
}

/// Why a sink could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A commit failed for good.
    #[error("cannot commit to the output repo")]
    Commit {
        /// Cause.
        #[source]
        source: HubError,
    },
    /// The committer's task panicked or was cancelled.
    #[error("the committer stopped before it finished")]
    CommitterStopped {
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A running sink.
pub struct Sink {
    uploader: JoinHandle<UploadTotals>,
    committer: JoinHandle<Result<(Committer, SinkTotals), HubError>>,
    head: Option<String>,
}

impl Sink {
    /// Starts the uploader and the committer over the ledger as `state` read it; returns the
    /// sink and the senders the producer pushes into.
    pub fn start(
        settings: &SinkSettings,
        state: &LedgerState,
        events: SinkEvents,
    ) -> (Self, SinkSenders) {
        let (uploads, upload_rx) = mpsc::channel::<UploadJob>(QUEUE);
        let (records, commit_rx) = mpsc::channel::<Committable>(QUEUE);
        let uploader = tokio::spawn(upload_stage(
            settings.client.clone(),
            settings.repo.clone(),
            settings.revision.clone(),
            settings.upload_slots,
            upload_rx,
            records.clone(),
            events.clone(),
        ));
        let committer = Committer::new(
            settings.client.clone(),
            settings.repo.clone(),
            settings.revision.clone(),
            state,
            settings.commits.clone(),
            events,
        );
        let committer = tokio::spawn(committer.run(commit_rx));
        let sink = Self {
            uploader,
            committer,
            head: state.head.clone(),
        };
        (sink, SinkSenders { uploads, records })
    }

    /// Closes `senders` (every clone of them must be dropped already), waits for the uploads
    /// and the commits, and with `index` commits the ledger's [`index_files`] when this run
    /// committed anything. Returns the totals: bytes, commits (the index's included), head.
    pub async fn finish(
        self,
        senders: SinkSenders,
        index: Option<FinalIndex<'_>>,
    ) -> Result<Finished, SinkError> {
        let SinkSenders { uploads, records } = senders;
        drop(uploads);
        let uploaded = self.uploader.await.unwrap_or_default();
        drop(records);
        let (mut committer, _) = self
            .committer
            .await
            .map_err(|source| SinkError::CommitterStopped { source })?
            .map_err(|source| SinkError::Commit { source })?;
        let mut card_left_alone = false;
        if let Some(FinalIndex {
            plan,
            manifest,
            before,
        }) = index
            && !committer.written.is_empty()
        {
            let mut all: Vec<Record> = before.records.values().cloned().collect();
            all.extend(committer.written.iter().cloned());
            let written = index_files(plan, manifest, &all, before.card.as_deref());
            card_left_alone = written.card_left_alone;
            committer
                .commit_files("hubsweep: ledger index and metrics tables", written.files)
                .await
                .map_err(|source| SinkError::Commit { source })?;
        }
        let mut totals = committer.totals();
        totals.head = totals.head.or(self.head);
        totals.bytes_sent = uploaded.bytes_sent;
        totals.objects_deduplicated = uploaded.deduplicated;
        totals.upload_busy = uploaded.busy;
        Ok(Finished {
            totals,
            card_left_alone,
        })
    }
}
