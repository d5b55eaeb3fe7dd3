//! Xet in the embedded hub: the official Python client with `hf_xet` (Xet not disabled) round
//! trips through the server, files cross between the Xet and LFS paths both ways, and hostile
//! CAS requests (bytes built here and sent over HTTP) are refused with a 4xx.

use hubsweep::hub::xet::hash::{self, XetHash};
use serde_json::json;

use super::{hub_python, pseudo_random, sha256_hex, start_server};
use crate::common::TestContext;

const PEER_SCRIPT: &str = include_str!("xet_peer.py");
const HUB_TOKEN: &str = "hf_test_token_for_xet";

/// Runs one phase of the peer script; `xet` = false sets `HF_HUB_DISABLE_XET=1` for it alone.
async fn peer(
    python: &std::path::Path,
    context: &TestContext,
    endpoint: &str,
    phase: &str,
    xet: bool,
) -> serde_json::Value {
    let work = context.child("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = context.child("xet_peer.py");
    std::fs::write(&script, PEER_SCRIPT).unwrap();
    let mut command = std::process::Command::new(python);
    command
        .arg(&script)
        .arg(&work)
        .arg(phase)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_TOKEN", HUB_TOKEN)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HOME", work.join(format!("hf-home-{phase}")))
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
    // The test command exports HF_HUB_DISABLE_XET=1 for the LFS peer tests; only this
    // subprocess sees it removed.
    if xet {
        command.env_remove("HF_HUB_DISABLE_XET");
    } else {
        command.env("HF_HUB_DISABLE_XET", "1");
    }
    let output =
        tokio::task::spawn_blocking(move || command.output().expect("run the python peer"))
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python peer phase `{phase}` failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_round_trips_through_xet() {
    let Some(python) = hub_python() else { return };
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new(HUB_TOKEN));
        config.xet = true;
    })
    .await;
    let endpoint = server.base_url().to_owned();
    let summary = peer(&python, &context, &endpoint, "xet", true).await;
    // The large files arrived through Xet: no LFS upload happened, and `resolve/` names their
    // Xet hash; the plain HTTP download serves the reassembled bytes.
    let stats = server.stats();
    assert_eq!(stats.object_puts + stats.part_puts, 0, "{stats:?}");
    // The headers are on the redirect itself, as the Python client reads them.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for name in ["big25.bin", "big120.bin"] {
        let head = http
            .head(format!("{endpoint}/org/xet-model/resolve/main/{name}"))
            .send()
            .await
            .unwrap();
        assert!(
            head.headers().contains_key("x-xet-hash"),
            "{name}: {:?}",
            head.headers()
        );
        assert_eq!(
            head.headers()["x-linked-etag"].to_str().unwrap(),
            format!("\"{}\"", summary["digests"][name].as_str().unwrap())
        );
    }
    peer(&python, &context, &endpoint, "lfs", false).await;
    assert!(
        server.stats().object_puts >= 1,
        "the lfs phase uploads over LFS"
    );
    peer(&python, &context, &endpoint, "xet-read", true).await;
    // Global dedup: the same 25 MB again, from a client with an empty Xet cache, sends no xorb.
    let xorbs = context.path().join("store/xet/xorbs");
    let (stored, posted) = (folder_bytes(&xorbs), server.stats().xorb_posts);
    peer(&python, &context, &endpoint, "xet-dedup", true).await;
    assert_eq!(folder_bytes(&xorbs), stored);
    assert_eq!(
        server.stats().xorb_posts,
        posted,
        "the dedup query must spare the xorb"
    );
    server.shutdown().await;
}

/// Bytes of the files in a folder tree.
fn folder_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                folder_bytes(&entry.path())
            } else {
                entry.metadata().unwrap().len()
            }
        })
        .sum()
}

/// A xorb of `chunks` (stored uncompressed) and its hash.
fn xorb_of(chunks: &[&[u8]]) -> (Vec<u8>, XetHash) {
    let mut out = Vec::new();
    let mut pairs = Vec::new();
    for chunk in chunks {
        let size = (chunk.len() as u32).to_le_bytes();
        out.push(0);
        out.extend_from_slice(&size[..3]);
        out.push(0);
        out.extend_from_slice(&size[..3]);
        out.extend_from_slice(chunk);
        pairs.push((hash::chunk_hash(chunk), chunk.len() as u64));
    }
    (out, hash::xorb_hash(&pairs))
}

/// An upload shard recording one file made of all `chunks` of `xorb`, with verification and
/// sha256 entries and the xorb listed in the CAS section.
fn shard_of(xorb: XetHash, chunks: &[&[u8]]) -> (Vec<u8>, XetHash) {
    let pairs: Vec<(XetHash, u64)> = chunks
        .iter()
        .map(|c| (hash::chunk_hash(c), c.len() as u64))
        .collect();
    let file = hash::file_hash(&pairs);
    let content: Vec<u8> = chunks.concat();
    let mut out = Vec::new();
    out.extend_from_slice(b"HFRepoMetaData\0");
    out.extend_from_slice(&[
        85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169,
    ]);
    out.extend_from_slice(&2u64.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&file.0);
    out.extend_from_slice(&((1u32 << 31) | (1 << 30)).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&xorb.0);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&hash::verification_hash(pairs.iter().map(|p| p.0)).0);
    out.extend_from_slice(&[0; 16]);
    // The sha256 is stored like a Xet hash: its string form is the usual hex.
    out.extend_from_slice(&XetHash::from_hex(&sha256_hex(&content)).unwrap().0);
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&[0xff; 32]);
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&xorb.0);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut position = 0u32;
    for (chunk, (chunk_hash, _)) in chunks.iter().zip(&pairs) {
        out.extend_from_slice(&chunk_hash.0);
        out.extend_from_slice(&position.to_le_bytes());
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        position += chunk.len() as u32;
    }
    out.extend_from_slice(&[0xff; 32]);
    out.extend_from_slice(&[0; 16]);
    (out, file)
}

async fn xet_token(http: &reqwest::Client, base: &str, repo: &str, scope: &str) -> String {
    let answer: serde_json::Value = http
        .get(format!("{base}/api/models/{repo}/xet-{scope}-token/main"))
        .bearer_auth(HUB_TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["accessToken"].as_str().unwrap().to_owned()
}

/// A server with Xet and the Hub token, repos `org/a` and `org/b`, and a client.
async fn xet_server(
    context: &TestContext,
) -> (hubsweep::hub::server::ServerHandle, String, reqwest::Client) {
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new(HUB_TOKEN));
        config.xet = true;
    })
    .await;
    let base = server.base_url().to_owned();
    let http = reqwest::Client::new();
    for name in ["a", "b"] {
        http.post(format!("{base}/api/repos/create"))
            .bearer_auth(HUB_TOKEN)
            .json(&json!({"name": name, "organization": "org"}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    (server, base, http)
}

/// The status of a POST of `body`, with `token` as bearer if any.
async fn post_status(http: &reqwest::Client, url: &str, token: Option<&str>, body: Vec<u8>) -> u16 {
    let mut request = http.post(url).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cas_requests_get_4xx() {
    let context = TestContext::new();
    let (server, base, http) = xet_server(&context).await;
    let write = xet_token(&http, &base, "org/b", "write").await;
    let data = pseudo_random(200_000, 7);
    let chunks: Vec<&[u8]> = data.chunks(70_000).collect();
    let (xorb, xorb_hash) = xorb_of(&chunks);
    let xorb_url = format!("{base}/v1/xorbs/default/{}", xorb_hash.hex());

    // No token, a forged one, a read token, truncated and mislabelled xorbs.
    assert_eq!(post_status(&http, &xorb_url, None, xorb.clone()).await, 401);
    let forged = Some("xet1.00.1.00");
    assert_eq!(
        post_status(&http, &xorb_url, forged, xorb.clone()).await,
        401
    );
    let read_b = xet_token(&http, &base, "org/b", "read").await;
    assert_eq!(
        post_status(&http, &xorb_url, Some(&read_b), xorb.clone()).await,
        403
    );
    let truncated = xorb[..xorb.len() - 10].to_vec();
    assert_eq!(
        post_status(&http, &xorb_url, Some(&write), truncated).await,
        400
    );
    let (other, _) = xorb_of(&[b"something else"]);
    assert_eq!(
        post_status(&http, &xorb_url, Some(&write), other).await,
        400
    );
    // A shard referencing a xorb nobody uploaded, and a cut shard.
    let (shard, _) = shard_of(xorb_hash, &chunks);
    let shards = format!("{base}/v1/shards");
    assert_eq!(
        post_status(&http, &shards, Some(&write), shard.clone()).await,
        400
    );
    assert_eq!(
        post_status(&http, &shards, Some(&write), shard[..100].to_vec()).await,
        400
    );
    // Nothing of it was stored.
    assert!(!context.path().join("store/xet/xorbs").exists());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xet_files_reconstruct_for_their_repo_only() {
    let context = TestContext::new();
    let (server, base, http) = xet_server(&context).await;
    let write = xet_token(&http, &base, "org/b", "write").await;
    let data = pseudo_random(200_000, 7);
    let chunks: Vec<&[u8]> = data.chunks(70_000).collect();
    let (xorb, xorb_hash) = xorb_of(&chunks);
    let xorb_url = format!("{base}/v1/xorbs/default/{}", xorb_hash.hex());
    let (shard, file) = shard_of(xorb_hash, &chunks);
    assert_eq!(
        post_status(&http, &xorb_url, Some(&write), xorb.clone()).await,
        200
    );
    assert_eq!(
        post_status(&http, &format!("{base}/v1/shards"), Some(&write), shard).await,
        200
    );
    // The file commits and downloads like an LFS upload.
    let sha = sha256_hex(&data);
    let commit = format!(
        "{}\n{}\n",
        json!({"key": "header", "value": {"summary": "xet file"}}),
        json!({"key": "lfsFile", "value": {"path": "f.bin", "algo": "sha256", "oid": sha, "size": data.len()}})
    );
    let committed = http
        .post(format!("{base}/api/models/org/b/commit/main"))
        .bearer_auth(HUB_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(commit)
        .send()
        .await
        .unwrap();
    assert_eq!(
        committed.status().as_u16(),
        200,
        "{}",
        committed.text().await.unwrap()
    );
    let body = http
        .get(format!("{base}/org/b/resolve/main/f.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body.bytes().await.unwrap()), sha);

    // With a read token of the repo holding the file; not with another repo's, nor without.
    let reconstruction = format!("{base}/v1/reconstructions/{}", file.hex());
    let read_b = xet_token(&http, &base, "org/b", "read").await;
    let answer = http
        .get(&reconstruction)
        .bearer_auth(&read_b)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["terms"][0]["range"], json!({"start": 0, "end": 3}));
    let read_a = xet_token(&http, &base, "org/a", "read").await;
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(
        status(http.get(&reconstruction).bearer_auth(&read_a)).await,
        403
    );
    assert_eq!(status(http.get(&reconstruction)).await, 401);
    // A range: whole chunks 1..3 (bytes 70,000..200,000), the first 30,000 of them skipped.
    let ranged: serde_json::Value = http
        .get(&reconstruction)
        .bearer_auth(&read_b)
        .header("range", "bytes=100000-150000")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ranged["offset_into_first_range"], 30_000);
    assert_eq!(ranged["terms"][0]["range"], json!({"start": 1, "end": 3}));
    assert_eq!(ranged["terms"][0]["unpacked_length"], 130_000);
    let past_end = http
        .get(&reconstruction)
        .bearer_auth(&read_b)
        .header("range", "bytes=200000-");
    assert_eq!(status(past_end).await, 416);
    // The signed xorb range serves exactly the chunks' bytes, and only with its signature.
    let fetch = &answer["fetch_info"][xorb_hash.hex()][0];
    let url = fetch["url"].as_str().unwrap();
    let range = format!(
        "bytes={}-{}",
        fetch["url_range"]["start"], fetch["url_range"]["end"]
    );
    let got = http.get(url).header("range", &range).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 206);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &xorb[..]);
    let forged = url.replace("sig=", "sig=0");
    assert_eq!(status(http.get(forged).header("range", &range)).await, 403);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_xet_tokens_get_401() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new(HUB_TOKEN));
        config.xet = true;
        config.limits.xet_token_ttl_secs = 0;
    })
    .await;
    let base = server.base_url().to_owned();
    let http = reqwest::Client::new();
    http.post(format!("{base}/api/repos/create"))
        .bearer_auth(HUB_TOKEN)
        .json(&json!({"name": "a", "organization": "org"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let write = xet_token(&http, &base, "org/a", "write").await;
    // Without the Hub token there is no write token at all.
    let anonymous = http
        .get(format!("{base}/api/models/org/a/xet-write-token/main"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // A zero lifetime: the token's `exp` is the second it was issued in, so it is expired at
    // once (no waiting).
    let (xorb, xorb_hash) = xorb_of(&[b"expired"]);
    let answer = http
        .post(format!("{base}/v1/xorbs/default/{}", xorb_hash.hex()))
        .bearer_auth(&write)
        .body(xorb)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answer_picks_xet_with_a_working_token_when_offered() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new(HUB_TOKEN));
        config.xet = true;
    })
    .await;
    let base = server.base_url().to_owned();
    let http = reqwest::Client::new();
    http.post(format!("{base}/api/repos/create"))
        .bearer_auth(HUB_TOKEN)
        .json(&json!({"name": "a", "organization": "org"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let batch = |transfers: serde_json::Value| {
        http.post(format!("{base}/org/a.git/info/lfs/objects/batch"))
            .bearer_auth(HUB_TOKEN)
            .json(&json!({"operation": "upload", "transfers": transfers,
                "objects": [{"oid": sha256_hex(b"x"), "size": 1}]}))
            .send()
    };
    let answer: serde_json::Value = batch(json!(["basic", "multipart", "xet"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["transfer"], "xet", "{answer}");
    let upload = &answer["objects"][0]["actions"]["upload"];
    assert!(
        upload["href"]
            .as_str()
            .unwrap()
            .ends_with("/api/models/org/a/xet-write-token/main")
    );
    let header = &upload["header"];
    assert_eq!(header["X-Xet-Cas-Url"], base.as_str());
    let token = header["X-Xet-Access-Token"].as_str().unwrap();
    assert!(
        header["X-Xet-Token-Expiration"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    // The token it hands out is a working write token.
    let (xorb, xorb_hash) = xorb_of(&[b"from the batch answer"]);
    let stored = http
        .post(format!("{base}/v1/xorbs/default/{}", xorb_hash.hex()))
        .bearer_auth(token)
        .body(xorb)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status().as_u16(), 200);
    // Not offered, not answered: LFS as before.
    let answer: serde_json::Value = batch(json!(["basic", "multipart"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["transfer"], "basic", "{answer}");
    server.shutdown().await;
}
