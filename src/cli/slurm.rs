//! `hubsweep run --executor slurm`: the submitter. It pins and plans, commits the plan to the
//! output repo, submits the jobs, then follows them (or returns at once with `--detach`).
//! Ctrl-C offers to cancel what it submitted. See `hubsweep::slurm` for the protocol and
//! docs/slurm.md for the user's view.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use hubsweep::exec::{self, FailurePolicy, RunSettings};
use hubsweep::hub::{HubClient, Repo};
use hubsweep::ledger::{self, LedgerState};
use hubsweep::plan::Plan;
use hubsweep::sink::CommitPolicy;
use hubsweep::slurm::{
    self, Attempt, JobOptions, PollSchedule, Slurm, Submission, SubmittedPlan, WorkerSettings,
};
use hubsweep::spec::HubKind;

use super::run::{SummaryFormat, open_hubs, progress_printer, report_run_error, runtime};
use super::{EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_NEGATIVE, EXIT_OK, Env, error_chain};

/// The repository's commit rate limit when none is given (the Hub's: 128 per repo and hour,
/// with a margin).
const DEFAULT_REPO_COMMITS_PER_HOUR: usize = 120;

/// Slurm options of `run --executor slurm`.
#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// Slurm partition (`sbatch --partition`).
    #[arg(long, value_name = "P")]
    partition: Option<String>,
    /// Generic resources per task (`sbatch --gres`, e.g. `gpu:1`).
    #[arg(long, value_name = "GRES")]
    gres: Option<String>,
    /// Array tasks running at once (`--array=…%N`).
    #[arg(long, default_value_t = 16, value_name = "N")]
    array_max: usize,
    /// Time limit per job (`sbatch --time`).
    #[arg(long, value_name = "HH:MM:SS")]
    time: Option<String>,
    /// Extra `sbatch` argument, verbatim (repeatable).
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
    /// Submit and return at once, printing the job ids.
    #[arg(long)]
    detach: bool,
    /// On Ctrl-C, cancel the sweep's jobs without asking (default: ask on a terminal, else
    /// leave them running).
    #[arg(long)]
    cancel_on_interrupt: bool,
    /// Folder for job logs; must exist on the compute nodes (default: HUBSWEEP_HOME/slurm-logs).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// The output repo's commit rate limit, shared by the parallel tasks.
    #[arg(long, default_value_t = DEFAULT_REPO_COMMITS_PER_HOUR, value_name = "N")]
    commits_per_hour: usize,
    /// Submissions of a unit at most (the first included) before the sweep gives up on it.
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_attempts: u32,
}

/// `hubsweep run SPEC --executor slurm`.
pub fn submit(
    spec_path: &Path,
    args: &SlurmArgs,
    worker: WorkerSettings,
    format: SummaryFormat,
    env: &Env,
) -> ExitCode {
    let Some(loaded) = super::spec::load(spec_path, env) else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let Some(spec) = loaded.spec.clone() else {
        eprintln!("{}: invalid spec", spec_path.display());
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    if spec.output.hub != HubKind::Hf {
        eprintln!(
            "error: the slurm executor needs an `hf://` output (workers share nothing but the Hub); `{}` lives in this machine's embedded hub",
            spec.output
        );
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let slurm = Slurm::new();
    // Before any work: is there a Slurm at all?
    if let Err(error) = slurm.sbatch_version() {
        eprintln!("error: {}", error_chain(&error));
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find the hubsweep binary's path: {e}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| env.hubsweep_home().join("slurm-logs"));
    if let Err(e) = fs_err::create_dir_all(&log_dir) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let log_dir = fs_err::canonicalize(&log_dir).unwrap_or(log_dir);
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let started = Instant::now();
    runtime.block_on(async {
        let mut interrupts = match Interrupts::listen() {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: cannot listen for Ctrl-C: {e}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let hubs = match open_hubs(&spec, spec_path, env).await {
            Ok(h) => h,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let planning = async {
            let sources = exec::hold_data_to_ledger(&spec, &hubs.sources, &hubs.output).await?;
            let events = progress_printer();
            let (plan, pinned) = exec::pin_and_plan(&spec, &sources, env.device_class(spec.compute.device), &events).await?;
            let repo = exec::output_repo(&spec)?;
            let read_state = || async {
                LedgerState::read(&hubs.output, &repo, "main")
                    .await
                    .map_err(|source| exec::RunError::Ledger { repo: spec.output.to_string(), source })
            };
            // Module patterns are checked while weight spectra are still to run, before the repo
            // is created: a bad pattern is refused with nothing written.
            exec::check_pending_module_patterns(&spec, &plan, &pinned, &read_state().await?, &exec::UnitSelection::All, &events).await?;
            hubs.output.create_repo(&repo, false, true).await.map_err(|source| exec::RunError::Hub { repo: spec.output.to_string(), source })?;
            let state = read_state().await?;
            Ok::<_, exec::RunError>((plan, pinned, repo, state))
        };
        // Until the jobs are submitted, Ctrl-C simply stops: nothing exists to cancel.
        let planned = tokio::select! {
            planned = planning => planned,
            () = interrupts.next() => {
                eprintln!("interrupted before anything was submitted");
                return ExitCode::from(EXIT_INTERRUPTED);
            }
        };
        let (plan, pinned, repo, state) = match planned {
            Ok(x) => x,
            Err(error) => {
                report_run_error(&error, &loaded, env);
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let units = exec::unit::units(&plan);
        let pending = slurm::missing_units(&plan, &state);
        let final_done = slurm::final_node_ids(&plan).iter().all(|id| state.is_done(id));
        let array_width = args.array_max.max(1).min(pending.len().max(1));
        let submitted = SubmittedPlan {
            spec_file: spec_path.file_name().map_or_else(|| "spec.yaml".into(), |n| n.to_string_lossy().into_owned()),
            spec_text: loaded.text.to_string(),
            spec_dir: fs_err::canonicalize(spec_path).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default().display().to_string(),
            pins: pinned.iter().map(|(i, p)| (format!("{}@{}", i.source, i.revision), p.commit.clone())).collect(),
            units: slurm::planned_units(&plan),
            final_nodes: slurm::final_node_ids(&plan),
            worker_commits_per_hour: (args.commits_per_hour / array_width).max(1),
            options: JobOptions {
                partition: args.partition.clone(),
                gres: args.gres.clone(),
                time: args.time.clone(),
                array_max: args.array_max.max(1),
                extra: args.sbatch_arg.clone(),
                log_dir,
                max_attempts: args.max_attempts.max(1),
            },
            worker,
        };
        let hash = submitted.hash();
        let job_name = SubmittedPlan::job_name(&hash);
        let print = |json: serde_json::Value| {
            if let SummaryFormat::Json = format {
                println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
            }
        };
        if pending.is_empty() && final_done {
            eprintln!("nothing to submit: every unit and the final step are in the ledger of {}", spec.output);
            print(serde_json::json!({"submitted": false, "plan": hash, "units": units.len(), "pending_units": 0, "complete": true, "slurm_commands": slurm.commands_run()}));
            return ExitCode::from(EXIT_OK);
        }
        // A plan submitted before may still have jobs queued or running (a detached or
        // interrupted submitter): submitting its units again would run them twice. Only a plan
        // with a recorded attempt costs this `squeue`.
        if Attempt::count_in(&state, &hash) > 0 {
            match slurm.jobs_named(&job_name) {
                Ok(rows) => {
                    let active = rows.iter().filter(|r| r.is_active()).count();
                    if active > 0 {
                        eprintln!("error: this sweep was submitted before and {active} of its jobs are still queued or running (job name {job_name}); nothing submitted");
                        eprintln!("  track:   hubsweep status {}", spec_path.display());
                        eprintln!("  cancel:  scancel --name {job_name}   (then submit again)");
                        return ExitCode::from(EXIT_CANNOT_RUN);
                    }
                }
                Err(error) => {
                    eprintln!("error: {}", error_chain(&error));
                    return ExitCode::from(EXIT_CANNOT_RUN);
                }
            }
        }
        // The plan goes to the Hub before any job exists: workers read it from there.
        let settings_for_manifest = RunSettings {
            output_client: hubs.output.clone(),
            sources: hubs.sources.clone(),
            spec_file: (submitted.spec_file.clone(), submitted.spec_text.clone()),
            failure: if submitted.worker.keep_going { FailurePolicy::KeepGoing } else { FailurePolicy::FailFast },
            upload_slots: submitted.worker.upload_slots,
            commits: CommitPolicy::default(),
            dry_run: false,
            perturb_capture_for_tests: false,
            evict_models: false,
        };
        let manifest = exec::manifest(&spec, &settings_for_manifest);
        let mut files = vec![(SubmittedPlan::path(&hash), Bytes::from(serde_json::to_vec_pretty(&submitted).unwrap_or_default()))];
        if state.manifest.as_ref() != Some(&manifest) {
            files.push((ledger::MANIFEST_PATH.to_owned(), Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap_or_default())));
        }
        if let Err(error) = slurm::commit_files(&hubs.output, &repo, "hubsweep: slurm plan", files).await {
            eprintln!("error: cannot write the plan to `{}`: {}", spec.output, error_chain(&error));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        if interrupts.pending() {
            eprintln!("interrupted before anything was submitted");
            return ExitCode::from(EXIT_INTERRUPTED);
        }
        // A Ctrl-C from here on waits for the two `sbatch` calls: the sweep is submitted whole
        // (or refused whole) before the question of cancelling it comes.
        let attempt_number = Attempt::count_in(&state, &hash) + 1;
        let submission = Submission { binary: &binary, repo: &spec.output.to_string(), hash: &hash, options: &submitted.options };
        let attempt = match slurm.submit(&submission, &pending, attempt_number, Vec::new()) {
            Ok(a) => a,
            Err(error) => {
                eprintln!("error: {}", error_chain(&error));
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let submit_seconds = started.elapsed().as_secs_f64();
        let record = Bytes::from(serde_json::to_vec_pretty(&attempt).unwrap_or_default());
        if let Err(error) = slurm::commit_files(&hubs.output, &repo, "hubsweep: slurm submission", vec![(Attempt::path(&hash, attempt.attempt), record)]).await {
            eprintln!("warning: the submission is not recorded in the repo: {}", error_chain(&error));
        }
        if let Some(server) = hubs.local {
            server.shutdown().await;
        }
        let array_job = attempt.array_job.as_deref().unwrap_or("-");
        eprintln!(
            "submitted {} unit(s) of {} as array job {array_job} (at most {} at once) and final job {} [job name {job_name}] in {submit_seconds:.1}s",
            pending.len(),
            units.len(),
            submitted.options.array_max,
            attempt.final_job
        );
        let sweep = Sweep { job_name: &job_name, array_job, final_job: &attempt.final_job, spec_path };
        if interrupts.pending() {
            return on_interrupt(&slurm, &sweep, args.cancel_on_interrupt, &mut interrupts).await;
        }
        let summary = |complete: Option<bool>, polls: u64, minutes: f64| {
            serde_json::json!({
                "submitted": true, "plan": hash, "job_name": job_name,
                "array_job": attempt.array_job, "final_job": attempt.final_job,
                "units": units.len(), "pending_units": pending.len(),
                "submit_seconds": submit_seconds, "slurm_commands": slurm.commands_run(),
                "polls": polls, "tracked_minutes": minutes, "complete": complete,
            })
        };
        if args.detach {
            println!("{}", if let SummaryFormat::Json = format { serde_json::to_string_pretty(&summary(None, 0, 0.0)).unwrap_or_default() } else { format!("{array_job} {}", attempt.final_job) });
            eprintln!("  track:   hubsweep status {}", spec_path.display());
            eprintln!("  cancel:  scancel --name {job_name}");
            return ExitCode::from(EXIT_OK);
        }
        let polls = match track(&slurm, &job_name, &mut interrupts).await {
            Tracked::Interrupted => return on_interrupt(&slurm, &sweep, args.cancel_on_interrupt, &mut interrupts).await,
            Tracked::Failed(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_NEGATIVE);
            }
            Tracked::Finished { polls } => polls,
        };
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        // The verdict is the ledger's, not Slurm's.
        let complete = match complete_in_ledger(&hubs.output, &repo, &plan).await {
            Ok(c) => c,
            Err(message) => {
                eprintln!("error: cannot read the ledger of `{}`: {message}", spec.output);
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        print(summary(Some(complete), polls, minutes));
        eprintln!(
            "{}; {} Slurm command(s) in {:.1} min",
            match (complete, submitted.worker.keep_going) {
                (true, _) => "complete",
                (false, false) => "incomplete: some units failed every attempt (see the job logs and `hubsweep status`)",
                (false, true) => "incomplete: some units failed every attempt; the final step recorded what does not need them (--keep-going; see the job logs and `hubsweep status`)",
            },
            slurm.commands_run(),
            minutes
        );
        ExitCode::from(if complete { EXIT_OK } else { EXIT_NEGATIVE })
    })
}

async fn complete_in_ledger(client: &HubClient, repo: &Repo, plan: &Plan) -> Result<bool, String> {
    let state = LedgerState::read(client, repo, "main")
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(slurm::is_complete(plan, &state))
}

/// What the submitter tells about its jobs when interrupted.
struct Sweep<'a> {
    job_name: &'a str,
    array_job: &'a str,
    final_job: &'a str,
    spec_path: &'a Path,
}

enum Tracked {
    Finished { polls: u64 },
    Interrupted,
    Failed(String),
}

/// Follows a sweep's jobs with one `squeue` per poll on [`PollSchedule`], printing the jobs per
/// state when they change, until no job of the sweep is left or Ctrl-C.
async fn track(slurm: &Slurm, job_name: &str, interrupts: &mut Interrupts) -> Tracked {
    let mut schedule = PollSchedule::new();
    let mut polls = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(schedule.interval()) => {}
            () = interrupts.next() => return Tracked::Interrupted,
        }
        polls += 1;
        let rows = match slurm.jobs_named(job_name) {
            Ok(rows) => rows,
            Err(e) => {
                if !schedule.failed() {
                    return Tracked::Failed(error_chain(&e));
                }
                eprintln!("warning: {} (retrying)", error_chain(&e));
                continue;
            }
        };
        if let Some(counts) = schedule.observe(&rows) {
            let line: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            eprintln!("slurm    {}", line.join(", "));
        }
        if !rows.iter().any(|r| r.is_active()) {
            return Tracked::Finished { polls };
        }
        if interrupts.pending() {
            return Tracked::Interrupted;
        }
    }
}

/// Ctrl-C after the jobs were submitted: cancel them (`--cancel-on-interrupt`, or `y` to the
/// question on a terminal) or leave them running (the answer `n`, anything else, a second
/// Ctrl-C, or no terminal to ask on), saying how to follow or cancel them later. Exit 130.
async fn on_interrupt(
    slurm: &Slurm,
    sweep: &Sweep<'_>,
    cancel_on_interrupt: bool,
    interrupts: &mut Interrupts,
) -> ExitCode {
    let job_name = sweep.job_name;
    let cancel = if cancel_on_interrupt {
        true
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!(
            "\ninterrupted: cancel this sweep's jobs (array job {}, final job {} and any resubmission, all named {job_name})? [y/N] ",
            sweep.array_job, sweep.final_job
        );
        ask_yes(interrupts).await
    } else {
        eprintln!(
            "\ninterrupted (no terminal to ask on; --cancel-on-interrupt cancels without asking)"
        );
        false
    };
    if cancel {
        match slurm.cancel_named(job_name) {
            Ok(()) => eprintln!(
                "cancelled the sweep's jobs (array job {}, final job {}, every job named {job_name}); the ledger keeps what they recorded: `hubsweep run` resumes from there",
                sweep.array_job, sweep.final_job
            ),
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                eprintln!("  cancel them with: scancel --name {job_name}");
            }
        }
    } else {
        eprintln!("the jobs go on");
        eprintln!("  track:   hubsweep status {}", sweep.spec_path.display());
        eprintln!("  cancel:  scancel --name {job_name}");
    }
    ExitCode::from(EXIT_INTERRUPTED)
}

/// Reads one answer line from the terminal: true for `y` or `yes`. A second Ctrl-C or the end
/// of input is a no.
async fn ask_yes(interrupts: &mut Interrupts) -> bool {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    // A plain thread, not `spawn_blocking`: a read still blocked after a second Ctrl-C must not
    // hold up the runtime's shutdown.
    std::thread::spawn(move || {
        let mut line = String::new();
        let answer = std::io::stdin().read_line(&mut line).map(|_| line);
        let _ = sender.send(answer.unwrap_or_default());
    });
    tokio::select! {
        answer = receiver => {
            let answer = answer.unwrap_or_default();
            let answer = answer.trim();
            answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes")
        }
        () = interrupts.next() => {
            eprintln!();
            false
        }
    }
}

/// Ctrl-C presses from the moment this is created: from then on SIGINT no longer kills the
/// process, so a press that comes while `sbatch` runs is seen after it.
struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    presses: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Interrupts {
    /// Starts listening (inside the runtime).
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            // Registered now, not at the first poll as `tokio::signal::ctrl_c` would.
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            Ok(Self { signal })
        }
        #[cfg(not(unix))]
        {
            let (sender, presses) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() && sender.send(()).is_ok() {}
            });
            Ok(Self { presses })
        }
    }

    /// The next press (never, if the signal stream ends).
    async fn next(&mut self) {
        #[cfg(unix)]
        let received = self.signal.recv().await;
        #[cfg(not(unix))]
        let received = self.presses.recv().await;
        if received.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a press came and was not taken yet (takes it).
    fn pending(&mut self) -> bool {
        use futures::FutureExt as _;
        #[cfg(unix)]
        let received = self.signal.recv().now_or_never();
        #[cfg(not(unix))]
        let received = self.presses.recv().now_or_never();
        matches!(received, Some(Some(())))
    }
}
