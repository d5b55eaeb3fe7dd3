//! The `hubsweep` binary: a thin shell over the library. Everything that touches the
//! terminal, the environment or the process exit code lives in `cli/`.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

mod cli;

fn main() -> std::process::ExitCode {
    single_threaded_elementwise_ops();
    cli::main()
}

/// candle runs element-wise ops on a thread pool of its own, beside rayon's pool that runs the
/// matrix products, and its callers spin while they wait for that pool. When every core is
/// busy (two cores: the products, uploads, hashing, or anything else on the machine) the
/// spinning takes the cores the work needs: a SmolLM2-135M forward pass used 1.8× the CPU
/// seconds and 1.7× the wall time with the pool as with none (`scripts/bench/capture-smollm2.sh`,
/// docs/models.md). The matrix products, ~75% of the work, stay parallel. A user who sets
/// `CANDLE_NUM_THREADS` keeps their value. candle reads the variable once, when the pool is
/// first used, so it must be set before any model code runs.
#[allow(unsafe_code)]
fn single_threaded_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in `main`, before this process starts any other thread, so
        // nothing can read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
