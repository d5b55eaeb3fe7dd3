//! `hubsweep report REPO[@REV] --out FILE`: the output repo's metrics tables as an HTML page
//! with plots, or as CSV / JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use hubsweep::analysis::Spectrum;
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::hub::{HubClient, Token};
use hubsweep::ledger::tables::{OVERLAPS_PATH, SPECTRA_PATH, WEIGHTS_PATH};
use hubsweep::report::{self, ReportData};

use super::{EXIT_CANNOT_RUN, EXIT_OK, Env};

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    /// A self-contained page with inline SVG plots.
    Html,
    /// The numbers, one CSV section per table.
    Csv,
    /// The numbers as JSON.
    Json,
}

/// `hubsweep report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The output repo as in a spec's `output:` (`local://ns/name`, `hf://datasets/ns/name`),
    /// with an optional `@REV`.
    pub repo: String,
    /// Where to write the report (`-` for stdout).
    #[arg(long)]
    pub out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "html")]
    pub format: ReportFormat,
    /// The layer whose spectrum is drawn (default: the middle one of the layers swept).
    #[arg(long)]
    pub layer: Option<u32>,
}

async fn gather(args: &ReportArgs, env: &Env) -> Result<String, String> {
    // The same `REPO[@REV]` syntax as `verify` (and a spec's `output:`).
    let target = super::verify::parse_repo(&args.repo)?;
    let mut server = None;
    let (client, file_base) = if target.local {
        let mut config = ServerConfig::new(env.hubsweep_home().join("hub"));
        config.addr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let handle = Server::start(config)
            .await
            .map_err(|e| format!("cannot open the embedded hub: {}", super::error_chain(&e)))?;
        let client = HubClient::builder(handle.base_url())
            .and_then(|b| b.build())
            .map_err(|e| e.to_string())?;
        server = Some(handle);
        // The embedded hub lives only while this command runs: no links, paths only.
        (client, String::new())
    } else {
        let client = HubClient::builder(&env.hf_endpoint)
            .map(|b| b.token(env.hf_token.clone().map(Token::new)))
            .and_then(|b| b.build())
            .map_err(|e| format!("cannot use `HF_ENDPOINT` `{}`: {e}", env.hf_endpoint))?;
        let kind = if target.display.contains("models/") {
            ""
        } else {
            "datasets/"
        };
        let base = format!(
            "{}/{kind}{}/resolve/{}/",
            env.hf_endpoint.trim_end_matches('/'),
            target.repo.id,
            target.revision
        );
        (client, base)
    };
    let fetch = |path: &'static str| {
        let (client, repo, revision) = (&client, &target.repo, &target.revision);
        async move {
            client
                .download_bytes(repo, revision, path)
                .await
                .map_err(|e| format!("cannot read `{path}`: {}", super::error_chain(&e)))
        }
    };
    let spectra = report::parse_rows(SPECTRA_PATH, &fetch(SPECTRA_PATH).await?)
        .map_err(|e| super::error_chain(&e))?;
    let overlaps = report::parse_rows(OVERLAPS_PATH, &fetch(OVERLAPS_PATH).await?)
        .map_err(|e| super::error_chain(&e))?;
    let weights = report::parse_rows(WEIGHTS_PATH, &fetch(WEIGHTS_PATH).await?)
        .map_err(|e| super::error_chain(&e))?;
    let mut data = ReportData {
        repo: target.display.clone(),
        file_base,
        spectra,
        overlaps,
        weights,
        ..ReportData::default()
    };
    // The middle one of the layers swept (a sweep may take every third layer).
    let mut layers: Vec<u32> = data.spectra.iter().filter_map(|r| r.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    data.layer = args.layer.or(layers.get(layers.len() / 2).copied());
    if matches!(args.format, ReportFormat::Html) {
        let chosen: Vec<_> = data
            .spectra
            .iter()
            .filter(|r| r.centring == "centred" && r.layer == data.layer)
            .filter_map(|r| {
                r.file
                    .clone()
                    .map(|f| (format!("{}@{} {}", r.model, r.revision, r.hook), f))
            })
            .collect();
        for (label, file) in chosen {
            let bytes = client
                .download_bytes(&target.repo, &target.revision, &file)
                .await
                .map_err(|e| format!("cannot read `{file}`: {}", super::error_chain(&e)))?;
            let spectrum =
                Spectrum::from_safetensors(&bytes).map_err(|e| format!("`{file}`: {e}"))?;
            data.layer_spectra
                .push((label, spectrum.centred.singular_values.clone()));
        }
    }
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(match args.format {
        ReportFormat::Html => report::render_html(&data),
        ReportFormat::Csv => report::render_csv(&data),
        ReportFormat::Json => report::render_json(&data),
    })
}

/// Runs `hubsweep report`.
pub fn run(args: ReportArgs, env: &Env) -> ExitCode {
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
    let text = match runtime.block_on(gather(&args, env)) {
        Ok(text) => text,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    if args.out.as_os_str() == "-" {
        print!("{text}");
    } else if let Err(e) = fs_err::write(&args.out, text) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    } else {
        eprintln!("report: {}", args.out.display());
    }
    ExitCode::from(EXIT_OK)
}
