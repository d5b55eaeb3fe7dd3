//! `hubsweep hub …`: serve the embedded Hub, import a local model folder, mirror a repo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use hubsweep::exec::EmbeddedHub;
use hubsweep::hub::download::{Downloader, HubSource};
use hubsweep::hub::server::{Limits, Server, ServerConfig};
use hubsweep::hub::{FolderUpload, HubClient, HubEvent, Repo, RepoId, RepoType, Token};

use hubsweep::spec::HubKind;
use hubsweep::spec::RepoType as SpecRepoType;
use hubsweep::spec::reference::Reference;

use super::shared::Failure;
use super::{EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_OK, Env};

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
    /// Upload a local HF-layout folder (config, tokenizer, safetensors…) to a repo, as one
    /// commit; prints a JSON summary on stdout. Token: HF_TOKEN.
    Import(ImportArgs),
    /// Copy the head of a repo from one Hub to another (e.g. an offline run to huggingface.co);
    /// prints a JSON summary on stdout. Tokens: HF_TOKEN for --to, HUBSWEEP_MIRROR_FROM_TOKEN
    /// for --from.
    Mirror(MirrorArgs),
    /// Download one file into the HF cache (shared with Python; the token goes only to the Hub,
    /// never to its storage); prints its local path on stdout. Reads HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE.
    Download(DownloadArgs),
}

#[derive(Debug, Args)]
struct DownloadArgs {
    /// The repo: `NS/NAME`, `hf://[datasets/]NS/NAME` or `local://NS/NAME` (the embedded hub),
    /// with an optional `@REV`.
    repo: String,
    /// Path of the file in the repo.
    file: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Repo type.
    #[arg(long = "type", value_enum, default_value = "model")]
    kind: KindArg,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The folder to upload (HF layout: config.json, weights, tokenizer.json).
    #[arg(required_unless_present = "gguf", conflicts_with = "gguf")]
    dir: Option<PathBuf>,
    /// A Llama-architecture GGUF file instead: dequantized to an HF layout first (weights,
    /// config.json, a tokenizer.json from the GGUF metadata), then uploaded.
    #[arg(long, value_name = "FILE")]
    gguf: Option<PathBuf>,
    /// Import into the embedded hub's store (`$HUBSWEEP_HOME/hub`), so a spec can use the model
    /// as `local://NS/NAME`.
    #[arg(long, conflicts_with = "endpoint")]
    local: bool,
    /// Target repo: `NS/NAME`, `hf://[datasets/]NS/NAME`, or `local://NS/NAME` (as `--local`),
    /// with an optional `@BRANCH`.
    #[arg(long)]
    repo: String,
    /// Hub endpoint (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Branch to commit to.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Repo type.
    #[arg(long = "type", value_enum, default_value = "model")]
    kind: KindArg,
    /// Commit message.
    #[arg(long)]
    message: Option<String>,
}

#[derive(Debug, Args)]
struct MirrorArgs {
    /// The repo, `namespace/name` (same id on both sides).
    repo: RepoId,
    /// Source Hub endpoint.
    #[arg(long)]
    from: String,
    /// Target Hub endpoint.
    #[arg(long)]
    to: String,
    /// Branch to copy (its head on the source becomes its head on the target).
    #[arg(long, default_value = "main")]
    revision: String,
    /// Repo type.
    #[arg(long = "type", value_enum, default_value = "model")]
    kind: KindArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Model,
    Dataset,
}

/// A repo argument by the one reference grammar ([`Reference`]): its hub, the repo (of the
/// type written, else `kind`) and the revision (after `@`, else `revision`).
fn repo_arg(text: &str, kind: KindArg, revision: &str) -> Result<(HubKind, Repo, String), Failure> {
    let reference = match Reference::parse(text) {
        Ok(Reference::Repo(reference)) => reference,
        Ok(Reference::Folder(_)) => {
            return Err(Failure::new(format!(
                "`{text}` is not a repo: write `NS/NAME`, `hf://[datasets/]NS/NAME` or `local://NS/NAME`"
            )));
        }
        Err(error) => return Err(Failure::of(error)),
    };
    let id: RepoId = reference
        .repo_id
        .parse()
        .map_err(|e| Failure::because(format!("`{text}`"), e))?;
    let kind = match reference.repo_type {
        Some(SpecRepoType::Model) => KindArg::Model,
        Some(SpecRepoType::Dataset) => KindArg::Dataset,
        None => kind,
    };
    let revision = reference.revision.unwrap_or_else(|| revision.to_owned());
    Ok((reference.hub, kind.repo(id), revision))
}

impl KindArg {
    fn repo(self, id: RepoId) -> Repo {
        match self {
            KindArg::Model => Repo {
                kind: RepoType::Model,
                id,
            },
            KindArg::Dataset => Repo {
                kind: RepoType::Dataset,
                id,
            },
        }
    }
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
    /// URL clients use to reach this server when it is not the bound loopback address
    /// (e.g. `http://hubhost:8080` with `--addr 0.0.0.0:8080`).
    #[arg(long)]
    public_url: Option<String>,
    /// Serve the fault-injection and counter endpoints (`/_admin/faults`, `/_admin/stats`).
    #[arg(long)]
    admin: bool,
    /// Speak Xet besides LFS (token routes, CAS API, the `xet` batch transfer); the default.
    #[arg(long, overrides_with = "no_xet")]
    xet: bool,
    /// Speak LFS only: Xet clients must then set `HF_HUB_DISABLE_XET=1`.
    #[arg(long, overrides_with = "xet")]
    no_xet: bool,
}

/// Runs a `hub` subcommand.
pub fn run(args: HubArgs, env: &Env) -> ExitCode {
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
        HubCommand::Serve(serve) => runtime.block_on(run_serve(serve, env)),
        HubCommand::Import(import) => runtime.block_on(interruptible(run_import(import, env))),
        HubCommand::Mirror(mirror) => runtime.block_on(interruptible(run_mirror(mirror, env))),
        HubCommand::Download(download) => {
            runtime.block_on(interruptible(run_download(download, env)))
        }
    }
}

/// Runs a command until it ends or Ctrl-C (exit 130; nothing half-committed: a commit is one
/// request, and uploaded-but-uncommitted objects are invisible).
async fn interruptible(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    tokio::select! {
        code = command => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("hub: interrupted");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}

fn token_of(value: &Option<String>) -> Option<Token> {
    value.clone().map(Token::new)
}

/// A client for `endpoint` whose progress goes to stderr as plain lines.
fn cli_client(
    endpoint: &str,
    token: Option<Token>,
    xet: bool,
) -> Result<HubClient, hubsweep::hub::HubError> {
    let events = std::sync::Arc::new(|event: &HubEvent| match event {
        HubEvent::ObjectUploaded { oid, size } => {
            eprintln!("hub: uploaded {} ({size} bytes)", &oid[..12])
        }
        HubEvent::ObjectSkipped { oid, .. } => eprintln!("hub: already there {}", &oid[..12]),
        HubEvent::Retrying {
            url,
            attempt,
            delay,
            reason,
        } => {
            eprintln!(
                "hub: retry {attempt} of {url} in {:.1}s: {reason}",
                delay.as_secs_f64()
            )
        }
        HubEvent::BatchRenewed { oid } => {
            eprintln!("hub: presigned URLs expired, renewed for {}", &oid[..12])
        }
        HubEvent::Committed { commit, recovered } => {
            eprintln!(
                "hub: committed {commit}{}",
                if *recovered {
                    " (answer lost, confirmed from the hub)"
                } else {
                    ""
                }
            )
        }
        HubEvent::XetStored {
            oid,
            sent,
            deduplicated,
            ..
        } => eprintln!(
            "hub: {} through Xet: {sent} bytes sent, {deduplicated} found stored",
            &oid[..12]
        ),
        HubEvent::XetTokenRefreshed { .. } => eprintln!("hub: Xet token refreshed"),
        HubEvent::ObjectStarted { .. } | HubEvent::PartUploaded { .. } => {}
    });
    HubClient::builder(endpoint)?
        .token(token)
        .events(events)
        .xet(xet)
        .build()
}

fn summary_json(repo: &Repo, upload: &FolderUpload) -> serde_json::Value {
    serde_json::json!({
        "repo": repo.id.to_string(),
        "commit": upload.commit.as_ref().map(|c| c.commit_oid.clone()),
        "changed": upload.changed,
        "unchanged": upload.unchanged,
        "deleted": upload.deleted,
        "lfs_uploaded": upload.lfs_uploaded,
        "lfs_skipped": upload.lfs_skipped,
    })
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", super::shared::error_chain(error));
    ExitCode::from(EXIT_CANNOT_RUN)
}

/// `hub import`: one library call, [`HubClient::upload_folder`], after creating the repo.
async fn run_import(args: ImportArgs, env: &Env) -> ExitCode {
    // A GGUF becomes an HF-layout folder first (model files, not artifacts: a temp folder is
    // fine), removed again when the import is done.
    let converted = match &args.gguf {
        Some(gguf) => {
            let out = std::env::temp_dir().join(format!("hubsweep-gguf-{}", std::process::id()));
            match hubsweep::model::gguf::convert_to_dir(gguf, &out) {
                Ok(_) => Some(out),
                Err(error) => {
                    let _ = fs_err::remove_dir_all(&out);
                    eprintln!(
                        "error: cannot convert `{}`: {}",
                        gguf.display(),
                        super::shared::error_chain(&error)
                    );
                    return ExitCode::from(EXIT_CANNOT_RUN);
                }
            }
        }
        None => None,
    };
    let dir = match (&converted, &args.dir) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => {
            eprintln!("error: give a folder or `--gguf FILE`");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let code = import_dir(&args, &dir, env).await;
    if let Some(out) = converted {
        let _ = fs_err::remove_dir_all(out);
    }
    code
}

async fn import_dir(args: &ImportArgs, dir: &std::path::Path, env: &Env) -> ExitCode {
    if !dir.is_dir() {
        eprintln!("error: `{}` is not a folder", dir.display());
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let (repo, revision, local) = match repo_arg(&args.repo, args.kind, &args.revision) {
        // A bare `NS/NAME` goes where `--local` says; a URL says it itself.
        Ok((HubKind::Hf, _, _)) if args.local && args.repo.starts_with("hf://") => {
            eprintln!(
                "error: `--local` imports into the embedded hub, but `{}` is on the Hub",
                args.repo
            );
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
        Ok((hub, repo, revision)) => (repo, revision, args.local || hub == HubKind::Local),
        Err(failure) => return fail(&failure),
    };
    let mut embedded = None;
    let endpoint = if local {
        let mut config = ServerConfig::new(env.hubsweep_home().join("hub"));
        config.addr = ([127, 0, 0, 1], 0).into();
        match Server::start(config).await {
            Ok(server) => {
                let url = server.base_url().to_owned();
                embedded = Some(server);
                url
            }
            Err(error) => return fail(&error),
        }
    } else {
        args.endpoint
            .clone()
            .unwrap_or_else(|| env.hf_endpoint.clone())
    };
    let token = if local { None } else { token_of(&env.hf_token) };
    let client = match cli_client(&endpoint, token, !env.hf_hub_disable_xet) {
        Ok(client) => client,
        Err(error) => return fail(&error),
    };
    let source = args.gguf.as_deref().unwrap_or(dir);
    let message = args
        .message
        .clone()
        // The name, not the path: the same content imports to the same commit on every machine.
        .unwrap_or_else(|| {
            let name = source.file_name().unwrap_or(source.as_os_str());
            format!("Import {}", name.to_string_lossy())
        });
    let result = async {
        client.create_repo(&repo, false, true).await?;
        client.upload_folder(&repo, &revision, dir, &message).await
    }
    .await;
    if let Some(server) = embedded {
        server.shutdown().await;
    }
    match result {
        Ok(upload) => {
            println!("{}", summary_json(&repo, &upload));
            ExitCode::from(EXIT_OK)
        }
        Err(error) => fail(&error),
    }
}

/// `hub mirror`: [`HubClient::mirror_from`], LFS objects staged in the temp folder.
async fn run_mirror(args: MirrorArgs, env: &Env) -> ExitCode {
    let xet = !env.hf_hub_disable_xet;
    let clients = cli_client(&args.from, token_of(&env.mirror_from_token), xet)
        .and_then(|from| Ok((from, cli_client(&args.to, token_of(&env.hf_token), xet)?)));
    let (from, to) = match clients {
        Ok(clients) => clients,
        Err(error) => return fail(&error),
    };
    let repo = args.kind.repo(args.repo);
    match to
        .mirror_from(&from, &repo, &args.revision, &std::env::temp_dir())
        .await
    {
        Ok(report) => {
            let mut summary = summary_json(&repo, &report.upload);
            summary["source_commit"] = serde_json::json!(report.source_commit);
            println!("{summary}");
            ExitCode::from(EXIT_OK)
        }
        Err(error) => fail(&error),
    }
}

async fn run_serve(args: ServeArgs, env: &Env) -> ExitCode {
    let mut config = ServerConfig::new(args.dir.unwrap_or_else(|| env.hubsweep_home().join("hub")));
    config.addr = args.addr;
    config.token = args.token.map(Token::new);
    config.public_url = args.public_url;
    config.admin = args.admin;
    config.xet = (config.xet || args.xet) && !args.no_xet;
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
            eprintln!("error: {}", super::shared::error_chain(&error));
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

/// The download settings the environment asks for.
fn download_settings(env: &Env) -> HubSource {
    HubSource {
        endpoint: env.hf_endpoint.clone(),
        token: token_of(&env.hf_token),
        cache_dir: env.hf_hub_cache_dir(),
        offline: env.hf_hub_offline,
        xet: !env.hf_hub_disable_xet,
    }
}

async fn run_download(args: DownloadArgs, env: &Env) -> ExitCode {
    let (hub, repo, revision) = match repo_arg(&args.repo, args.kind, &args.revision) {
        Ok(parsed) => parsed,
        Err(failure) => return fail(&failure),
    };
    // A `local://` repo comes from the embedded hub, served in-process, into the cache `run`
    // keeps for it (`$HUBSWEEP_HOME/cache`).
    let mut embedded = None;
    let mut settings = download_settings(env);
    if hub == HubKind::Local {
        match EmbeddedHub::start(&env.hubsweep_home(), !env.hf_hub_disable_xet).await {
            Ok(hub) => {
                settings = HubSource {
                    endpoint: hub.base_url().to_owned(),
                    token: None,
                    cache_dir: env.hubsweep_home().join("cache"),
                    offline: false,
                    xet: !env.hf_hub_disable_xet,
                };
                embedded = Some(hub);
            }
            Err(error) => return fail(&error),
        }
    }
    let result = match Downloader::new(settings) {
        Ok(downloader) => downloader.get(&repo, &revision, &args.file).await,
        Err(error) => return fail(&error),
    };
    if let Some(handle) = embedded {
        handle.shutdown().await;
    }
    match result {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::from(EXIT_OK)
        }
        Err(error) => fail(&error),
    }
}
