//! `hubsweep worker REPO --plan HASH (--unit K | --final)`: what the jobs of a Slurm sweep run.
//! A unit's task runs its unit through the same pipeline as a local run; the final job checks
//! the ledger and resubmits the units not done, or runs the final step. See `hubsweep::slurm`
//! for the protocol and docs/slurm.md for the user's view.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use hubsweep::exec::{self, FailurePolicy, RunEvent, RunEvents, RunSettings, UnitSelection};
use hubsweep::hub::{HubClient, Repo, Token};
use hubsweep::ledger::LedgerState;
use hubsweep::plan::Plan;
use hubsweep::sink::CommitPolicy;
use hubsweep::slurm::{self, Attempt, Slurm, Submission, SubmittedPlan};
use hubsweep::spec::SweepSpec;
use tokio_util::sync::CancellationToken;

use super::run::{device_of, open_hubs, progress_printer, report_run_error, runtime};
use super::{EXIT_CANNOT_RUN, EXIT_NEGATIVE, EXIT_OK, Env, error_chain};

/// Arguments of `worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The output repo, as in a spec (`hf://datasets/NS/NAME`).
    #[arg(value_name = "REPO")]
    repo: String,
    /// The submitted plan's hash (`ledger/slurm/HASH/plan.json` in the repo).
    #[arg(long, value_name = "HASH")]
    plan: String,
    /// Run this work unit.
    #[arg(
        long,
        value_name = "K",
        conflicts_with = "final_step",
        required_unless_present = "final_step"
    )]
    unit: Option<usize>,
    /// Run the final step: check the units, resubmit missing ones, else overlaps and the index.
    #[arg(long = "final")]
    final_step: bool,
    /// The submission attempt this final step closes.
    #[arg(long, default_value_t = 1, value_name = "N")]
    attempt: u32,
    /// The array job of that attempt (for the reasons of failed units).
    #[arg(long, value_name = "JOB")]
    array_job: Option<String>,
}

/// The output repo of a `worker` command line: only `hf://` (a job shares nothing but the Hub).
fn parse_repo(text: &str) -> Option<Repo> {
    match super::verify::parse_repo(text) {
        Ok(parsed) if !parsed.local && parsed.revision == "main" && !text.contains('@') => {
            Some(parsed.repo)
        }
        _ => None,
    }
}

fn hf_client(env: &Env) -> Result<HubClient, String> {
    HubClient::builder(&env.hf_endpoint)
        .map(|b| {
            b.token(env.hf_token.clone().map(Token::new))
                .offline(env.hf_hub_offline)
        })
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot use `HF_ENDPOINT` `{}`: {e}", env.hf_endpoint))
}

fn quiet() -> RunEvents {
    Arc::new(|_: &RunEvent| {})
}

/// `hubsweep worker REPO --plan HASH (--unit K | --final)`: one job of a Slurm sweep.
pub fn worker(args: WorkerArgs, env: &Env) -> ExitCode {
    let Some(repo) = parse_repo(&args.repo) else {
        eprintln!(
            "error: `{}` is not an output repo (write `hf://datasets/NS/NAME`)",
            args.repo
        );
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let client = match hf_client(env) {
            Ok(c) => c,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let path = SubmittedPlan::path(&args.plan);
        let submitted: SubmittedPlan = match client.download_bytes(&repo, "main", &path).await {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: `{path}` in `{}` is not a plan: {e}", args.repo);
                    return ExitCode::from(EXIT_CANNOT_RUN);
                }
            },
            Err(e) => {
                eprintln!(
                    "error: cannot read `{path}` from `{}`: {}",
                    args.repo,
                    error_chain(&e)
                );
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let loaded = hubsweep::spec::load(&submitted.spec_file, submitted.spec_text.as_bytes());
        let Some(spec) = loaded.spec.clone() else {
            eprintln!("error: the spec in `{path}` does not validate with this hubsweep version");
            return ExitCode::from(EXIT_CANNOT_RUN);
        };
        let spec_path = Path::new(&submitted.spec_dir).join(&submitted.spec_file);
        let hubs = match open_hubs(&spec, &spec_path, env).await {
            Ok(h) => h,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let outcome = work(
            &args,
            &submitted,
            &spec,
            &loaded,
            &hubs.output,
            &hubs.sources,
            &repo,
            env,
        )
        .await;
        if let Some(server) = hubs.local {
            server.shutdown().await;
        }
        outcome
    })
}

#[allow(clippy::too_many_arguments)]
async fn work(
    args: &WorkerArgs,
    submitted: &SubmittedPlan,
    spec: &SweepSpec,
    loaded: &hubsweep::spec::Loaded,
    output: &HubClient,
    sources: &exec::Sources,
    repo: &Repo,
    env: &Env,
) -> ExitCode {
    let device_class = env.device_class(spec.compute.device);
    let pinned = match exec::hold_data_to_ledger(spec, sources, output).await {
        Ok(sources) => exec::pin_and_plan(spec, &sources, device_class, &quiet()).await,
        Err(error) => Err(error),
    };
    let plan = match pinned {
        Ok((plan, _)) => plan,
        Err(error) => {
            report_run_error(&error, loaded, env);
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    // Same pins, same node ids, or the worker would record other nodes than were planned.
    let units = slurm::planned_units(&plan);
    if units != submitted.units || slurm::final_node_ids(&plan) != submitted.final_nodes {
        eprintln!(
            "error: pinning here gives other node ids than the submitter's plan {} (a model revision moved?); resubmit the sweep",
            args.plan
        );
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let settings = RunSettings {
        output_client: output.clone(),
        sources: sources.clone(),
        spec_file: (submitted.spec_file.clone(), submitted.spec_text.clone()),
        failure: if submitted.worker.keep_going {
            FailurePolicy::KeepGoing
        } else {
            FailurePolicy::FailFast
        },
        upload_slots: submitted.worker.upload_slots,
        commits: CommitPolicy {
            commits_per_hour: submitted.worker_commits_per_hour,
            // A unit's files go in as few commits as possible: the repo's rate is shared.
            flush_after: Duration::from_secs(10),
            ..CommitPolicy::default()
        },
        dry_run: false,
        perturb_capture_for_tests: false,
        evict_models: false,
    };
    let selection = match args.unit {
        Some(k) if k < units.len() => UnitSelection::unit(k),
        Some(k) => {
            eprintln!(
                "error: unit {k} does not exist; the plan has {} unit(s)",
                units.len()
            );
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        None => {
            let state = match LedgerState::read(output, repo, "main").await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: cannot read the ledger: {}", error_chain(&e));
                    return ExitCode::from(EXIT_CANNOT_RUN);
                }
            };
            let missing = slurm::missing_units(&plan, &state);
            if !missing.is_empty() {
                match resubmit(args, submitted, &plan, &state, &missing, output, repo).await {
                    Resubmitted::Done(code) => return code,
                    // The last attempt is spent: with --keep-going, the final step records
                    // what does not need the missing units (its summary names the rest).
                    Resubmitted::OutOfAttempts if submitted.worker.keep_going => eprintln!(
                        "running the final step over the units that are done (--keep-going)"
                    ),
                    Resubmitted::OutOfAttempts => return ExitCode::from(EXIT_NEGATIVE),
                }
            }
            UnitSelection::final_only()
        }
    };
    let outcome = exec::run_units(
        spec,
        &settings,
        device_of(spec),
        progress_printer(),
        CancellationToken::new(),
        &selection,
    )
    .await;
    match outcome {
        Err(error) => {
            report_run_error(&error, loaded, env);
            ExitCode::from(EXIT_CANNOT_RUN)
        }
        Ok(report) => {
            eprintln!(
                "worker: executed {} node(s), {} already done, {} commit(s)",
                report.executed, report.skipped, report.sink.commits
            );
            for (label, error) in &report.failed {
                eprintln!("  failed: {label}: {error}");
            }
            super::run::print_blocked(&report.blocked);
            ExitCode::from(if report.failed.is_empty() && report.blocked.is_empty() {
                EXIT_OK
            } else {
                EXIT_NEGATIVE
            })
        }
    }
}

/// What [`resubmit`] did.
enum Resubmitted {
    /// Submitted again (exit 0), or could not (the exit status says why).
    Done(ExitCode),
    /// The units have had every attempt: nothing submitted.
    OutOfAttempts,
}

/// The final step found units not done: submit them again (a new array and final job), with
/// the reasons recorded, unless they have had every attempt.
async fn resubmit(
    args: &WorkerArgs,
    submitted: &SubmittedPlan,
    plan: &Plan,
    state: &LedgerState,
    missing: &[usize],
    output: &HubClient,
    repo: &Repo,
) -> Resubmitted {
    let slurm = Slurm::new();
    // What Slurm says about the last attempt's tasks (while it still remembers them).
    let last = Attempt::read(output, repo, &args.plan, args.attempt)
        .await
        .ok();
    let rows = match (&args.array_job, &last) {
        (Some(_), Some(_)) => slurm
            .jobs_named(&SubmittedPlan::job_name(&args.plan))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let reasons = slurm::reasons(plan, state, missing, last.as_ref(), &rows);
    let units = exec::unit::units(plan);
    for (k, reason) in &reasons {
        eprintln!("unit {k} ({}): {reason}", units[*k].label);
    }
    if args.attempt >= submitted.options.max_attempts {
        eprintln!(
            "error: {} unit(s) still not done after {} attempt(s); giving up on them",
            missing.len(),
            args.attempt
        );
        return Resubmitted::OutOfAttempts;
    }
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find the hubsweep binary's path: {e}");
            return Resubmitted::Done(ExitCode::from(EXIT_CANNOT_RUN));
        }
    };
    let output_name = args.repo.clone();
    let submission = Submission {
        binary: &binary,
        repo: &output_name,
        hash: &args.plan,
        options: &submitted.options,
    };
    match slurm.submit(&submission, missing, args.attempt + 1, reasons) {
        Ok(attempt) => {
            let bytes = Bytes::from(serde_json::to_vec_pretty(&attempt).unwrap_or_default());
            if let Err(error) = slurm::commit_files(
                output,
                repo,
                "hubsweep: slurm resubmission",
                vec![(Attempt::path(&args.plan, attempt.attempt), bytes)],
            )
            .await
            {
                eprintln!(
                    "warning: the resubmission is not recorded in the repo: {}",
                    error_chain(&error)
                );
            }
            eprintln!(
                "resubmitted {} unit(s): array job {}, final job {}",
                missing.len(),
                attempt.array_job.as_deref().unwrap_or("-"),
                attempt.final_job
            );
            Resubmitted::Done(ExitCode::from(EXIT_OK))
        }
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            Resubmitted::Done(ExitCode::from(EXIT_CANNOT_RUN))
        }
    }
}
