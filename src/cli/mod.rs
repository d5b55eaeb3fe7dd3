//! Command-line front end: argument parsing, environment, printing and exit codes.
//!
//! Exit codes are a contract (README): 0 success, 1 ran but negative, 2 could not run,
//! 130 interrupted. stdout carries data only; diagnostics and progress go to stderr.

mod capture;
mod emit;
mod hub;
mod inspect;
mod report;
mod reproduce;
mod run;
mod shared;
mod slurm;
mod spec;
mod verify;
mod worker;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: the command ran and the answer is positive.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran but the answer is negative (failed nodes, verify mismatch).
#[allow(dead_code)]
pub const EXIT_NEGATIVE: u8 = 1;
/// Exit code: the command could not run (usage, invalid spec, auth).
pub const EXIT_CANNOT_RUN: u8 = 2;
/// Exit code: interrupted after the ledger was flushed.
#[allow(dead_code)]
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "hubsweep",
    version,
    about = "Declarative activation sweeps over model families, checkpoints and layers, streamed to the Hugging Face Hub",
    after_help = "Exit codes: 0 success, 1 ran but negative, 2 could not run, 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve, import into and mirror between Hub-compatible servers.
    Hub(hub::HubArgs),
    /// Run one forward pass and write the named activations (like `run_with_cache`).
    Capture(capture::CaptureArgs),
    /// Show a model's dimensions, dtype and hook names.
    Inspect(inspect::InspectArgs),
    /// Draw an output repo's metrics: HTML with plots, or CSV / JSON.
    Report(report::ReportArgs),
    /// Run a sweep: capture, analyse, stream to the Hub, record the ledger; resumes by default.
    Run(shared::RunArgs),
    /// Show a sweep's progress against its ledger: done, pending and failed per model.
    Status(run::StatusArgs),
    /// Check spec files: every error at once, with locations and hints.
    Validate(spec::ValidateArgs),
    /// Expand a spec into its task DAG and show counts, sizes and estimates.
    Plan(spec::PlanArgs),
    /// Run one work unit (or the final step) of a sweep submitted to Slurm; jobs call this.
    Worker(worker::WorkerArgs),
    /// Check a published ledger: records, ids, DAG, index, files (and with --deep, content).
    Verify(verify::VerifyArgs),
    /// Write a paper's values, tables and figures from pinned output repos, or check them.
    Emit(emit::EmitArgs),
    /// Rebuild a published sweep from its ledger alone, rerun chosen nodes, compare bitwise.
    Reproduce(reproduce::ReproduceArgs),
}

/// The environment, read once here and passed down as explicit settings.
pub struct Env {
    color: bool,
    hf_home: Option<PathBuf>,
    hf_hub_cache: Option<PathBuf>,
    home: Option<PathBuf>,
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub hf_endpoint: String,
    /// `HF_TOKEN`.
    pub hf_token: Option<String>,
    /// `HUBSWEEP_HOME`.
    hubsweep_home: Option<PathBuf>,
    /// `HF_HUB_OFFLINE`, truthy as the Python client reads it (`1`, `true`, `yes`, `on`).
    pub hf_hub_offline: bool,
    /// `HF_HUB_DISABLE_XET`, truthy the same way: uploads go through LFS only.
    pub hf_hub_disable_xet: bool,
    /// `HUBSWEEP_MIRROR_FROM_TOKEN`: the token for the source hub of `hub mirror`.
    pub mirror_from_token: Option<String>,
    /// `HUBSWEEP_TEST_PERTURB`: TEST ONLY. `capture` makes `reproduce` perturb captured
    /// activations, so the tests can see a difference caught (docs/reproduce.md).
    pub test_perturb: Option<String>,
}

/// Whether the variable is set to `1`, `true`, `yes` or `on` (any case), as the Python client
/// reads its switches.
fn truthy(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

impl Env {
    fn from_process() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stderr().is_terminal(),
            hf_home: var("HF_HOME"),
            hf_hub_cache: var("HF_HUB_CACHE"),
            home: var("HOME"),
            hf_endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "https://huggingface.co".to_owned()),
            hf_token: std::env::var("HF_TOKEN").ok().filter(|v| !v.is_empty()),
            hubsweep_home: var("HUBSWEEP_HOME"),
            hf_hub_offline: truthy("HF_HUB_OFFLINE"),
            hf_hub_disable_xet: truthy("HF_HUB_DISABLE_XET"),
            mirror_from_token: std::env::var("HUBSWEEP_MIRROR_FROM_TOKEN")
                .ok()
                .filter(|v| !v.is_empty()),
            test_perturb: std::env::var("HUBSWEEP_TEST_PERTURB")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }

    /// `HUBSWEEP_HOME`, default `~/.hubsweep`: the embedded hub's store is `hub/` in it, and
    /// models fetched from that hub are cached in `cache/`.
    pub fn hubsweep_home(&self) -> PathBuf {
        self.hubsweep_home.clone().unwrap_or_else(|| {
            self.home
                .clone()
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".hubsweep")
        })
    }

    /// The HF hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub fn hf_hub_cache(&self) -> Option<PathBuf> {
        self.hf_hub_cache
            .clone()
            .or_else(|| self.hf_home.as_ref().map(|h| h.join("hub")))
            .or_else(|| self.home.as_ref().map(|h| h.join(".cache/huggingface/hub")))
    }

    /// [`Env::hf_hub_cache`], or `./.cache/huggingface/hub` when not even `HOME` is set.
    pub fn hf_hub_cache_dir(&self) -> PathBuf {
        self.hf_hub_cache()
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"))
    }
}

/// Parses arguments, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                EXIT_CANNOT_RUN
            } else {
                EXIT_OK
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let env = Env::from_process();
    init_logging(env.color);
    match cli.command {
        Command::Validate(args) => spec::validate(args, &env),
        Command::Plan(args) => spec::plan(args, &env),
        Command::Run(args) => match args.executor {
            shared::Executor::Local => run::run(args, &env),
            shared::Executor::Slurm => slurm::submit(&args, &env),
        },
        Command::Report(args) => report::run(args, &env),
        Command::Status(args) => run::status(args, &env),
        Command::Worker(args) => worker::worker(args, &env),
        Command::Hub(args) => hub::run(args, &env),
        Command::Capture(args) => exit_for(capture::run(&args, &env)),
        Command::Inspect(args) => exit_for(inspect::run(&args, &env)),
        Command::Verify(args) => verify::run(args, &env),
        Command::Reproduce(args) => reproduce::run(args, &env),
        Command::Emit(args) => emit::run(args, &env),
    }
}

/// `RUST_LOG` (`debug`, `hubsweep=debug,tower_http=info`, …): log lines on stderr, through
/// `tracing`; nothing is logged when it is unset or empty. stdout never carries them.
fn init_logging(color: bool) {
    let Some(filter) = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(tracing_subscriber::EnvFilter::new)
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .try_init();
}

/// Exit code for a command that either succeeds or cannot run, printing the reason.
fn exit_for(outcome: Result<(), shared::Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(failure) => {
            eprintln!("error: {}", shared::error_chain(&failure));
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}
