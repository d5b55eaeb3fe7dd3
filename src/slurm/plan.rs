//! What a Slurm sweep keeps in its output repo (`ledger/slurm/<hash>/`): the submitted plan and
//! one record per submission attempt, and what the submitter, the final job and `status` read
//! back from them together with the ledger and `squeue`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{JobRow, SlurmError};
use crate::exec::unit;
use crate::hub::{CommitOperation, CommitOptions, HubClient, Repo};
use crate::ledger::LedgerState;
use crate::plan::Plan;

/// Folder of the submissions in the output repo.
pub const SLURM_DIR: &str = "ledger/slurm";

/// Slurm options of a submission (also written into the plan, so that resubmissions use them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gres` (e.g. `gpu:1`).
    pub gres: Option<String>,
    /// `--time` (`HH:MM:SS`).
    pub time: Option<String>,
    /// Tasks of the array running at once (`%N`).
    pub array_max: usize,
    /// Extra `sbatch` arguments, verbatim.
    pub extra: Vec<String>,
    /// Folder for job logs (must exist on the compute nodes).
    pub log_dir: PathBuf,
    /// Attempts per unit (first submission included).
    pub max_attempts: u32,
}

/// One unit as the submitter planned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedUnit {
    /// Unit index (model revision index in the plan).
    pub index: usize,
    /// `repo@revision`.
    pub label: String,
    /// Node ids (hex) of the unit; a worker refuses to run if its own pinning differs.
    pub nodes: Vec<String>,
}

/// The units of a pinned plan, as the submitter records them and a worker compares them.
pub fn planned_units(plan: &Plan) -> Vec<PlannedUnit> {
    unit::units(plan)
        .into_iter()
        .map(|u| PlannedUnit {
            index: u.index,
            nodes: u.node_ids(plan),
            label: u.label,
        })
        .collect()
}

/// The node ids (hex) of a pinned plan's final step.
pub fn final_node_ids(plan: &Plan) -> Vec<String> {
    unit::final_nodes(plan)
        .into_iter()
        .map(|i| node_id(plan, i))
        .collect()
}

fn node_id(plan: &Plan, index: usize) -> String {
    plan.nodes[index]
        .id
        .map(|id| id.to_hex())
        .unwrap_or_default()
}

/// Indices of the units the ledger does not have complete.
pub fn missing_units(plan: &Plan, state: &LedgerState) -> Vec<usize> {
    unit::units(plan)
        .iter()
        .filter(|u| !u.is_done(plan, state))
        .map(|u| u.index)
        .collect()
}

/// Whether the ledger has every node of the plan, the final step's included.
pub fn is_complete(plan: &Plan, state: &LedgerState) -> bool {
    (0..plan.nodes.len()).all(|i| state.is_done(&node_id(plan, i)))
}

/// What the submitter commits for its workers: `ledger/slurm/<hash>/plan.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedPlan {
    /// The spec's file name (as the manifest records it).
    pub spec_file: String,
    /// The spec's text.
    pub spec_text: String,
    /// Folder the spec was read from (relative model folders resolve against it).
    pub spec_dir: String,
    /// Pinned model revisions: label and commit.
    pub pins: Vec<(String, String)>,
    /// Every unit.
    pub units: Vec<PlannedUnit>,
    /// Node ids of the final step.
    pub final_nodes: Vec<String>,
    /// Commits per hour each worker may make (the repo's limit shared by the parallel tasks).
    pub worker_commits_per_hour: usize,
    /// Slurm options, for resubmissions.
    pub options: JobOptions,
    /// How workers run their units (a plan written before this field had the defaults).
    #[serde(default)]
    pub worker: WorkerSettings,
}

/// The `run` flags that workers and the final step follow, as the submitter was given them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// `--keep-going`: a worker records a failed model's nodes as failed and goes on; when
    /// units are still missing after the last attempt, the final step runs the overlaps that
    /// do not need them and writes the index, rather than giving up.
    pub keep_going: bool,
    /// `--upload-slots`: uploads each worker has in flight at once.
    pub upload_slots: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            keep_going: false,
            upload_slots: crate::exec::DEFAULT_UPLOAD_SLOTS,
        }
    }
}

impl SubmittedPlan {
    /// The content hash naming this plan (first 16 hex digits of the sha256 of its pins, node
    /// ids and spec): a resubmission of the same pinned sweep finds the same plan.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.spec_text.as_bytes());
        for (label, commit) in &self.pins {
            hasher.update(format!("\n{label}={commit}"));
        }
        for unit in &self.units {
            hasher.update(format!("\n{}:{}", unit.index, unit.nodes.join(",")));
        }
        hasher.update(self.final_nodes.join(","));
        hex::encode(&hasher.finalize()[..8])
    }

    /// Repo path of the plan of `hash`.
    pub fn path(hash: &str) -> String {
        format!("{SLURM_DIR}/{hash}/plan.json")
    }

    /// The job name of every job of the plan `hash`.
    pub fn job_name(hash: &str) -> String {
        format!("hubsweep-{hash}")
    }

    /// Reads the plan of `hash` from the repo.
    pub async fn read(client: &HubClient, repo: &Repo, hash: &str) -> Result<Self, SlurmError> {
        read_json(client, repo, &Self::path(hash)).await
    }

    /// Hashes of the plans committed to the repo (any order).
    pub fn hashes_in(state: &LedgerState) -> Vec<String> {
        let prefix = format!("{SLURM_DIR}/");
        state
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix)?.strip_suffix("/plan.json"))
            .map(str::to_owned)
            .collect()
    }
}

/// One submission of units: an array and its final job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first submission.
    pub attempt: u32,
    /// The array's job id (none when no unit was left and only the final job was submitted).
    pub array_job: Option<String>,
    /// The final job's id.
    pub final_job: String,
    /// Unit index of each array task.
    pub units: Vec<usize>,
    /// Why units were resubmitted: unit index and reason (empty for the first attempt).
    pub reasons: Vec<(usize, String)>,
}

impl Attempt {
    /// Repo path of attempt `n` of the plan `hash`.
    pub fn path(hash: &str, n: u32) -> String {
        format!("{SLURM_DIR}/{hash}/attempt-{n:03}.json")
    }

    /// How many attempts of the plan `hash` the repo records.
    pub fn count_in(state: &LedgerState, hash: &str) -> u32 {
        let prefix = format!("{SLURM_DIR}/{hash}/attempt-");
        let count = state
            .files
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Reads attempt `n` of the plan `hash` from the repo.
    pub async fn read(
        client: &HubClient,
        repo: &Repo,
        hash: &str,
        n: u32,
    ) -> Result<Self, SlurmError> {
        read_json(client, repo, &Self::path(hash, n)).await
    }

    /// The array task of unit `unit` in this attempt, if the unit was in its array.
    pub fn task_of(&self, unit: usize) -> Option<usize> {
        self.array_job.as_ref()?;
        self.units.iter().position(|&u| u == unit)
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    client: &HubClient,
    repo: &Repo,
    path: &str,
) -> Result<T, SlurmError> {
    let bytes = client
        .download_bytes(repo, "main", path)
        .await
        .map_err(|source| SlurmError::Hub {
            path: path.to_owned(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|source| SlurmError::BadFile {
        path: path.to_owned(),
        source,
    })
}

/// Commits `files` (path, content) to `main` without a parent commit: the plan and attempt
/// files are written by one process each and never conflict with what workers commit, so a
/// branch that moved meanwhile is no reason to refuse them.
pub async fn commit_files(
    client: &HubClient,
    repo: &Repo,
    summary: &str,
    files: Vec<(String, Bytes)>,
) -> Result<(), SlurmError> {
    let paths = files
        .iter()
        .map(|(p, _)| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let operations: Vec<CommitOperation> = files
        .into_iter()
        .map(|(path, content)| CommitOperation::AddRegular { path, content })
        .collect();
    let options = CommitOptions {
        summary: summary.to_owned(),
        description: String::new(),
        parent_commit: None,
        create_pr: false,
    };
    client
        .commit(repo, "main", &operations, &options)
        .await
        .map(drop)
        .map_err(|source| SlurmError::Hub {
            path: paths,
            source,
        })
}

/// Why each of `missing` units is not done after `last` (the attempt the final job closes):
/// Slurm's end state of its array task (from `rows`, while Slurm remembers it) and the failure
/// the ledger records for it, if any.
pub fn reasons(
    plan: &Plan,
    state: &LedgerState,
    missing: &[usize],
    last: Option<&Attempt>,
    rows: &[JobRow],
) -> Vec<(usize, String)> {
    let units = unit::units(plan);
    missing
        .iter()
        .map(|&k| {
            let slurm_state = last.and_then(|attempt| {
                let array = attempt.array_job.as_ref()?;
                let task = attempt.task_of(k)?;
                let row = rows
                    .iter()
                    .find(|r| &r.job == array && r.task == Some(task))?;
                Some(format!("array task {array}_{task} ended {}", row.state))
            });
            let failure = units.get(k).and_then(|u| {
                u.node_ids(plan)
                    .iter()
                    .find_map(|id| state.records.get(id).and_then(|r| r.error.clone()))
            });
            let reason = match (slurm_state, failure) {
                (Some(s), Some(f)) => format!("{s}: {f}"),
                (Some(s), None) => format!("{s} before the unit was complete"),
                (None, Some(f)) => f,
                (None, None) => {
                    "not complete in the ledger (the task's record is gone from Slurm)".into()
                }
            };
            (k, reason)
        })
        .collect()
}

/// Units per state: `done` from the ledger; otherwise the lowercase Slurm state of the unit's
/// task in the latest attempt that holds it (`attempts` in order), or `not known to slurm`.
pub fn unit_states(
    plan: &Plan,
    state: &LedgerState,
    attempts: &[Attempt],
    rows: &[JobRow],
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for unit in unit::units(plan) {
        let label = if unit.is_done(plan, state) {
            "done".to_owned()
        } else {
            attempts
                .iter()
                .rev()
                .find_map(|a| Some((a.array_job.clone()?, a.task_of(unit.index)?)))
                .and_then(|(job, task)| {
                    rows.iter()
                        .find(|r| r.job == job && r.task == Some(task))
                        // A pending range (`12_[4-7]`) is not split into tasks yet.
                        .or_else(|| rows.iter().find(|r| r.job == job && r.task.is_none()))
                        .map(|r| r.state.to_lowercase())
                })
                .unwrap_or_else(|| "not known to slurm".to_owned())
        };
        *counts.entry(label).or_default() += 1;
    }
    counts
}

/// A submitted sweep as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepState {
    /// The plan's hash (its jobs are named `hubsweep-<hash>`).
    pub hash: String,
    /// Units per state (see [`unit_states`]).
    pub units: BTreeMap<String, usize>,
}

/// The submission of `plan` the repo records, if any, with its units per state: reads the
/// committed plans and attempts, and runs one `squeue` for the sweep's job name. What cannot
/// be read is left out rather than failing `status`: a plan file of another pinning, an
/// unreadable attempt, or no Slurm on this machine (units not done are then `not known to
/// slurm`).
pub async fn sweep_state(
    client: &HubClient,
    repo: &Repo,
    state: &LedgerState,
    plan: &Plan,
    slurm: &super::Slurm,
) -> Option<SweepState> {
    let planned = planned_units(plan);
    for hash in SubmittedPlan::hashes_in(state) {
        let Ok(submitted) = SubmittedPlan::read(client, repo, &hash).await else {
            continue;
        };
        if submitted.units != planned {
            continue;
        }
        let mut attempts = Vec::new();
        for n in 1..=Attempt::count_in(state, &hash) {
            if let Ok(attempt) = Attempt::read(client, repo, &hash, n).await {
                attempts.push(attempt);
            }
        }
        let rows = slurm
            .jobs_named(&SubmittedPlan::job_name(&hash))
            .unwrap_or_default();
        return Some(SweepState {
            units: unit_states(plan, state, &attempts, &rows),
            hash,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Record;
    use crate::plan::{NoLookup, PlanOptions};

    /// Two units (two pinned revisions, inline data: every node id is known without a Hub).
    fn two_unit_plan() -> Plan {
        let text = "name: t\noutput: hf://datasets/alice/t\nmodels:\n  - family: llama\n    repo: org/model\n    revision: [0123456789abcdef0123456789abcdef01234567, 89abcdef0123456789abcdef0123456789abcdef]\ndata:\n  token_ids: [[1, 2, 3, 4]]\n  seq_len: 4\ncapture:\n  hooks: [hook_resid_post]\n  layers: [0]\nanalyses:\n  - spectrum: {top_k: 2}\n";
        let loaded = crate::spec::load("t.yaml", text.as_bytes());
        let options = PlanOptions {
            lookup: &NoLookup,
            data_hash: None,
            device_class: "cpu".into(),
        };
        crate::plan::build(loaded.spec.as_ref().expect("valid spec"), &options)
    }

    fn record(id: &str, error: Option<&str>) -> Record {
        Record {
            id: id.to_owned(),
            kind: "capture".into(),
            version: 1,
            params: serde_json::Value::Null,
            inputs: Vec::new(),
            pins: serde_json::Value::Null,
            files: Vec::new(),
            metrics: None,
            timing: None,
            device: None,
            error: error.map(str::to_owned),
        }
    }

    fn row(job: &str, task: Option<usize>, state: &str) -> JobRow {
        JobRow {
            job: job.into(),
            task,
            state: state.into(),
        }
    }

    fn attempt(attempt: u32, array: &str, units: &[usize]) -> Attempt {
        Attempt {
            attempt,
            array_job: Some(array.into()),
            final_job: "99".into(),
            units: units.to_vec(),
            reasons: Vec::new(),
        }
    }

    #[test]
    fn missing_units_and_completeness_follow_the_ledger() {
        let plan = two_unit_plan();
        let units = planned_units(&plan);
        assert_eq!(units.len(), 2);
        let mut state = LedgerState::default();
        assert_eq!(missing_units(&plan, &state), [0, 1]);
        for id in &units[1].nodes {
            state.add(record(id, None));
        }
        assert_eq!(missing_units(&plan, &state), [0]);
        for id in units[0].nodes.iter().chain(&final_node_ids(&plan)) {
            assert!(!is_complete(&plan, &state));
            state.add(record(id, None));
        }
        assert!(missing_units(&plan, &state).is_empty());
        assert!(is_complete(&plan, &state));
    }

    #[test]
    fn reasons_join_the_tasks_end_state_and_the_ledgers_failure() {
        let plan = two_unit_plan();
        let units = planned_units(&plan);
        let mut state = LedgerState::default();
        state.add(record(&units[1].nodes[0], Some("out of memory")));
        // Unit 1 ran as task 0 of a resubmission; unit 0 as task 1, which Slurm forgot.
        let last = attempt(2, "12", &[1, 0]);
        let rows = [row("12", Some(0), "FAILED"), row("11", Some(1), "TIMEOUT")];
        let reasons = reasons(&plan, &state, &[0, 1], Some(&last), &rows);
        assert_eq!(
            reasons,
            [
                (
                    0,
                    "not complete in the ledger (the task's record is gone from Slurm)".to_owned()
                ),
                (1, "array task 12_0 ended FAILED: out of memory".to_owned()),
            ]
        );
        // Slurm's word alone, when the ledger has no failure.
        let rows = [row("12", Some(1), "CANCELLED")];
        assert_eq!(
            super::reasons(&plan, &LedgerState::default(), &[0], Some(&last), &rows),
            [(
                0,
                "array task 12_1 ended CANCELLED before the unit was complete".to_owned()
            )]
        );
        // The ledger's word alone, when no attempt is known.
        assert_eq!(
            super::reasons(&plan, &state, &[1], None, &[]),
            [(1, "out of memory".to_owned())]
        );
    }

    #[test]
    fn unit_states_take_done_from_the_ledger_and_the_rest_from_the_latest_attempt() {
        let plan = two_unit_plan();
        let units = planned_units(&plan);
        let mut state = LedgerState::default();
        for id in &units[0].nodes {
            state.add(record(id, None));
        }
        // Unit 1 failed as task 1 of array 10, then was resubmitted as task 0 of array 20,
        // whose tasks are still one pending range.
        let attempts = [attempt(1, "10", &[0, 1]), attempt(2, "20", &[1])];
        let rows = [row("10", Some(1), "FAILED"), row("20", None, "PENDING")];
        let counts = unit_states(&plan, &state, &attempts, &rows);
        assert_eq!(
            counts,
            BTreeMap::from([("done".to_owned(), 1), ("pending".to_owned(), 1)])
        );
        let counts = unit_states(&plan, &state, &attempts, &[]);
        assert_eq!(counts.get("not known to slurm"), Some(&1));
    }
}
