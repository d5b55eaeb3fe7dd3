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
pub mod session;
mod steps;
pub mod unit;
pub mod updates;
pub mod weights;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::hub::{HubError, Repo, RepoId};
use crate::ledger::{self, Manifest};
use crate::model::ModelError;
use crate::plan;
use crate::sink::{CommitPolicy, SinkError, SinkEvent, SinkTotals};
use crate::spec::{Diagnostic, SweepSpec};

pub use pin::{
    DataPin, PinnedModel, Sources, check_pending_module_patterns, hold_data_to_ledger, pin_and_plan,
};
pub use records::{default_tolerances, now_rfc3339};
pub use session::{DeviceClass, Embedded, EmbeddedHub, HubSettings, PinnedSweep, Session};
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

/// Settings of a run (the CLI builds them from flags; where the hubs are is the
/// [`Session`]'s).
#[derive(Clone)]
pub struct RunSettings {
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
        /// Token windows the data makes for it (0 for an adapter, which sees no data).
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

/// Events that say nothing (for callers without a progress display).
pub fn quiet() -> RunEvents {
    Arc::new(|_: &RunEvent| {})
}

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
    /// A Hub endpoint cannot be used (not a URL, or the client cannot be built).
    #[error("cannot use the Hub endpoint `{endpoint}`")]
    Endpoint {
        /// The endpoint (`HF_ENDPOINT`).
        endpoint: String,
        /// Cause.
        #[source]
        source: HubError,
    },
    /// The embedded hub did not start.
    #[error("cannot start the embedded hub over `{}`", store.display())]
    EmbeddedHub {
        /// Its store.
        store: PathBuf,
        /// Cause (boxed: a server error is large).
        #[source]
        source: Box<crate::hub::server::ServerError>,
    },
    /// A bundled model could not be imported into the embedded hub.
    #[error("cannot import bundled model `{model}`")]
    Bundled {
        /// `NS/NAME`.
        model: String,
        /// Cause.
        #[source]
        source: HubError,
    },
    /// The output repo's name is not a valid repo id.
    #[error("invalid output repo `{repo}`")]
    OutputRepo {
        /// The name in the spec.
        repo: String,
        /// Cause.
        #[source]
        source: crate::hub::InvalidRepoId,
    },
    /// The sink could not commit what the run made.
    #[error("output repo `{repo}`")]
    Sink {
        /// The repo.
        repo: String,
        /// Cause.
        #[source]
        source: SinkError,
    },
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
    /// A forward pass or its bookkeeping failed, for a reason with no error behind it.
    #[error("capture of `{label}` failed: {reason}")]
    Capture {
        /// `repo@revision`, or the node.
        label: String,
        /// What failed.
        reason: String,
    },
    /// A tensor operation of a capture failed.
    #[error("capture of `{label}` failed: {what}")]
    Tensor {
        /// `repo@revision`.
        label: String,
        /// The operation.
        what: String,
        /// Cause (boxed: a tensor error is large, and a run error travels by value).
        #[source]
        source: Box<candle_core::Error>,
    },
    /// An artifact could not be laid out or written.
    #[error("capture of `{label}` failed: cannot write an artifact")]
    Artifact {
        /// `repo@revision`.
        label: String,
        /// Cause.
        #[source]
        source: crate::sink::WriteError,
    },
    /// A spectrum, an overlap or a stored spectrum read back failed.
    #[error("analysis of `{label}` failed")]
    Analysis {
        /// `repo@revision`, or the node.
        label: String,
        /// Cause.
        #[source]
        source: crate::analysis::AnalysisError,
    },
    /// A worker thread of the run stopped before it finished (it panicked).
    #[error("a worker of `{label}` stopped")]
    Task {
        /// `repo@revision`, or the node.
        label: String,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
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
    let id = RepoId::new(namespace, name).map_err(|source| RunError::OutputRepo {
        repo: spec.output.repo_id.clone(),
        source,
    })?;
    Ok(match spec.output.repo_type {
        crate::spec::RepoType::Model => Repo::model(id),
        crate::spec::RepoType::Dataset => Repo::dataset(id),
    })
}

/// The manifest a run of `spec`, read from file `file_name` with text `text`, writes.
pub fn manifest(spec: &SweepSpec, file_name: &str, text: &str) -> Manifest {
    use sha2::{Digest, Sha256};
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
            file_name: file_name.to_owned(),
            text: text.to_owned(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            canonical_sha256: hex::encode(Sha256::digest(canonical.as_bytes())),
        },
        tolerances: records::default_tolerances(),
    }
}
