//! `hubsweep run --executor slurm` (the submitter) and `hubsweep worker` (what its jobs run).
//! See `hubsweep::slurm` for the protocol; docs/slurm.md for the user's view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hubsweep::exec::{self, FailurePolicy, RunEvent, RunEvents, RunSettings, UnitSelection};
use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, Repo, RepoId, Token};
use hubsweep::ledger::{self, LedgerState};
use hubsweep::plan::Plan;
use hubsweep::sink::CommitPolicy;
use hubsweep::slurm::{Attempt, JobOptions, PlannedUnit, Slurm, Submission, SubmittedPlan};
use hubsweep::spec::{HubKind, SweepSpec};
use tokio_util::sync::CancellationToken;

use super::run::{
    SummaryFormat, device_of, open_hubs, progress_printer, report_run_error, runtime,
};
use super::{EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_NEGATIVE, EXIT_OK, Env};

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

fn parse_repo(text: &str) -> Option<Repo> {
    let rest = text.strip_prefix("hf://")?;
    let (kind, id) = rest.split_once('/')?;
    let (namespace, name) = id.split_once('/')?;
    let id = RepoId::new(namespace, name).ok()?;
    match kind {
        "datasets" => Some(Repo::dataset(id)),
        "models" => Some(Repo::model(id)),
        _ => None,
    }
}

fn hf_client(env: &Env) -> Result<HubClient, String> {
    HubClient::builder(&env.hf_endpoint)
        .map(|b| b.token(env.hf_token.clone().map(Token::new)))
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot use `HF_ENDPOINT` `{}`: {e}", env.hf_endpoint))
}

fn quiet() -> RunEvents {
    Arc::new(|_: &RunEvent| {})
}

/// Units and final-step node ids of a pinned plan, as the submitter records them.
fn planned_units(plan: &Plan) -> (Vec<PlannedUnit>, Vec<String>) {
    let units = exec::unit::units(plan)
        .into_iter()
        .map(|u| PlannedUnit {
            index: u.index,
            nodes: u.node_ids(plan),
            label: u.label,
        })
        .collect();
    let final_nodes = exec::unit::final_nodes(plan)
        .into_iter()
        .map(|i| plan.nodes[i].id.map(|id| id.to_hex()).unwrap_or_default())
        .collect();
    (units, final_nodes)
}

async fn commit_regular(
    client: &HubClient,
    repo: &Repo,
    summary: &str,
    files: Vec<(String, Bytes)>,
) -> Result<(), String> {
    let operations: Vec<CommitOperation> = files
        .into_iter()
        .map(|(path, content)| CommitOperation::AddRegular { path, content })
        .collect();
    // No parent: these files never conflict with what workers commit.
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
        .map_err(|e| super::error_chain(&e))
}

fn attempts_in(state: &LedgerState, hash: &str) -> u32 {
    let prefix = format!("{}/{hash}/attempt-", hubsweep::slurm::SLURM_DIR);
    state
        .files
        .keys()
        .filter(|p| p.starts_with(&prefix))
        .count() as u32
}

/// `hubsweep run SPEC --executor slurm`.
pub fn submit(spec_path: &Path, args: &SlurmArgs, format: SummaryFormat, env: &Env) -> ExitCode {
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
        eprintln!("error: {}", super::error_chain(&error));
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
        let hubs = match open_hubs(&spec, spec_path, env).await {
            Ok(h) => h,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let device_class = env.device_class(spec.compute.device);
        let planned = async {
            let (plan, pinned) = exec::pin_and_plan(&spec, &hubs.sources, device_class, &progress_printer()).await?;
            let repo = exec::output_repo(&spec)?;
            hubs.output.create_repo(&repo, false, true).await.map_err(|source| exec::RunError::Hub { repo: spec.output.to_string(), source })?;
            let state = LedgerState::read(&hubs.output, &repo, "main")
                .await
                .map_err(|source| exec::RunError::Ledger { repo: spec.output.to_string(), source })?;
            Ok::<_, exec::RunError>((plan, pinned, repo, state))
        }
        .await;
        let (plan, pinned, repo, state) = match planned {
            Ok(x) => x,
            Err(error) => {
                report_run_error(&error, &loaded, env);
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let units = exec::unit::units(&plan);
        let pending: Vec<usize> = units.iter().filter(|u| !u.is_done(&plan, &state)).map(|u| u.index).collect();
        let final_done = exec::unit::final_nodes(&plan).iter().all(|&i| state.is_done(&plan.nodes[i].id.map(|id| id.to_hex()).unwrap_or_default()));
        let array_width = args.array_max.max(1).min(pending.len().max(1));
        let (planned_units, final_nodes) = planned_units(&plan);
        let submitted = SubmittedPlan {
            spec_file: spec_path.file_name().map_or_else(|| "spec.yaml".into(), |n| n.to_string_lossy().into_owned()),
            spec_text: loaded.text.to_string(),
            spec_dir: fs_err::canonicalize(spec_path).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default().display().to_string(),
            pins: pinned.iter().map(|(i, p)| (format!("{}@{}", i.source, i.revision), p.commit.clone())).collect(),
            units: planned_units,
            final_nodes,
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
        // The plan goes to the Hub before any job exists: workers read it from there.
        let settings_for_manifest = RunSettings {
            output_client: hubs.output.clone(),
            sources: hubs.sources.clone(),
            spec_file: (submitted.spec_file.clone(), submitted.spec_text.clone()),
            failure: FailurePolicy::FailFast,
            upload_slots: 1,
            commits: CommitPolicy::default(),
            dry_run: false,
            perturb_capture_for_tests: false,
        };
        let manifest = exec::manifest(&spec, &settings_for_manifest);
        let mut files = vec![(SubmittedPlan::path(&hash), Bytes::from(serde_json::to_vec_pretty(&submitted).unwrap_or_default()))];
        if state.manifest.as_ref() != Some(&manifest) {
            files.push((ledger::MANIFEST_PATH.to_owned(), Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap_or_default())));
        }
        if let Err(message) = commit_regular(&hubs.output, &repo, "hubsweep: slurm plan", files).await {
            eprintln!("error: cannot write the plan to `{}`: {message}", spec.output);
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        let attempt_number = attempts_in(&state, &hash) + 1;
        let submission = Submission { binary: &binary, repo: &spec.output.to_string(), hash: &hash, options: &submitted.options };
        let attempt = match slurm.submit(&submission, &pending, attempt_number, Vec::new()) {
            Ok(a) => a,
            Err(error) => {
                eprintln!("error: {}", super::error_chain(&error));
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let submit_seconds = started.elapsed().as_secs_f64();
        let _ = commit_regular(&hubs.output, &repo, "hubsweep: slurm submission", vec![(Attempt::path(&hash, attempt.attempt), Bytes::from(serde_json::to_vec_pretty(&attempt).unwrap_or_default()))]).await;
        if let Some(server) = hubs.local {
            server.shutdown().await;
        }
        eprintln!(
            "submitted {} unit(s) of {} as array job {} (at most {} at once) and final job {} [job name {job_name}] in {submit_seconds:.1}s",
            pending.len(),
            units.len(),
            attempt.array_job.as_deref().unwrap_or("-"),
            submitted.options.array_max,
            attempt.final_job
        );
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
            println!("{}", if let SummaryFormat::Json = format { serde_json::to_string_pretty(&summary(None, 0, 0.0)).unwrap_or_default() } else { format!("{} {}", attempt.array_job.as_deref().unwrap_or("-"), attempt.final_job) });
            eprintln!("  track:   hubsweep status {}", spec_path.display());
            eprintln!("  cancel:  scancel --name {job_name}");
            return ExitCode::from(EXIT_OK);
        }
        let tracked = track(&slurm, &job_name).await;
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let polls = match tracked {
            Tracked::Interrupted => return ExitCode::from(EXIT_INTERRUPTED),
            Tracked::Failed(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_NEGATIVE);
            }
            Tracked::Finished { polls } => polls,
        };
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
            if complete { "complete" } else { "incomplete: some units failed every attempt (see the job logs and `hubsweep status`)" },
            slurm.commands_run(),
            minutes
        );
        ExitCode::from(if complete { EXIT_OK } else { EXIT_NEGATIVE })
    })
}

async fn complete_in_ledger(client: &HubClient, repo: &Repo, plan: &Plan) -> Result<bool, String> {
    let state = LedgerState::read(client, repo, "main")
        .await
        .map_err(|e| super::error_chain(&e))?;
    Ok(plan
        .nodes
        .iter()
        .all(|n| state.is_done(&n.id.map(|id| id.to_hex()).unwrap_or_default())))
}

enum Tracked {
    Finished { polls: u64 },
    Interrupted,
    Failed(String),
}

/// Follows a sweep's jobs with one `squeue` per poll: every 6 s while things change, backing
/// off to a minute while nothing does (≤ 12 commands a minute). Ctrl-C offers to cancel.
async fn track(slurm: &Slurm, job_name: &str) -> Tracked {
    // 6 s at the fastest: 10 polls a minute, leaving room for the submission's own commands.
    let (min, max) = (Duration::from_secs(6), Duration::from_secs(60));
    let mut interval = min;
    let mut last = BTreeMap::new();
    let mut polls = 0;
    let mut transient = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted: cancel the submitted jobs ({job_name})? [y/N]");
                let answer = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line).unwrap_or_default()
                }).await.unwrap_or_default();
                if answer.trim().eq_ignore_ascii_case("y") || answer.trim().eq_ignore_ascii_case("yes") {
                    match slurm.cancel_named(job_name) {
                        Ok(()) => eprintln!("cancelled every job named {job_name}"),
                        Err(e) => eprintln!("error: {}", super::error_chain(&e)),
                    }
                } else {
                    eprintln!("the jobs go on; follow them with `squeue -n {job_name}`");
                }
                return Tracked::Interrupted;
            }
        }
        polls += 1;
        let rows = match slurm.jobs_named(job_name) {
            Ok(rows) => {
                transient = 0;
                rows
            }
            // A busy controller times out now and then: wait longer, give up after a while.
            Err(e) => {
                transient += 1;
                if transient >= 5 {
                    return Tracked::Failed(super::error_chain(&e));
                }
                eprintln!("warning: {} (retrying)", super::error_chain(&e));
                interval = (interval * 2).min(max);
                continue;
            }
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for row in &rows {
            *counts.entry(row.state.to_lowercase()).or_default() += 1;
        }
        if counts != last {
            let line: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            eprintln!("slurm    {}", line.join(", "));
            last = counts;
            interval = min;
        } else {
            interval = (interval.mul_f64(1.5)).min(max);
        }
        if !rows.iter().any(|r| r.is_active()) {
            return Tracked::Finished { polls };
        }
    }
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
                    super::error_chain(&e)
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
    let plan = match exec::pin_and_plan(spec, sources, device_class, &quiet()).await {
        Ok((plan, _)) => plan,
        Err(error) => {
            report_run_error(&error, loaded, env);
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    // Same pins, same node ids, or the worker would record other nodes than were planned.
    let (units, final_nodes) = planned_units(&plan);
    if units != submitted.units || final_nodes != submitted.final_nodes {
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
        failure: FailurePolicy::FailFast,
        upload_slots: 4,
        commits: CommitPolicy {
            commits_per_hour: submitted.worker_commits_per_hour,
            // A unit's files go in as few commits as possible: the repo's rate is shared.
            flush_after: Duration::from_secs(10),
            ..CommitPolicy::default()
        },
        dry_run: false,
        perturb_capture_for_tests: false,
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
                    eprintln!("error: cannot read the ledger: {}", super::error_chain(&e));
                    return ExitCode::from(EXIT_CANNOT_RUN);
                }
            };
            let all = exec::unit::units(&plan);
            let missing: Vec<usize> = all
                .iter()
                .filter(|u| !u.is_done(&plan, &state))
                .map(|u| u.index)
                .collect();
            if !missing.is_empty() {
                return resubmit(args, submitted, &plan, &state, &missing, output, repo).await;
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
            ExitCode::from(if report.failed.is_empty() {
                EXIT_OK
            } else {
                EXIT_NEGATIVE
            })
        }
    }
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
) -> ExitCode {
    let slurm = Slurm::new();
    let name = SubmittedPlan::job_name(&args.plan);
    // What Slurm says about the last attempt's tasks (while it still remembers them).
    let mut slurm_states: BTreeMap<usize, String> = BTreeMap::new();
    let last: Option<Attempt> = match output
        .download_bytes(repo, "main", &Attempt::path(&args.plan, args.attempt))
        .await
    {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(_) => None,
    };
    if let (Some(array), Some(last)) = (&args.array_job, &last)
        && let Ok(rows) = slurm.jobs_named(&name)
    {
        for row in rows.iter().filter(|r| &r.job == array) {
            if let Some(unit) = row.task.and_then(|t| last.units.get(t)) {
                slurm_states.insert(
                    *unit,
                    format!(
                        "array task {array}_{} ended {}",
                        row.task.unwrap_or_default(),
                        row.state
                    ),
                );
            }
        }
    }
    let units = exec::unit::units(plan);
    let reasons: Vec<(usize, String)> = missing
        .iter()
        .map(|&k| {
            let failure = units[k]
                .node_ids(plan)
                .iter()
                .find_map(|id| state.records.get(id).and_then(|r| r.error.clone()));
            let reason = match (slurm_states.get(&k), failure) {
                (Some(s), Some(f)) => format!("{s}: {f}"),
                (Some(s), None) => format!("{s} before the unit was complete"),
                (None, Some(f)) => f,
                (None, None) => {
                    "not complete in the ledger (the task's record is gone from Slurm)".into()
                }
            };
            (k, reason)
        })
        .collect();
    for (k, reason) in &reasons {
        eprintln!("unit {k} ({}): {reason}", units[*k].label);
    }
    if args.attempt >= submitted.options.max_attempts {
        eprintln!(
            "error: {} unit(s) still not done after {} attempt(s); giving up",
            missing.len(),
            args.attempt
        );
        return ExitCode::from(EXIT_NEGATIVE);
    }
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find the hubsweep binary's path: {e}");
            return ExitCode::from(EXIT_CANNOT_RUN);
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
            if let Err(message) = commit_regular(
                output,
                repo,
                "hubsweep: slurm resubmission",
                vec![(Attempt::path(&args.plan, attempt.attempt), bytes)],
            )
            .await
            {
                eprintln!("warning: the resubmission is not recorded in the repo: {message}");
            }
            eprintln!(
                "resubmitted {} unit(s): array job {}, final job {}",
                missing.len(),
                attempt.array_job.as_deref().unwrap_or("-"),
                attempt.final_job
            );
            ExitCode::from(EXIT_OK)
        }
        Err(error) => {
            eprintln!("error: {}", super::error_chain(&error));
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}

/// Units per Slurm state for `status`, when the repo records a submission of this plan: the
/// plan's hash and the count of units per state (`done` from the ledger; otherwise the state of
/// the unit's task in its latest attempt, one `squeue` call for all).
pub(super) async fn slurm_states(
    client: &HubClient,
    repo: &Repo,
    state: &LedgerState,
    plan: &Plan,
) -> Option<(String, BTreeMap<String, usize>)> {
    let (planned, _) = planned_units(plan);
    let hashes: Vec<String> = state
        .files
        .keys()
        .filter_map(|p| p.strip_prefix("ledger/slurm/")?.strip_suffix("/plan.json"))
        .map(str::to_owned)
        .collect();
    for hash in hashes {
        let Ok(bytes) = client
            .download_bytes(repo, "main", &SubmittedPlan::path(&hash))
            .await
        else {
            continue;
        };
        let Ok(submitted) = serde_json::from_slice::<SubmittedPlan>(&bytes) else {
            continue;
        };
        if submitted.units != planned {
            continue;
        }
        // The latest attempt of each unit: its array job and task index.
        let mut task_of: BTreeMap<usize, (String, usize)> = BTreeMap::new();
        for n in 1..=attempts_in(state, &hash) {
            let Ok(bytes) = client
                .download_bytes(repo, "main", &Attempt::path(&hash, n))
                .await
            else {
                continue;
            };
            let Ok(attempt) = serde_json::from_slice::<Attempt>(&bytes) else {
                continue;
            };
            if let Some(job) = &attempt.array_job {
                for (task, unit) in attempt.units.iter().enumerate() {
                    task_of.insert(*unit, (job.clone(), task));
                }
            }
        }
        let rows = Slurm::new()
            .jobs_named(&SubmittedPlan::job_name(&hash))
            .unwrap_or_default();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for unit in exec::unit::units(plan) {
            let label = if unit.is_done(plan, state) {
                "done".to_owned()
            } else {
                task_of
                    .get(&unit.index)
                    .and_then(|(job, task)| {
                        rows.iter()
                            .find(|r| &r.job == job && r.task == Some(*task))
                            // A pending range (`12_[4-7]`) is not split into tasks yet.
                            .or_else(|| rows.iter().find(|r| &r.job == job && r.task.is_none()))
                            .map(|r| r.state.to_lowercase())
                    })
                    .unwrap_or_else(|| "not known to slurm".to_owned())
            };
            *counts.entry(label).or_default() += 1;
        }
        return Some((hash, counts));
    }
    None
}
