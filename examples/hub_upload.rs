//! Benchmark client for scripts/bench/hub-upload.sh: reads a file fully into memory (the sink's
//! situation: an artifact held in memory), then uploads it as one LFS object and commits it.
//! Prints one JSON line with timings and this process's peak RSS.
//!
//! Usage: hub_upload ENDPOINT FILE REPO_ID
#![allow(clippy::print_stdout)]

use std::time::Instant;

use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, LfsObject, LfsSource, Repo};
use sha2::Digest as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, file, repo_id] = args.as_slice() else {
        return Err("usage: hub_upload ENDPOINT FILE REPO_ID".into());
    };
    let data = bytes::Bytes::from(std::fs::read(file)?);
    let started = Instant::now();
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    let hash_s = started.elapsed().as_secs_f64();
    let object = LfsObject {
        path: None,
        sha256,
        size: data.len() as u64,
        source: LfsSource::Bytes(data),
    };

    let client = HubClient::builder(endpoint)?.build()?;
    let repo = Repo::model(repo_id.parse()?);
    client.create_repo(&repo, false, true).await?;
    let upload_started = Instant::now();
    client.upload_lfs_object(&repo, "main", &object).await?;
    let upload_s = upload_started.elapsed().as_secs_f64();
    let operations = [CommitOperation::AddLfs {
        path: "bench.bin".into(),
        sha256: object.sha256.clone(),
        size: object.size,
    }];
    client
        .commit(
            &repo,
            "main",
            &operations,
            &CommitOptions {
                summary: "bench".into(),
                ..Default::default()
            },
        )
        .await?;
    let total_s = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({"bytes": object.size, "hash_s": hash_s, "upload_s": upload_s, "total_s": total_s, "peak_rss_bytes": peak_kib * 1024})
    );
    Ok(())
}
