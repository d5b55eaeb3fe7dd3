//! `reproduce`: rebuild a sweep's results from its ledger alone and compare.
//!
//! 1. [`read_source`]: the results repo's ledger at a revision. The manifest holds the spec text
//!    and its hashes (both must still match the text), the spec must still validate; the resolve
//!    records hold the commit each model revision was pinned to, the capture records the device
//!    class the run used.
//! 2. [`reproduce`]: pin every model at its *recorded* commit (a branch that moved since the run
//!    is never re-resolved; a local folder must still hash as recorded), build the plan with
//!    the normal pipeline, and check that its ids are the recorded ones ([`compare::check_ids`]).
//!    Choose nodes ([`select`]), rerun them into a scratch repo on the embedded hub through
//!    [`Session::run`](exec::Session::run) — the same code as `run`, over the plan pinned
//!    once by [`Session::pin_recorded`](exec::Session::pin_recorded) — and
//!    compare what the two ledgers record: files by sha256, metrics within the manifest's
//!    tolerance for the device class and dtype. A fresh scratch repo whose rerun compared equal
//!    is deleted ([`Scratch`]).

pub mod compare;
mod scratch;
pub mod select;

use std::collections::{BTreeMap, HashMap, HashSet};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::exec::{
    self, DataPin, DeviceClass, RunError, RunEvents, RunSettings, Session, UnitSelection,
};
use crate::hub::{HubClient, Repo, RepoId};
use crate::ledger::{LedgerState, Manifest, Record, StateError, Tolerance};
use crate::plan::{NodeKind, id::canonical_json};
use crate::sink::CommitPolicy;
use crate::spec::{HubKind, Loaded, OutputRepo, RepoType, SweepSpec};

use scratch::scratch_repo;

pub use compare::{Row, Status};
pub use select::{SelectError, Selection};

/// Namespace of the scratch repos `reproduce` creates when not told where to write.
pub const SCRATCH_NAMESPACE: &str = "reproduce";

/// Why `reproduce` could not run (as opposed to finding differences).
#[derive(Debug, thiserror::Error)]
pub enum ReproduceError {
    /// The results repo or revision does not exist.
    #[error("`{repo}@{revision}` does not exist")]
    NoRepo {
        /// The repo.
        repo: String,
        /// The revision.
        revision: String,
    },
    /// The repo has no manifest to rebuild from.
    #[error(
        "`{repo}@{revision}` has no `ledger/manifest.json`: it holds no hubsweep results to reproduce"
    )]
    NoManifest {
        /// The repo.
        repo: String,
        /// The revision.
        revision: String,
    },
    /// The ledger could not be read.
    #[error("cannot read the ledger of `{repo}`")]
    Source {
        /// The repo.
        repo: String,
        /// Cause.
        #[source]
        source: StateError,
    },
    /// The manifest's spec text does not hash to its recorded hash: it was edited.
    #[error(
        "the manifest's spec was edited: its {what} hashes to `{actual}`, the manifest records `{recorded}`"
    )]
    SpecEdited {
        /// `text` or `canonical form`.
        what: &'static str,
        /// Hash in the manifest.
        recorded: String,
        /// Hash of the text now.
        actual: String,
    },
    /// The manifest's spec no longer validates (the diagnostics point into its text).
    #[error("the manifest's spec `{}` does not validate with this hubsweep", loaded.file_name)]
    InvalidSpec {
        /// The loaded spec with its diagnostics.
        loaded: Box<Loaded>,
    },
    /// The scratch repo name is not a valid repo id.
    #[error("invalid scratch repo name `{name}`")]
    TargetName {
        /// The name tried.
        name: String,
        /// Cause.
        #[source]
        source: crate::hub::InvalidRepoId,
    },
    /// The scratch repo named with `--into` already holds results.
    #[error("`{repo}` already holds a ledger; reproduce into a new repo")]
    TargetNotEmpty {
        /// The repo.
        repo: String,
    },
    /// The scratch repo could not be checked or read back.
    #[error("scratch repo `{repo}`")]
    Target {
        /// The repo.
        repo: String,
        /// Cause.
        #[source]
        source: StateError,
    },
    /// The ledger's captures ran on a device class this hubsweep does not know.
    #[error(
        "the ledger records captures on device class `{class}`, which this hubsweep does not know"
    )]
    UnknownDeviceClass {
        /// As recorded.
        class: String,
    },
    /// The plan could not be rebuilt (a pinned commit is gone, the data changed shape, …).
    #[error("cannot rebuild the plan")]
    Rebuild(#[source] Box<RunError>),
    /// A `--nodes` or `--sample` selection is not usable.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// The rerun could not run.
    #[error("the rerun into `{repo}` could not run")]
    Run {
        /// The scratch repo.
        repo: String,
        /// Cause.
        #[source]
        source: Box<RunError>,
    },
}

/// A results repo's ledger, with the spec its manifest holds, parsed and validated.
#[derive(Debug)]
pub struct SourceLedger {
    /// The repo as written (`local://datasets/NS/NAME`).
    pub display: String,
    /// The revision asked for.
    pub revision: String,
    /// The commit read.
    pub head: String,
    /// Records and files at that commit.
    pub state: LedgerState,
    /// The manifest.
    pub manifest: Manifest,
    /// The validated spec from the manifest.
    pub spec: SweepSpec,
}

/// Reads the ledger of `repo` at `revision` and rebuilds the spec from its manifest alone.
pub async fn read_source(
    client: &HubClient,
    repo: &Repo,
    display: &str,
    revision: &str,
) -> Result<SourceLedger, ReproduceError> {
    let state = LedgerState::read(client, repo, revision)
        .await
        .map_err(|source| ReproduceError::Source {
            repo: display.to_owned(),
            source,
        })?;
    let head = state.head.clone().ok_or_else(|| ReproduceError::NoRepo {
        repo: display.to_owned(),
        revision: revision.to_owned(),
    })?;
    let manifest = state
        .manifest
        .clone()
        .ok_or_else(|| ReproduceError::NoManifest {
            repo: display.to_owned(),
            revision: revision.to_owned(),
        })?;
    let spec = spec_of(&manifest)?;
    Ok(SourceLedger {
        display: display.to_owned(),
        revision: revision.to_owned(),
        head,
        state,
        manifest,
        spec,
    })
}

/// The manifest's spec, through the normal spec pipeline, after checking both of its hashes.
pub fn spec_of(manifest: &Manifest) -> Result<SweepSpec, ReproduceError> {
    let recorded = &manifest.spec;
    let actual = hex::encode(Sha256::digest(recorded.text.as_bytes()));
    if actual != recorded.sha256 {
        return Err(ReproduceError::SpecEdited {
            what: "text",
            recorded: recorded.sha256.clone(),
            actual,
        });
    }
    let loaded = crate::spec::load(&recorded.file_name, recorded.text.as_bytes());
    if let Some(tree) = &loaded.tree {
        let actual = hex::encode(Sha256::digest(canonical_json(&tree.to_json()).as_bytes()));
        if actual != recorded.canonical_sha256 {
            return Err(ReproduceError::SpecEdited {
                what: "canonical form",
                recorded: recorded.canonical_sha256.clone(),
                actual,
            });
        }
    }
    match (&loaded.spec, loaded.has_errors()) {
        (Some(spec), false) => Ok(spec.clone()),
        _ => Err(ReproduceError::InvalidSpec {
            loaded: Box::new(loaded),
        }),
    }
}

/// Where the rerun writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// This dataset repo on the embedded hub; it must hold no ledger yet.
    Named(RepoId),
    /// A new dataset repo `reproduce/{sweep}-{head12}` (with `-2`, `-3`, … when taken).
    Fresh,
}

/// Overrides of the manifest's tolerance (`--tolerance KIND=VALUE`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ToleranceOverrides {
    /// `relative=X`: relative tolerance of float metrics.
    pub relative: Option<f64>,
    /// `bitwise=true|false`: whether files must be equal byte for byte.
    pub bitwise: Option<bool>,
}

/// Settings of a reproduction (the CLI builds them from flags and the environment).
#[derive(Clone)]
pub struct ReproduceSettings {
    /// The scratch repo (on the session's embedded hub).
    pub target: Target,
    /// Which nodes to rerun.
    pub selection: Selection,
    /// Tolerance overrides.
    pub overrides: ToleranceOverrides,
    /// Uploads in flight at once.
    pub upload_slots: usize,
    /// Keep a fresh scratch repo even when everything compared equal (a named one is always
    /// kept).
    pub keep: bool,
    /// TEST ONLY: see [`RunSettings::perturb_capture_for_tests`].
    pub perturb_capture_for_tests: bool,
}

/// What became of the scratch repo.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Scratch {
    /// Nothing reran, so nothing was written.
    NotCreated,
    /// Deleted, because everything compared equal; the embedded hub freed the objects only it
    /// referenced.
    Deleted {
        /// Bytes freed in the store.
        freed_bytes: Option<u64>,
    },
    /// Kept for inspection: something differs or failed.
    KeptDiffers,
    /// Kept because `--keep` asked for it.
    KeptAsked,
    /// Kept because `--into` named it.
    KeptNamed,
    /// Everything compared equal but the delete failed (the repo is still there).
    DeleteFailed {
        /// Why.
        error: String,
    },
}

/// What a reproduction found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReproduceReport {
    /// The results repo.
    pub source: String,
    /// Its revision as asked.
    pub revision: String,
    /// The commit read.
    pub head: String,
    /// The scratch repo.
    pub target: String,
    /// Its head after the rerun.
    pub target_head: Option<String>,
    /// The tolerance applied (device class and dtype of the recorded run).
    pub tolerance: Tolerance,
    /// Nodes in the rebuilt plan.
    pub plan_nodes: usize,
    /// Nodes whose rebuilt id the ledger records with a result.
    pub ids_matched: usize,
    /// Nodes chosen (with their inputs).
    pub chosen: usize,
    /// Nodes rerun and compared.
    pub compared: usize,
    /// Failures of the rerun: label and reason.
    pub run_failures: Vec<(String, String)>,
    /// Whether Ctrl-C stopped the rerun.
    pub interrupted: bool,
    /// The comparison table.
    pub rows: Vec<Row>,
    /// What became of the scratch repo.
    pub scratch: Scratch,
}

impl ReproduceReport {
    /// Whether everything compared equal (within tolerance) and nothing failed.
    pub fn passed(&self) -> bool {
        !self.interrupted
            && self.run_failures.is_empty()
            && self.rows.iter().all(|r| r.status != Status::Fail)
    }

    /// Rows that failed.
    pub fn failures(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == Status::Fail)
            .count()
    }
}

/// Commits of the recorded resolve records, by `source@revision`, and of the adapters the
/// `update_geometry` records pinned (by the adapter's `source@revision`).
fn recorded_commits(records: &HashMap<String, Record>) -> BTreeMap<String, String> {
    let models = records
        .values()
        .filter(|r| r.kind == NodeKind::Resolve.as_str() && r.error.is_none())
        .filter_map(|r| {
            let model = r.params["model"].as_str()?;
            let revision = r.params["revision"].as_str()?;
            let commit = r.metrics.as_ref()?["commit"].as_str()?;
            Some((format!("{model}@{revision}"), commit.to_owned()))
        });
    let adapters = records
        .values()
        .filter(|r| r.kind == NodeKind::UpdateGeometry.as_str())
        .filter_map(|r| {
            let adapter = r.params["adapter"].as_str()?;
            let revision = r.params["adapter_revision"].as_str()?;
            let commit = r.pins["commit"].as_str()?;
            Some((format!("{adapter}@{revision}"), commit.to_owned()))
        });
    models.chain(adapters).collect()
}

/// The device class the recorded captures ran on (`cpu` when nothing was captured).
fn recorded_device_class(records: &HashMap<String, Record>) -> String {
    records
        .values()
        .filter(|r| r.kind == NodeKind::Capture.as_str())
        .find_map(|r| r.pins["device"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "cpu".to_owned())
}

/// The manifest's tolerance for `device` and `dtype` (built-in defaults for a manifest that
/// records none), with the overrides applied.
pub fn tolerance(
    manifest: &Manifest,
    device: &str,
    dtype: &str,
    overrides: ToleranceOverrides,
) -> Tolerance {
    let find = |table: &[Tolerance]| {
        table
            .iter()
            .find(|t| t.device == device && t.dtype == dtype)
            .cloned()
    };
    let mut tolerance = find(&manifest.tolerances)
        .or_else(|| find(&exec::default_tolerances()))
        .unwrap_or(Tolerance {
            device: device.to_owned(),
            dtype: dtype.to_owned(),
            relative: 1e-6,
            bitwise: false,
        });
    if let Some(relative) = overrides.relative {
        tolerance.relative = relative;
    }
    if let Some(bitwise) = overrides.bitwise {
        tolerance.bitwise = bitwise;
    }
    tolerance
}

/// Rebuilds the plan of `source` at its recorded pins, reruns the chosen nodes into the scratch
/// repo and compares them with the ledger. See the module docs (its steps are this function's
/// outline, hence its length). `session` is the sweep of `source` (its spec), opened with the embedded hub
/// ([`Embedded::Running`](exec::Embedded::Running)); the rerun retargets it to the scratch
/// repo there.
pub async fn reproduce(
    session: &mut Session,
    source: &SourceLedger,
    settings: &ReproduceSettings,
    events: RunEvents,
    cancel: CancellationToken,
) -> Result<ReproduceReport, ReproduceError> {
    let records = &source.state.records;
    let device_class = recorded_device_class(records);
    let dtype = source
        .spec
        .capture
        .as_ref()
        .map_or("f32", |c| c.dtype.as_str());
    let tolerance = tolerance(&source.manifest, &device_class, dtype, settings.overrides);
    let device =
        DeviceClass::parse(&device_class).ok_or_else(|| ReproduceError::UnknownDeviceClass {
            class: device_class.clone(),
        })?;
    // Like models, the Hub data file is read at its recorded commit, never the branch again.
    let data = DataPin::recorded(&source.spec, records.values()).map(|pin| pin.commit);
    // Pinned once, here: the rerun below runs this very plan instead of pinning again.
    let pinned = session
        .pin_recorded(recorded_commits(records), data, device, &events)
        .await
        .map_err(|e| ReproduceError::Rebuild(Box::new(e)))?;
    let plan = pinned.plan.clone();
    let (id_rows, matched) = compare::check_ids(&plan, records);
    let chosen = select::choose(&plan, &settings.selection)?;
    let id_of = |i: usize| plan.nodes[i].id.map(|id| id.to_hex()).unwrap_or_default();
    let to_run: Vec<usize> = chosen
        .iter()
        .copied()
        .filter(|i| matched.contains(i))
        .collect();
    let chosen_ids: HashSet<String> = chosen.iter().map(|&i| id_of(i)).collect();

    let target_client = session
        .local_client()
        .cloned()
        .ok_or_else(|| ReproduceError::Rebuild(Box::new(RunError::NoLocalHub)))?;
    let repo = scratch_repo(&target_client, &settings.target, source).await?;
    let target = OutputRepo {
        hub: HubKind::Local,
        repo_type: RepoType::Dataset,
        repo_id: repo.id.to_string(),
    };
    let mut report = ReproduceReport {
        source: source.display.clone(),
        revision: source.revision.clone(),
        head: source.head.clone(),
        target: target.to_string(),
        target_head: None,
        tolerance: tolerance.clone(),
        plan_nodes: plan.nodes.len(),
        ids_matched: matched.len(),
        chosen: chosen.len(),
        compared: 0,
        run_failures: Vec::new(),
        interrupted: false,
        rows: id_rows
            .into_iter()
            // Nodes the run never recorded matter only where they were asked for.
            .filter(|r| r.status != Status::Skip || chosen_ids.contains(&r.node))
            .collect(),
        scratch: Scratch::NotCreated,
    };
    if to_run.is_empty() {
        return Ok(report);
    }

    session
        .retarget(target)
        .map_err(|e| ReproduceError::Rebuild(Box::new(e)))?;
    let run_settings = RunSettings {
        spec_file: (
            source.manifest.spec.file_name.clone(),
            source.manifest.spec.text.clone(),
        ),
        failure: exec::FailurePolicy::KeepGoing,
        upload_slots: settings.upload_slots.max(1),
        commits: CommitPolicy::default(),
        dry_run: false,
        perturb_capture_for_tests: settings.perturb_capture_for_tests,
        evict_models: false,
    };
    let selection = UnitSelection::Nodes(to_run.iter().map(|&i| id_of(i)).collect());
    let run = session
        .run(pinned, &run_settings, &selection, events, cancel)
        .await
        .map_err(|source| ReproduceError::Run {
            repo: report.target.clone(),
            source: Box::new(source),
        })?;
    report.run_failures = run.failed;
    report.interrupted = run.interrupted;
    let rerun = LedgerState::read(&target_client, &repo, "main")
        .await
        .map_err(|source| ReproduceError::Target {
            repo: report.target.clone(),
            source,
        })?;
    report.target_head = rerun.head.clone();

    // Rows in plan order; a capture's row sums up the artifacts it wrote.
    let mut by_node: BTreeMap<usize, Vec<Row>> = BTreeMap::new();
    for &i in &to_run {
        let id = id_of(i);
        let Some(recorded) = records.get(&id) else {
            continue;
        };
        by_node.insert(
            i,
            compare::compare_node(&plan, i, recorded, rerun.records.get(&id), &tolerance),
        );
    }
    for &i in &to_run {
        if plan.nodes[i].kind != NodeKind::Capture {
            continue;
        }
        let written: Vec<&Row> = by_node
            .iter()
            .filter(|(a, _)| {
                plan.nodes[**a].kind == NodeKind::Artifact
                    && plan.nodes[**a].inputs.contains(&(i as u32))
            })
            .flat_map(|(_, rows)| rows)
            .collect();
        if written.is_empty() {
            continue;
        }
        let summary = compare::capture_row(&plan, i, &written);
        let rows = by_node.entry(i).or_default();
        // The summary replaces the bare `record` row when the capture reran cleanly.
        rows.retain(|r| r.check != "record");
        rows.push(summary);
    }
    report.compared = by_node.len();
    report.rows.extend(by_node.into_values().flatten());
    report.scratch = match (&settings.target, settings.keep, report.passed()) {
        (_, _, false) => Scratch::KeptDiffers,
        (Target::Named(_), _, true) => Scratch::KeptNamed,
        (Target::Fresh, true, true) => Scratch::KeptAsked,
        // A rerun that reproduced is worth nothing more than the ledger it matched.
        (Target::Fresh, false, true) => match target_client.delete_repo(&repo).await {
            Ok(freed_bytes) => Scratch::Deleted { freed_bytes },
            Err(error) => Scratch::DeleteFailed {
                error: crate::hub::client::error_chain(&error),
            },
        },
    };
    Ok(report)
}

#[cfg(test)]
mod tests;
