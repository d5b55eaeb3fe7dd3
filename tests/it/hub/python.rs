//! The official Python client `huggingface_hub==2.4.0` against the embedded server: every
//! upload mode (inline, basic LFS, multipart LFS), downloads with equal sha256, listing,
//! `repo_info().sha`, a refused stale `parent_commit`, `create_pr`, `snapshot_download`.

use crate::common::TestContext;

use super::{hub_python, start_server};

const PEER_SCRIPT: &str = include_str!("python_peer.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_round_trips_through_the_server() {
    let Some(python) = hub_python() else { return };
    let context = TestContext::new();
    let token = "hf_test_token_for_python";
    // 20 MB stays basic, 100 MB goes multipart in 7 parts of 16 MiB.
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new(token));
        config.limits.multipart_threshold = 50_000_000;
        // Tiny tree pages: list_repo_files and snapshot_download must follow `Link` pagination.
        config.limits.tree_page_size = 2;
    })
    .await;
    let work = context.child("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = context.child("peer.py");
    std::fs::write(&script, PEER_SCRIPT).unwrap();
    let endpoint = server.base_url().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(&script)
            .arg(&work)
            .env("HF_ENDPOINT", endpoint)
            .env("HF_TOKEN", token)
            .env("HF_HUB_DISABLE_XET", "1")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HOME", work.join("hf-home"))
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            .output()
            .expect("run the python peer")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python peer failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["commits"].as_array().unwrap().len(), 3);
    let stats = server.stats();
    // 20 MB went as one PUT, 100 MB as parts + one completion, and nothing was sent twice.
    assert_eq!(stats.object_puts, 1, "{stats:?}");
    assert_eq!(stats.completions, 1, "{stats:?}");
    assert_eq!(
        stats.part_puts,
        100_000_000u64.div_ceil(16 << 20),
        "{stats:?}"
    );
    // three uploads, the pull request, the dataset upload; the stale commit was refused
    assert_eq!(stats.commits_applied, 5, "{stats:?}");
    server.shutdown().await;
}
