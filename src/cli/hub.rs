//! `hubsweep hub …`: serve the embedded Hub, import a local model folder, mirror a repo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use hubsweep::hub::Token;
use hubsweep::hub::server::{Limits, Server, ServerConfig};

use super::{EXIT_CANNOT_RUN, EXIT_OK};

/// `hubsweep hub`.
#[derive(Debug, Args)]
pub struct HubArgs {
    #[command(subcommand)]
    command: HubCommand,
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Serve a Hub-compatible API over a local store until Ctrl-C (prints its URL on stdout).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Store directory (default: $HUBSWEEP_HOME/hub, else ~/.hubsweep/hub).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address to bind; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Token required for writes (reads are open).
    #[arg(long)]
    token: Option<String>,
    /// Multipart part size in bytes.
    #[arg(long)]
    part_size: Option<u64>,
    /// Objects larger than this many bytes are uploaded as multipart.
    #[arg(long)]
    multipart_threshold: Option<u64>,
    /// Commits per repo per hour before 429 (the real Hub: 128).
    #[arg(long)]
    commits_per_hour: Option<u32>,
}

/// Runs a `hub` subcommand.
pub fn run(args: HubArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    match args.command {
        HubCommand::Serve(serve) => runtime.block_on(run_serve(serve)),
    }
}

fn default_store_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("HUBSWEEP_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".hubsweep").join("hub")
}

async fn run_serve(args: ServeArgs) -> ExitCode {
    let mut config = ServerConfig::new(args.dir.unwrap_or_else(default_store_dir));
    config.addr = args.addr;
    config.token = args.token.map(Token::new);
    let defaults = Limits::default();
    config.limits = Limits {
        part_size: args.part_size.unwrap_or(defaults.part_size),
        multipart_threshold: args
            .multipart_threshold
            .unwrap_or(defaults.multipart_threshold),
        commits_per_hour: args.commits_per_hour,
        ..defaults
    };
    let store = config.dir.clone();
    let handle = match Server::start(config).await {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("error: {}", super::error_chain(&error));
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    println!("{}", handle.base_url());
    eprintln!(
        "hub: serving `{}` on {} (Ctrl-C stops)",
        store.display(),
        handle.base_url()
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("hub: shutting down");
    handle.shutdown().await;
    ExitCode::from(EXIT_OK)
}
