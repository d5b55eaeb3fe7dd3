//! `hubsweep run` and `hubsweep status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use hubsweep::exec::{self, FailurePolicy, RunEvent, RunEvents, RunSettings, Sources};
use hubsweep::hub::server::{Server, ServerConfig, ServerHandle};
use hubsweep::hub::{HubClient, Token};
use hubsweep::model::HubSource;
use hubsweep::sink::{CommitPolicy, SinkEvent};
use hubsweep::spec::units::format_bytes;
use hubsweep::spec::{DataSource, DeviceSpec, HubKind, ModelSource, SweepSpec};
use tokio_util::sync::CancellationToken;

use super::{
    EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_NEGATIVE, EXIT_OK, Env, render_diagnostics, spec::load,
};

/// Where `run` executes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Executor {
    /// On this machine.
    Local,
    /// On a Slurm cluster: one array task per work unit (docs/slurm.md).
    Slurm,
}

/// Output format of a summary.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SummaryFormat {
    /// For people (stderr).
    Text,
    /// JSON on stdout.
    Json,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Where to execute.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    executor: Executor,
    /// Pin, plan and compare with the ledger; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// After a failure, go on with everything that does not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = exec::DEFAULT_UPLOAD_SLOTS, value_name = "N")]
    upload_slots: usize,
    /// Delete the model weights this run downloads from the HF cache as soon as no model
    /// still to run needs them (for a nearly full disk; weights cached before the run stay).
    #[arg(long)]
    evict_models: bool,
    /// Summary format.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    format: SummaryFormat,
    /// Options of `--executor slurm`.
    #[command(flatten)]
    slurm: super::slurm::SlurmArgs,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    format: SummaryFormat,
}

/// The hubs a spec talks to: the embedded one (started in-process when the spec uses
/// `local://`) and a client for the output repo.
pub(super) struct Hubs {
    pub(super) local: Option<ServerHandle>,
    pub(super) output: HubClient,
    pub(super) sources: Sources,
}

fn uses_local(spec: &SweepSpec) -> bool {
    spec.output.hub == HubKind::Local
        || spec.models.iter().any(|g| g.repo.starts_with("local://"))
        || matches!(
            spec.data.source,
            DataSource::HubFile {
                hub: HubKind::Local,
                ..
            }
        )
}

pub(super) async fn open_hubs(
    spec: &SweepSpec,
    spec_path: &Path,
    env: &Env,
) -> Result<Hubs, String> {
    let home = env.hubsweep_home();
    let hf_client = || {
        HubClient::builder(&env.hf_endpoint)
            .map(|b| b.token(env.hf_token.clone().map(Token::new)))
            .and_then(|b| b.build())
            .map_err(|e| format!("cannot use `HF_ENDPOINT` `{}`: {e}", env.hf_endpoint))
    };
    let mut local = None;
    let mut local_client = None;
    if uses_local(spec) {
        let mut config = ServerConfig::new(home.join("hub"));
        config.addr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let handle = Server::start(config).await.map_err(|e| {
            format!(
                "cannot start the embedded hub over `{}`: {}",
                home.join("hub").display(),
                super::error_chain(&e)
            )
        })?;
        let client = HubClient::builder(handle.base_url())
            .and_then(|b| b.build())
            .map_err(|e| e.to_string())?;
        // The quickstart's tiny models ship inside the binary; import them on first use.
        for group in &spec.models {
            for instance in hubsweep::spec::expand_group(group, &mut Vec::new()) {
                if let ModelSource::Local(id) = &instance.source {
                    hubsweep::hub::bundled::ensure(&client, id)
                        .await
                        .map_err(|e| {
                            format!(
                                "cannot import bundled model `{id}`: {}",
                                super::error_chain(&e)
                            )
                        })?;
                }
            }
        }
        local_client = Some(client);
        local = Some(handle);
    }
    let output = match spec.output.hub {
        HubKind::Local => local_client.clone().ok_or("no embedded hub")?,
        HubKind::Hf => hf_client()?,
    };
    let sources = Sources {
        hf: HubSource {
            endpoint: env.hf_endpoint.clone(),
            token: env.hf_token.clone().map(hubsweep::hub::Token::new),
            cache_dir: env.hf_hub_cache().unwrap_or_else(|| home.join("hf-cache")),
            offline: false,
        },
        local: local.as_ref().map(|h| HubSource {
            endpoint: h.base_url().to_owned(),
            token: None,
            cache_dir: home.join("cache"),
            offline: false,
        }),
        spec_dir: spec_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        pinned: Default::default(),
        pinned_data: None,
    };
    Ok(Hubs {
        local,
        output,
        sources,
    })
}

pub(super) fn device_of(spec: &SweepSpec) -> hubsweep::model::DeviceSpec {
    match spec.compute.device {
        DeviceSpec::Auto => hubsweep::model::DeviceSpec::Auto,
        DeviceSpec::Cpu => hubsweep::model::DeviceSpec::Cpu,
        DeviceSpec::Cuda(n) => hubsweep::model::DeviceSpec::Cuda(n as usize),
    }
}

/// Prints progress: one line per notable event, and on a terminal a bar (without colour) of
/// the activation artifacts' bytes uploaded against their exact total (the small analysis
/// files are left out), with throughput and ETA, the nodes recorded in the ledger and the
/// tokens captured.
pub(super) fn progress_printer() -> RunEvents {
    use std::io::IsTerminal as _;
    /// Counts behind the bar's message.
    #[derive(Default)]
    struct Counts {
        tokens: usize,
        nodes: usize,
        pending: usize,
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::hidden();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} of activations uploaded ({bytes_per_sec}, ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    // Lines go above the bar (through it) on a terminal, straight to stderr otherwise.
    let say = {
        let bar = bar.clone();
        move |line: String| match &bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    };
    let tally = {
        let bar = bar.clone();
        move |update: &dyn Fn(&mut Counts)| {
            let (Some(bar), Ok(mut counts)) = (&bar, counts.lock()) else {
                return;
            };
            update(&mut counts);
            bar.set_message(format!(
                "· {}/{} nodes · {} tokens captured",
                counts.nodes.min(counts.pending),
                counts.pending,
                counts.tokens
            ));
        }
    };
    Arc::new(move |event: &RunEvent| {
        match event {
            RunEvent::Planned {
                nodes,
                done,
                pending_bytes,
            } => {
                if let Some(bar) = &bar {
                    bar.set_length(*pending_bytes);
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                tally(&|counts| counts.pending = nodes.saturating_sub(*done));
            }
            RunEvent::Sink(SinkEvent::Uploaded { path, bytes, .. }) => {
                if let Some(bar) = bar
                    .as_ref()
                    .filter(|_| path.starts_with(hubsweep::plan::ACTIVATIONS_DIR))
                {
                    bar.inc(*bytes);
                }
            }
            RunEvent::Sink(SinkEvent::Committed { records, .. }) => {
                tally(&|counts| counts.nodes += records);
            }
            RunEvent::ShardDone { tokens, .. } => tally(&|counts| counts.tokens += tokens),
            _ => {}
        }
        if let Some(line) = describe(event) {
            say(line);
        }
    })
}

/// The log line of an event, if it gets one.
fn describe(event: &RunEvent) -> Option<String> {
    let short = |text: &str, n: usize| text[..text.len().min(n)].to_owned();
    Some(match event {
        RunEvent::Pinned {
            label,
            commit,
            windows,
        } => {
            format!(
                "pinned   {label} → {} ({windows} windows)",
                short(commit, 19)
            )
        }
        RunEvent::Planned {
            nodes,
            done,
            pending_bytes,
        } => format!(
            "plan     {nodes} nodes, {done} already in the ledger, {} of artifacts to make",
            format_bytes(*pending_bytes)
        ),
        RunEvent::Downloading { label, files } => {
            format!("download {label}: {files} weight file(s) into the HF cache")
        }
        RunEvent::ModelStarted { label, shards } => format!("capture  {label}: {shards} shard(s)"),
        RunEvent::ModelSkipped { label } => format!("skip     {label}: already in the ledger"),
        RunEvent::ModelFailed { label, error } => format!("FAILED   {label}: {error}"),
        RunEvent::CardLeftAlone => "card     README.md was not written by hubsweep: left as it is \
                                    (add the tables' `configs` yourself, docs/ledger.md)"
            .to_owned(),
        RunEvent::Sink(SinkEvent::Committed {
            commit,
            files,
            records,
        }) => {
            format!(
                "commit   {} ({files} files, {records} records)",
                short(commit, 12)
            )
        }
        RunEvent::Sink(SinkEvent::Throttled { wait }) => {
            format!("waiting  {}s for the commit rate limit", wait.as_secs())
        }
        RunEvent::Sink(SinkEvent::UploadFailed { path, error }) => {
            format!("FAILED   upload of {path}: {error}")
        }
        RunEvent::Evicted {
            label,
            freed,
            error,
        } => match error {
            None => format!(
                "evicted  {label}: {} of weights deleted from the HF cache",
                format_bytes(*freed)
            ),
            Some(error) => format!("warning  {label}: cannot delete its weights: {error}"),
        },
        RunEvent::ShardDone { .. } | RunEvent::Sink(SinkEvent::Uploaded { .. }) => return None,
    })
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_CANNOT_RUN)
        })
}

pub(super) fn report_run_error(error: &exec::RunError, loaded: &hubsweep::spec::Loaded, env: &Env) {
    if let exec::RunError::Plan { diagnostics } = error {
        let located: Vec<_> = diagnostics
            .iter()
            .cloned()
            .map(|d| loaded.locate(d))
            .collect();
        render_diagnostics(loaded, &located, env);
    }
    eprintln!("error: {}", super::error_chain(error));
    if let Some(hint) = super::unreachable_hint(error, &env.hf_endpoint) {
        eprintln!("  {hint}");
    }
}

/// `hubsweep run SPEC`.
pub fn run(args: RunArgs, env: &Env) -> ExitCode {
    if let Executor::Slurm = args.executor {
        if args.evict_models {
            eprintln!(
                "error: `--evict-models` applies to local runs: on a cluster the HF cache is often shared between nodes, and a worker could delete weights another is about to read; workers keep what they download (clear it afterwards with `hf cache` or `huggingface-cli delete-cache`)"
            );
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        let worker = hubsweep::slurm::WorkerSettings {
            keep_going: args.keep_going,
            upload_slots: args.upload_slots,
        };
        return super::slurm::submit(&args.spec, &args.slurm, worker, args.format, env);
    }
    let Some(loaded) = load(&args.spec, env) else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let Some(spec) = loaded.spec.clone() else {
        eprintln!("{}: invalid spec", args.spec.display());
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let hubs = match open_hubs(&spec, &args.spec, env).await {
            Ok(h) => h,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let settings = RunSettings {
            output_client: hubs.output.clone(),
            sources: hubs.sources.clone(),
            spec_file: (
                args.spec.file_name().map_or_else(|| "spec.yaml".into(), |n| n.to_string_lossy().into_owned()),
                loaded.text.to_string(),
            ),
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
        let outcome = exec::run(&spec, &settings, device_of(&spec), progress_printer(), cancel).await;
        if let Some(server) = hubs.local {
            server.shutdown().await;
        }
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

/// The final step's nodes a failure left out (`RunReport::blocked`), a few by name.
pub(super) fn print_blocked(blocked: &[String]) {
    const SHOWN: usize = 5;
    if blocked.is_empty() {
        return;
    }
    eprintln!(
        "  not run: {} node(s) of the final step that need a failed model's results (a run after the failure is fixed records them):",
        blocked.len()
    );
    for label in blocked.iter().take(SHOWN) {
        eprintln!("    {label}");
    }
    if blocked.len() > SHOWN {
        eprintln!("    … and {} more", blocked.len() - SHOWN);
    }
}

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
    let Some(spec) = loaded.spec.clone() else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let hubs = match open_hubs(&spec, &args.spec, env).await {
            Ok(h) => h,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let quiet: RunEvents = Arc::new(|_: &RunEvent| {});
        let outcome = async {
            let device_class = if cfg!(feature = "cuda") { "cuda" } else { "cpu" };
            let sources = exec::hold_data_to_ledger(&spec, &hubs.sources, &hubs.output).await?;
            let (plan, _) = exec::pin_and_plan(&spec, &sources, device_class, &quiet).await?;
            let repo = exec::output_repo(&spec)?;
            let state = hubsweep::ledger::LedgerState::read(&hubs.output, &repo, "main")
                .await
                .map_err(|source| exec::RunError::Ledger { repo: spec.output.to_string(), source })?;
            Ok::<_, exec::RunError>((plan, state))
        }
        .await;
        if let Some(server) = hubs.local {
            server.shutdown().await;
        }
        let (plan, state) = match outcome {
            Ok(x) => x,
            Err(error) => {
                report_run_error(&error, &loaded, env);
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        // A sweep submitted to Slurm: its units per Slurm state too.
        let slurm = match (spec.output.hub, exec::output_repo(&spec)) {
            (HubKind::Hf, Ok(repo)) => hubsweep::slurm::sweep_state(&hubs.output, &repo, &state, &plan, &hubsweep::slurm::Slurm::new())
                .await
                .map(|s| (s.hash, s.units)),
            _ => None,
        };
        let mut rows: Vec<(String, usize, usize, usize)> = plan.models.iter().map(|m| (m.label(), 0, 0, 0)).collect();
        let mut other = (0, 0, 0);
        for node in &plan.nodes {
            let id = node.id.map(|i| i.to_hex()).unwrap_or_default();
            let slot = match hubsweep::plan::node_model(node) {
                Some(m) => {
                    let row = &mut rows[m as usize];
                    (&mut row.1, &mut row.2, &mut row.3)
                }
                None => (&mut other.0, &mut other.1, &mut other.2),
            };
            if state.is_done(&id) {
                *slot.0 += 1;
            } else if state.has_failed(&id) {
                *slot.2 += 1;
            } else {
                *slot.1 += 1;
            }
        }
        let all_done = rows.iter().all(|r| r.2 == 0 && r.3 == 0) && other.1 == 0 && other.2 == 0;
        match args.format {
            SummaryFormat::Json => {
                let models: Vec<_> = rows.iter().map(|(l, d, p, f)| serde_json::json!({"model": l, "done": d, "pending": p, "failed": f})).collect();
                let mut json = serde_json::json!({"output": spec.output.to_string(), "models": models, "cross_model": {"done": other.0, "pending": other.1, "failed": other.2}, "complete": all_done});
                if let Some((hash, units)) = &slurm {
                    json["slurm"] = serde_json::json!({"plan": hash, "units": units});
                }
                println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
            }
            SummaryFormat::Text => {
                println!("{:<56} {:>7} {:>8} {:>7}", "model", "done", "pending", "failed");
                for (label, done, pending, failed) in &rows {
                    println!("{label:<56} {done:>7} {pending:>8} {failed:>7}");
                }
                println!("{:<56} {:>7} {:>8} {:>7}", "(overlaps and final ledger)", other.0, other.1, other.2);
                if let Some((hash, units)) = &slurm {
                    let line: Vec<String> = units.iter().map(|(state, n)| format!("{n} {state}")).collect();
                    println!("slurm units (job name hubsweep-{hash}): {}", line.join(", "));
                }
                println!("{}", if all_done { "complete" } else { "incomplete: `hubsweep run` resumes where it stopped" });
            }
        }
        ExitCode::from(EXIT_OK)
    })
}
