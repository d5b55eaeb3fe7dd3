//! `hubsweep verify REPO[@REV] [--deep]`.

use std::process::ExitCode;

use clap::Args;
use hubsweep::hub::server::{Server, ServerConfig, ServerHandle};
use hubsweep::hub::{HubClient, Repo, RepoId, Token};
use hubsweep::ledger::verify::{self, CheckKind, VerifyOptions, VerifyReport};

use hubsweep::spec::reference::{Reference, RepoReference};
use hubsweep::spec::{HubKind, RepoType};

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

/// Parses a results repo by the one reference grammar ([`Reference`]): `local://[datasets/|models/]NS/NAME[@REV]`
/// (a dataset unless written otherwise) or `hf://datasets|models/NS/NAME[@REV]`.
pub fn parse_repo(text: &str) -> Result<RepoRef, String> {
    let write = "write `local://NS/NAME` or `hf://datasets/NS/NAME`";
    let reference = match Reference::parse(text) {
        Ok(Reference::Repo(repo)) => repo,
        Ok(Reference::Folder(_)) => return Err(format!("`{text}` is not a repo URL: {write}")),
        Err(e) => return Err(format!("{e}: {write}")),
    };
    let dataset = match (reference.repo_type, reference.hub) {
        (Some(kind), _) => kind == RepoType::Dataset,
        (None, HubKind::Local) => true,
        (None, HubKind::Hf) => {
            return Err(format!(
                "`{text}` does not say whether the repo is a dataset or a model: write `hf://datasets/{}`",
                reference.repo_id
            ));
        }
    };
    let (ns, repo_name) = reference
        .repo_id
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: the repo id must be `NAMESPACE/NAME`"))?;
    let id = RepoId::new(ns, repo_name).map_err(|e| format!("`{text}`: {e}"))?;
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

/// The embedded hub over `$HUBSWEEP_HOME/hub`, served in-process, and a client for it.
pub async fn open_embedded_hub(env: &Env) -> Result<(HubClient, ServerHandle), String> {
    let store = env.hubsweep_home().join("hub");
    let mut config = ServerConfig::new(store.clone());
    config.addr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let handle = Server::start(config).await.map_err(|e| {
        format!(
            "cannot open the embedded hub over `{}`: {}",
            store.display(),
            super::error_chain(&e)
        )
    })?;
    let client = HubClient::builder(handle.base_url())
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    Ok((client, handle))
}

/// A client for the repo's hub: the embedded store in `$HUBSWEEP_HOME/hub` (served in-process)
/// or `HF_ENDPOINT` with `HF_TOKEN`.
pub async fn open_hub(
    target: &RepoRef,
    env: &Env,
) -> Result<(HubClient, Option<ServerHandle>), String> {
    if target.local {
        let (client, handle) = open_embedded_hub(env).await?;
        Ok((client, Some(handle)))
    } else {
        let client = HubClient::builder(&env.hf_endpoint)
            .map(|b| b.token(env.hf_token.clone().map(Token::new)))
            .and_then(|b| b.build())
            .map_err(|e| format!("cannot use `HF_ENDPOINT` `{}`: {e}", env.hf_endpoint))?;
        Ok((client, None))
    }
}

/// `hubsweep verify`.
pub fn run(args: VerifyArgs, env: &Env) -> ExitCode {
    let target = match parse_repo(&args.repo) {
        Ok(t) => t,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    runtime.block_on(async {
        let (client, server) = match open_hub(&target, env).await {
            Ok(x) => x,
            Err(message) => {
                eprintln!("error: {message}");
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
                eprintln!("error: {}", super::error_chain(&e));
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
