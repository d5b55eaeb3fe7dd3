//! `hubsweep run --executor slurm`: the submitter's front end. The session pins the sweep
//! once, `hubsweep::slurm::prepare` commits the plan, `Ready::submit` submits the jobs; this
//! file follows them (or returns at once with `--detach`), renders what happened, and on
//! Ctrl-C offers to cancel what it submitted. See `hubsweep::slurm` for the protocol and
//! docs/slurm.md for the user's view.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use hubsweep::exec::{Embedded, Session};
use hubsweep::slurm::{
    self, JobOptions, PollSchedule, Prepared, Slurm, SubmitError, SubmitSettings, WorkerSettings,
};
use hubsweep::spec::HubKind;

use super::shared::{
    Failure, RunArgs, SummaryFormat, error_chain, load, open_session, progress_printer,
    report_run_error, runtime, spec_dir, spec_file_name,
};
use super::{EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_NEGATIVE, EXIT_OK, Env};

/// `hubsweep run SPEC --executor slurm`.
pub fn submit(args: &RunArgs, env: &Env) -> ExitCode {
    if args.evict_models {
        eprintln!(
            "error: `--evict-models` applies to local runs: on a cluster the HF cache is often shared between nodes, and a worker could delete weights another is about to read; workers keep what they download (clear it afterwards with `hf cache` or `huggingface-cli delete-cache`)"
        );
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let spec_path = args.spec.as_path();
    let Some(loaded) = load(spec_path, env) else {
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
    let settings = match submit_settings(args, env) {
        Ok(s) => s,
        Err(failure) => {
            eprintln!("error: {}", error_chain(&failure));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let settings = SubmitSettings {
        spec_text: loaded.text.to_string(),
        ..settings
    };
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
        let session = match open_session(&loaded, &spec_dir(spec_path), env, Embedded::IfUsed).await
        {
            Ok(s) => s,
            Err(code) => return code,
        };
        let code = submit_and_follow(
            &session,
            &slurm,
            &settings,
            args,
            &mut interrupts,
            started,
            &loaded,
            env,
        )
        .await;
        session.close().await;
        code
    })
}

/// The submitter's settings from the flags (the spec text is filled in by the caller).
fn submit_settings(args: &RunArgs, env: &Env) -> Result<SubmitSettings, Failure> {
    let binary = std::env::current_exe()
        .map_err(|e| Failure::because("cannot find the hubsweep binary's path", e))?;
    let slurm_args = &args.slurm;
    let log_dir = slurm_args
        .log_dir
        .clone()
        .unwrap_or_else(|| env.hubsweep_home().join("slurm-logs"));
    fs_err::create_dir_all(&log_dir).map_err(Failure::of)?;
    let log_dir = fs_err::canonicalize(&log_dir).unwrap_or(log_dir);
    Ok(SubmitSettings {
        binary,
        spec_file: spec_file_name(&args.spec),
        spec_text: String::new(),
        spec_dir: fs_err::canonicalize(&args.spec)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default()
            .display()
            .to_string(),
        options: JobOptions {
            partition: slurm_args.partition.clone(),
            gres: slurm_args.gres.clone(),
            time: slurm_args.time.clone(),
            array_max: slurm_args.array_max.max(1),
            extra: slurm_args.sbatch_arg.clone(),
            log_dir,
            max_attempts: slurm_args.max_attempts.max(1),
        },
        worker: WorkerSettings {
            keep_going: args.keep_going,
            upload_slots: args.upload_slots,
        },
        commits_per_hour: slurm_args.commits_per_hour,
    })
}

/// Pins, prepares, submits, then follows the jobs and renders the verdict (the ledger's).
///
/// Long because it renders every outcome of the submitter in the order a user meets them
/// (nothing to do, still running, refused, submitted, detached, interrupted, finished); the
/// work itself is `hubsweep::slurm::prepare` and `Ready::submit`.
#[allow(clippy::too_many_arguments)]
async fn submit_and_follow(
    session: &Session,
    slurm: &Slurm,
    settings: &SubmitSettings,
    args: &RunArgs,
    interrupts: &mut Interrupts,
    started: Instant,
    loaded: &hubsweep::spec::Loaded,
    env: &Env,
) -> ExitCode {
    let spec_path = args.spec.as_path();
    let format = args.format;
    let events = progress_printer();
    let preparing = async {
        let pinned = session
            .pin(&events)
            .await
            .map_err(|source| SubmitError::Run { source })?;
        let prepared = slurm::prepare(session, &pinned, slurm, settings, &events).await?;
        Ok::<_, SubmitError>((pinned, prepared))
    };
    // Until the jobs are submitted, Ctrl-C simply stops: nothing exists to cancel.
    let prepared = tokio::select! {
        prepared = preparing => prepared,
        () = interrupts.next() => {
            eprintln!("interrupted before anything was submitted");
            return ExitCode::from(EXIT_INTERRUPTED);
        }
    };
    let (pinned, ready) = match prepared {
        Ok((pinned, Prepared::Ready(ready))) => (pinned, ready),
        Ok((_, Prepared::Nothing { hash, units })) => {
            eprintln!(
                "nothing to submit: every unit and the final step are in the ledger of {}",
                session.spec().output
            );
            if let SummaryFormat::Json = format {
                let json = serde_json::json!({"submitted": false, "plan": hash, "units": units, "pending_units": 0, "complete": true, "slurm_commands": slurm.commands_run()});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
            }
            return ExitCode::from(EXIT_OK);
        }
        Ok((_, Prepared::StillRunning { job_name, active })) => {
            eprintln!(
                "error: this sweep was submitted before and {active} of its jobs are still queued or running (job name {job_name}); nothing submitted"
            );
            eprintln!("  track:   hubsweep status {}", spec_path.display());
            eprintln!("  cancel:  scancel --name {job_name}   (then submit again)");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        Err(SubmitError::Run { source }) => {
            report_run_error(&source, loaded, env);
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    if interrupts.pending() {
        eprintln!("interrupted before anything was submitted");
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    // A Ctrl-C from here on waits for the two `sbatch` calls: the sweep is submitted whole
    // (or refused whole) before the question of cancelling it comes.
    let submitted = match ready.submit(session, slurm).await {
        Ok(s) => s,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let submit_seconds = started.elapsed().as_secs_f64();
    if let Some(error) = &submitted.unrecorded {
        eprintln!(
            "warning: the submission is not recorded in the repo: {}",
            error_chain(error)
        );
    }
    let attempt = &submitted.attempt;
    let (hash, job_name) = (&ready.hash, &ready.job_name);
    let array_job = attempt.array_job.as_deref().unwrap_or("-");
    eprintln!(
        "submitted {} unit(s) of {} as array job {array_job} (at most {} at once) and final job {} [job name {job_name}] in {submit_seconds:.1}s",
        ready.pending.len(),
        ready.units,
        ready.plan.options.array_max,
        attempt.final_job
    );
    let sweep = Sweep {
        job_name,
        array_job,
        final_job: &attempt.final_job,
        spec_path,
    };
    let cancel_on_interrupt = args.slurm.cancel_on_interrupt;
    if interrupts.pending() {
        return on_interrupt(slurm, &sweep, cancel_on_interrupt, interrupts).await;
    }
    let summary = |complete: Option<bool>, polls: u64, minutes: f64| {
        serde_json::json!({
            "submitted": true, "plan": hash, "job_name": job_name,
            "array_job": attempt.array_job, "final_job": attempt.final_job,
            "units": ready.units, "pending_units": ready.pending.len(),
            "submit_seconds": submit_seconds, "slurm_commands": slurm.commands_run(),
            "polls": polls, "tracked_minutes": minutes, "complete": complete,
        })
    };
    if args.slurm.detach {
        println!(
            "{}",
            if let SummaryFormat::Json = format {
                serde_json::to_string_pretty(&summary(None, 0, 0.0)).unwrap_or_default()
            } else {
                format!("{array_job} {}", attempt.final_job)
            }
        );
        eprintln!("  track:   hubsweep status {}", spec_path.display());
        eprintln!("  cancel:  scancel --name {job_name}");
        return ExitCode::from(EXIT_OK);
    }
    let polls = match track(slurm, job_name, interrupts).await {
        Tracked::Interrupted => {
            return on_interrupt(slurm, &sweep, cancel_on_interrupt, interrupts).await;
        }
        Tracked::Failed(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_NEGATIVE);
        }
        Tracked::Finished { polls } => polls,
    };
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    // The verdict is the ledger's, not Slurm's.
    let complete = match session.read_ledger().await {
        Ok(state) => slurm::is_complete(&pinned.plan, &state),
        Err(error) => {
            eprintln!(
                "error: cannot read the ledger of `{}`: {}",
                session.spec().output,
                error_chain(&error)
            );
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    if let SummaryFormat::Json = format {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary(Some(complete), polls, minutes))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "{}; {} Slurm command(s) in {:.1} min",
        match (complete, ready.plan.worker.keep_going) {
            (true, _) => "complete",
            (false, false) =>
                "incomplete: some units failed every attempt (see the job logs and `hubsweep status`)",
            (false, true) =>
                "incomplete: some units failed every attempt; the final step recorded what does not need them (--keep-going; see the job logs and `hubsweep status`)",
        },
        slurm.commands_run(),
        minutes
    );
    ExitCode::from(if complete { EXIT_OK } else { EXIT_NEGATIVE })
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
