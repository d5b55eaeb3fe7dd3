//! `hubsweep validate` and `hubsweep plan`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use hubsweep::plan::{self, LocalLookup, PlanOptions};
use hubsweep::spec::{self, ModelSource, Severity};

use super::{EXIT_CANNOT_RUN, EXIT_OK, Env, render_diagnostics};

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
}

/// Reads and validates one spec file, printing its diagnostics to stderr.
pub fn load(path: &Path, env: &Env) -> Option<spec::Loaded> {
    let name = path.display().to_string();
    let bytes = match read_limited(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("error: cannot read `{name}`: {err}");
            return None;
        }
    };
    let loaded = spec::load(&name, &bytes);
    render_diagnostics(&loaded, &loaded.diagnostics, env);
    Some(loaded)
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
}

/// Reads at most a little more than the spec limit, so a huge file is refused without
/// reading all of it.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = fs_err::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(spec::tree::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
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
        device_class: env.device_class(spec.compute.device).to_owned(),
    };
    let plan = plan::build(spec, &options);
    let located: Vec<_> = plan
        .diagnostics
        .iter()
        .cloned()
        .map(|d| loaded.locate(d))
        .collect();
    render_diagnostics(&loaded, &located, env);
    if !plan.is_runnable() {
        eprintln!("{}: the plan is refused", args.spec.display());
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let output = match (&args.explain, args.format) {
        (Some(query), _) => match plan::render::explain(&plan, query) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        },
        (None, PlanFormat::Text) => plan::render::text(&plan),
        (None, PlanFormat::Json) => {
            let mut text =
                serde_json::to_string_pretty(&plan::render::json(&plan)).unwrap_or_default();
            text.push('\n');
            text
        }
        (None, PlanFormat::Dot) => plan::render::dot(&plan),
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // A closed pipe (`| head`) is not an error of ours.
        return ExitCode::from(EXIT_OK);
    }
    ExitCode::from(EXIT_OK)
}
