//! The submitter, as a library call: from a sweep pinned by its [`Session`], the plan is
//! committed to the output repo and the units the ledger lacks are submitted, in two steps so
//! that a caller can stop between them ([`prepare`] writes to the Hub but starts no job;
//! [`Prepared::submit`] runs `sbatch`). Each step returns a typed outcome; following the jobs
//! and deciding the verdict from the ledger are the caller's (the CLI's), with
//! [`PollSchedule`](super::PollSchedule) and [`is_complete`](super::is_complete).

use std::path::PathBuf;

use bytes::Bytes;

use super::{
    Attempt, JobOptions, Slurm, SlurmError, Submission, SubmittedPlan, WorkerSettings,
    commit_files, final_node_ids, missing_units, planned_units,
};
use crate::exec::{
    PinnedSweep, RunError, RunEvents, Session, UnitSelection, check_pending_module_patterns,
    manifest, unit,
};
use crate::hub::Repo;
use crate::ledger::{self, LedgerState};

/// What the submitter is told besides the pinned sweep.
#[derive(Debug, Clone)]
pub struct SubmitSettings {
    /// Absolute path of the `hubsweep` binary the jobs run.
    pub binary: PathBuf,
    /// The spec file's name.
    pub spec_file: String,
    /// The spec's text.
    pub spec_text: String,
    /// The folder its relative paths are read from (absolute).
    pub spec_dir: String,
    /// Slurm options.
    pub options: JobOptions,
    /// How the workers run.
    pub worker: WorkerSettings,
    /// The output repo's commit rate limit, shared by the tasks running at once.
    pub commits_per_hour: usize,
}

/// Why a submission could not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Checking the sweep, creating or reading the output repo failed.
    #[error("cannot prepare the sweep")]
    Run {
        /// Cause.
        #[source]
        source: RunError,
    },
    /// The plan could not be written to the output repo.
    #[error("cannot write the plan to `{output}`")]
    Plan {
        /// The output repo.
        output: String,
        /// Cause.
        #[source]
        source: SlurmError,
    },
    /// A Slurm command failed.
    #[error("slurm")]
    Slurm {
        /// Cause.
        #[source]
        source: SlurmError,
    },
}

/// What [`prepare`] found.
pub enum Prepared {
    /// Every unit and the final step are in the ledger: nothing to submit.
    Nothing {
        /// The plan's hash.
        hash: String,
        /// Units of the plan.
        units: usize,
    },
    /// This plan was submitted before and jobs of it are still queued or running: submitting
    /// again would run its units twice.
    StillRunning {
        /// The sweep's job name.
        job_name: String,
        /// Jobs queued or running.
        active: usize,
    },
    /// The plan is in the repo; [`Ready::submit`] submits it.
    Ready(Box<Ready>),
}

/// A plan committed to the output repo, its pending units not submitted yet.
pub struct Ready {
    /// What was committed.
    pub plan: SubmittedPlan,
    /// The plan's hash.
    pub hash: String,
    /// The sweep's job name.
    pub job_name: String,
    /// Units of the plan.
    pub units: usize,
    /// The units the ledger lacks, submitted by [`Ready::submit`].
    pub pending: Vec<usize>,
    /// This submission's number (attempts recorded before, plus one).
    pub attempt: u32,
    binary: PathBuf,
    output: String,
    repo: Repo,
}

/// What [`Ready::submit`] did.
pub struct Submitted {
    /// The attempt: its array job and final job.
    pub attempt: Attempt,
    /// Why the attempt is not recorded in the repo, when it is not (the jobs run anyway).
    pub unrecorded: Option<SlurmError>,
}

/// Checks the pinned sweep (a weight sweep's module patterns, while weight spectra are still
/// to run: a bad pattern is refused with nothing written), creates the output repo, and
/// commits the plan (with the manifest) unless there is nothing to submit or jobs of this plan
/// are still running. Starts no job.
pub async fn prepare(
    session: &Session,
    pinned: &PinnedSweep,
    slurm: &Slurm,
    settings: &SubmitSettings,
    events: &RunEvents,
) -> Result<Prepared, SubmitError> {
    let run = |source| SubmitError::Run { source };
    let spec = session.spec();
    let output = spec.output.to_string();
    let repo = session.output_repo().map_err(run)?;
    let plan = &pinned.plan;
    check_pending_module_patterns(
        spec,
        plan,
        &pinned.models,
        &pinned.state,
        &UnitSelection::All,
        events,
    )
    .await
    .map_err(run)?;
    session
        .output_client()
        .create_repo(&repo, false, true)
        .await
        .map_err(|source| {
            run(RunError::Hub {
                repo: output.clone(),
                source,
            })
        })?;
    let state: LedgerState = session.read_ledger().await.map_err(run)?;
    let units = unit::units(plan).len();
    let pending = missing_units(plan, &state);
    let final_done = final_node_ids(plan).iter().all(|id| state.is_done(id));
    let array_width = settings.options.array_max.max(1).min(pending.len().max(1));
    let submitted = SubmittedPlan {
        spec_file: settings.spec_file.clone(),
        spec_text: settings.spec_text.clone(),
        spec_dir: settings.spec_dir.clone(),
        pins: pinned
            .models
            .iter()
            .map(|(i, p)| (format!("{}@{}", i.source, i.revision), p.commit.clone()))
            .collect(),
        units: planned_units(plan),
        final_nodes: final_node_ids(plan),
        worker_commits_per_hour: (settings.commits_per_hour / array_width).max(1),
        options: settings.options.clone(),
        worker: settings.worker.clone(),
    };
    let hash = submitted.hash();
    let job_name = SubmittedPlan::job_name(&hash);
    if pending.is_empty() && final_done {
        return Ok(Prepared::Nothing { hash, units });
    }
    // A plan submitted before may still have jobs queued or running (a detached or
    // interrupted submitter). Only a plan with a recorded attempt costs this `squeue`.
    let attempts = Attempt::count_in(&state, &hash);
    if attempts > 0 {
        let rows = slurm
            .jobs_named(&job_name)
            .map_err(|source| SubmitError::Slurm { source })?;
        let active = rows.iter().filter(|r| r.is_active()).count();
        if active > 0 {
            return Ok(Prepared::StillRunning { job_name, active });
        }
    }
    // The plan goes to the Hub before any job exists: workers read it from there.
    let ours = manifest(spec, &settings.spec_file, &settings.spec_text);
    let mut files = vec![(
        SubmittedPlan::path(&hash),
        Bytes::from(serde_json::to_vec_pretty(&submitted).unwrap_or_default()),
    )];
    if state.manifest.as_ref() != Some(&ours) {
        files.push((
            ledger::MANIFEST_PATH.to_owned(),
            Bytes::from(serde_json::to_vec_pretty(&ours).unwrap_or_default()),
        ));
    }
    commit_files(
        session.output_client(),
        &repo,
        "hubsweep: slurm plan",
        files,
    )
    .await
    .map_err(|source| SubmitError::Plan {
        output: output.clone(),
        source,
    })?;
    Ok(Prepared::Ready(Box::new(Ready {
        plan: submitted,
        hash,
        job_name,
        units,
        pending,
        attempt: attempts + 1,
        binary: settings.binary.clone(),
        output,
        repo,
    })))
}

impl Ready {
    /// Submits the pending units (one array job and the final job) and records the attempt in
    /// the repo.
    pub async fn submit(&self, session: &Session, slurm: &Slurm) -> Result<Submitted, SubmitError> {
        let submission = Submission {
            binary: &self.binary,
            repo: &self.output,
            hash: &self.hash,
            options: &self.plan.options,
        };
        let attempt = slurm
            .submit(&submission, &self.pending, self.attempt, Vec::new())
            .map_err(|source| SubmitError::Slurm { source })?;
        let record = Bytes::from(serde_json::to_vec_pretty(&attempt).unwrap_or_default());
        let unrecorded = commit_files(
            session.output_client(),
            &self.repo,
            "hubsweep: slurm submission",
            vec![(Attempt::path(&self.hash, attempt.attempt), record)],
        )
        .await
        .err();
        Ok(Submitted {
            attempt,
            unrecorded,
        })
    }
}
