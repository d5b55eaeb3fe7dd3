//! `hubsweep report REPO[@REV] --out FILE`: the output repo's metrics tables as an HTML page
//! with plots, or as CSV / JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use hubsweep::analysis::Spectrum;
use hubsweep::ledger::tables::{OVERLAPS_PATH, SPECTRA_PATH, WEIGHTS_PATH};
use hubsweep::ledger::updates::{UPDATES_PATH, UPDATES_SUMMARY_PATH};
use hubsweep::report::{self, ReportData};

use super::shared::{Failure, error_chain, open_hub, parse_repo, runtime};
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

async fn gather(args: &ReportArgs, env: &Env) -> Result<String, Failure> {
    // The same `REPO[@REV]` syntax as `verify` (and a spec's `output:`).
    let target = parse_repo(&args.repo)?;
    let (client, server) = open_hub(&target, env).await.map_err(Failure::of)?;
    let file_base = if target.local {
        // The embedded hub lives only while this command runs: no links, paths only.
        String::new()
    } else {
        let kind = if target.display.contains("models/") {
            ""
        } else {
            "datasets/"
        };
        format!(
            "{}/{kind}{}/resolve/{}/",
            env.hf_endpoint.trim_end_matches('/'),
            target.repo.id,
            target.revision
        )
    };
    let fetch = |path: &'static str| {
        let (client, repo, revision) = (&client, &target.repo, &target.revision);
        async move {
            client
                .download_bytes(repo, revision, path)
                .await
                .map_err(|e| Failure::because(format!("cannot read `{path}`"), e))
        }
    };
    let spectra =
        report::parse_rows(SPECTRA_PATH, &fetch(SPECTRA_PATH).await?).map_err(Failure::of)?;
    let overlaps =
        report::parse_rows(OVERLAPS_PATH, &fetch(OVERLAPS_PATH).await?).map_err(Failure::of)?;
    let weights =
        report::parse_rows(WEIGHTS_PATH, &fetch(WEIGHTS_PATH).await?).map_err(Failure::of)?;
    // Only sweeps with adapters have the update tables.
    let (updates, update_summary) = match fetch(UPDATES_PATH).await {
        Ok(bytes) => (
            report::parse_rows(UPDATES_PATH, &bytes).map_err(Failure::of)?,
            report::parse_rows(UPDATES_SUMMARY_PATH, &fetch(UPDATES_SUMMARY_PATH).await?)
                .map_err(Failure::of)?,
        ),
        Err(_) => (Vec::new(), Vec::new()),
    };
    let mut data = ReportData {
        repo: target.display.clone(),
        file_base,
        spectra,
        overlaps,
        weights,
        updates,
        update_summary,
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
                .map_err(|e| Failure::because(format!("cannot read `{file}`"), e))?;
            let spectrum = Spectrum::from_safetensors(&bytes)
                .map_err(|e| Failure::because(format!("`{file}`"), e))?;
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
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let text = match runtime.block_on(gather(&args, env)) {
        Ok(text) => text,
        Err(failure) => {
            eprintln!("error: {}", error_chain(&failure));
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
