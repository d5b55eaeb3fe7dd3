//! The executor: `hubsweep run` as a library call.
//!
//! 1. Pin every model revision (files, commit sha, dimensions, token windows) and build the
//!    pinned plan, where every node has its id.
//! 2. Read the output repo's ledger; every node recorded there with its files present is done.
//! 3. For each model revision with work left — loaded once, on one device, its weights
//!    downloaded while the model before it runs — run its shards (capture waits for memory
//!    from `limits.memory`), stream artifacts to the sink, accumulate spectra; then spectra
//!    and the model's ledger record (`models`, `steps`).
//! 4. The final step: overlaps, and the final ledger record, unless a failure blocks them.
//! 5. The sink uploads as artifacts close and commits in batches with their records; at the
//!    end the compacted index is written. A rerun of a finished sweep commits nothing.
//!
//! Cancellation (Ctrl-C) stops new work at the next batch, lets the sink commit what is
//! already uploaded, and reports `interrupted`.

pub mod capture;
mod models;
pub mod pin;
mod records;
mod steps;
pub mod unit;
pub mod weights;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::analysis::Spectrum;
use crate::hub::{HubClient, HubError, Repo, RepoId};
use crate::ledger::{self, LedgerState, Manifest, Record};
use crate::model::{DeviceSpec, ModelError};
use crate::plan::{self, NodeKind, Plan};
use crate::sink::{
    CommitPolicy, Committable, Committer, SinkEvent, SinkEvents, SinkTotals, UploadJob,
};
use crate::spec::{Diagnostic, SweepSpec};

pub use pin::{
    DataPin, PinnedModel, Sources, check_pending_module_patterns, hold_data_to_ledger, pin_and_plan,
};
pub use records::{default_tolerances, now_rfc3339};
pub use unit::{UnitSelection, WorkUnit};

/// What to do when a node fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Stop scheduling new work at the first failure (what is uploaded is still committed).
    #[default]
    FailFast,
    /// Go on with everything that does not depend on the failure.
    KeepGoing,
}

/// Uploads in flight at once when the user does not say (`--upload-slots`).
pub const DEFAULT_UPLOAD_SLOTS: usize = 4;

/// Settings of a run (the CLI builds them from flags and the environment).
#[derive(Clone)]
pub struct RunSettings {
    /// Client for the output repo's Hub.
    pub output_client: HubClient,
    /// Where models and data come from.
    pub sources: Sources,
    /// The spec file's name and text, for the manifest.
    pub spec_file: (String, String),
    /// Failure policy.
    pub failure: FailurePolicy,
    /// Uploads in flight at once ([`DEFAULT_UPLOAD_SLOTS`] unless told).
    pub upload_slots: usize,
    /// Commit batching and pacing.
    pub commits: CommitPolicy,
    /// Plan and compare with the ledger, run nothing.
    pub dry_run: bool,
    /// TEST ONLY: nudge the first activation of every artifact one step (one unit in the last
    /// place of the stored dtype) before it is written and accumulated, so that `reproduce`
    /// has a difference to catch. A real run never sets it; the CLI sets it only for
    /// `reproduce` with `HUBSWEEP_TEST_PERTURB=capture`.
    pub perturb_capture_for_tests: bool,
    /// Delete the model weights this run downloads from the HF cache as soon as no model
    /// still to run needs them (weights that were cached before the run stay).
    pub evict_models: bool,
}

/// Progress of a run, for a progress bar or a log owned by the caller. Events arrive in order
/// from one task or thread at a time; handlers must not block.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// A model revision is pinned.
    Pinned {
        /// `repo@revision`.
        label: String,
        /// Commit sha (or folder hash).
        commit: String,
        /// Token windows the data makes for it.
        windows: usize,
    },
    /// The pinned plan against the ledger.
    Planned {
        /// Nodes in the plan.
        nodes: usize,
        /// Already done.
        done: usize,
        /// Artifact bytes still to produce.
        pending_bytes: u64,
    },
    /// The run waits for a model revision's weights to download.
    Downloading {
        /// `repo@revision`, or the node that needs them.
        label: String,
        /// Weight files not in the cache yet.
        files: usize,
    },
    /// A model revision starts capturing.
    ModelStarted {
        /// `repo@revision`.
        label: String,
        /// Shards to run.
        shards: usize,
    },
    /// A shard's forward passes are done.
    ShardDone {
        /// `repo@revision`.
        label: String,
        /// Tokens in it.
        tokens: usize,
    },
    /// Nothing left to do for a model revision.
    ModelSkipped {
        /// `repo@revision`.
        label: String,
    },
    /// A model revision failed.
    ModelFailed {
        /// `repo@revision`.
        label: String,
        /// Why.
        error: String,
    },
    /// Weights this run downloaded were deleted from the HF cache (`--evict-models`).
    Evicted {
        /// `repo@revision`.
        label: String,
        /// Bytes freed.
        freed: u64,
        /// Why some could not be deleted (the run goes on).
        error: Option<String>,
    },
    /// The output repo has a `README.md` hubsweep did not write: it is left as it is, and its
    /// `configs` are not updated (docs/ledger.md).
    CardLeftAlone,
    /// The sink did something.
    Sink(SinkEvent),
}

/// Callback for run events.
pub type RunEvents = Arc<dyn Fn(&RunEvent) + Send + Sync>;

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Nodes in the pinned plan.
    pub nodes: usize,
    /// Nodes skipped because the ledger has them.
    pub skipped: usize,
    /// Nodes executed and recorded by this run.
    pub executed: usize,
    /// Failures: label and reason.
    pub failed: Vec<(String, String)>,
    /// Nodes of the final step (overlaps, the final ledger commit) left out because something
    /// they depend on failed, or is not in the ledger: their labels.
    pub blocked: Vec<String>,
    /// Sink totals (bytes sent, commits, head).
    pub sink: SinkTotals,
    /// Whether Ctrl-C stopped the run.
    pub interrupted: bool,
    /// The output repo.
    pub output: String,
    /// Pinned model revisions: label and commit.
    pub pinned: Vec<(String, String)>,
    /// Wall time spent in forward passes and artifact writing (capture threads).
    pub capture_seconds: f64,
    /// Where the capture time went, stage by stage.
    pub capture_stages: capture::CaptureTimes,
    /// Wall time of the whole run, pinning included.
    pub wall_seconds: f64,
}

/// Why a run could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec has `local://` repos but no embedded hub was started.
    #[error("the spec uses `local://` repos but no embedded hub is running")]
    NoLocalHub,
    /// A model could not be found, downloaded or loaded.
    #[error("model `{label}`")]
    Model {
        /// `repo@revision`.
        label: String,
        /// Cause (boxed: a model error is large, and a run error travels by value).
        #[source]
        source: Box<ModelError>,
    },
    /// A model's config does not match the spec.
    #[error("model `{label}`: {reason}")]
    Config {
        /// `repo@revision`.
        label: String,
        /// What is wrong.
        reason: String,
    },
    /// The ledger pins the Hub data file to a commit the hub cannot serve (gone, or the repo).
    #[error(
        "cannot fetch `{path}` of dataset `{repo}` at `{commit}`, the commit the ledger pins it to (the hub may no longer have that commit)"
    )]
    DataPin {
        /// Dataset repo id.
        repo: String,
        /// Path of the file in the repo.
        path: String,
        /// The recorded commit.
        commit: String,
        /// Cause.
        #[source]
        source: Box<crate::data::DataError>,
    },
    /// The prompt data could not be read.
    #[error("prompt data")]
    Data {
        /// Cause.
        #[source]
        source: crate::data::DataError,
    },
    /// The pinned plan is refused.
    #[error("the pinned plan is refused")]
    Plan {
        /// Why, pointing into the spec.
        diagnostics: Vec<Diagnostic>,
    },
    /// The output repo could not be read or written.
    #[error("output repo `{repo}`")]
    Hub {
        /// The repo.
        repo: String,
        /// Cause.
        #[source]
        source: HubError,
    },
    /// The output repo's ledger could not be read.
    #[error("output repo `{repo}`")]
    Ledger {
        /// The repo.
        repo: String,
        /// Cause.
        #[source]
        source: ledger::StateError,
    },
    /// A local file could not be read.
    #[error("cannot read `{}`", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A forward pass or its bookkeeping failed.
    #[error("capture of `{label}` failed: {reason}")]
    Capture {
        /// `repo@revision`.
        label: String,
        /// What failed.
        reason: String,
    },
    /// The spec asks for something this version cannot run yet.
    #[error("{0}")]
    Unsupported(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// Memory is reserved in KiB permits (a semaphore counts in `u32`).
pub(crate) fn budget_permits(bytes: u64) -> u32 {
    bytes.div_ceil(1024).clamp(1, u64::from(u32::MAX)) as u32
}

/// Node indices of one model revision.
#[derive(Default)]
pub(crate) struct ModelNodes {
    resolve: Option<usize>,
    captures: Vec<usize>,
    artifacts: BTreeMap<u32, Vec<usize>>,
    spectra: Vec<usize>,
    commit: Option<usize>,
}

/// The output repo of a spec as a client-side repo.
pub fn output_repo(spec: &SweepSpec) -> Result<Repo, RunError> {
    let (namespace, name) = spec
        .output
        .repo_id
        .split_once('/')
        .unwrap_or(("", &spec.output.repo_id));
    let id = RepoId::new(namespace, name)
        .map_err(|e| RunError::Unsupported(format!("invalid output repo: {e}")))?;
    Ok(match spec.output.repo_type {
        crate::spec::RepoType::Model => Repo::model(id),
        crate::spec::RepoType::Dataset => Repo::dataset(id),
    })
}

/// The manifest this run writes.
pub fn manifest(spec: &SweepSpec, settings: &RunSettings) -> Manifest {
    use sha2::{Digest, Sha256};
    let (file_name, text) = &settings.spec_file;
    let canonical = crate::spec::load(file_name, text.as_bytes())
        .tree
        .map(|t| plan::id::canonical_json(&t.to_json()))
        .unwrap_or_default();
    Manifest {
        schema_version: ledger::SCHEMA_VERSION,
        tool: ledger::Tool {
            name: "hubsweep".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        sweep: spec.name.clone(),
        output: spec.output.to_string(),
        spec: ledger::SpecText {
            file_name: file_name.clone(),
            text: text.clone(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            canonical_sha256: hex::encode(Sha256::digest(canonical.as_bytes())),
        },
        tolerances: records::default_tolerances(),
    }
}

/// Runs a sweep. See the module docs.
pub async fn run(
    spec: &SweepSpec,
    settings: &RunSettings,
    device: DeviceSpec,
    events: RunEvents,
    cancel: CancellationToken,
) -> Result<RunReport, RunError> {
    run_units(spec, settings, device, events, cancel, &UnitSelection::All).await
}

/// A plan pinned by [`pin_and_plan`], with its pinned models, for [`run_units_pinned`].
pub struct Pinned {
    /// The pinned plan.
    pub plan: Plan,
    /// The pinned models, in plan order.
    pub models: Vec<(crate::spec::ModelInstance, PinnedModel)>,
}

/// Runs the selected work units of a sweep (and the final step if selected) through the same
/// sink and ledger as a full run: what a cluster worker does (see [`unit`]).
pub async fn run_units(
    spec: &SweepSpec,
    settings: &RunSettings,
    device: DeviceSpec,
    events: RunEvents,
    cancel: CancellationToken,
    selection: &UnitSelection,
) -> Result<RunReport, RunError> {
    run_inner(spec, settings, device, events, cancel, selection, None).await
}

/// [`run_units`] over models pinned already: `reproduce` pins once (at the ledger's commits)
/// to check the ids, then reruns that same plan instead of pinning again. `pinned` must come
/// from [`pin_and_plan`] of this spec's models and data with `settings.sources`, for the
/// device class of `device` (checked: the class is part of every capture id); the spec may
/// differ in its `output`, which no id depends on.
pub async fn run_units_pinned(
    spec: &SweepSpec,
    settings: &RunSettings,
    device: DeviceSpec,
    events: RunEvents,
    cancel: CancellationToken,
    selection: &UnitSelection,
    pinned: Pinned,
) -> Result<RunReport, RunError> {
    run_inner(
        spec,
        settings,
        device,
        events,
        cancel,
        selection,
        Some(pinned),
    )
    .await
}

async fn run_inner(
    spec: &SweepSpec,
    settings: &RunSettings,
    device: DeviceSpec,
    events: RunEvents,
    cancel: CancellationToken,
    selection: &UnitSelection,
    prepinned: Option<Pinned>,
) -> Result<RunReport, RunError> {
    let run_started = Instant::now();
    let client = &settings.output_client;
    let repo = output_repo(spec)?;
    let repo_name = spec.output.to_string();
    let hub_err = |source| RunError::Hub {
        repo: repo_name.clone(),
        source,
    };
    let device = device.open().map_err(|source| RunError::Model {
        label: "device".into(),
        source: Box::new(source),
    })?;
    let device_class = if device.is_cuda() { "cuda" } else { "cpu" };
    let read_state = || async {
        LedgerState::read(client, &repo, "main")
            .await
            .map_err(|source| RunError::Ledger {
                repo: repo_name.clone(),
                source,
            })
    };
    let (plan, pinned) = match prepinned {
        Some(Pinned { plan, models }) if plan.device_class() == device_class => (plan, models),
        Some(Pinned { plan, .. }) => {
            return Err(RunError::Unsupported(format!(
                "the plan was pinned for device class `{}`, but the run is on `{device_class}`",
                plan.device_class()
            )));
        }
        None => {
            let sources = hold_data_to_ledger(spec, &settings.sources, client).await?;
            pin_and_plan(spec, &sources, device_class, &events).await?
        }
    };
    // A weight sweep's module patterns are checked (downloading checkpoints) before anything
    // is written, but only while weight spectra are still to run.
    if spec.weights.is_some() {
        let early = read_state().await?;
        check_pending_module_patterns(spec, &plan, &pinned, &early, selection, &events).await?;
    }
    if !settings.dry_run {
        client
            .create_repo(&repo, false, true)
            .await
            .map_err(hub_err)?;
    }
    let state = read_state().await?;
    let mut report = RunReport {
        nodes: plan.nodes.len(),
        output: repo_name.clone(),
        pinned: pinned
            .iter()
            .map(|(i, p)| (format!("{}@{}", i.source, i.revision), p.commit.clone()))
            .collect(),
        ..RunReport::default()
    };
    let id = |i: usize| plan.nodes[i].id.map(|id| id.to_hex()).unwrap_or_default();
    let in_ledger: HashSet<usize> = (0..plan.nodes.len())
        .filter(|&i| state.is_done(&id(i)))
        .collect();
    report.skipped = in_ledger.len();
    // Nodes outside a node selection are treated as done: the steps below skip them exactly
    // as they skip what the ledger has.
    let done: HashSet<usize> = (0..plan.nodes.len())
        .filter(|&i| in_ledger.contains(&i) || selection.excludes(&id(i)))
        .collect();
    let pending_bytes = records::pending_artifact_bytes(spec, &plan, &pinned, &done);
    events(&RunEvent::Planned {
        nodes: plan.nodes.len(),
        done: done.len(),
        pending_bytes,
    });
    report.sink.head = state.head.clone();
    if settings.dry_run || done.len() == plan.nodes.len() || selection.all_done(&plan, &done) {
        return Ok(report);
    }

    // The sink: uploader → committer, both async.
    let sink_events: SinkEvents = {
        let events = events.clone();
        Arc::new(move |e: &SinkEvent| events(&RunEvent::Sink(e.clone())))
    };
    // Closed artifacts queue here for an upload slot. What bounds them is the memory budget
    // their permits hold, not this channel: a queue as short as the upload slots made capture
    // wait at the end of every shard until all but a few of its artifacts had been sent.
    let (upload_tx, upload_rx) = mpsc::channel::<UploadJob>(1024);
    let (commit_tx, commit_rx) = mpsc::channel::<Committable>(1024);
    let uploader = tokio::spawn(crate::sink::commit::upload_stage(
        client.clone(),
        repo.clone(),
        "main".into(),
        settings.upload_slots,
        upload_rx,
        commit_tx.clone(),
        sink_events.clone(),
    ));
    let committer = Committer::new(
        client.clone(),
        repo.clone(),
        "main".into(),
        &state,
        settings.commits.clone(),
        sink_events,
    );
    let committer = tokio::spawn(committer.run(commit_rx));

    // The manifest goes in with the first records.
    let ours = manifest(spec, settings);
    let manifest_file = (state.manifest.as_ref() != Some(&ours)).then(|| {
        (
            ledger::MANIFEST_PATH.to_owned(),
            Bytes::from(serde_json::to_vec_pretty(&ours).unwrap_or_default()),
        )
    });

    let budget = Arc::new(Semaphore::new(budget_permits(spec.limits.memory) as usize));
    let mut spectra: HashMap<usize, Arc<Spectrum>> = HashMap::new();
    let run = steps::Run {
        spec,
        settings,
        plan: &plan,
        pinned: &pinned,
        done: &done,
        selection,
        device: &device,
        budget: &budget,
        uploads: &upload_tx,
        commits: &commit_tx,
        events: &events,
        cancel: &cancel,
    };
    let failed_models = models::run_models(&run, &mut report, &mut spectra, manifest_file).await;
    if selection.has_final()
        && !report.interrupted
        && (report.failed.is_empty() || settings.failure == FailurePolicy::KeepGoing)
    {
        let blocked = steps::blocked_final_nodes(&plan, &done, &failed_models, selection);
        report.executed += steps::run_overlaps(&run, &blocked, &state, &repo, &mut spectra).await?;
        if let Some(last) = plan.nodes.len().checked_sub(1).filter(|l| {
            !done.contains(l)
                && !blocked.contains(l)
                && plan.nodes[*l].kind == NodeKind::LedgerCommit
        }) {
            let record = records::record(&plan, &plan.nodes[last], None);
            let _ = commit_tx
                .send(Committable {
                    record,
                    regular: Vec::new(),
                })
                .await;
            report.executed += 1;
        }
        report.blocked = blocked
            .iter()
            .map(|&i| plan.label(&plan.nodes[i]))
            .collect();
    }
    drop(upload_tx);
    let uploads = uploader.await.unwrap_or_default();
    drop(commit_tx);
    let (mut committer, mut totals) = match committer.await {
        Ok(result) => result.map_err(hub_err)?,
        Err(join) => {
            return Err(RunError::Unsupported(format!(
                "the committer stopped: {join}"
            )));
        }
    };
    // Units leave the index to the final step (one commit, not one per unit).
    if selection.has_final() && !committer.written.is_empty() {
        // The compacted index: every record once, sorted by id.
        let mut all: Vec<Record> = state.records.values().cloned().collect();
        all.extend(committer.written.iter().cloned());
        let compacted = ledger::compacted(all.iter());
        let index = ledger::to_jsonl(compacted.iter().copied());
        let mut files = vec![(ledger::INDEX_PATH.to_owned(), Bytes::from(index))];
        // The flat metrics tables go in the same commit, derived from the same records.
        let by_id: HashMap<String, &Record> = all.iter().map(|r| (r.id.clone(), r)).collect();
        let tables = ledger::tables::tables(&plan, &by_id);
        // The dataset card too, generated from the same records (docs/ledger.md).
        match ledger::card::update(&ours, &compacted, &tables, state.card.as_deref()) {
            ledger::card::CardUpdate::Write(card) => {
                files.push((ledger::card::CARD_PATH.to_owned(), Bytes::from(card)));
            }
            ledger::card::CardUpdate::Unchanged => {}
            ledger::card::CardUpdate::LeftAlone => events(&RunEvent::CardLeftAlone),
        }
        files.extend(
            tables
                .into_iter()
                .map(|(path, bytes)| (path, Bytes::from(bytes))),
        );
        committer
            .commit_files("hubsweep: ledger index and metrics tables", files)
            .await
            .map_err(hub_err)?;
        totals.commits += 1;
        totals.head = committer.head().map(str::to_owned);
    }
    totals.head = totals.head.or(state.head.clone());
    totals.bytes_sent = uploads.bytes_sent;
    totals.objects_deduplicated = uploads.deduplicated;
    totals.upload_busy = uploads.busy;
    for stranded in &totals.stranded {
        let label = plan
            .nodes
            .iter()
            .find(|n| n.id.is_some_and(|id| id.to_hex() == *stranded))
            .map_or_else(|| stranded.clone(), |n| plan.label(n));
        report.failed.push((
            label,
            "not committed: an input of it was never committed".into(),
        ));
    }
    report.sink = totals;
    report.wall_seconds = run_started.elapsed().as_secs_f64();
    Ok(report)
}
