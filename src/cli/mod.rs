//! Command-line front end: argument parsing, environment, printing and exit codes.
//!
//! Exit codes are a contract (DESIGN.md): 0 success, 1 ran but negative, 2 could not run,
//! 130 interrupted. stdout carries data only; diagnostics and progress go to stderr.

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
#[command(
    name = "hubsweep",
    version,
    about = "Declarative activation sweeps streamed to the Hugging Face Hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

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
    match cli.command {}
}
