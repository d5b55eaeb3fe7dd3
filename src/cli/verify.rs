//! `hubsweep verify REPO[@REV] [--deep]`.

use std::process::ExitCode;

use clap::Args;
use hubsweep::ledger::verify::{self, CheckKind, VerifyOptions, VerifyReport};

use super::shared::{RepoRef, error_chain, open_hub, parse_repo, runtime};
use super::{EXIT_CANNOT_RUN, EXIT_NEGATIVE, EXIT_OK, Env};

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The results repo, as in a spec's `output:` (`local://NS/NAME`, `hf://datasets/NS/NAME`),
    /// with an optional `@REV` (branch, tag or commit sha; default `main`).
    #[arg(value_name = "REPO[@REV]")]
    repo: String,
    /// Also download every file (into memory), re-hash it, parse its header and recompute the
    /// spectra from the artifacts.
    #[arg(long)]
    deep: bool,
    /// Files hashed at once with `--deep` (one more downloads ahead of them).
    #[arg(long, default_value_t = 4, value_name = "N")]
    jobs: usize,
}

/// `hubsweep verify`.
pub fn run(args: VerifyArgs, env: &Env) -> ExitCode {
    let target = match parse_repo(&args.repo) {
        Ok(t) => t,
        Err(failure) => {
            eprintln!("error: {}", error_chain(&failure));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let (client, server) = match open_hub(&target, env).await {
            Ok(x) => x,
            Err(error) => {
                eprintln!("error: {}", error_chain(&error));
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        };
        let options = VerifyOptions {
            deep: args.deep,
            concurrency: args.jobs.max(1),
        };
        let started = std::time::Instant::now();
        let outcome = verify::verify(&client, &target.repo, &target.revision, &options).await;
        if let Some(server) = server {
            server.shutdown().await;
        }
        match outcome {
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                ExitCode::from(EXIT_CANNOT_RUN)
            }
            Ok(report) => {
                print_report(&report, &target, started.elapsed());
                if report.passed() {
                    ExitCode::from(EXIT_OK)
                } else {
                    ExitCode::from(EXIT_NEGATIVE)
                }
            }
        }
    })
}

fn print_report(report: &VerifyReport, target: &RepoRef, elapsed: std::time::Duration) {
    println!(
        "{}@{} ({}): {} nodes, {} mode",
        target.display,
        target.revision,
        &report.head[..report.head.len().min(12)],
        report.nodes,
        if report.deep { "deep" } else { "shallow" }
    );
    println!(
        "{:<11} {:>9} {:>7}  {:<7} what",
        "check", "checked", "failed", "status"
    );
    for check in CheckKind::ALL {
        let checked = report.checked.get(&check).copied().unwrap_or(0);
        let failed = report.failures_of(check);
        let status = if check.is_deep() && !report.deep {
            "skipped"
        } else if failed > 0 {
            "FAIL"
        } else {
            "ok"
        };
        println!(
            "{:<11} {:>9} {:>7}  {:<7} {}",
            check.name(),
            checked,
            failed,
            status,
            check.describe()
        );
    }
    if !report.failures.is_empty() {
        println!();
        println!("failures:");
        for f in &report.failures {
            println!(
                "  {:<10} {:<22} {}: {}",
                f.check.name(),
                f.node.as_deref().unwrap_or("-"),
                f.file.as_deref().unwrap_or("-"),
                f.message
            );
        }
    }
    if report.failed_nodes > 0 {
        eprintln!(
            "note: {} node(s) have only failure records (the run did not finish them)",
            report.failed_nodes
        );
    }
    let secs = elapsed.as_secs_f64();
    if report.deep {
        // Throughput over the deep phase alone (downloads, hashing, recomputation).
        let deep_secs = report.deep_time.as_secs_f64();
        eprintln!(
            "hashed {} bytes in {deep_secs:.2}s ({:.1} MB/s); checked in {secs:.2}s",
            report.bytes_hashed,
            report.bytes_hashed as f64 / deep_secs.max(1e-9) / 1e6
        );
    } else {
        eprintln!("checked in {secs:.2}s");
    }
    eprintln!(
        "{}",
        if report.passed() {
            "verified: every check passed"
        } else {
            "NOT verified: see the failures above"
        }
    );
}
