//! The embedded hub's per-file limits, as the Hub's: `basic` up to 5 GB, `multipart` above,
//! nothing above 500 GB; only offered transfers; uploads refused when the disk would fill. Each
//! refusal is an `error` on its object in the batch answer, the request itself succeeds, and
//! the official client shows the message to its user.

use std::time::{Duration, Instant};

use hubsweep::hub::{CommitOperation, CommitOptions, HubError, LfsObject};
use serde_json::{Value, json};

use super::{
    client, client_for, hub_python, model, peak_rss_bytes, pseudo_random, sha256_hex, spawn_serve,
    start_server,
};
use crate::common::TestContext;

/// What the issue reported: this size got a `basic` URL, or unbounded part URLs with `multipart`.
const ABSURD_SIZE: u64 = 99_999_999_999_999_999;

fn oid(seed: u64) -> String {
    sha256_hex(&seed.to_le_bytes())
}

async fn batch(http: &reqwest::Client, url: &str, body: Value) -> (Value, Duration) {
    let started = Instant::now();
    let response = http
        .post(format!("{url}/org/limits.git/info/lfs/objects/batch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "batch answer");
    let answer = response.json().await.unwrap();
    (answer, started.elapsed())
}

fn upload(transfers: &[&str], objects: &[(String, u64)]) -> Value {
    json!({"operation": "upload", "transfers": transfers,
        "objects": objects.iter().map(|(oid, size)| json!({"oid": oid, "size": size})).collect::<Vec<_>>()})
}

fn error_of(object: &Value) -> (u64, String) {
    assert!(
        object.get("actions").is_none(),
        "refused, yet actions: {object}"
    );
    let error = &object["error"];
    (
        error["code"].as_u64().unwrap(),
        error["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_objects_are_refused_within_a_second_and_server_memory_stays_flat() {
    let context = TestContext::new();
    let (server, url) = spawn_serve(&context, &context.child("store"));
    let server = super::KillOnDrop(server);
    client_for(&url)
        .create_repo(&model("org/limits"), false, true)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    // Warm up the answer path, then take the baseline.
    batch(
        &http,
        &url,
        upload(&["basic", "multipart"], &[(oid(0), 1000)]),
    )
    .await;
    let baseline = peak_rss_bytes(server.0.id());

    for transfers in [
        &["basic", "multipart"][..],
        &["basic"][..],
        &["multipart"][..],
    ] {
        for size in [ABSURD_SIZE, u64::MAX, 500_000_000_001] {
            let (answer, took) = batch(&http, &url, upload(transfers, &[(oid(1), size)])).await;
            assert!(
                took < Duration::from_secs(1),
                "{transfers:?} {size}: {took:?}"
            );
            let (code, message) = error_of(&answer["objects"][0]);
            assert_eq!(code, 422, "{message}");
            assert!(
                message.contains("larger than the 500 GB this hub accepts per file"),
                "{message}"
            );
        }
    }
    let grown = peak_rss_bytes(server.0.id()).saturating_sub(baseline);
    assert!(
        grown < 8 << 20,
        "refusing oversized objects grew the server's peak memory by {grown} bytes"
    );

    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_legal_files_get_a_bounded_number_of_parts() {
    let context = TestContext::new();
    // No disk check: this machine has no 500 GB to spare, and only the answer matters here.
    let server = start_server(context.path(), |config| config.limits.min_free_bytes = None).await;
    client(&server, None)
        .create_repo(&model("org/limits"), false, true)
        .await
        .unwrap();
    let url = server.base_url().to_owned();
    let http = reqwest::Client::new();
    // The largest legal file: 10,000 parts (S3's most) of 50 MB, not 29,803 of 16 MiB.
    let (answer, took) = batch(
        &http,
        &url,
        upload(&["basic", "multipart"], &[(oid(2), 500_000_000_000)]),
    )
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let header = answer["objects"][0]["actions"]["upload"]["header"]
        .as_object()
        .unwrap();
    assert_eq!(header["chunk_size"], "50000000");
    assert_eq!(header.len(), 10_001);
    assert_eq!(answer["transfer"], "multipart");

    // A full batch of the largest files: the answer's part URLs stay within 100,000 in all.
    let objects: Vec<(String, u64)> = (0..1000).map(|n| (oid(100 + n), 500_000_000_000)).collect();
    let (answer, took) = batch(&http, &url, upload(&["basic", "multipart"], &objects)).await;
    let parts: usize = answer["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["actions"]["upload"]["header"].as_object().unwrap().len() - 1)
        .sum();
    assert_eq!(parts, 100_000);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_offered_transfers_are_answered() {
    let context = TestContext::new();
    // LFS only: with Xet on, a batch offering `xet` is answered with it (hub::xet).
    let server = start_server(context.path(), |config| config.xet = false).await;
    let hub = client(&server, None);
    hub.create_repo(&model("org/limits"), false, true)
        .await
        .unwrap();
    let url = server.base_url().to_owned();
    let http = reqwest::Client::new();

    let (answer, _) = batch(&http, &url, upload(&["xet"], &[(oid(1), 1000)])).await;
    let (code, message) = error_of(&answer["objects"][0]);
    assert_eq!(code, 422);
    assert!(
        message.contains("`xet`") && message.contains("`basic` and `multipart`"),
        "{message}"
    );

    let (answer, _) = batch(&http, &url, upload(&["basic"], &[(oid(2), 6_000_000_000)])).await;
    let (code, message) = error_of(&answer["objects"][0]);
    assert_eq!(code, 422);
    assert!(
        message.contains("needs the `multipart` transfer"),
        "{message}"
    );

    // Below the multipart threshold but only `multipart` offered: one part, and it works.
    let content = pseudo_random(3000, 1);
    let sha = sha256_hex(&content);
    let (answer, _) = batch(&http, &url, upload(&["multipart"], &[(sha.clone(), 3000)])).await;
    assert_eq!(answer["transfer"], "multipart");
    let action = &answer["objects"][0]["actions"]["upload"];
    let part = action["header"]["1"].as_str().unwrap();
    assert!(action["header"].get("2").is_none());
    let etag = http.put(part).body(content).send().await.unwrap();
    assert!(etag.status().is_success());
    let etag = etag.headers()["etag"].to_str().unwrap().to_owned();
    let done = http
        .post(action["href"].as_str().unwrap())
        .json(&json!({"oid": sha, "parts": [{"partNumber": 1, "etag": etag}]}))
        .send()
        .await
        .unwrap();
    assert!(done.status().is_success());

    // No list means `basic` (git-lfs); a download offering only `xet` gets nothing.
    let (answer, _) = batch(
        &http,
        &url,
        json!({"operation": "upload", "objects": [{"oid": oid(3), "size": 10}]}),
    )
    .await;
    assert_eq!(answer["transfer"], "basic");
    assert!(answer["objects"][0]["actions"]["upload"]["href"].is_string());
    let (answer, _) = batch(
        &http,
        &url,
        json!({"operation": "download", "transfers": ["xet"], "objects": [{"oid": sha, "size": 3000}]}),
    )
    .await;
    assert_eq!(error_of(&answer["objects"][0]).0, 422);
}

/// Bytes an unprivileged writer may still use where `dir` lives, as `df` says.
fn free_bytes(dir: &std::path::Path) -> u64 {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_would_fill_the_disk_are_refused_per_object() {
    let context = TestContext::new();
    std::fs::create_dir_all(context.child("store")).unwrap();
    // Leave the server 1 GiB of room: other work on the machine moves the free space by far
    // less than that during the test.
    let reserve = free_bytes(context.path()).saturating_sub(1 << 30);
    let server = start_server(context.path(), |config| {
        config.limits.min_free_bytes = Some(reserve);
    })
    .await;
    let hub = client(&server, None);
    let repo = model("org/limits");
    hub.create_repo(&repo, false, true).await.unwrap();
    let http = reqwest::Client::new();

    // The room is shared by the objects of one answer: the small one fits, the big one not.
    let (answer, _) = batch(
        &http,
        server.base_url(),
        upload(
            &["basic", "multipart"],
            &[(oid(1), 1000), (oid(2), 8 << 30)],
        ),
    )
    .await;
    assert!(answer["objects"][0]["actions"]["upload"].is_object());
    let (code, message) = error_of(&answer["objects"][1]);
    assert_eq!(code, 507);
    assert!(message.contains("not enough free disk space"), "{message}");

    // Our own client reports it as a refused object, with the server's message.
    let huge = LfsObject::from_bytes(pseudo_random(10, 3));
    let huge = LfsObject {
        size: 8 << 30,
        ..huge
    };
    match hub.upload_lfs_object(&repo, "main", &huge).await {
        Err(HubError::ObjectRejected { code, message, .. }) => {
            assert_eq!(code, 507);
            assert!(message.contains("not enough free disk space"), "{message}");
        }
        other => panic!("expected a refused object, got {other:?}"),
    }

    // A real upload that fits goes through.
    let small = LfsObject::from_bytes(pseudo_random(2000, 4));
    hub.upload_lfs_object(&repo, "main", &small).await.unwrap();
    assert_eq!(server.stats().object_puts, 1);
    server.shutdown().await;

    // With no room at all, inline files of a commit are refused too, and nothing moves.
    let server = start_server(context.path(), |config| {
        config.limits.min_free_bytes = Some(u64::MAX);
    })
    .await;
    let hub = client(&server, None);
    let head = hub.head(&repo, "main").await.unwrap();
    let ops = [CommitOperation::AddRegular {
        path: "notes.txt".into(),
        content: "does not fit".into(),
    }];
    match hub
        .commit(&repo, "main", &ops, &CommitOptions::default())
        .await
    {
        Err(error) => assert!(
            format!("{error:?}").contains("not enough free disk space"),
            "{error:?}"
        ),
        Ok(_) => panic!("a commit was accepted on a full disk"),
    }
    assert_eq!(hub.head(&repo, "main").await.unwrap(), head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_shows_a_per_object_refusal_to_its_user() {
    let Some(python) = hub_python() else { return };
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.limits.max_object_size = 2_000_000;
        config.limits.max_basic_object = 2_000_000;
    })
    .await;
    let work = context.child("work");
    std::fs::create_dir_all(&work).unwrap();
    // A `.bin` file is LFS by the default `.gitattributes`.
    std::fs::write(work.join("weights.bin"), pseudo_random(3_000_000, 9)).unwrap();
    let script = r#"
import sys
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("org/too-big", exist_ok=True)
try:
    api.upload_file(path_or_fileobj=sys.argv[1], path_in_repo="weights.bin", repo_id="org/too-big")
except Exception as error:
    print(f"REFUSED: {error}")
    sys.exit(0)
print("ACCEPTED")
sys.exit(1)
"#;
    let endpoint = server.base_url().to_owned();
    let file = work.join("weights.bin");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(file)
            .env("HF_ENDPOINT", endpoint)
            .env("HF_TOKEN", "hf_unused")
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
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("file of 3 MB is larger than the 2 MB this hub accepts per file"),
        "the official client did not show the server's message: {stdout}"
    );
    assert_eq!(server.stats().object_puts + server.stats().part_puts, 0);
}
