//! `hubsweep reproduce REPO[@REV]`: rebuild a sweep from its ledger alone, rerun chosen nodes
//! into a scratch repo on the embedded hub, and compare (docs/reproduce.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use hubsweep::exec::{self, Sources};
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::hub::{HubClient, RepoType, Token};
use hubsweep::model::HubSource;
use hubsweep::reproduce::{
    self, ReproduceError, ReproduceReport, ReproduceSettings, Scratch, Selection, Target,
    ToleranceOverrides,
};
use hubsweep::spec::{DataSource, ModelSource};
use tokio_util::sync::CancellationToken;

use super::run::{SummaryFormat, progress_printer, runtime};
use super::verify::parse_repo;
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

fn parse_tolerances(pairs: &[String]) -> Result<ToleranceOverrides, String> {
    let mut overrides = ToleranceOverrides::default();
    for pair in pairs {
        let Some((kind, value)) = pair.split_once('=') else {
            return Err(format!(
                "`--tolerance {pair}`: write `relative=X` or `bitwise=true|false`"
            ));
        };
        match kind.trim() {
            "relative" => match value.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => overrides.relative = Some(x),
                _ => {
                    return Err(format!(
                        "`--tolerance {pair}`: `{value}` is not a number ≥ 0"
                    ));
                }
            },
            "bitwise" => match value.trim() {
                "true" => overrides.bitwise = Some(true),
                "false" => overrides.bitwise = Some(false),
                _ => return Err(format!("`--tolerance {pair}`: write `true` or `false`")),
            },
            other => {
                return Err(format!(
                    "`--tolerance {pair}`: unknown kind `{other}`; use `relative` or `bitwise`"
                ));
            }
        }
    }
    Ok(overrides)
}

fn parse_into(text: &str) -> Result<Target, String> {
    let target = parse_repo(text)?;
    if !target.local || text.contains('@') {
        return Err(format!(
            "`--into {text}`: the scratch repo is `local://NS/NAME` on the embedded hub, without `@REV`"
        ));
    }
    if target.repo.kind != RepoType::Dataset {
        return Err(format!(
            "`--into {text}`: the scratch repo is a dataset repo"
        ));
    }
    Ok(Target::Named(target.repo.id))
}

/// Whether the test-only perturbation is switched on (and on nothing else than its one value).
fn perturbation(env: &Env) -> Result<bool, String> {
    match env.test_perturb.as_deref() {
        None => Ok(false),
        Some(PERTURB_CAPTURE) => Ok(true),
        Some(other) => Err(format!(
            "`HUBSWEEP_TEST_PERTURB={other}`: the only value is `{PERTURB_CAPTURE}` (test-only)"
        )),
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
        Ok::<_, String>((
            source,
            target,
            parse_tolerances(&args.tolerance)?,
            perturbation(env)?,
        ))
    })();
    let (source_ref, target, overrides, perturb) = match prepared {
        Ok(x) => x,
        Err(message) => {
            eprintln!("error: {message}");
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
        let home = env.hubsweep_home();
        let mut config = ServerConfig::new(home.join("hub"));
        config.addr = ([127, 0, 0, 1], 0).into();
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "error: cannot open the embedded hub over `{}`: {}",
                    home.join("hub").display(),
                    super::error_chain(&e)
                );
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let code = with_hub(&args, env, &server, source_ref, target, overrides, perturb).await;
        server.shutdown().await;
        code
    })
}

async fn with_hub(
    args: &ReproduceArgs,
    env: &Env,
    server: &hubsweep::hub::server::ServerHandle,
    source_ref: super::verify::RepoRef,
    target: Target,
    overrides: ToleranceOverrides,
    perturb: bool,
) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(EXIT_CANNOT_RUN)
    };
    let local = match HubClient::builder(server.base_url()).and_then(|b| b.build()) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let source_client = if source_ref.local {
        local.clone()
    } else {
        match HubClient::builder(&env.hf_endpoint)
            .map(|b| b.token(env.hf_token.clone().map(Token::new)))
            .and_then(|b| b.build())
        {
            Ok(c) => c,
            Err(e) => {
                return fail(format!(
                    "cannot use `HF_ENDPOINT` `{}`: {e}",
                    env.hf_endpoint
                ));
            }
        }
    };
    let source = match reproduce::read_source(
        &source_client,
        &source_ref.repo,
        &source_ref.display,
        &source_ref.revision,
    )
    .await
    {
        Ok(s) => s,
        Err(ReproduceError::InvalidSpec { loaded }) => {
            super::render_diagnostics(&loaded, &loaded.diagnostics, env);
            return fail(format!(
                "the manifest's spec `{}` does not validate with this hubsweep: it cannot be rebuilt",
                loaded.file_name
            ));
        }
        Err(e) => return fail(super::error_chain(&e)),
    };
    // The quickstart's tiny models ship inside the binary: import them as `run` does.
    for group in &source.spec.models {
        for instance in hubsweep::spec::expand_group(group, &mut Vec::new()) {
            if let ModelSource::Local(id) = &instance.source
                && let Err(e) = hubsweep::hub::bundled::ensure(&local, id).await
            {
                return fail(format!(
                    "cannot import bundled model `{id}`: {}",
                    super::error_chain(&e)
                ));
            }
        }
    }
    let sources = Sources {
        hf: HubSource {
            endpoint: env.hf_endpoint.clone(),
            token: env.hf_token.clone().map(hubsweep::hub::Token::new),
            cache_dir: env
                .hf_hub_cache()
                .unwrap_or_else(|| env.hubsweep_home().join("hf-cache")),
            offline: false,
        },
        local: Some(HubSource {
            endpoint: server.base_url().to_owned(),
            token: None,
            cache_dir: env.hubsweep_home().join("cache"),
            offline: false,
        }),
        // A manifest has no folder: relative model and data paths are read from the one named.
        spec_dir: args.relative_to.clone(),
        pinned: Default::default(),
        pinned_data: None,
    };
    let settings = ReproduceSettings {
        target_client: local,
        target,
        sources,
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
    match reproduce::reproduce(&source, &settings, progress_printer(), cancel).await {
        Err(e) if has_relative_paths(&source.spec) && is_not_found(&e) => fail(format!(
            "{}\n  hint: the spec's relative paths are read from `{}`; pass the folder the spec was run from with `--relative-to DIR`",
            super::error_chain(&e),
            args.relative_to.display()
        )),
        Err(e) => fail(super::error_chain(&e)),
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
