//! Load a spec, plan it, and run it through the library API — what `hubsweep run` does, minus
//! the terminal. Usage: `cargo run --release --example run_sweep -- sweeps/quickstart.yaml`
//! (writes to the embedded hub under `$HUBSWEEP_HOME`, default `~/.hubsweep`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use hubsweep::exec::{self, FailurePolicy, RunEvent, RunSettings, Sources};
use hubsweep::hub::HubClient;
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::model::{DeviceSpec, HubSource};
use hubsweep::sink::CommitPolicy;
use hubsweep::spec::ModelSource;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "sweeps/quickstart.yaml".into()),
    );
    let text = std::fs::read_to_string(&path)?;
    let loaded = hubsweep::spec::load(&path.display().to_string(), text.as_bytes());
    for d in &loaded.diagnostics {
        eprintln!("{:?}: {} ({})", d.severity, d.message, d.path);
    }
    let spec = loaded.spec.ok_or("invalid spec")?;

    // The embedded hub over a store of our own; `local://` repos live there.
    let home = std::env::var_os("HUBSWEEP_HOME").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".hubsweep"),
        PathBuf::from,
    );
    let mut config = ServerConfig::new(home.join("hub"));
    config.addr = ([127, 0, 0, 1], 0).into();
    let server = Server::start(config).await?;
    let client = HubClient::builder(server.base_url())?.build()?;
    for group in &spec.models {
        for instance in hubsweep::spec::expand_group(group, &mut Vec::new()) {
            if let ModelSource::Local(id) = &instance.source {
                hubsweep::hub::bundled::ensure(&client, id).await?;
            }
        }
    }
    let hf_cache = home.join("hf-cache");
    let settings = RunSettings {
        output_client: client.clone(),
        sources: Sources {
            hf: HubSource {
                endpoint: "https://huggingface.co".into(),
                token: None,
                cache_dir: hf_cache,
                offline: false,
            },
            local: Some(HubSource {
                endpoint: server.base_url().into(),
                token: None,
                cache_dir: home.join("cache"),
                offline: false,
            }),
            spec_dir: path.parent().map(PathBuf::from).unwrap_or_default(),
            pinned: Default::default(),
            pinned_data: None,
        },
        spec_file: (path.display().to_string(), text),
        failure: FailurePolicy::FailFast,
        upload_slots: exec::DEFAULT_UPLOAD_SLOTS,
        commits: CommitPolicy::default(),
        dry_run: false,
        perturb_capture_for_tests: false,
        evict_models: false,
    };
    let events = Arc::new(|event: &RunEvent| {
        if let RunEvent::Pinned { label, commit, .. } = event {
            println!("pinned {label} at {commit}");
        }
    });
    let report = exec::run(
        &spec,
        &settings,
        DeviceSpec::Cpu,
        events,
        Default::default(),
    )
    .await?;
    println!(
        "{} nodes: {} executed, {} already done, {} bytes uploaded in {} commits",
        report.nodes, report.executed, report.skipped, report.sink.bytes_sent, report.sink.commits
    );
    server.shutdown().await;
    Ok(())
}
