//! `hubsweep verify` against the embedded hub: the quickstart's results verify, shallow and
//! deep; each way of tampering with them is caught, naming the node and the file.
//!
//! One quickstart run; each tamper case is a branch of the results repo, altered through the
//! Hub client (LFS uploads and commits, as anyone with write access could), then verified as
//! `local://hubsweep/quickstart@BRANCH`.

use std::path::{Path, PathBuf};
use std::process::Output;

use bytes::Bytes;
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, LfsObject, Repo, RepoId};
use hubsweep::ledger::{self, LedgerState, Record};

use crate::common::{TestContext, isolated_hubsweep as hubsweep, output_text as text, repo_root};

const REPO: &str = "local://hubsweep/quickstart";

fn verify(ctx: &TestContext, target: &str, deep: bool) -> Output {
    let mut cmd = hubsweep(ctx);
    cmd.arg("verify").arg(target);
    if deep {
        cmd.arg("--deep");
    }
    cmd.output().expect("run hubsweep verify")
}

/// [`verify`], with the peak RSS of the process in KiB.
fn verify_measured(ctx: &TestContext, target: &str, deep: bool) -> (Output, u64) {
    let mut cmd = hubsweep(ctx);
    cmd.arg("verify").arg(target);
    if deep {
        cmd.arg("--deep");
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hubsweep verify");
    crate::run::output_and_peak_rss_kib(child)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run_quickstart(ctx: &TestContext) {
    let spec = ctx.child("quickstart.yaml");
    std::fs::copy(repo_root().join("sweeps/quickstart.yaml"), &spec).unwrap();
    let output = hubsweep(ctx).arg("run").arg(&spec).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

async fn open(home: &Path) -> (hubsweep::hub::server::ServerHandle, HubClient) {
    let mut config = ServerConfig::new(home.join("hub"));
    config.addr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(config).await.expect("open the store");
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .xet(false)
        .build()
        .unwrap();
    (server, client)
}

fn repo() -> Repo {
    Repo::dataset(RepoId::new("hubsweep", "quickstart").unwrap())
}

fn id12(record: &Record) -> &str {
    &record.id[..12]
}

async fn commit(client: &HubClient, branch: &str, operations: Vec<CommitOperation>) {
    client
        .commit(
            &repo(),
            branch,
            &operations,
            &CommitOptions {
                summary: format!("tamper: {branch}"),
                ..CommitOptions::default()
            },
        )
        .await
        .expect("tampering commit");
}

/// Replaces the ledger's records on `branch` with `records` (one new content-named segment
/// instead of the old ones, and a matching index), as a careful forger would.
async fn rewrite_ledger(client: &HubClient, branch: &str, old: &[String], records: &[Record]) {
    let segment = ledger::segment(records);
    let mut operations: Vec<CommitOperation> = old
        .iter()
        .map(|p| CommitOperation::Delete { path: p.clone() })
        .collect();
    operations.push(CommitOperation::AddRegular {
        path: segment.path,
        content: Bytes::from(segment.content),
    });
    operations.push(CommitOperation::AddRegular {
        path: ledger::INDEX_PATH.into(),
        content: Bytes::from(ledger::compact(records.iter())),
    });
    commit(client, branch, operations).await;
}

async fn upload(client: &HubClient, branch: &str, bytes: Vec<u8>) -> LfsObject {
    let object = LfsObject::from_bytes(Bytes::from(bytes));
    client
        .upload_lfs_object(&repo(), branch, &object)
        .await
        .expect("upload");
    object
}

/// A tamper case: the branch, what must appear in the failure output (node id and file), and
/// whether a shallow verify can see it.
struct Case {
    branch: &'static str,
    expect: Vec<String>,
    shallow_detects: bool,
}

#[test]
fn tampering_is_detected_and_untouched_results_verify() {
    let ctx = TestContext::new();
    run_quickstart(&ctx);
    let home: PathBuf = ctx.child("hubsweep-home");

    let cases = runtime().block_on(async {
        let (server, client) = open(&home).await;
        let repo = repo();
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let mut records: Vec<Record> = Vec::new();
        for path in &state.segments {
            let bytes = client.download_bytes(&repo, "main", path).await.unwrap();
            records.extend(ledger::parse_records(path, &bytes).unwrap());
        }
        let artifacts: Vec<&Record> = records.iter().filter(|r| r.kind == "artifact").collect();
        let (a, b) = (artifacts[0].clone(), artifacts[1].clone());
        let spectrum = records
            .iter()
            .find(|r| r.kind == "spectrum")
            .unwrap()
            .clone();
        let (fa, fb) = (a.files[0].clone(), b.files[0].clone());
        let mut cases = Vec::new();
        let branch = |name: &'static str| {
            let client = client.clone();
            let repo = repo.clone();
            async move {
                client.create_branch(&repo, name, "main").await.unwrap();
                name
            }
        };

        // A flipped byte: another object at the same path, the record kept.
        let name = branch("flipped-byte").await;
        let mut bytes = client
            .download_bytes(&repo, "main", &fa.path)
            .await
            .unwrap()
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let object = upload(&client, name, bytes).await;
        commit(
            &client,
            name,
            vec![CommitOperation::AddLfs {
                path: fa.path.clone(),
                sha256: object.sha256,
                size: object.size,
            }],
        )
        .await;
        cases.push(Case {
            branch: name,
            expect: vec![id12(&a).into(), fa.path.clone()],
            shallow_detects: true,
        });

        // Two files swapped.
        let name = branch("swapped").await;
        commit(
            &client,
            name,
            vec![
                CommitOperation::AddLfs {
                    path: fa.path.clone(),
                    sha256: fb.sha256.clone(),
                    size: fb.size,
                },
                CommitOperation::AddLfs {
                    path: fb.path.clone(),
                    sha256: fa.sha256.clone(),
                    size: fa.size,
                },
            ],
        )
        .await;
        cases.push(Case {
            branch: name,
            expect: vec![
                id12(&a).into(),
                fa.path.clone(),
                id12(&b).into(),
                fb.path.clone(),
            ],
            shallow_detects: true,
        });

        // A file deleted.
        let name = branch("deleted").await;
        commit(
            &client,
            name,
            vec![CommitOperation::Delete {
                path: fa.path.clone(),
            }],
        )
        .await;
        cases.push(Case {
            branch: name,
            expect: vec![id12(&a).into(), fa.path.clone()],
            shallow_detects: true,
        });

        // A metric edited, segment and index rewritten consistently: only recomputation
        // (deep) can see it.
        let name = branch("metric-edited").await;
        let edited: Vec<Record> = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if r.id == spectrum.id {
                    let metrics = r.metrics.as_mut().unwrap();
                    let norm = metrics["raw"]["spectral_norm"].as_f64().unwrap();
                    metrics["raw"]["spectral_norm"] = serde_json::json!(norm * 1.01);
                }
                r
            })
            .collect();
        rewrite_ledger(&client, name, &state.segments, &edited).await;
        cases.push(Case {
            branch: name,
            expect: vec![
                id12(&spectrum).into(),
                spectrum.files[0].path.clone(),
                "spectral_norm".into(),
            ],
            shallow_detects: false,
        });

        // A segment dropped.
        let name = branch("segment-dropped").await;
        commit(
            &client,
            name,
            vec![CommitOperation::Delete {
                path: state.segments[0].clone(),
            }],
        )
        .await;
        cases.push(Case {
            branch: name,
            expect: vec![id12(&a).into(), ledger::INDEX_PATH.into()],
            shallow_detects: true,
        });

        // The manifest's spec edited.
        let name = branch("spec-edited").await;
        let manifest = client
            .download_bytes(&repo, "main", ledger::MANIFEST_PATH)
            .await
            .unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let spec_text = manifest["spec"]["text"].as_str().unwrap().to_owned();
        assert!(spec_text.contains("top_k: 16"));
        manifest["spec"]["text"] = serde_json::json!(spec_text.replace("top_k: 16", "top_k: 8"));
        commit(
            &client,
            name,
            vec![CommitOperation::AddRegular {
                path: ledger::MANIFEST_PATH.into(),
                content: Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap()),
            }],
        )
        .await;
        cases.push(Case {
            branch: name,
            expect: vec!["manifest".into(), ledger::MANIFEST_PATH.into()],
            shallow_detects: true,
        });

        // A record pointing at a file of another node (ids do not cover files).
        let name = branch("foreign-file").await;
        let edited: Vec<Record> = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if r.id == a.id {
                    r.files = b.files.clone();
                }
                r
            })
            .collect();
        rewrite_ledger(&client, name, &state.segments, &edited).await;
        cases.push(Case {
            branch: name,
            expect: vec![id12(&a).into(), fb.path.clone()],
            shallow_detects: true,
        });

        // A hostile artifact: a safetensors header claiming a 2^32 × 2^32 tensor and two
        // tensors over the same bytes, recorded consistently (its sha256 and size in the
        // record and the Hub agree), so only reading it can see it. The reader must refuse it
        // without allocating what it claims.
        let name = branch("hostile-header").await;
        let header = br#"{"activations":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]},"alias":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
        let mut hostile = (header.len() as u64).to_le_bytes().to_vec();
        hostile.extend_from_slice(header);
        hostile.extend_from_slice(&[0u8; 16]);
        let object = upload(&client, name, hostile).await;
        let edited: Vec<Record> = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if r.id == a.id {
                    r.files[0].sha256 = object.sha256.clone();
                    r.files[0].size = object.size;
                }
                r
            })
            .collect();
        rewrite_ledger(&client, name, &state.segments, &edited).await;
        // The card states the repo's bytes and would betray the new size: a careful forger
        // removes it too.
        commit(
            &client,
            name,
            vec![
                CommitOperation::AddLfs {
                    path: fa.path.clone(),
                    sha256: object.sha256.clone(),
                    size: object.size,
                },
                CommitOperation::Delete {
                    path: "README.md".into(),
                },
            ],
        )
        .await;
        cases.push(Case {
            branch: name,
            expect: vec![id12(&a).into(), fa.path.clone()],
            shallow_detects: false,
        });

        // A node recorded twice, the second time with other metrics.
        let name = branch("duplicated").await;
        let mut duplicated = records.clone();
        let mut twin = spectrum.clone();
        let metrics = twin.metrics.as_mut().unwrap();
        let norm = metrics["raw"]["spectral_norm"].as_f64().unwrap();
        metrics["raw"]["spectral_norm"] = serde_json::json!(norm * 2.0);
        duplicated.push(twin);
        rewrite_ledger(&client, name, &state.segments, &duplicated).await;
        cases.push(Case {
            branch: name,
            expect: vec![id12(&spectrum).into(), "twice".into()],
            shallow_detects: true,
        });

        server.shutdown().await;
        cases
    });

    for deep in [false, true] {
        let output = verify(&ctx, REPO, deep);
        assert_eq!(
            output.status.code(),
            Some(0),
            "untouched results (deep: {deep})\n{}",
            text(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("43 nodes"), "{stdout}");
    }
    for case in &cases {
        let target = format!("{REPO}@{}", case.branch);
        for deep in [false, true] {
            let (output, peak_kib) = verify_measured(&ctx, &target, deep);
            // Bounded memory whatever the files claim (the quickstart's files are small).
            assert!(
                peak_kib < 256 << 10,
                "{} (deep: {deep}): peak RSS {peak_kib} KiB",
                case.branch
            );
            let detected = deep || case.shallow_detects;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !detected {
                assert_eq!(
                    output.status.code(),
                    Some(0),
                    "{}: shallow verify cannot see it\n{}",
                    case.branch,
                    text(&output)
                );
                continue;
            }
            assert_eq!(
                output.status.code(),
                Some(1),
                "{} (deep: {deep}) not detected\n{}",
                case.branch,
                text(&output)
            );
            let failures = stdout.split("failures:").nth(1).unwrap_or_default();
            for needle in &case.expect {
                assert!(
                    failures.contains(needle.as_str()),
                    "{} (deep: {deep}): the failures do not name `{needle}`\n{}",
                    case.branch,
                    text(&output)
                );
            }
        }
    }
}

#[test]
fn a_missing_repo_or_bad_name_cannot_run() {
    let ctx = TestContext::new();
    // Each says what it could not use.
    for (target, says) in [
        ("local://nobody/nothing", "nobody/nothing"),
        ("s3://bucket/x", "s3://bucket/x"),
        ("hf://nobody/nothing", "nobody/nothing"),
    ] {
        let output = verify(&ctx, target, false);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(says), "{target}: {err}");
    }
}
