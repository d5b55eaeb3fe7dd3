//! The `hubsweep` binary: a thin shell over the library. Everything that touches the
//! terminal, the environment or the process exit code lives in `cli/`.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
