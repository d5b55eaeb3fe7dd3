//! Hostile input to the server: each request gets a 4xx and leaves the repo unchanged; and
//! concurrent commits to one branch lose no update.

use hubsweep::hub::{CommitOperation, CommitOptions, HubError};
use serde_json::json;

use super::{client, model, pseudo_random, sha256_hex, start_server};
use crate::common::TestContext;

fn ndjson(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn header() -> serde_json::Value {
    json!({"key": "header", "value": {"summary": "hostile"}})
}

fn file(path: &str, content: &str) -> serde_json::Value {
    json!({"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_and_change_nothing() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.limits.max_ndjson_line = 4096
    })
    .await;
    let hub = client(&server, None);
    let repo = model("org/target");
    hub.create_repo(&repo, false, true).await.unwrap();
    let ops = [CommitOperation::AddRegular {
        path: "keep.txt".into(),
        content: "keep".into(),
    }];
    hub.commit(&repo, "main", &ops, &CommitOptions::default())
        .await
        .unwrap();
    let head = hub.head(&repo, "main").await.unwrap();
    let tree = hub.list_tree(&repo, "main", "", true).await.unwrap();

    let base = server.base_url().to_owned();
    let http = reqwest::Client::new();
    let commit_url = format!("{base}/api/models/org/target/commit/main");
    let missing_oid = sha256_hex(b"never uploaded");
    let mut cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "dotdot repo name",
            http.post(format!("{base}/api/repos/create"))
                .json(&json!({"name": "..", "organization": "org"})),
            400,
        ),
        (
            "NUL in repo name",
            http.post(format!("{base}/api/repos/create"))
                .json(&json!({"name": "a\u{0}b", "organization": "org"})),
            400,
        ),
        (
            "path in namespace",
            http.post(format!("{base}/api/repos/create"))
                .json(&json!({"name": "x", "organization": "../etc"})),
            400,
        ),
        (
            "double dot repo in URL",
            http.get(format!("{base}/api/models/org/a..b")),
            400,
        ),
        (
            "leading dash repo in URL",
            http.get(format!("{base}/api/models/org/-x")),
            400,
        ),
        (
            "NUL repo in URL",
            http.get(format!("{base}/api/models/org/a%00b")),
            400,
        ),
        (
            "dotdot resolve path",
            http.get(format!(
                "{base}/org/target/resolve/main/..%2F..%2Frefs.json"
            )),
            400,
        ),
        (
            "absolute resolve path",
            http.get(format!("{base}/org/target/resolve/main/%2Fetc%2Fpasswd")),
            400,
        ),
        (
            "NUL resolve path",
            http.get(format!("{base}/org/target/resolve/main/a%00b")),
            400,
        ),
    ];
    for (name, path) in [
        ("dotdot commit path", "../escape.txt"),
        ("absolute commit path", "/abs.txt"),
        ("NUL commit path", "a\u{0}b"),
        ("git dir", ".git/config"),
    ] {
        cases.push((
            name,
            http.post(&commit_url)
                .body(ndjson(&[header(), file(path, "eA==")])),
            400,
        ));
    }
    cases.extend([
        ("bad base64", http.post(&commit_url).body(ndjson(&[header(), file("x.txt", "!!not base64!!")])), 400),
        ("oversized NDJSON line", http.post(&commit_url).body(ndjson(&[header(), file("x.txt", &"QUFB".repeat(2000))])), 413),
        (
            "lfsFile of a missing object",
            http.post(&commit_url).body(ndjson(&[header(), json!({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": missing_oid, "size": 4}})])),
            422,
        ),
        (
            "lfsFile with a bad oid",
            http.post(&commit_url).body(ndjson(&[header(), json!({"key": "lfsFile", "value": {"path": "w.bin", "oid": "../../x", "size": 4}})])),
            400,
        ),
        ("header not first", http.post(&commit_url).body(ndjson(&[file("x.txt", "eA=="), header()])), 400),
        ("not JSON", http.post(&commit_url).body("{{{\n"), 400),
        ("delete a missing file", http.post(&commit_url).body(ndjson(&[header(), json!({"key": "deletedFile", "value": {"path": "nope"}})])), 404),
        (
            "valid line then a bad one",
            http.post(&commit_url).body(ndjson(&[header(), file("ok.txt", "eA=="), file("../bad", "eA==")])),
            400,
        ),
        ("preupload bad sample", http.post(format!("{base}/api/models/org/target/preupload/main")).json(&json!({"files": [{"path": "a", "size": 1, "sample": "%%%"}]})), 400),
        (
            "too many paths-info parameters",
            http.post(format!("{base}/api/models/org/target/paths-info/main"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body((0..1001).map(|i| format!("paths={i}")).collect::<Vec<_>>().join("&")),
            413,
        ),
        ("tampered presigned URL", http.put(format!("{base}/_lfs/objects/{missing_oid}/4?exp=99999999999&sig=00")).body("abcd"), 403),
    ]);

    cases.push((
        "admin endpoints are off unless enabled",
        http.put(format!("{base}/_admin/faults"))
            .json(&json!({"slow_ms": 1})),
        404,
    ));
    // A PUT whose bytes do not match the oid, on a correctly signed URL.
    let real = pseudo_random(1000, 5);
    let batch: serde_json::Value = http
        .post(format!("{base}/org/target.git/info/lfs/objects/batch"))
        .json(&json!({"operation": "upload", "transfers": ["basic"], "objects": [{"oid": sha256_hex(&real), "size": 1000}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let href = batch["objects"][0]["actions"]["upload"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    cases.push((
        "PUT bytes that do not match the oid",
        http.put(&href).body(pseudo_random(1000, 6)),
        400,
    ));
    cases.push((
        "PUT too many bytes",
        http.put(&href).body(pseudo_random(1001, 5)),
        400,
    ));

    for (name, request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            status,
            "{name}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    // The mismatched object was not stored, and nothing moved.
    let verify = http
        .post(format!("{base}/org/target.git/info/lfs/objects/verify"))
        .json(&json!({"oid": sha256_hex(&real), "size": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status().as_u16(), 404);
    assert_eq!(hub.head(&repo, "main").await.unwrap(), head);
    assert_eq!(hub.list_tree(&repo, "main", "", true).await.unwrap(), tree);
    assert_eq!(server.stats().commits_applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_to_one_branch_lose_no_update() {
    let context = TestContext::new();
    let server = start_server(context.path(), |_| {}).await;
    let hub = client(&server, None);
    let repo = model("org/race");
    hub.create_repo(&repo, false, true).await.unwrap();
    let writers: Vec<_> = (0..12)
        .map(|n| {
            let hub = hub.clone();
            let repo = repo.clone();
            tokio::spawn(async move {
                let ops = [CommitOperation::AddRegular {
                    path: format!("w/{n}.txt"),
                    content: format!("{n}").into(),
                }];
                hub.commit(
                    &repo,
                    "main",
                    &ops,
                    &CommitOptions {
                        summary: format!("writer {n}"),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let files = hub.list_tree(&repo, "main", "w", false).await.unwrap();
    assert_eq!(files.len(), 12, "every writer's file is on the branch");
    assert_eq!(hub.list_commits(&repo, "main").await.unwrap().len(), 13);

    // Racing with the same parentCommit: exactly one wins, the others are told the branch moved.
    let parent = hub.head(&repo, "main").await.unwrap();
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let (hub, repo, parent) = (hub.clone(), repo.clone(), parent.clone());
            tokio::spawn(async move {
                let ops = [CommitOperation::AddRegular {
                    path: format!("r/{n}.txt"),
                    content: "r".into(),
                }];
                hub.commit(
                    &repo,
                    "main",
                    &ops,
                    &CommitOptions {
                        parent_commit: Some(parent),
                        ..Default::default()
                    },
                )
                .await
            })
        })
        .collect();
    let mut wins = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => wins += 1,
            Err(HubError::ParentMismatch { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        hub.list_tree(&repo, "main", "r", false)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_parts_cannot_slip_past_the_completion_hash() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.limits.multipart_threshold = 1024;
        config.limits.part_size = 1024;
    })
    .await;
    client(&server, None)
        .create_repo(&model("org/parts"), false, true)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let content = pseudo_random(4096, 11);
    let oid = sha256_hex(&content);
    let batch: serde_json::Value = http
        .post(format!("{}/org/parts.git/info/lfs/objects/batch", server.base_url()))
        .json(&json!({"operation": "upload", "transfers": ["basic", "multipart"], "objects": [{"oid": oid, "size": 4096}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = &batch["objects"][0]["actions"]["upload"];
    let put = |n: usize, body: bytes::Bytes| {
        let url = upload["header"][n.to_string()].as_str().unwrap().to_owned();
        let http = http.clone();
        async move {
            let response = http.put(url).body(body).send().await.unwrap();
            assert!(response.status().is_success());
            response.headers()["etag"].to_str().unwrap().to_owned()
        }
    };
    let mut etags = Vec::new();
    for n in 1..=4 {
        etags.push(put(n, content.slice((n - 1) * 1024..n * 1024)).await);
    }
    // Part 2 was hashed already; now it is overwritten with other bytes of the same length.
    etags[1] = put(2, pseudo_random(1024, 12)).await;
    let complete = |etags: Vec<String>| {
        let body = json!({"oid": oid, "parts": etags.iter().enumerate().map(|(i, e)| json!({"partNumber": i + 1, "etag": e})).collect::<Vec<_>>()});
        http.post(upload["href"].as_str().unwrap())
            .json(&body)
            .send()
    };
    assert_eq!(
        complete(etags.clone()).await.unwrap().status().as_u16(),
        400
    );
    // Put the right bytes back: completion now hashes the whole file and accepts it.
    etags[1] = put(2, content.slice(1024..2048)).await;
    assert!(complete(etags).await.unwrap().status().is_success());
    let blob = http
        .get(format!("{}/_lfs/blobs/{oid}", server.base_url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&blob), oid);
}

/// Sends a request head on a raw connection, then `chunked_mib` chunks of 1 MiB of body (none:
/// a declared length never sent) from another thread, and returns the answer's status: the
/// server must answer from the head, or mid-body, without reading the rest.
fn raw_status(url: &str, head: &str, chunked_mib: usize) -> u16 {
    use std::io::{Read as _, Write as _};
    let address = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let head = head.replace("HOST", &address);
    std::thread::spawn(move || {
        // Write errors are expected once the server has answered and closed.
        let _ = writer.write_all(head.as_bytes());
        let chunk = [b' '; 1 << 20];
        for _ in 0..chunked_mib {
            let _ = writer.write_all(b"100000\r\n");
            let _ = writer.write_all(&chunk);
            let _ = writer.write_all(b"\r\n");
        }
    });
    let mut answer = [0u8; 64];
    let read = stream.read(&mut answer).expect("an answer within 5 s");
    let text = String::from_utf8_lossy(&answer[..read]);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batch_and_commit_requests_get_a_quick_4xx_in_bounded_memory() {
    let context = TestContext::new();
    let (mut server, base) = super::spawn_serve(&context, &context.child("store"));
    let hub = super::client_for(&base);
    let repo = model("org/target");
    hub.create_repo(&repo, false, true).await.unwrap();
    let head = hub.head(&repo, "main").await.unwrap();
    let http = reqwest::Client::new();
    let batch_url = format!("{base}/org/target.git/info/lfs/objects/batch");
    let commit_url = format!("{base}/api/models/org/target/commit/main");
    let an_oid = sha256_hex(b"x");
    // A signed multipart completion URL, to send hostile completions to.
    let multipart: serde_json::Value = http
        .post(&batch_url)
        .json(&json!({"operation": "upload", "transfers": ["basic", "multipart"], "objects": [{"oid": an_oid, "size": 100_000_000}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let completion = multipart["objects"][0]["actions"]["upload"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    let part_one = multipart["objects"][0]["actions"]["upload"]["header"]["1"]
        .as_str()
        .unwrap()
        .to_owned();
    let baseline = super::peak_rss_bytes(server.id());

    let objects = |n: usize| {
        json!({"operation": "upload", "transfers": ["basic"],
            "objects": (0..n).map(|i| json!({"oid": sha256_hex(&i.to_le_bytes()), "size": 1})).collect::<Vec<_>>()})
    };
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let many_deletions: String = std::iter::once(format!("{}\n", header()))
        .chain((0..100_001).map(|i| {
            format!(
                "{}\n",
                json!({"key": "deletedFile", "value": {"path": format!("f/{i}")}})
            )
        }))
        .collect();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("1001 objects in one batch", http.post(&batch_url).json(&objects(1001)), 413),
        ("batch nested 100,000 deep", http.post(&batch_url).body(nested(100_000)), 400),
        (
            "object nested in the size",
            http.post(&batch_url).body(format!(r#"{{"operation":"upload","objects":[{{"oid":"{an_oid}","size":{}}}]}}"#, nested(10_000))),
            400,
        ),
        ("negative size", http.post(&batch_url).json(&json!({"operation": "upload", "objects": [{"oid": an_oid, "size": -1}]})), 400),
        (
            "size past u64",
            http.post(&batch_url).body(format!(r#"{{"operation":"upload","objects":[{{"oid":"{an_oid}","size":1{}}}]}}"#, "0".repeat(40))),
            400,
        ),
        ("unknown operation", http.post(&batch_url).json(&json!({"operation": "rm -rf", "objects": []})), 400),
        (
            "1001 files in one preupload",
            http.post(format!("{base}/api/models/org/target/preupload/main"))
                .json(&json!({"files": (0..1001).map(|i| json!({"path": format!("f{i}"), "size": 1, "sample": ""})).collect::<Vec<_>>()})),
            413,
        ),
        ("completion listing the wrong parts", http.post(&completion).json(&json!({"oid": an_oid, "parts": [{"partNumber": 4_000_000_000u64, "etag": "x"}]})), 400),
        (
            "part number past u32",
            http.put(part_one.replace("/1?", "/99999999999?")).body("x"),
            400,
        ),
        ("part number on a URL not signed for it", http.put(part_one.replace("/1?", "/7?")).body("x"), 403),
        ("commit of 100,001 operations", http.post(&commit_url).body(many_deletions), 413),
        (
            "commit line nested 100,000 deep",
            http.post(&commit_url).body(format!("{}\n{{\"key\":\"file\",\"value\":{}}}\n", header(), nested(100_000))),
            400,
        ),
        ("commit of JSON that never ends", http.post(&commit_url).body("[".repeat(1 << 20)), 400),
        ("create nested 100,000 deep", http.post(format!("{base}/api/repos/create")).body(nested(100_000)), 400),
    ];
    for (name, request, status) in cases {
        let started = std::time::Instant::now();
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let took = started.elapsed();
        assert_eq!(
            response.status().as_u16(),
            status,
            "{name}: {}",
            response.text().await.unwrap_or_default()
        );
        assert!(
            took < std::time::Duration::from_secs(2),
            "{name} took {took:?}"
        );
    }
    // Bodies too large for their endpoint: declared ones are refused from their length alone
    // (none of it is sent), streamed ones as soon as they pass the limit (the rest is not read).
    let path_of = |url: &str| {
        format!(
            "/{}",
            url.trim_start_matches("http://").split_once('/').unwrap().1
        )
    };
    let raw_cases = [
        (
            "batch declaring 300 MB",
            String::from(
                "POST /org/target.git/info/lfs/objects/batch HTTP/1.1\r\nHost: HOST\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n",
            ),
            0,
            413,
        ),
        (
            "batch streaming 300 MB",
            String::from(
                "POST /org/target.git/info/lfs/objects/batch HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            300,
            413,
        ),
        (
            "commit declaring 600 MB",
            String::from(
                "POST /api/models/org/target/commit/main HTTP/1.1\r\nHost: HOST\r\nContent-Length: 600000000\r\n\r\n",
            ),
            0,
            413,
        ),
        (
            "completion declaring 40 MB of parts",
            format!(
                "POST {} HTTP/1.1\r\nHost: HOST\r\nContent-Length: 40000000\r\n\r\n",
                path_of(&completion)
            ),
            0,
            413,
        ),
        (
            "paths-info declaring 9 MiB",
            format!(
                "POST /api/models/org/target/paths-info/main HTTP/1.1\r\nHost: HOST\r\nContent-Length: {}\r\n\r\n",
                9 << 20
            ),
            0,
            413,
        ),
        (
            "part declaring more than its size",
            format!(
                "PUT {} HTTP/1.1\r\nHost: HOST\r\nContent-Length: {}\r\n\r\n",
                path_of(&part_one),
                (16 << 20) + 1
            ),
            0,
            400,
        ),
    ];
    for (name, head, chunked_mib, status) in raw_cases {
        let started = std::time::Instant::now();
        let base = base.clone();
        let got = tokio::task::spawn_blocking(move || raw_status(&base, &head, chunked_mib))
            .await
            .unwrap();
        assert_eq!(got, status, "{name}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{name}"
        );
    }
    let grown = super::peak_rss_bytes(server.id()).saturating_sub(baseline);
    assert!(
        grown < 128 << 20,
        "hostile requests grew the server's peak memory by {grown} bytes"
    );
    assert_eq!(hub.head(&repo, "main").await.unwrap(), head);
    server.kill().unwrap();
    let _ = server.wait();
}
