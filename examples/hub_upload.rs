//! Benchmark client for scripts/bench/hub-upload.sh and scripts/bench/xet-upload.sh: reads a
//! file fully into memory (the sink's situation: an artifact held in memory), then uploads it
//! as one object and commits it. Prints one JSON line with timings, the bytes the upload sent
//! (Xet) and this process's peak RSS.
//!
//! Usage: hub_upload ENDPOINT FILE REPO_ID [--xet | --lfs] [--then FILE2]
//!
//! `--xet` / `--lfs` offer or withhold the `xet` transfer (default: as `HF_HUB_DISABLE_XET`
//! says). `--then FILE2` uploads FILE2 to the same path afterwards, with the same client (its
//! memory of the chunks it stored included), and reports what that second upload sent.
#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, HubEvent, LfsObject, Repo};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(file), Some(repo_id)) = (args.get(1), args.get(2), args.get(3))
    else {
        return Err(
            "usage: hub_upload ENDPOINT FILE REPO_ID [--xet | --lfs] [--then FILE2]".into(),
        );
    };
    let rest = &args[4..];
    let then = rest
        .iter()
        .position(|a| a == "--then")
        .and_then(|i| rest.get(i + 1));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let sink = sent.clone();
    let mut builder = HubClient::builder(endpoint)?.events(Arc::new(move |event: &HubEvent| {
        if let HubEvent::XetStored { sent, .. } = event {
            sink.lock().expect("events").push(*sent);
        }
    }));
    if rest.iter().any(|a| a == "--xet") {
        builder = builder.xet(true);
    }
    if rest.iter().any(|a| a == "--lfs") {
        builder = builder.xet(false);
    }
    let client = builder.build()?;
    let repo = Repo::model(repo_id.parse()?);
    client.create_repo(&repo, false, true).await?;

    let first = upload(&client, &repo, file).await?;
    let first_sent = sent.lock().expect("events").last().copied();
    let second = match then {
        Some(file) => Some(upload(&client, &repo, file).await?),
        None => None,
    };
    let second_sent = second
        .is_some()
        .then(|| sent.lock().expect("events").last().copied())
        .flatten();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "bytes": first.bytes, "hash_s": first.hash_s, "upload_s": first.upload_s,
            "total_s": first.total_s, "sent_bytes": first_sent,
            "then_total_s": second.map(|s| s.total_s), "then_sent_bytes": second_sent,
            "peak_rss_bytes": peak_kib * 1024,
        })
    );
    Ok(())
}

struct Timing {
    bytes: u64,
    hash_s: f64,
    upload_s: f64,
    total_s: f64,
}

/// Reads `file` into memory, then hashes, uploads and commits it as `bench.bin`.
async fn upload(
    client: &HubClient,
    repo: &Repo,
    file: &str,
) -> Result<Timing, Box<dyn std::error::Error>> {
    let data = bytes::Bytes::from(std::fs::read(file)?);
    let started = Instant::now();
    // As the library hashes an in-memory object: the sha256, and its Xet chunks at once.
    let object = LfsObject::from_bytes(data).at("bench.bin");
    let hash_s = started.elapsed().as_secs_f64();
    let upload_started = Instant::now();
    client.upload_lfs_object(repo, "main", &object).await?;
    let upload_s = upload_started.elapsed().as_secs_f64();
    let operations = [CommitOperation::AddLfs {
        path: "bench.bin".into(),
        sha256: object.sha256.clone(),
        size: object.size,
    }];
    let options = CommitOptions {
        summary: "bench".into(),
        ..Default::default()
    };
    client.commit(repo, "main", &operations, &options).await?;
    Ok(Timing {
        bytes: object.size,
        hash_s,
        upload_s,
        total_s: started.elapsed().as_secs_f64(),
    })
}
