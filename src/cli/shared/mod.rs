//! What the commands share, in one place (no command's file imports another's): loading a
//! spec, opening a session or a repo's hub, the runtime, progress, and rendering errors and
//! diagnostics.

mod args;
mod progress;

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use hubsweep::exec::{self, Embedded, EmbeddedHub, HubSettings, Session};
use hubsweep::hub::{HubClient, Repo, RepoId};
use hubsweep::model::{HubSource, ModelFiles};
use hubsweep::spec::reference::{FORMS, Reference, RepoReference};
use hubsweep::spec::{
    self, Diagnostic, HubKind, Loaded, RepoType, Severity, diag::Rendered, tree::Location,
};

pub use args::{Executor, RunArgs};
pub use hubsweep::hub::client::error_chain;
pub use progress::progress_printer;

use super::{EXIT_CANNOT_RUN, Env};

/// Why a command cannot run: what failed, and the error behind it when there is one. The CLI
/// renders it once, as a chain of causes ([`error_chain`]).
#[derive(Debug)]
pub struct Failure {
    /// What failed; `None` when the cause says it all.
    message: Option<String>,
    /// The error behind it.
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Failure {
    /// A failure with no error behind it.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            cause: None,
        }
    }

    /// `message`, caused by `cause`.
    pub fn because(
        message: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: Some(message.into()),
            cause: Some(Box::new(cause)),
        }
    }

    /// The error itself, as it says (its causes follow it in the chain).
    pub fn of(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: None,
            cause: Some(Box::new(error)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.message, &self.cause) {
            (Some(message), _) => f.write_str(message),
            (None, Some(cause)) => cause.fmt(f),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = self.cause.as_deref()?;
        if self.message.is_some() {
            Some(cause)
        } else {
            cause.source()
        }
    }
}

/// Output format of a summary.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SummaryFormat {
    /// For people (stderr).
    Text,
    /// JSON on stdout.
    Json,
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

/// Longest source line miette is asked to draw. Longer lines are unreadable in a terminal, and
/// past column 65,535 miette's padding overflows Rust's format width and panics (a spec with
/// 200,000 token ids on one line did this).
const MAX_SNIPPET_LINE: usize = 1_000;

/// Whether the lines around `location` (miette shows one line of context each side) are short
/// enough to draw as a snippet.
fn snippet_fits(text: &str, location: &Location) -> bool {
    let line = usize::try_from(location.line).unwrap_or(usize::MAX);
    text.lines()
        .enumerate()
        .skip(line.saturating_sub(2))
        .take(3)
        .all(|(_, l)| l.chars().count() <= MAX_SNIPPET_LINE)
}

/// Renders spec diagnostics to stderr with miette: location, snippet, label and hint. A
/// location on a very long line gets `file:line:column` and the hint without the snippet.
pub fn render_diagnostics(loaded: &Loaded, diagnostics: &[Diagnostic], env: &Env) {
    let theme = if env.color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_context_lines(1);
    for diagnostic in diagnostics {
        if let Some(location) = &diagnostic.location
            && !snippet_fits(&loaded.text, location)
        {
            let kind = match diagnostic.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            eprintln!("{kind}: {}", diagnostic.message);
            eprintln!(
                "  --> {}:{}:{} (`{}`; the line is too long to show)",
                loaded.file_name, location.line, location.column, diagnostic.path
            );
            if let Some(help) = &diagnostic.help {
                eprintln!("  help: {help}");
            }
            continue;
        }
        let rendered = Rendered::new(diagnostic.clone(), &loaded.file_name, loaded.text.clone());
        let mut out = String::new();
        if handler.render_report(&mut out, &rendered).is_ok() {
            eprint!("{out}");
        } else {
            eprintln!("{}: {}", loaded.file_name, diagnostic.message);
        }
    }
}

/// A hint for an error caused by a Hub that did not answer (connection refused or reset, no
/// route, a timeout), naming the endpoint in use; `None` for any other error.
pub fn unreachable_hint(
    error: &(dyn std::error::Error + 'static),
    endpoint: &str,
) -> Option<String> {
    use std::io::ErrorKind;
    let mut cause = Some(error);
    while let Some(e) = cause {
        let unreachable = e
            .downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_connect() || r.is_timeout())
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::ConnectionReset
                        | ErrorKind::HostUnreachable
                        | ErrorKind::NetworkUnreachable
                        | ErrorKind::TimedOut
                )
            });
        if unreachable {
            return Some(format!(
                "hint: the Hub at `{endpoint}` did not answer: check `HF_ENDPOINT`, the network and any proxy (`local://` models and outputs need no network)"
            ));
        }
        cause = e.source();
    }
    None
}

/// The async runtime of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_CANNOT_RUN)
        })
}

/// Prints a run error: the spec's diagnostics where it has them, the chain of causes, and a
/// hint when the Hub did not answer.
pub fn report_run_error(error: &exec::RunError, loaded: &hubsweep::spec::Loaded, env: &Env) {
    if let exec::RunError::Plan { diagnostics } = error {
        let located: Vec<_> = diagnostics
            .iter()
            .cloned()
            .map(|d| loaded.locate(d))
            .collect();
        render_diagnostics(loaded, &located, env);
    }
    eprintln!("error: {}", error_chain(error));
    if let Some(hint) = unreachable_hint(error, &env.hf_endpoint) {
        eprintln!("  {hint}");
    }
}

/// The final step's nodes a failure left out (`RunReport::blocked`), a few by name.
pub fn print_blocked(blocked: &[String]) {
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

/// A repo named on the command line.
pub struct RepoRef {
    /// Embedded (`local://`) or the Hugging Face Hub (`hf://`).
    pub local: bool,
    /// The repo.
    pub repo: Repo,
    /// The revision (`main` unless given).
    pub revision: String,
    /// As written, without the revision.
    pub display: String,
}

/// Parses a results repo by the one reference grammar ([`Reference`]):
/// `local://[datasets/|models/]NS/NAME[@REV]` (a dataset unless written otherwise) or
/// `hf://datasets|models/NS/NAME[@REV]`.
pub fn parse_repo(text: &str) -> Result<RepoRef, Failure> {
    let write = "write `local://NS/NAME` or `hf://datasets/NS/NAME`";
    let reference = match Reference::parse(text) {
        Ok(Reference::Repo(repo)) => repo,
        Ok(Reference::Folder(_)) => {
            return Err(Failure::new(format!("`{text}` is not a repo URL: {write}")));
        }
        Err(e) => return Err(Failure::new(format!("{e}: {write}"))),
    };
    let dataset = match (reference.repo_type, reference.hub) {
        (Some(kind), _) => kind == RepoType::Dataset,
        (None, HubKind::Local) => true,
        (None, HubKind::Hf) => {
            return Err(Failure::new(format!(
                "`{text}` does not say whether the repo is a dataset or a model: write `hf://datasets/{}`",
                reference.repo_id
            )));
        }
    };
    let (ns, repo_name) = reference
        .repo_id
        .split_once('/')
        .ok_or_else(|| Failure::new(format!("`{text}`: the repo id must be `NAMESPACE/NAME`")))?;
    let id = RepoId::new(ns, repo_name).map_err(|e| Failure::because(format!("`{text}`"), e))?;
    let repo = if dataset {
        Repo::dataset(id)
    } else {
        Repo::model(id)
    };
    let revision = reference.revision_or_main().to_owned();
    let display = RepoReference {
        revision: None,
        ..reference.clone()
    }
    .to_string();
    Ok(RepoRef {
        local: reference.hub == HubKind::Local,
        repo,
        revision,
        display,
    })
}

/// Where the hubs are, from the environment: `HF_ENDPOINT` with `HF_TOKEN` and the HF cache,
/// and `HUBSWEEP_HOME` for the embedded hub.
pub fn hub_settings(env: &Env) -> HubSettings {
    let home = env.hubsweep_home();
    HubSettings {
        hf: HubSource {
            endpoint: env.hf_endpoint.clone(),
            token: env.hf_token.clone().map(hubsweep::hub::Token::new),
            cache_dir: env.hf_hub_cache().unwrap_or_else(|| home.join("hf-cache")),
            offline: env.hf_hub_offline,
            xet: !env.hf_hub_disable_xet,
        },
        home,
    }
}

/// Opens the sweep `loaded` (from `spec_path`) as a session, or says why not (exit code 2).
pub async fn open_session(
    loaded: &Loaded,
    spec_dir: &Path,
    env: &Env,
    embedded: Embedded,
) -> Result<Session, ExitCode> {
    let Some(spec) = loaded.spec.clone() else {
        eprintln!("{}: invalid spec", loaded.file_name);
        return Err(ExitCode::from(EXIT_CANNOT_RUN));
    };
    Session::open(spec, &hub_settings(env), spec_dir.to_path_buf(), embedded)
        .await
        .map_err(|error| {
            report_run_error(&error, loaded, env);
            ExitCode::from(EXIT_CANNOT_RUN)
        })
}

/// The spec file's name, as the manifest records it.
pub fn spec_file_name(spec_path: &Path) -> String {
    spec_path
        .file_name()
        .map_or_else(|| "spec.yaml".into(), |n| n.to_string_lossy().into_owned())
}

/// The folder a spec file's relative paths are read from.
pub fn spec_dir(spec_path: &Path) -> std::path::PathBuf {
    spec_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A client for the repo's hub: the embedded store in `$HUBSWEEP_HOME/hub` (served in-process)
/// or `HF_ENDPOINT` with `HF_TOKEN`.
pub async fn open_hub(
    target: &RepoRef,
    env: &Env,
) -> Result<(HubClient, Option<EmbeddedHub>), exec::RunError> {
    let settings = hub_settings(env);
    if target.local {
        let hub = EmbeddedHub::start(&settings.home, settings.hf.xet).await?;
        Ok((hub.client().clone(), Some(hub)))
    } else {
        Ok((exec::session::hf_client(&settings.hf)?, None))
    }
}

/// Resolves `--model` by the one reference grammar ([`Reference`]): a folder; a `local://`
/// repo from the embedded hub (a bundled model is imported on first use, as `run` does); an
/// `hf://` or bare repo from the HF cache first, then the Hub endpoint.
pub fn resolve_model(text: &str, env: &Env) -> Result<ModelFiles, Failure> {
    let repo =
        match Reference::parse(text).map_err(|e| Failure::new(format!("{e}; write {FORMS}")))? {
            Reference::Folder(path) => return ModelFiles::from_dir(&path).map_err(Failure::of),
            Reference::Repo(repo) if repo.repo_type == Some(RepoType::Dataset) => {
                return Err(Failure::new(format!(
                    "`{text}` is a dataset repo; a model is needed"
                )));
            }
            Reference::Repo(repo) => repo,
        };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::because("cannot start the download runtime", e))?;
    let (repo_id, revision) = (repo.repo_id.as_str(), repo.revision_or_main());
    if repo.hub == HubKind::Local {
        return runtime.block_on(local_model(repo_id, revision, env));
    }
    let settings = hub_settings(env);
    match ModelFiles::from_cache(&settings.hf.cache_dir, repo_id, revision) {
        Ok(files) => Ok(files),
        Err(cache_err) if env.hf_hub_offline => Err(Failure::because(
            format!("`{repo_id}@{revision}` is not in the HF cache (HF_HUB_OFFLINE is set)"),
            cache_err,
        )),
        Err(_) => runtime
            .block_on(ModelFiles::download(&settings.hf, repo_id, revision))
            .map_err(Failure::of),
    }
}

/// A model of the embedded hub, fetched into its own cache (`$HUBSWEEP_HOME/cache`, as `run`
/// keeps it): the hub is served in-process for the time of the download.
async fn local_model(repo_id: &str, revision: &str, env: &Env) -> Result<ModelFiles, Failure> {
    let home = env.hubsweep_home();
    let hub = EmbeddedHub::start(&home, !env.hf_hub_disable_xet)
        .await
        .map_err(Failure::of)?;
    if let Err(e) = hubsweep::hub::bundled::ensure(hub.client(), repo_id).await {
        hub.shutdown().await;
        return Err(Failure::because(
            format!("cannot import bundled model `{repo_id}`"),
            e,
        ));
    }
    let source = HubSource {
        endpoint: hub.base_url().to_owned(),
        token: None,
        cache_dir: home.join("cache"),
        // The embedded hub is on this machine: offline mode does not keep it away.
        offline: false,
        xet: true,
    };
    let files = ModelFiles::download(&source, repo_id, revision).await;
    hub.shutdown().await;
    files.map_err(Failure::of)
}

#[cfg(test)]
mod tests {
    use hubsweep::exec::RunError;
    use hubsweep::hub::HubError;

    /// An error whose cause is a refused connection gets the hint, through the retries'
    /// wrapping; a Hub that answered (here: no such repo) does not.
    #[test]
    fn a_hub_that_does_not_answer_is_named_with_what_to_check() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/api/repos/create");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let refused = runtime
            .block_on(reqwest::Client::new().get(&url).send())
            .unwrap_err();
        let error = RunError::Hub {
            repo: "hf://datasets/alice/x".into(),
            source: HubError::RetriesExhausted {
                url: url.clone(),
                attempts: 6,
                last: Box::new(HubError::Transport {
                    url: url.clone(),
                    source: refused,
                }),
            },
        };
        let hint = super::unreachable_hint(&error, "http://127.0.0.1:9").unwrap();
        assert!(
            hint.contains("`http://127.0.0.1:9`") && hint.contains("HF_ENDPOINT"),
            "{hint}"
        );
        let answered = RunError::Hub {
            repo: "hf://datasets/alice/x".into(),
            source: HubError::RepoNotFound { url },
        };
        assert_eq!(
            super::unreachable_hint(&answered, "http://127.0.0.1:9"),
            None
        );
    }
}
