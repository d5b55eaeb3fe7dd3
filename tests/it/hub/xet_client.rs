//! hubsweep's own Xet client: it chunks and hashes exactly as `hf_xet` does (same Xet file
//! hash for the same bytes), uploads through Xet with no LFS transfer, the official client
//! downloads what it stored, chunks the CAS already holds are not sent again (the global dedup
//! query, and this client's own earlier uploads), and faults are survived or refused.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hubsweep::hub::server::ServerHandle;
use hubsweep::hub::server::faults::Faults;
use hubsweep::hub::{
    CommitOperation, CommitOptions, HubClient, HubError, HubEvent, LfsObject, UploadOutcome,
};

use super::{hub_python, model, pseudo_random, sha256_hex, start_server};
use crate::common::{TestContext, walk};

const PEER_SCRIPT: &str = include_str!("xet_client_peer.py");
const HUB_TOKEN: &str = "hf_test_token_for_xet_client";

type Events = Arc<Mutex<Vec<HubEvent>>>;

/// A client that offers `xet` (the test command exports `HF_HUB_DISABLE_XET=1` for the LFS
/// peers, which would turn it off), with a fast retry policy and its events recorded.
fn xet_client(server: &ServerHandle) -> (HubClient, Events) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .token(Some(hubsweep::hub::Token::new(HUB_TOKEN)))
        .retry(hubsweep::hub::RetryPolicy {
            max_attempts: 5,
            base_delay: std::time::Duration::from_millis(10),
            max_delay: std::time::Duration::from_millis(100),
            max_server_wait: std::time::Duration::from_secs(5),
        })
        .events(Arc::new(move |e: &HubEvent| {
            sink.lock().unwrap().push(e.clone())
        }))
        .xet(true)
        .build()
        .unwrap();
    (client, events)
}

async fn xet_server(context: &TestContext, xet: bool) -> ServerHandle {
    start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new(HUB_TOKEN));
        config.xet = xet;
    })
    .await
}

/// Runs the peer script with Xet enabled; its JSON summary.
async fn peer(
    python: &std::path::Path,
    context: &TestContext,
    endpoint: &str,
    args: &[&str],
) -> serde_json::Value {
    let script = context.child("xet_client_peer.py");
    std::fs::write(&script, PEER_SCRIPT).unwrap();
    let mut command = std::process::Command::new(python);
    command
        .arg(&script)
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_TOKEN", HUB_TOKEN)
        .env("HF_HOME", context.child(&format!("hf-home-{}", args[0])))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_HUB_DISABLE_XET");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run the peer"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "peer {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Uploads `data` as `path` and commits it; the upload's outcome.
async fn upload_and_commit(
    client: &HubClient,
    repo: &hubsweep::hub::Repo,
    path: &str,
    data: Bytes,
) -> Result<UploadOutcome, HubError> {
    let object = LfsObject::from_bytes(data).at(path);
    let outcome = client.upload_lfs_object(repo, "main", &object).await?;
    let operations = [CommitOperation::AddLfs {
        path: path.into(),
        sha256: object.sha256.clone(),
        size: object.size,
    }];
    let options = CommitOptions {
        summary: format!("add {path}"),
        ..Default::default()
    };
    client.commit(repo, "main", &operations, &options).await?;
    Ok(outcome)
}

/// The `X-Xet-Hash` of `path` at main, from its `resolve/` answer.
async fn xet_hash_of(endpoint: &str, repo: &str, path: &str) -> Option<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let head = http
        .head(format!("{endpoint}/{repo}/resolve/main/{path}"))
        .bearer_auth(HUB_TOKEN)
        .send()
        .await
        .unwrap();
    head.headers()
        .get("x-xet-hash")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// (bytes sent, bytes found stored) of the last Xet upload of `oid`.
fn xet_sent(events: &Events, oid: &str) -> (u64, u64) {
    events
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| match e {
            HubEvent::XetStored {
                oid: o,
                sent,
                deduplicated,
                ..
            } if o == oid => Some((*sent, *deduplicated)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no XetStored event for {oid}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubsweep_uploads_through_xet_as_hf_xet_does_and_sends_only_new_chunks() {
    let Some(python) = hub_python() else { return };
    let context = TestContext::new();
    let server = xet_server(&context, true).await;
    let endpoint = server.base_url().to_owned();
    let repo_id = "org/xet-client";
    let repo = model(repo_id);

    // The official client uploads a file through Xet; our chunking and hashing give the Xet
    // hash it computed (the hash names every chunk boundary and chunk byte).
    let theirs = pseudo_random(9_000_000, 11);
    let local = context.child("theirs.bin");
    std::fs::write(&local, &theirs).unwrap();
    peer(
        &python,
        &context,
        &endpoint,
        &["upload", repo_id, "theirs.bin", local.to_str().unwrap()],
    )
    .await;
    let their_hash = xet_hash_of(&endpoint, repo_id, "theirs.bin")
        .await
        .expect("a Xet hash");
    assert_eq!(
        hubsweep::hub::client::xet_file_hash(theirs.clone()).hex(),
        their_hash
    );
    let (client, events) = xet_client(&server);

    // Ours: 20 MB through Xet, no LFS transfer; the official client downloads it through Xet.
    let ours = pseudo_random(20_000_000, 12);
    let before = server.stats();
    let outcome = upload_and_commit(&client, &repo, "ours.bin", ours.clone())
        .await
        .unwrap();
    assert_eq!(outcome, UploadOutcome::Uploaded);
    let stats = server.stats();
    assert_eq!(
        stats.object_puts + stats.part_puts,
        before.object_puts + before.part_puts
    );
    // One shard per new xorb (its registration, as soon as it is stored), one for the file.
    assert!(stats.xorbs_stored > before.xorbs_stored, "{stats:?}");
    assert_eq!(
        stats.shard_posts,
        before.shard_posts + 1 + (stats.xorbs_stored - before.xorbs_stored)
    );
    assert_eq!(stats.cas_requests_with_hub_token, 0);
    let (sent, found) = xet_sent(&events, &sha256_hex(&ours));
    assert_eq!(found, 0);
    assert!((20_000_000..20_200_000).contains(&sent), "sent {sent}");
    assert_eq!(
        xet_hash_of(&endpoint, repo_id, "ours.bin").await.as_deref(),
        Some(
            hubsweep::hub::client::xet_file_hash(ours.clone())
                .hex()
                .as_str()
        )
    );
    let downloaded = peer(
        &python,
        &context,
        &endpoint,
        &["download", repo_id, "ours.bin"],
    )
    .await;
    assert_eq!(downloaded["sha256"], sha256_hex(&ours));
    // Stored once, as its xorbs: no copy in objects/, yet resolve/ serves it, ranges included
    // (across chunk and xorb boundaries), through the LFS storage URL it redirects to.
    let oid = sha256_hex(&ours);
    let objects = context.path().join("store/objects");
    assert!(!objects.join(&oid[..2]).join(&oid).exists());
    let http = reqwest::Client::new();
    for (start, end) in [
        (0usize, 0usize),
        (65_000, 9_100_000),
        (19_999_000, 19_999_999),
    ] {
        let part = http
            .get(format!("{endpoint}/{repo_id}/resolve/main/ours.bin"))
            .bearer_auth(HUB_TOKEN)
            .header("range", format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().await.unwrap(), ours.slice(start..=end));
    }

    // The official client's file with 1 MB appended, from a client that never saw it: the
    // global dedup query finds its chunks (all but the last, which the end of the file cut),
    // so one new xorb carries the rest.
    let (fresh, fresh_events) = xet_client(&server);
    let stored = server.stats().xorbs_stored;
    let grown = Bytes::from([theirs.to_vec(), pseudo_random(1_000_000, 14).to_vec()].concat());
    upload_and_commit(&fresh, &repo, "grown.bin", grown.clone())
        .await
        .unwrap();
    let (sent, found) = xet_sent(&fresh_events, &sha256_hex(&grown));
    assert!(found > 8_800_000, "found {found} of the 9 MB stored");
    assert!(
        sent < 1_300_000,
        "sent {sent} bytes for 1 MB of new content"
    );
    assert_eq!(server.stats().xorbs_stored, stored + 1);

    // Ours with 1% of its bytes rewritten in one place, from yet another client (a fresh
    // process): the dedup query names the xorbs away from the edit (each xorb's first chunk
    // was flagged when it was stored), so about 1% is sent again.
    let mut edited = ours.to_vec();
    let middle = edited.len() / 2;
    edited[middle..middle + 200_000].copy_from_slice(&pseudo_random(200_000, 13));
    let edited = Bytes::from(edited);
    let (third, third_events) = xet_client(&server);
    upload_and_commit(&third, &repo, "ours.bin", edited.clone())
        .await
        .unwrap();
    let (sent, found) = xet_sent(&third_events, &sha256_hex(&edited));
    assert!(sent < 1_000_000, "sent {sent} of 20 MB with 200 kB changed");
    assert!(found > 19_000_000, "found {found}");
    let downloaded = peer(
        &python,
        &context,
        &endpoint,
        &["download", repo_id, "ours.bin"],
    )
    .await;
    assert_eq!(downloaded["sha256"], sha256_hex(&edited));
    assert_eq!(server.stats().cas_requests_with_hub_token, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_s_stored_xorbs_are_not_sent_again_by_a_fresh_client() {
    let context = TestContext::new();
    let server = xet_server(&context, true).await;
    let repo = model("org/xet-resume");
    let (client, _) = xet_client(&server);
    client.create_repo(&repo, false, false).await.unwrap();
    // The client knows the file's first 5 MB (uploaded before), so the new xorbs start after
    // that run of stored chunks, not where the content cuts: a rerun finds them only by asking
    // about each xorb's first chunk before sending it.
    // 80 MB: about ten new xorbs, so once the first is stored most are still to go.
    let data = pseudo_random(80_000_000, 61);
    upload_and_commit(&client, &repo, "head.bin", data.slice(..5_000_000))
        .await
        .unwrap();
    let (parts, mut uploaded) = tokio::sync::mpsc::unbounded_channel();
    let interrupted = HubClient::builder(server.base_url())
        .unwrap()
        .token(Some(hubsweep::hub::Token::new(HUB_TOKEN)))
        .events(Arc::new(move |e: &HubEvent| {
            if let HubEvent::PartUploaded { part, bytes, .. } = e {
                let _ = parts.send((*part, *bytes));
            }
        }))
        .xet(true)
        .build()
        .unwrap();
    let object = LfsObject::from_bytes(data.clone()).at("whole.bin");
    let upload = tokio::spawn({
        let (repo, object) = (repo.clone(), object.clone());
        async move { interrupted.upload_lfs_object(&repo, "main", &object).await }
    });
    // Stopped once its first new xorb (the one after the stored run) is stored and registered:
    // the others may be anywhere.
    let first_xorb = loop {
        match uploaded.recv().await.expect("the first xorb uploaded") {
            (1, bytes) => break bytes,
            _ => continue,
        }
    };
    upload.abort();
    assert!(upload.await.is_err(), "the upload ran to its end");
    server.xet_idle().await;
    let before = server.stats();
    assert!(before.xorbs_stored >= 2, "{before:?}");

    let (fresh, events) = xet_client(&server);
    upload_and_commit(&fresh, &repo, "whole.bin", data.clone())
        .await
        .unwrap();
    let stats = server.stats();
    // Xorbs in flight at the interruption may have been stored unregistered, and go again
    // (bounded by the uploads in flight); none the dedup query could name does.
    assert_eq!(stats.indexed_xorbs_sent_again, 0, "{stats:?}");
    assert!(
        stats.xorbs_already_stored - before.xorbs_already_stored <= 4,
        "{stats:?}"
    );
    // Found stored: the first 5 MB (but its last chunk, which the end of head.bin cut) and at
    // least the xorb whose upload the interrupted client reported (its bytes are its content
    // plus 8 bytes a chunk and the footer).
    let (sent, found) = xet_sent(&events, &sha256_hex(&data));
    assert!(
        found as f64 >= 4_850_000.0 + 0.98 * first_xorb as f64,
        "found {found}, the first xorb stored was {first_xorb} bytes"
    );
    assert!(
        sent < 80_000_000 - found + 1_000_000,
        "sent {sent}, found {found}"
    );
    let reread = fresh
        .download_bytes(&repo, "main", "whole.bin")
        .await
        .unwrap();
    assert_eq!(sha256_hex(&reread), sha256_hex(&data));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_repo_frees_its_xet_files_and_the_xorbs_no_other_file_uses() {
    let context = TestContext::new();
    let server = xet_server(&context, true).await;
    let (client, _) = xet_client(&server);
    let (doomed, keeper) = (model("org/xet-doomed"), model("org/xet-keeper"));
    for repo in [&doomed, &keeper] {
        client.create_repo(repo, false, false).await.unwrap();
    }
    let shared = pseudo_random(12_000_000, 71);
    let own = pseudo_random(6_000_000, 72);
    upload_and_commit(&client, &doomed, "shared.bin", shared.clone())
        .await
        .unwrap();
    upload_and_commit(&client, &doomed, "own.bin", own.clone())
        .await
        .unwrap();
    let again = upload_and_commit(&client, &keeper, "copy.bin", shared.clone())
        .await
        .unwrap();
    assert_eq!(again, UploadOutcome::AlreadyPresent);
    let xorbs_dir = context.path().join("store/xet/xorbs");
    let stored = || -> u64 {
        walk(&xorbs_dir)
            .iter()
            .filter(|p| p.extension().is_none())
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let before = stored();
    assert!(before > 18_000_000, "{before}");

    // Only own.bin was its own: its xorbs go, shared.bin's stay and still download.
    let freed = client.delete_repo(&doomed).await.unwrap().unwrap();
    assert!((6_000_000..6_100_000).contains(&freed), "freed {freed}");
    assert_eq!(stored(), before - freed);
    let copy = client
        .download_bytes(&keeper, "main", "copy.bin")
        .await
        .unwrap();
    assert_eq!(copy, shared);

    // The last repo holding shared.bin: nothing is left.
    let freed = client.delete_repo(&keeper).await.unwrap().unwrap();
    assert!((12_000_000..12_200_000).contains(&freed), "freed {freed}");
    assert_eq!(stored(), 0);
    assert!(walk(&context.path().join("store/xet/files")).is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xet_uploads_survive_expired_tokens_and_cas_errors_and_refuse_what_was_not_offered() {
    let context = TestContext::new();
    let server = xet_server(&context, true).await;
    let (client, events) = xet_client(&server);
    let repo = model("org/xet-faults");
    client.create_repo(&repo, false, false).await.unwrap();

    // Two CAS calls refused as expired (the token is refreshed through the Hub), two xorb
    // uploads answered 503 (retried): the upload and its commit still go through.
    server.set_faults(Faults {
        expire_next_xet_tokens: 2,
        fail_next_xorbs: 2,
        ..Faults::default()
    });
    let data = pseudo_random(3_000_000, 21);
    let issued = server.stats().xet_tokens_issued;
    upload_and_commit(&client, &repo, "faulty.bin", data.clone())
        .await
        .unwrap();
    let stats = server.stats();
    assert_eq!(stats.fired.expired_xet_token, 2, "{stats:?}");
    assert_eq!(stats.fired.failed_xorb, 2, "{stats:?}");
    assert!(stats.xet_tokens_issued >= issued + 3, "{stats:?}");
    let events = events.lock().unwrap().clone();
    let refreshed = events
        .iter()
        .filter(|e| matches!(e, HubEvent::XetTokenRefreshed { .. }))
        .count();
    let retried = events
        .iter()
        .filter(|e| matches!(e, HubEvent::Retrying { .. }))
        .count();
    assert_eq!(refreshed, 2, "{events:?}");
    assert_eq!(retried, 2, "{events:?}");
    assert_eq!(
        client
            .download_bytes(&repo, "main", "faulty.bin")
            .await
            .unwrap(),
        data
    );

    // A server that picks `xet` for a client that offered only LFS: refused, named.
    server.set_faults(Faults {
        pick_xet_unoffered: true,
        ..Faults::default()
    });
    let lfs_only = HubClient::builder(server.base_url())
        .unwrap()
        .token(Some(hubsweep::hub::Token::new(HUB_TOKEN)))
        .xet(false)
        .build()
        .unwrap();
    let refused = upload_and_commit(&lfs_only, &repo, "refused.bin", pseudo_random(1000, 22)).await;
    let message = match refused {
        Err(error @ HubError::InvalidResponse { .. }) => error.to_string(),
        other => panic!("expected a refused answer, got {other:?}"),
    };
    assert!(
        message.contains("`xet` transfer, which was not offered"),
        "{message}"
    );
    assert_eq!(server.stats().fired.unoffered_xet, 1);

    // A per-object refusal names the file's path: an object larger than the hub accepts.
    let mut huge = LfsObject::from_bytes(pseudo_random(10, 23)).at("acts/huge.bin");
    huge.size = 1 << 50;
    let message = client
        .upload_lfs_object(&repo, "main", &huge)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("`acts/huge.bin`") && message.contains("422"),
        "{message}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_without_xet_gets_lfs_uploads_from_the_same_client() {
    let context = TestContext::new();
    let server = xet_server(&context, false).await;
    let (client, events) = xet_client(&server);
    let repo = model("org/lfs-only");
    client.create_repo(&repo, false, false).await.unwrap();
    let data = pseudo_random(2_000_000, 31);
    upload_and_commit(&client, &repo, "plain.bin", data.clone())
        .await
        .unwrap();
    let stats = server.stats();
    assert_eq!(stats.object_puts + stats.completions, 1, "{stats:?}");
    assert_eq!(stats.xorb_posts + stats.shard_posts, 0, "{stats:?}");
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, HubEvent::XetStored { .. }))
    );
    assert_eq!(
        client
            .download_bytes(&repo, "main", "plain.bin")
            .await
            .unwrap(),
        data
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_between_hubs_whatever_protocol_each_speaks() {
    let context = TestContext::new();
    // A: files came in through Xet; B: LFS only; C: Xet again, filled from B.
    let hubs = [
        start_server(&context.child("a"), |c| c.xet = true).await,
        start_server(&context.child("b"), |c| c.xet = false).await,
        start_server(&context.child("c"), |c| c.xet = true).await,
    ];
    let (through_xet, _) = xet_client(&hubs[0]);
    let repo = model("org/mirrored");
    through_xet.create_repo(&repo, false, false).await.unwrap();
    let weights = pseudo_random(3_000_000, 41);
    upload_and_commit(&through_xet, &repo, "model.safetensors", weights.clone())
        .await
        .unwrap();
    assert!(hubs[0].stats().shard_posts > 0);
    let clients: Vec<HubClient> = hubs.iter().map(|h| xet_client(h).0).collect();
    let scratch = context.child("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    for (from, to) in [(0, 1), (1, 2)] {
        clients[to]
            .mirror_from(&clients[from], &repo, "main", &scratch)
            .await
            .unwrap();
    }
    let files = |client: &HubClient| {
        let client = client.clone();
        let repo = repo.clone();
        async move {
            let mut entries: Vec<(String, String, u64)> = client
                .list_tree(&repo, "main", "", true)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.is_file())
                .map(|e| (e.path, e.lfs.map_or(e.oid, |l| l.oid), e.size))
                .collect();
            entries.sort();
            entries
        }
    };
    let first = files(&clients[0]).await;
    assert!(
        first.iter().any(|(_, oid, _)| *oid == sha256_hex(&weights)),
        "{first:?}"
    );
    assert_eq!(files(&clients[1]).await, first);
    assert_eq!(files(&clients[2]).await, first);
    for client in &clients[1..] {
        assert_eq!(
            client
                .download_bytes(&repo, "main", "model.safetensors")
                .await
                .unwrap(),
            weights
        );
    }
    // B received it through LFS (it speaks nothing else); the mirror reads files from scratch,
    // which go through LFS wherever they go.
    assert_eq!(hubs[1].stats().xorb_posts, 0);
    assert!(hubs[1].stats().object_puts + hubs[1].stats().completions > 0);
    for hub in hubs {
        hub.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_xorb_sent_again_gets_its_answer_not_a_broken_pipe() {
    let context = TestContext::new();
    let server = xet_server(&context, true).await;
    let (client, _) = xet_client(&server);
    let repo = model("org/twice");
    client.create_repo(&repo, false, false).await.unwrap();
    let base = server.base_url().to_owned();
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .get(format!("{base}/api/models/org/twice/xet-write-token/main"))
        .bearer_auth(HUB_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["accessToken"].as_str().unwrap().to_owned();
    // 24 MB of chunks: far more than socket buffers hold, so an answer given before the body
    // is read reaches a client still writing as a broken pipe.
    let data = pseudo_random(24_000_000, 51);
    let ends = hubsweep::hub::xet::chunking::boundaries(&data);
    let chunks: Vec<_> = ends
        .iter()
        .scan(0, |start, &end| {
            let range = *start..end;
            *start = end;
            Some((
                hubsweep::hub::xet::hash::chunk_hash(&data[range.clone()]),
                range,
            ))
        })
        .collect();
    let body = hubsweep::hub::xet::xorb::serialize(&data, &chunks);
    let bytes: Vec<u8> = body.pieces.concat();
    let url = format!("{base}/v1/xorbs/default/{}", body.hash.hex());
    for inserted in [true, false] {
        let answer: serde_json::Value = http
            .post(&url)
            .bearer_auth(&token)
            .body(bytes.clone())
            .send()
            .await
            .expect("an answer, not a broken pipe")
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["was_inserted"], inserted);
    }
    assert_eq!(server.stats().xorbs_already_stored, 1);
    server.shutdown().await;
}
