//! `hubsweep run` on this machine, and `hubsweep status`.

use std::process::ExitCode;

use clap::Args;
use hubsweep::exec::{self, Embedded, FailurePolicy, RunSettings, UnitSelection};
use hubsweep::ledger::PlanProgress;
use hubsweep::sink::CommitPolicy;
use hubsweep::slurm::{self, Slurm};
use hubsweep::spec::units::format_bytes;
use hubsweep::spec::{HubKind, SweepSpec};
use tokio_util::sync::CancellationToken;

use super::shared::{
    RunArgs, SummaryFormat, load, open_session, print_blocked, progress_printer, report_run_error,
    runtime, spec_dir, spec_file_name,
};
use super::{EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_NEGATIVE, EXIT_OK, Env};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    spec: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    format: SummaryFormat,
}

/// `hubsweep run SPEC` (`--executor local`).
pub fn run(args: RunArgs, env: &Env) -> ExitCode {
    let Some(loaded) = load(&args.spec, env) else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let session = match open_session(&loaded, &spec_dir(&args.spec), env, Embedded::IfUsed).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let settings = RunSettings {
            spec_file: (spec_file_name(&args.spec), loaded.text.to_string()),
            failure: if args.keep_going { FailurePolicy::KeepGoing } else { FailurePolicy::FailFast },
            upload_slots: args.upload_slots,
            commits: CommitPolicy::default(),
            dry_run: args.dry_run,
            perturb_capture_for_tests: false,
            evict_models: args.evict_models,
        };
        let cancel = CancellationToken::new();
        let on_interrupt = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing uploads and committing the ledger (Ctrl-C again to abort now)");
                on_interrupt.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("aborted");
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
            }
        });
        let events = progress_printer();
        let outcome = match session.pin(&events).await {
            Ok(pinned) => session.run(pinned, &settings, &UnitSelection::All, events, cancel).await,
            Err(error) => Err(error),
        };
        let spec = session.spec().clone();
        session.close().await;
        match outcome {
            Err(error) => {
                report_run_error(&error, &loaded, env);
                ExitCode::from(EXIT_CANNOT_RUN)
            }
            Ok(report) => {
                print_report(&report, &spec, &args, env);
                if report.interrupted {
                    ExitCode::from(EXIT_INTERRUPTED)
                } else if report.failed.is_empty() && report.blocked.is_empty() {
                    ExitCode::from(EXIT_OK)
                } else {
                    ExitCode::from(EXIT_NEGATIVE)
                }
            }
        }
    })
}

/// What `run` prints when it is done: a summary on stderr (and JSON on stdout).
fn print_report(report: &exec::RunReport, spec: &SweepSpec, args: &RunArgs, env: &Env) {
    let sink = &report.sink;
    if let SummaryFormat::Json = args.format {
        let json = serde_json::json!({
            "output": report.output,
            "head": sink.head,
            "nodes": report.nodes,
            "executed": report.executed,
            "skipped": report.skipped,
            "failed": report.failed.iter().map(|(l, e)| serde_json::json!({"node": l, "error": e})).collect::<Vec<_>>(),
            "blocked": report.blocked,
            "bytes_uploaded": sink.bytes_sent,
            "objects_deduplicated": sink.objects_deduplicated,
            "commits": sink.commits,
            "interrupted": report.interrupted,
            "wall_seconds": report.wall_seconds,
            "capture_seconds": report.capture_seconds,
            "capture_stages": {
                "forward_seconds": report.capture_stages.forward.as_secs_f64(),
                "to_host_seconds": report.capture_stages.to_host.as_secs_f64(),
                "host_seconds": report.capture_stages.host.as_secs_f64(),
                "budget_wait_seconds": report.capture_stages.budget_wait.as_secs_f64(),
            },
            "upload_busy_seconds": sink.upload_busy.as_secs_f64(),
            "dry_run": args.dry_run,
            "pinned": report.pinned.iter().map(|(l, c)| serde_json::json!({"model": l, "commit": c})).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    }
    let verb = if args.dry_run { "would run" } else { "ran" };
    let pending = report.nodes - report.skipped;
    eprintln!(
        "\n{verb} {} node(s) of {} ({} already done{}); uploaded {} in {} commit(s)",
        if args.dry_run {
            pending
        } else {
            report.executed
        },
        report.nodes,
        report.skipped,
        if report.failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", report.failed.len())
        },
        format_bytes(sink.bytes_sent),
        sink.commits,
    );
    for (label, error) in &report.failed {
        eprintln!("  failed: {label}: {error}");
    }
    print_blocked(&report.blocked);
    if args.dry_run {
        return;
    }
    eprintln!(
        "results: {}{}",
        spec.output,
        sink.head
            .as_deref()
            .map(|h| format!(" @ {}", &h[..h.len().min(12)]))
            .unwrap_or_default()
    );
    eprintln!("  progress:  hubsweep status {}", args.spec.display());
    eprintln!(
        "  ledger:    ledger/manifest.json and ledger/index.jsonl in the repo (docs/ledger.md)"
    );
    if spec.output.hub == HubKind::Local {
        eprintln!(
            "  browse:    hubsweep hub serve   # serves {}; then with huggingface_hub:",
            env.hubsweep_home().join("hub").display()
        );
        eprintln!(
            "             HF_ENDPOINT=http://127.0.0.1:PORT python -c \"from huggingface_hub import list_repo_files; print(list_repo_files('{}', repo_type='dataset'))\"",
            spec.output.repo_id
        );
    }
}

/// `hubsweep status SPEC`: done / pending / failed per model revision.
pub fn status(args: StatusArgs, env: &Env) -> ExitCode {
    let Some(loaded) = load(&args.spec, env) else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let session =
            match open_session(&loaded, &spec_dir(&args.spec), env, Embedded::IfUsed).await {
                Ok(s) => s,
                Err(code) => return code,
            };
        let outcome = session.pin(&exec::quiet()).await;
        let pinned = match outcome {
            Ok(pinned) => pinned,
            Err(error) => {
                session.close().await;
                report_run_error(&error, &loaded, env);
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let spec = session.spec();
        // A sweep submitted to Slurm: its units per Slurm state too.
        let slurm = match (spec.output.hub, session.output_repo()) {
            (HubKind::Hf, Ok(repo)) => {
                slurm::sweep_state(
                    session.output_client(),
                    &repo,
                    &pinned.state,
                    &pinned.plan,
                    &Slurm::new(),
                )
                .await
            }
            _ => None,
        };
        let progress = pinned.state.progress(&pinned.plan);
        print_status(spec, &progress, slurm.as_ref(), args.format);
        session.close().await;
        ExitCode::from(EXIT_OK)
    })
}

/// What `status` prints: a table on stdout, or JSON.
fn print_status(
    spec: &SweepSpec,
    progress: &PlanProgress,
    slurm: Option<&slurm::SweepState>,
    format: SummaryFormat,
) {
    let complete = progress.is_complete();
    let other = &progress.cross_model;
    match format {
        SummaryFormat::Json => {
            let models: Vec<_> = progress
                .models
                .iter()
                .map(|(l, p)| serde_json::json!({"model": l, "done": p.done, "pending": p.pending, "failed": p.failed}))
                .collect();
            let mut json = serde_json::json!({
                "output": spec.output.to_string(),
                "models": models,
                "cross_model": {"done": other.done, "pending": other.pending, "failed": other.failed},
                "complete": complete,
            });
            if let Some(slurm) = slurm {
                json["slurm"] = serde_json::json!({"plan": slurm.hash, "units": slurm.units});
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
        SummaryFormat::Text => {
            println!(
                "{:<56} {:>7} {:>8} {:>7}",
                "model", "done", "pending", "failed"
            );
            for (label, p) in &progress.models {
                println!("{label:<56} {:>7} {:>8} {:>7}", p.done, p.pending, p.failed);
            }
            println!(
                "{:<56} {:>7} {:>8} {:>7}",
                "(overlaps and final ledger)", other.done, other.pending, other.failed
            );
            if let Some(slurm) = slurm {
                let line: Vec<String> = slurm
                    .units
                    .iter()
                    .map(|(state, n)| format!("{n} {state}"))
                    .collect();
                println!(
                    "slurm units (job name hubsweep-{}): {}",
                    slurm.hash,
                    line.join(", ")
                );
            }
            println!(
                "{}",
                if complete {
                    "complete"
                } else {
                    "incomplete: `hubsweep run` resumes where it stopped"
                }
            );
        }
    }
}
