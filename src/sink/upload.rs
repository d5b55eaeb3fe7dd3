//! The upload stage of the sink: each closed artifact goes to the Hub as an LFS object as soon
//! as it arrives (a bounded number in flight; an object the Hub already has costs no transfer),
//! its memory is released, and its record goes on to the committer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::commit::{Committable, SinkEvent, SinkEvents, UploadJob};
use crate::hub::{HubClient, LfsObject, LfsSource, Repo, UploadOutcome};
use crate::ledger::FileRecord;

/// Uploads every job (at most `slots` at once) and forwards the results to `commits`.
pub async fn upload_stage(
    client: HubClient,
    repo: Repo,
    revision: String,
    slots: usize,
    mut jobs: mpsc::Receiver<UploadJob>,
    commits: mpsc::Sender<Committable>,
    events: SinkEvents,
) -> UploadTotals {
    let limit = Arc::new(Semaphore::new(slots.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let busy = Arc::new(std::sync::Mutex::new(BusyClock::default()));
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = limit.clone().acquire_owned().await else {
            break;
        };
        let (client, repo, revision, commits, events) = (
            client.clone(),
            repo.clone(),
            revision.clone(),
            commits.clone(),
            events.clone(),
        );
        let busy = busy.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let _busy = BusyGuard::enter(busy);
            let UploadJob {
                path,
                artifact,
                mut record,
                permit,
            } = job;
            let object = LfsObject {
                path: Some(path.clone()),
                sha256: artifact.oid(),
                size: artifact.size(),
                source: LfsSource::Bytes(artifact.bytes.clone()),
                xet_chunks: None,
            };
            let outcome = client.upload_lfs_object(&repo, &revision, &object).await;
            // The bytes are on the Hub (or never will be): give the memory back now.
            drop(artifact);
            drop(permit);
            match outcome {
                Ok(outcome) => {
                    let sent = outcome == UploadOutcome::Uploaded;
                    events(&SinkEvent::Uploaded {
                        path: path.clone(),
                        bytes: object.size,
                        sent,
                    });
                    record.files.push(FileRecord {
                        path,
                        size: object.size,
                        sha256: object.sha256,
                    });
                    let _ = commits
                        .send(Committable {
                            record,
                            regular: Vec::new(),
                        })
                        .await;
                    if sent { (object.size, 0) } else { (0, 1) }
                }
                Err(error) => {
                    let error = crate::hub::client::error_chain(&error);
                    events(&SinkEvent::UploadFailed {
                        path,
                        error: error.clone(),
                    });
                    record.error = Some(format!("upload failed: {error}"));
                    let _ = commits
                        .send(Committable {
                            record,
                            regular: Vec::new(),
                        })
                        .await;
                    (0, 0)
                }
            }
        });
    }
    let mut totals = UploadTotals::default();
    while let Some(result) = tasks.join_next().await {
        if let Ok((bytes, dedup)) = result {
            totals.bytes_sent += bytes;
            totals.deduplicated += dedup;
        }
    }
    totals.busy = busy.lock().map(|b| b.total).unwrap_or_default();
    totals
}

/// What the upload stage did.
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadTotals {
    /// Bytes transferred.
    pub bytes_sent: u64,
    /// Objects the Hub already had.
    pub deduplicated: u64,
    /// Wall time during which at least one upload was in flight.
    pub busy: Duration,
}

/// Measures the union of the intervals during which any upload is in flight.
#[derive(Default)]
struct BusyClock {
    active: usize,
    since: Option<Instant>,
    total: Duration,
}

struct BusyGuard(Arc<std::sync::Mutex<BusyClock>>);

impl BusyGuard {
    fn enter(clock: Arc<std::sync::Mutex<BusyClock>>) -> Self {
        if let Ok(mut c) = clock.lock() {
            if c.active == 0 {
                c.since = Some(Instant::now());
            }
            c.active += 1;
        }
        Self(clock)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = self.0.lock() {
            c.active -= 1;
            if c.active == 0
                && let Some(since) = c.since.take()
            {
                c.total += since.elapsed();
            }
        }
    }
}
