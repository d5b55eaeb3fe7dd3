//! Load a spec, open it as a session, pin it once and run it through the library API — what
//! `hubsweep run` does, minus the terminal. Usage:
//! `cargo run --release --example run_sweep -- sweeps/quickstart.yaml`
//! (writes to the embedded hub under `$HUBSWEEP_HOME`, default `~/.hubsweep`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use hubsweep::exec::{
    self, Embedded, FailurePolicy, HubSettings, RunEvent, RunSettings, Session, UnitSelection,
};
use hubsweep::model::HubSource;
use hubsweep::sink::CommitPolicy;

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

    // The embedded hub over a store of our own (started because `local://` repos live there),
    // with the bundled models imported on first use.
    let home = std::env::var_os("HUBSWEEP_HOME").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".hubsweep"),
        PathBuf::from,
    );
    let hubs = HubSettings {
        hf: HubSource {
            endpoint: "https://huggingface.co".into(),
            token: None,
            cache_dir: home.join("hf-cache"),
            offline: false,
            xet: true,
        },
        home,
    };
    let spec_dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let session = Session::open(spec, &hubs, spec_dir, Embedded::IfUsed).await?;
    let events: exec::RunEvents = Arc::new(|event: &RunEvent| {
        if let RunEvent::Pinned { label, commit, .. } = event {
            println!("pinned {label} at {commit}");
        }
    });
    let pinned = session.pin(&events).await?;
    let settings = RunSettings {
        spec_file: (path.display().to_string(), text),
        failure: FailurePolicy::FailFast,
        upload_slots: exec::DEFAULT_UPLOAD_SLOTS,
        commits: CommitPolicy::default(),
        dry_run: false,
        perturb_capture_for_tests: false,
        evict_models: false,
    };
    let report = session
        .run(
            pinned,
            &settings,
            &UnitSelection::All,
            events,
            Default::default(),
        )
        .await?;
    println!(
        "{} nodes: {} executed, {} already done, {} bytes uploaded in {} commits",
        report.nodes, report.executed, report.skipped, report.sink.bytes_sent, report.sink.commits
    );
    session.close().await;
    Ok(())
}
