//! `hubsweep emit EMIT.yaml --out DIR | --check DIR`: a paper's values, tables and figures from
//! output repos pinned to commits (docs/emit.md). Each source's ledger is verified (shallow)
//! before anything is read from it; nothing is written unless everything computed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use hubsweep::emit::source::{Refusal, SourceData};
use hubsweep::emit::{self, Header, OutputFile, Source, check::Difference};
use hubsweep::exec::EmbeddedHub;
use hubsweep::hub::HubClient;
use hubsweep::spec::{self, Diagnostic};

use super::shared::{Failure, error_chain, hub_settings, render_diagnostics, runtime};
use super::{EXIT_CANNOT_RUN, EXIT_NEGATIVE, EXIT_OK, Env};

/// Arguments of `emit`.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// The emit file (YAML; schema in `schemas/emit.schema.json`).
    #[arg(value_name = "EMIT.yaml")]
    file: PathBuf,
    /// Write `values.tex`, `values.json`, `tables/` and `figures/` into DIR.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "check",
        conflicts_with = "check"
    )]
    out: Option<PathBuf>,
    /// Recompute everything and compare with the files in DIR: exit 0 when identical, 1 with a
    /// table of what differs.
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
}

/// Why emit stopped before computing.
enum Stop {
    /// Diagnostics in the emit file (rendered with its text).
    Located(Vec<Diagnostic>),
    /// Anything else.
    Failed(Failure),
}

/// The hubs the sources live on, opened once each.
#[derive(Default)]
struct Hubs {
    local: Option<EmbeddedHub>,
    hf: Option<HubClient>,
}

impl Hubs {
    async fn client(&mut self, source: &Source, env: &Env) -> Result<HubClient, Failure> {
        let settings = hub_settings(env);
        if source.is_local() {
            if self.local.is_none() {
                let hub = EmbeddedHub::start(&settings.home, settings.hf.xet)
                    .await
                    .map_err(|e| Failure::because("cannot open the embedded hub", e))?;
                self.local = Some(hub);
            }
            self.local
                .as_ref()
                .map(|h| h.client().clone())
                .ok_or_else(|| Failure::new("no embedded hub"))
        } else {
            if self.hf.is_none() {
                let client = hubsweep::exec::session::hf_client(&settings.hf)
                    .map_err(|e| Failure::because("cannot open the Hub client", e))?;
                self.hf = Some(client);
            }
            self.hf.clone().ok_or_else(|| Failure::new("no Hub client"))
        }
    }

    async fn close(self) {
        if let Some(hub) = self.local {
            hub.shutdown().await;
        }
    }
}

fn source_path(source: &Source) -> String {
    format!("/sources/{}", spec::tree::escape_pointer(&source.name))
}

/// Verifies (shallow) and reads one source, rendering a refusal as a located diagnostic.
async fn read_source(client: &HubClient, source: &Source) -> Result<SourceData, Stop> {
    let located = |message: String, help: &str| {
        Stop::Located(vec![
            Diagnostic::error(source_path(source), message).with_help(help),
        ])
    };
    emit::source::read_verified(client, source)
        .await
        .map_err(|refusal| match refusal {
            Refusal::Missing(e) => located(
                format!(
                    "source `{}` does not exist: {}",
                    source.name,
                    error_chain(&e)
                ),
                "check the repo name and the commit sha (`hubsweep verify REPO` prints the head's)",
            ),
            Refusal::Unverifiable(e) => Stop::Failed(Failure::because(
                format!("cannot verify `{}`", source.display()),
                e,
            )),
            Refusal::DoesNotVerify(report) => {
                let failures: Vec<String> = report
                    .failures
                    .iter()
                    .take(5)
                    .map(|f| {
                        format!(
                            "{} {} {}: {}",
                            f.check.name(),
                            f.node.as_deref().unwrap_or("-"),
                            f.file.as_deref().unwrap_or("-"),
                            f.message
                        )
                    })
                    .collect();
                located(
                    format!(
                        "source `{}` ({}) does not verify: {} failure(s): {}",
                        source.name,
                        source.display(),
                        report.failures.len(),
                        failures.join("; ")
                    ),
                    &format!(
                        "`hubsweep verify {}` shows every failure; emit reads only ledgers that verify",
                        source.display()
                    ),
                )
            }
            Refusal::Read(e) => Stop::Located(vec![Diagnostic::error(
                source_path(source),
                error_chain(&e),
            )]),
        })
}

/// Reads the spectrum files the spectrum figures draw, from each source at its commit.
async fn read_spectra(
    hubs: &mut Hubs,
    file: &emit::EmitFile,
    data: &mut [SourceData],
    env: &Env,
) -> Result<(), Stop> {
    let wanted = emit::compute::spectrum_files(file, data);
    for ((source, files), data) in file.sources.iter().zip(&wanted).zip(data.iter_mut()) {
        if files.is_empty() {
            continue;
        }
        let client = hubs.client(source, env).await.map_err(Stop::Failed)?;
        emit::source::read_spectra(&client, source, files, data)
            .await
            .map_err(|e| {
                Stop::Located(vec![Diagnostic::error(
                    source_path(source),
                    error_chain(&e),
                )])
            })?;
    }
    Ok(())
}

async fn compute(
    loaded: &emit::Loaded,
    file: &emit::EmitFile,
    env: &Env,
) -> Result<Vec<OutputFile>, Stop> {
    let mut hubs = Hubs::default();
    let mut data = Vec::new();
    let mut stop = None;
    for source in &file.sources {
        let read = match hubs.client(source, env).await {
            Ok(client) => read_source(&client, source).await,
            Err(failure) => Err(Stop::Failed(failure)),
        };
        match read {
            Ok(d) => data.push(d),
            Err(s) => {
                stop = Some(s);
                break;
            }
        }
    }
    if stop.is_none() {
        stop = read_spectra(&mut hubs, file, &mut data, env).await.err();
    }
    hubs.close().await;
    if let Some(stop) = stop {
        return Err(stop);
    }
    let name = loaded
        .file_name
        .rsplit('/')
        .next()
        .unwrap_or(&loaded.file_name)
        .to_owned();
    let header = Header::new(file, env!("CARGO_PKG_VERSION"), &name, &env.hf_endpoint);
    emit::emit(file, &data, &header).map_err(Stop::Located)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs_err::create_dir_all(parent)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let mut file = fs_err::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs_err::rename(&temporary, path)
}

fn print_differences(differences: &[Difference]) {
    let width = |f: fn(&Difference) -> &str, head: &str| {
        differences
            .iter()
            .map(|d| f(d).chars().count())
            .chain([head.len()])
            .max()
            .unwrap_or(0)
    };
    let (w1, w2) = (width(|d| &d.what, "what"), width(|d| &d.file, "file"));
    println!("{:<w1$}  {:<w2$}  old → new", "what", "file");
    for d in differences {
        println!("{:<w1$}  {:<w2$}  {} → {}", d.what, d.file, d.old, d.new);
    }
}

fn read_file(path: &Path, env: &Env) -> Option<emit::Loaded> {
    let name = path.display().to_string();
    let bytes = match fs_err::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("error: cannot read `{name}`: {err}");
            return None;
        }
    };
    let loaded = emit::load(&name, &bytes);
    render(&loaded, &loaded.diagnostics, env);
    Some(loaded)
}

/// Renders diagnostics of the emit file with its text, as spec diagnostics are.
fn render(loaded: &emit::Loaded, diagnostics: &[Diagnostic], env: &Env) {
    let as_spec = spec::Loaded {
        file_name: loaded.file_name.clone(),
        text: loaded.text.clone(),
        tree: None,
        spec: None,
        diagnostics: Vec::new(),
    };
    render_diagnostics(&as_spec, diagnostics, env);
}

/// Runs `hubsweep emit`.
pub fn run(args: EmitArgs, env: &Env) -> ExitCode {
    let Some(loaded) = read_file(&args.file, env) else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let Some(file) = loaded.file.as_ref().filter(|_| !loaded.has_errors()) else {
        eprintln!("{}: invalid emit file; nothing written", loaded.file_name);
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let files = match runtime.block_on(compute(&loaded, file, env)) {
        Ok(files) => files,
        Err(Stop::Located(diagnostics)) => {
            render(&loaded, &loaded.locate(diagnostics), env);
            eprintln!("{}: cannot emit; nothing written", loaded.file_name);
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        Err(Stop::Failed(failure)) => {
            eprintln!("error: {}", error_chain(&failure));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    if let Some(dir) = &args.check {
        let mut existing = |path: &str| std::fs::read(dir.join(path)).ok();
        let differences = emit::check::compare(&files, &mut existing);
        if differences.is_empty() {
            eprintln!(
                "up to date: {} files in {} match the sources",
                files.len(),
                dir.display()
            );
            return ExitCode::from(EXIT_OK);
        }
        print_differences(&differences);
        eprintln!(
            "{} difference(s) between {} and the pinned sources: rerun `hubsweep emit {} --out {}`",
            differences.len(),
            dir.display(),
            args.file.display(),
            dir.display()
        );
        return ExitCode::from(EXIT_NEGATIVE);
    }
    let Some(dir) = &args.out else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    for file in &files {
        if let Err(e) = write_atomically(&dir.join(&file.path), &file.bytes) {
            eprintln!(
                "error: cannot write `{}`: {e}",
                dir.join(&file.path).display()
            );
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    }
    eprintln!("emitted {} files into {}", files.len(), dir.display());
    ExitCode::from(EXIT_OK)
}
