//! `hubsweep validate` and `hubsweep plan`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use hubsweep::plan::{self, LocalLookup, PlanOptions};
use hubsweep::spec::{self, ModelSource, Severity};

use super::shared::{load, render_diagnostics};
use super::{EXIT_CANNOT_RUN, EXIT_OK, Env};

/// Arguments of `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Spec files to check.
    #[arg(required = true, value_name = "SPEC")]
    specs: Vec<PathBuf>,
}

/// Output format of `plan`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PlanFormat {
    /// A readable summary.
    Text,
    /// Every node, counts and estimates, as JSON.
    Json,
    /// The DAG for graphviz.
    Dot,
}

/// Arguments of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    format: PlanFormat,
    /// Print the canonical record behind a node (id prefix or label), to see why it would rerun.
    #[arg(long, value_name = "NODE")]
    explain: Option<String>,
    /// Print the plan even when it is refused (to see what to cut); the exit status is 2 all
    /// the same.
    #[arg(long)]
    show_refused: bool,
}

/// Answers for the bundled `local://hubsweep/…` models from their embedded configs, and for
/// everything else as [`LocalLookup`] does.
struct WithBundled(LocalLookup);

impl plan::ModelLookup for WithBundled {
    fn lookup(&self, source: &ModelSource, revision: &str) -> plan::ModelFacts {
        if let ModelSource::Local(id) = source
            && let Some(config) = hubsweep::hub::bundled::config(id)
        {
            let text = String::from_utf8_lossy(config);
            return match plan::ModelDims::from_config_json(&text) {
                Ok((_, dims)) => plan::ModelFacts {
                    dims: Some(dims),
                    ..plan::ModelFacts::default()
                },
                Err(problem) => plan::ModelFacts {
                    problem: Some(problem),
                    ..plan::ModelFacts::default()
                },
            };
        }
        self.0.lookup(source, revision)
    }

    fn adapter_base(&self, adapter: &hubsweep::spec::expand::AdapterInstance) -> Option<String> {
        self.0.adapter_base(adapter)
    }
}

fn summary(loaded: &spec::Loaded) -> String {
    let errors = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = loaded.diagnostics.len() - errors;
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("1 {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}

/// `hubsweep validate SPEC…`: exit 0 when every file is valid, 2 otherwise.
pub fn validate(args: ValidateArgs, env: &Env) -> ExitCode {
    let mut all_valid = true;
    for path in &args.specs {
        match load(path, env) {
            Some(loaded) if !loaded.has_errors() => {
                eprintln!("{}: valid ({})", path.display(), summary(&loaded));
            }
            Some(loaded) => {
                eprintln!("{}: invalid ({})", path.display(), summary(&loaded));
                all_valid = false;
            }
            None => all_valid = false,
        }
    }
    ExitCode::from(if all_valid { EXIT_OK } else { EXIT_CANNOT_RUN })
}

/// `hubsweep plan SPEC`: exit 0 with the plan on stdout, 2 when the spec or plan is refused.
pub fn plan(args: PlanArgs, env: &Env) -> ExitCode {
    let Some(loaded) = load(&args.spec, env) else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let Some(spec) = &loaded.spec else {
        eprintln!("{}: invalid ({})", args.spec.display(), summary(&loaded));
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let base_dir = args
        .spec
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let lookup = WithBundled(LocalLookup {
        base_dir: base_dir.clone(),
        hf_cache: env.hf_hub_cache(),
    });
    let options = PlanOptions {
        lookup: &lookup,
        data_hash: plan::lookup::local_data_hash(&spec.data.source, &base_dir),
        device_class: hubsweep::exec::DeviceClass::of(
            spec.compute.device,
            hubsweep::exec::session::cuda_usable,
        )
        .as_str()
        .to_owned(),
    };
    let plan = plan::build(spec, &options);
    let located: Vec<_> = plan
        .diagnostics
        .iter()
        .cloned()
        .map(|d| loaded.locate(d))
        .collect();
    render_diagnostics(&loaded, &located, env);
    let refused = plan.refusal().is_err();
    if refused {
        eprintln!("{}: the plan is refused", args.spec.display());
        if !args.show_refused {
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    }
    let status = ExitCode::from(if refused { EXIT_CANNOT_RUN } else { EXIT_OK });
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = match (&args.explain, args.format) {
        (Some(query), _) => match plan::render::explain(&plan, query) {
            Ok(text) => stdout.write_all(text.as_bytes()),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        },
        (None, PlanFormat::Text) => stdout.write_all(plan::render::text(&plan).as_bytes()),
        // Streamed: a million-node plan is never held as one document.
        (None, PlanFormat::Json) => plan::render::write_json(&plan, &mut stdout),
        (None, PlanFormat::Dot) => stdout.write_all(plan::render::dot(&plan).as_bytes()),
    };
    // A closed pipe (`| head`) is not an error of ours.
    let _ = written.and_then(|()| stdout.flush());
    status
}
