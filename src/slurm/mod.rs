//! Running a sweep's work units on a Slurm cluster, with the Hub as the only shared state.
//!
//! The submitter ([`prepare`], then [`Ready::submit`]) takes the sweep pinned once by its
//! [`Session`](crate::exec::Session), commits a [`SubmittedPlan`] to the output repo
//! (`ledger/slurm/<hash>/plan.json`: the spec text, the pins and every unit's node ids), then
//! submits one job array whose task `i` runs `hubsweep worker REPO --plan HASH --unit K_i`, and a
//! final job (`--dependency=afterany:<array>`) that checks the ledger: every unit done → it runs
//! the cross-unit nodes and compacts the ledger; some unit not done → it resubmits those units
//! (a new array and a new final job, an [`Attempt`] recording why) until `max_attempts`.
//! Workers fetch the plan from the Hub; nothing else is shared. Every job carries the job name
//! `hubsweep-<hash>`, so one `squeue -n` call shows a sweep's jobs, resubmissions included.
//!
//! This module runs the Slurm client commands (`sbatch`, `squeue`, `scancel`) and counts them;
//! it never reads the environment (the caller passes the binary and the options). `plan` holds
//! what the sweep keeps in its repo (the plan, the attempts) and what is derived from it with
//! the ledger; `submit` the submitter; `track` the polling schedule of a submitter following
//! its jobs.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

mod plan;
mod submit;
mod track;

pub use plan::{
    Attempt, JobOptions, PlannedUnit, SLURM_DIR, SubmittedPlan, SweepState, WorkerSettings,
    commit_files, final_node_ids, is_complete, missing_units, planned_units, reasons, sweep_state,
    unit_states,
};
pub use submit::{Prepared, Ready, SubmitError, SubmitSettings, Submitted, prepare};
pub use track::{PollSchedule, state_counts};

/// Why a Slurm command failed.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The command is not installed (or not on `PATH`).
    #[error("`{command}` not found: is Slurm installed on this machine and on `PATH`?")]
    NotInstalled {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and refused.
    #[error("`{command}` failed: {message}")]
    Refused {
        /// The command line (program and arguments).
        command: String,
        /// What it said on stderr (or its exit status).
        message: String,
    },
    /// The command could not be run.
    #[error("cannot run `{command}`")]
    Io {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the sweep (plan, attempt) could not be read from or written to the Hub.
    #[error("cannot transfer `{path}`")]
    Hub {
        /// Repo path(s) of the file(s).
        path: String,
        /// Cause.
        #[source]
        source: crate::hub::HubError,
    },
    /// A file of the sweep in the repo is not what this version of hubsweep writes.
    #[error("`{path}` is not a sweep file of this hubsweep version")]
    BadFile {
        /// Repo path of the file.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A job as `squeue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// The array job id, or the job id for a plain job.
    pub job: String,
    /// The array task index, for an array task (`None` also for a not yet split pending range).
    pub task: Option<usize>,
    /// Slurm state (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, …).
    pub state: String,
}

impl JobRow {
    /// Whether the job has not ended.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "STOPPED"
        )
    }
}

/// The Slurm client commands, counted.
#[derive(Debug, Default)]
pub struct Slurm {
    commands: AtomicU64,
}

impl Slurm {
    /// A client that runs the commands found on `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many Slurm commands this client has run.
    pub fn commands_run(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, SlurmError> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        let line = std::iter::once(program.to_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: a Ctrl-C at the terminal signals the submitter, which decides
        // what to do with its jobs, and never kills an `sbatch` between the array and its
        // final job.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SlurmError::NotInstalled {
                command: program.to_owned(),
                source,
            },
            _ => SlurmError::Io {
                command: line.clone(),
                source,
            },
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|source| SlurmError::Io {
                    command: line.clone(),
                    source,
                })?;
        }
        let output = child.wait_with_output().map_err(|source| SlurmError::Io {
            command: line.clone(),
            source,
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(SlurmError::Refused {
                command: line,
                message: if message.is_empty() {
                    format!("exited with {}", output.status)
                } else {
                    message
                },
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `sbatch --version`: whether Slurm's client commands are here at all.
    pub fn sbatch_version(&self) -> Result<String, SlurmError> {
        self.run("sbatch", &["--version".to_owned()], None)
            .map(|v| v.trim().to_owned())
    }

    /// `sbatch --parsable ARGS` with `script` on stdin; returns the job id.
    pub fn sbatch(&self, args: &[String], script: &str) -> Result<String, SlurmError> {
        let mut all = vec!["--parsable".to_owned()];
        all.extend(args.iter().cloned());
        let out = self.run("sbatch", &all, Some(script))?;
        // `--parsable` prints `jobid` or `jobid;cluster`.
        let id = out.trim().split(';').next().unwrap_or_default().to_owned();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SlurmError::Refused {
                command: "sbatch".into(),
                message: format!("unexpected output `{}`", out.trim()),
            });
        }
        Ok(id)
    }

    /// Every job named `name` that Slurm still knows (finished ones for `MinJobAge`): one
    /// `squeue` call however many jobs there are.
    pub fn jobs_named(&self, name: &str) -> Result<Vec<JobRow>, SlurmError> {
        let args = ["-h", "-t", "all", "-n", name, "-o", "%F|%K|%T"].map(str::to_owned);
        let out = self.run("squeue", &args, None)?;
        Ok(parse_squeue(&out))
    }

    /// `scancel --name NAME`: cancels every job of a sweep.
    pub fn cancel_named(&self, name: &str) -> Result<(), SlurmError> {
        self.run("scancel", &["--name".to_owned(), name.to_owned()], None)
            .map(drop)
    }

    /// `scancel JOB…`.
    pub fn cancel(&self, jobs: &[String]) -> Result<(), SlurmError> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.run("scancel", jobs, None).map(drop)
    }

    /// Submits `units` as one array plus its final job (or only the final job when `units` is
    /// empty). If the final job is refused, the array is cancelled again: nothing is left
    /// submitted half-way.
    pub fn submit(
        &self,
        submission: &Submission<'_>,
        units: &[usize],
        attempt: u32,
        reasons: Vec<(usize, String)>,
    ) -> Result<Attempt, SlurmError> {
        let options = submission.options;
        let name = SubmittedPlan::job_name(submission.hash);
        let mut common = vec![format!("--job-name={name}")];
        if let Some(p) = &options.partition {
            common.push(format!("--partition={p}"));
        }
        if let Some(t) = &options.time {
            common.push(format!("--time={t}"));
        }
        common.extend(options.extra.iter().cloned());
        let log = |what: &str| {
            options
                .log_dir
                .join(format!("{name}-{what}"))
                .display()
                .to_string()
        };
        let array_job = if units.is_empty() {
            None
        } else {
            let mut args = common.clone();
            let parallel = options.array_max.max(1);
            args.push(format!("--array=0-{}%{parallel}", units.len() - 1));
            if let Some(g) = &options.gres {
                args.push(format!("--gres={g}"));
            }
            args.push(format!("--output={}", log("%A_%a.log")));
            let list = units.iter().map(usize::to_string).collect::<Vec<_>>();
            let script = format!(
                "#!/bin/bash\n# hubsweep work units, attempt {attempt}: array task i runs unit UNITS[i].\nUNITS=({})\nexec {} worker {} --plan {} --unit \"${{UNITS[$SLURM_ARRAY_TASK_ID]}}\"\n",
                list.join(" "),
                shell_quote(&submission.binary.display().to_string()),
                shell_quote(submission.repo),
                submission.hash,
            );
            Some(self.sbatch(&args, &script)?)
        };
        let mut args = common;
        if let Some(array) = &array_job {
            args.push(format!("--dependency=afterany:{array}"));
        }
        args.push(format!(
            "--output={}",
            log(&format!("final-{attempt}-%j.log"))
        ));
        let script = format!(
            "#!/bin/bash\n# hubsweep final step, attempt {attempt}: check every unit, resubmit what is missing, then overlaps and the ledger index.\nexec {} worker {} --plan {} --final --attempt {attempt}{}\n",
            shell_quote(&submission.binary.display().to_string()),
            shell_quote(submission.repo),
            submission.hash,
            array_job
                .as_ref()
                .map(|a| format!(" --array-job {a}"))
                .unwrap_or_default(),
        );
        let final_job = match self.sbatch(&args, &script) {
            Ok(id) => id,
            Err(error) => {
                if let Some(array) = &array_job {
                    let _ = self.cancel(std::slice::from_ref(array));
                }
                return Err(error);
            }
        };
        Ok(Attempt {
            attempt,
            array_job,
            final_job,
            units: units.to_vec(),
            reasons,
        })
    }
}

/// What every job of a sweep needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// Absolute path of the `hubsweep` binary on the compute nodes.
    pub binary: &'a Path,
    /// The output repo as in a spec (`hf://datasets/ns/name`).
    pub repo: &'a str,
    /// The plan's hash.
    pub hash: &'a str,
    /// Slurm options.
    pub options: &'a JobOptions,
}

/// Parses `squeue -o '%F|%K|%T'` lines (array job id, task index or range, state).
pub fn parse_squeue(text: &str) -> Vec<JobRow> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split('|');
            let job = parts.next()?.trim().to_owned();
            let task = parts.next()?.trim();
            let state = parts.next()?.trim().to_owned();
            if job.is_empty() || state.is_empty() {
                return None;
            }
            Some(JobRow {
                job,
                task: task.parse().ok(),
                state,
            })
        })
        .collect()
}

/// Single-quotes a word for bash.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_rows_parse_array_tasks_plain_jobs_and_pending_ranges() {
        let rows = parse_squeue("12|3|RUNNING\n12|[4-7%2]|PENDING\n13|N/A|PENDING\n\n");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].task, Some(3));
        assert_eq!(rows[1].task, None);
        assert!(rows[1].is_active());
        assert_eq!(rows[2].job, "13");
        assert!(
            !JobRow {
                job: "1".into(),
                task: None,
                state: "CANCELLED".into()
            }
            .is_active()
        );
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b c"), r"'a'\''b c'");
    }
}
