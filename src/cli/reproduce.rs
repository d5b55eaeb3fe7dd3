//! `hubsweep reproduce REPO[@REV]`: rebuild a sweep from its ledger alone, rerun chosen nodes
//! into a scratch repo on the embedded hub, and compare (docs/reproduce.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use hubsweep::exec::session::hf_client;
use hubsweep::exec::{self, Embedded, EmbeddedHub, Session};
use hubsweep::hub::RepoType;
use hubsweep::reproduce::{
    self, ReproduceError, ReproduceReport, ReproduceSettings, Scratch, Selection, SourceLedger,
    Target, ToleranceOverrides,
};
use hubsweep::spec::{DataSource, ModelSource};
use tokio_util::sync::CancellationToken;

use super::shared::{
    Failure, SummaryFormat, error_chain, hub_settings, parse_repo, progress_printer,
    render_diagnostics, runtime,
};
use super::{EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_NEGATIVE, EXIT_OK, Env};

/// The value of `HUBSWEEP_TEST_PERTURB` that perturbs captured activations (test-only).
const PERTURB_CAPTURE: &str = "capture";

/// Arguments of `reproduce`.
#[derive(Debug, Args)]
pub struct ReproduceArgs {
    /// The results repo, as in a spec's `output:` (`local://NS/NAME`, `hf://datasets/NS/NAME`),
    /// with an optional `@REV` (branch, tag or commit sha; default `main`).
    #[arg(value_name = "REPO[@REV]")]
    repo: String,
    /// Rerun only the nodes matching PATTERN (and their inputs): comma-separated terms that must
    /// all match, each `kind=`, `model=`, `hook=`, `layer=`, `id=` or a bare word; `*` and `?`
    /// glob. Repeat for more patterns.
    #[arg(long = "nodes", value_name = "PATTERN")]
    nodes: Vec<String>,
    /// Rerun N capture groups (a capture and the artifacts it writes), drawn deterministically
    /// with --seed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    sample: Option<u64>,
    /// Seed of --sample.
    #[arg(long, default_value_t = 0, value_name = "SEED")]
    seed: u64,
    /// Scratch repo on the embedded hub (must hold no ledger); default a new
    /// `local://reproduce/{sweep}-{head12}`.
    #[arg(long, value_name = "local://NS/NAME")]
    into: Option<String>,
    /// Keep the scratch repo even when everything compared equal (by default it is deleted
    /// then; a rerun that differs is always kept, and so is an `--into` repo).
    #[arg(long)]
    keep: bool,
    /// Override the manifest's tolerance: `relative=X` (float metrics) or
    /// `bitwise=true|false` (files). Repeatable.
    #[arg(long = "tolerance", value_name = "KIND=VALUE")]
    tolerance: Vec<String>,
    /// Table on stdout (text) or one JSON document.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    format: SummaryFormat,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = exec::DEFAULT_UPLOAD_SLOTS, value_name = "N")]
    upload_slots: usize,
    /// Folder the spec's relative paths (local model folders, data files) are read from: the
    /// manifest does not record where the spec was, so pass the folder it was run from.
    #[arg(long, value_name = "DIR", default_value = ".")]
    relative_to: PathBuf,
}

/// Whether the spec reads anything from a relative local path.
fn has_relative_paths(spec: &hubsweep::spec::SweepSpec) -> bool {
    let data = matches!(&spec.data.source, DataSource::File { path, .. } if path.is_relative());
    data || spec.models.iter().any(|group| {
        hubsweep::spec::expand_group(group, &mut Vec::new())
            .iter()
            .any(|i| matches!(&i.source, ModelSource::Path(path) if path.is_relative()))
    })
}

/// Whether a file or folder was missing somewhere in the error's causes.
fn is_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        let io_missing = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
        // A local model folder without its config or weights says so without an I/O error.
        // Run errors carry the model error boxed.
        use hubsweep::model::ModelError;
        let model = e
            .downcast_ref::<ModelError>()
            .or_else(|| e.downcast_ref::<Box<ModelError>>().map(|boxed| &**boxed));
        let model_missing = matches!(model, Some(ModelError::MissingFile { .. }));
        if io_missing || model_missing {
            return true;
        }
        cause = e.source();
    }
    false
}

fn parse_tolerances(pairs: &[String]) -> Result<ToleranceOverrides, Failure> {
    let mut overrides = ToleranceOverrides::default();
    for pair in pairs {
        let Some((kind, value)) = pair.split_once('=') else {
            return Err(Failure::new(format!(
                "`--tolerance {pair}`: write `relative=X` or `bitwise=true|false`"
            )));
        };
        match kind.trim() {
            "relative" => match value.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => overrides.relative = Some(x),
                _ => {
                    return Err(Failure::new(format!(
                        "`--tolerance {pair}`: `{value}` is not a number ≥ 0"
                    )));
                }
            },
            "bitwise" => match value.trim() {
                "true" => overrides.bitwise = Some(true),
                "false" => overrides.bitwise = Some(false),
                _ => {
                    return Err(Failure::new(format!(
                        "`--tolerance {pair}`: write `true` or `false`"
                    )));
                }
            },
            other => {
                return Err(Failure::new(format!(
                    "`--tolerance {pair}`: unknown kind `{other}`; use `relative` or `bitwise`"
                )));
            }
        }
    }
    Ok(overrides)
}

fn parse_into(text: &str) -> Result<Target, Failure> {
    let target = parse_repo(text)?;
    if !target.local || text.contains('@') {
        return Err(Failure::new(format!(
            "`--into {text}`: the scratch repo is `local://NS/NAME` on the embedded hub, without `@REV`"
        )));
    }
    if target.repo.kind != RepoType::Dataset {
        return Err(Failure::new(format!(
            "`--into {text}`: the scratch repo is a dataset repo"
        )));
    }
    Ok(Target::Named(target.repo.id))
}

/// Whether the test-only perturbation is switched on (and on nothing else than its one value).
fn perturbation(env: &Env) -> Result<bool, Failure> {
    match env.test_perturb.as_deref() {
        None => Ok(false),
        Some(PERTURB_CAPTURE) => Ok(true),
        Some(other) => Err(Failure::new(format!(
            "`HUBSWEEP_TEST_PERTURB={other}`: the only value is `{PERTURB_CAPTURE}` (test-only)"
        ))),
    }
}

/// `hubsweep reproduce`.
pub fn run(args: ReproduceArgs, env: &Env) -> ExitCode {
    let prepared = (|| {
        let source = parse_repo(&args.repo)?;
        let target = match &args.into {
            Some(text) => parse_into(text)?,
            None => Target::Fresh,
        };
        Ok::<_, Failure>((
            source,
            target,
            parse_tolerances(&args.tolerance)?,
            perturbation(env)?,
        ))
    })();
    let (source_ref, target, overrides, perturb) = match prepared {
        Ok(x) => x,
        Err(failure) => {
            eprintln!("error: {}", error_chain(&failure));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    if perturb {
        eprintln!(
            "warning: HUBSWEEP_TEST_PERTURB={PERTURB_CAPTURE}: captured activations are deliberately perturbed (test-only)"
        );
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        // The scratch repo lives on the embedded hub, so it is always started.
        let settings = hub_settings(env);
        let hub = match EmbeddedHub::start(&settings.home, settings.hf.xet).await {
            Ok(hub) => hub,
            Err(error) => {
                eprintln!("error: {}", error_chain(&error));
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let source_client = if source_ref.local {
            Ok(hub.client().clone())
        } else {
            hf_client(&settings.hf)
        };
        let source = match source_client {
            Ok(client) => {
                reproduce::read_source(
                    &client,
                    &source_ref.repo,
                    &source_ref.display,
                    &source_ref.revision,
                )
                .await
            }
            Err(error) => {
                hub.shutdown().await;
                eprintln!("error: {}", error_chain(&error));
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let source = match source {
            Ok(s) => s,
            Err(error) => {
                hub.shutdown().await;
                if let ReproduceError::InvalidSpec { loaded } = &error {
                    render_diagnostics(loaded, &loaded.diagnostics, env);
                    eprintln!("error: {error}: it cannot be rebuilt");
                } else {
                    eprintln!("error: {}", error_chain(&error));
                }
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        // A manifest has no folder: relative model and data paths are read from the one named.
        let opened = Session::open(
            source.spec.clone(),
            &settings,
            args.relative_to.clone(),
            Embedded::Running(hub),
        )
        .await;
        let mut session = match opened {
            Ok(s) => s,
            Err(error) => {
                eprintln!("error: {}", error_chain(&error));
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let code = rerun(&args, &mut session, &source, target, overrides, perturb).await;
        session.close().await;
        code
    })
}

/// Reruns and compares, then renders the report.
async fn rerun(
    args: &ReproduceArgs,
    session: &mut Session,
    source: &SourceLedger,
    target: Target,
    overrides: ToleranceOverrides,
    perturb: bool,
) -> ExitCode {
    let settings = ReproduceSettings {
        target,
        selection: Selection {
            patterns: args.nodes.clone(),
            sample: args.sample.map(|n| n as usize),
            seed: args.seed,
        },
        overrides,
        upload_slots: args.upload_slots,
        keep: args.keep,
        perturb_capture_for_tests: perturb,
    };
    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the rerun's uploads");
            on_interrupt.cancel();
        }
    });
    match reproduce::reproduce(session, source, &settings, progress_printer(), cancel).await {
        Err(e) if has_relative_paths(&source.spec) && is_not_found(&e) => {
            eprintln!(
                "error: {}\n  hint: the spec's relative paths are read from `{}`; pass the folder the spec was run from with `--relative-to DIR`",
                error_chain(&e),
                args.relative_to.display()
            );
            ExitCode::from(EXIT_CANNOT_RUN)
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(EXIT_CANNOT_RUN)
        }
        Ok(report) => {
            print_report(&report, args.format);
            if report.interrupted {
                ExitCode::from(EXIT_INTERRUPTED)
            } else if report.passed() {
                ExitCode::from(EXIT_OK)
            } else {
                ExitCode::from(EXIT_NEGATIVE)
            }
        }
    }
}

fn print_report(report: &ReproduceReport, format: SummaryFormat) {
    match format {
        SummaryFormat::Json => {
            let mut json = serde_json::to_value(report).unwrap_or_default();
            json["passed"] = serde_json::json!(report.passed());
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
        SummaryFormat::Text => print_table(report),
    }
    let tol = &report.tolerance;
    eprintln!(
        "rebuilt {}@{} ({}) from its manifest: {} nodes, {} with their recorded ids",
        report.source,
        report.revision,
        &report.head[..report.head.len().min(12)],
        report.plan_nodes,
        report.ids_matched
    );
    eprintln!(
        "reran {} of {} chosen node(s) into {} ({} {}: relative {:e}, {})",
        report.compared,
        report.chosen,
        report.target,
        tol.device,
        tol.dtype,
        tol.relative,
        if tol.bitwise {
            "files bitwise"
        } else {
            "files not required bitwise"
        }
    );
    for (label, error) in &report.run_failures {
        eprintln!("  rerun failed: {label}: {error}");
    }
    match &report.scratch {
        Scratch::NotCreated => {}
        Scratch::Deleted { freed_bytes } => eprintln!(
            "deleted the scratch repo {}{} (--keep keeps it)",
            report.target,
            freed_bytes.map_or(String::new(), |b| format!(", freeing {b} bytes"))
        ),
        Scratch::KeptDiffers => eprintln!("the rerun is kept in {} for inspection", report.target),
        Scratch::KeptAsked | Scratch::KeptNamed => {
            eprintln!("the rerun is kept in {}", report.target)
        }
        Scratch::DeleteFailed { error } => eprintln!(
            "warning: could not delete the scratch repo {}: {error}",
            report.target
        ),
    }
    eprintln!(
        "{}",
        if report.passed() {
            "reproduced: every compared node is as recorded".to_owned()
        } else {
            format!(
                "NOT reproduced: {} check(s) differ (FAIL rows above)",
                report.failures()
            )
        }
    );
}

fn print_table(report: &ReproduceReport) {
    let header = ["node", "kind", "check", "expected", "got", "ok"];
    let cells: Vec<[String; 6]> = report
        .rows
        .iter()
        .map(|r| {
            [
                r.node[..r.node.len().min(12)].to_owned(),
                r.kind.clone(),
                r.check.clone(),
                r.expected.clone(),
                r.got.clone(),
                r.status.as_str().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text
    };
    println!("{}", line(&header));
    for row in &cells {
        let row: Vec<&str> = row.iter().map(String::as_str).collect();
        println!("{}", line(&row));
    }
}
