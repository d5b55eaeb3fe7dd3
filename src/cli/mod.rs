//! Command-line front end: argument parsing, environment, printing and exit codes.
//!
//! Exit codes are a contract (DESIGN.md): 0 success, 1 ran but negative, 2 could not run,
//! 130 interrupted. stdout carries data only; diagnostics and progress go to stderr.

mod capture;
mod inspect;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: the command ran and the answer is positive.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran but the answer is negative (failed nodes, verify mismatch).
pub const EXIT_NEGATIVE: u8 = 1;
/// Exit code: the command could not run (usage, invalid spec, auth).
pub const EXIT_CANNOT_RUN: u8 = 2;
/// Exit code: interrupted after the ledger was flushed.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(name = "hubsweep", version, about = "Declarative activation sweeps streamed to the Hugging Face Hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one forward pass and write the named activations (like `run_with_cache`).
    Capture(capture::CaptureArgs),
    /// Print a model's dimensions, dtype and available hook names.
    Inspect(inspect::InspectArgs),
}

/// Parses arguments, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_CANNOT_RUN } else { EXIT_OK };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let hub_env = capture::HubEnv::from_process();
    let outcome = match &cli.command {
        Command::Capture(args) => capture::run(args, &hub_env),
        Command::Inspect(args) => inspect::run(args, &hub_env),
    };
    match outcome {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}
