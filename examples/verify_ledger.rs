//! Builds ledgers for scripts/bench/verify.sh in an embedded hub store.
//!
//! `shallow`: a dataset repo `bench/verify-shallow` with N artifact records, each with its own
//! file path, committed as N LFS pointers to 16 shared objects (uploading N distinct objects
//! would measure the uploader, not verify; shallow verify never reads object contents, only
//! the tree's oid and size per path, so sharing objects changes nothing it does). Records go
//! into one content-named segment per commit of 10,000 files, then the compacted index.
//!
//! `deep`: a repo `bench/verify-deep` with MIB mebibytes of real activation artifacts (valid
//! safetensors, pseudo-random f32), 64 MiB each, for deep-verify throughput.
//!
//! `sha256`: this machine's single-core sha256 speed with the crate deep verify uses (`sha2`):
//! MIB mebibytes hashed as one cache-resident 1 MiB block of artifact bytes over and over, best
//! of three; prints MB/s (10^6 bytes).
//!
//! Usage: verify_ledger STORE_DIR shallow N | verify_ledger STORE_DIR deep MIB |
//! verify_ledger - sha256 MIB
#![allow(clippy::print_stdout)]

use std::time::Instant;

use bytes::Bytes;
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, LfsObject, Repo, RepoId};
use hubsweep::ledger::{self, FileRecord, Manifest, Record};
use sha2::{Digest as _, Sha256};

const SPEC: &str = include_str!("../sweeps/quickstart.yaml");

fn manifest() -> Manifest {
    let tree = hubsweep::spec::load("quickstart.yaml", SPEC.as_bytes())
        .tree
        .map(|t| hubsweep::plan::id::canonical_json(&t.to_json()))
        .unwrap_or_default();
    Manifest {
        schema_version: ledger::SCHEMA_VERSION,
        tool: ledger::Tool {
            name: "hubsweep".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        sweep: "quickstart".into(),
        output: "local://datasets/bench/verify".into(),
        spec: ledger::SpecText {
            file_name: "quickstart.yaml".into(),
            text: SPEC.into(),
            sha256: hex::encode(Sha256::digest(SPEC.as_bytes())),
            canonical_sha256: hex::encode(Sha256::digest(tree.as_bytes())),
        },
        tolerances: Vec::new(),
    }
}

fn record(i: u64, object: &LfsObject, tokens: u64) -> Record {
    let mut r = Record {
        id: String::new(),
        kind: "artifact".into(),
        version: 1,
        params: serde_json::json!({"dtype": "f32", "hook": "hook_resid_post", "layer": i % 64, "shard": i, "tokens": tokens}),
        inputs: Vec::new(),
        pins: serde_json::json!({"commit": "0".repeat(40)}),
        files: Vec::new(),
        metrics: None,
        timing: None,
        device: Some("cpu".into()),
        error: None,
    };
    r.id = r.recomputed_id();
    r.files.push(FileRecord {
        path: format!(
            "acts/bench/hook_resid_post/layer{:03}/shard{i:06}-{}.safetensors",
            i % 64,
            &r.id[..12]
        ),
        size: object.size,
        sha256: object.sha256.clone(),
    });
    r
}

/// A valid activation artifact: `token_ids` I32 [t], `activations` F32 [t, width].
fn artifact(tokens: usize, width: usize, node_id: &str, seed: u64) -> Vec<u8> {
    let header = format!(
        r#"{{"__metadata__":{{"node_id":"{node_id}"}},"token_ids":{{"dtype":"I32","shape":[{tokens}],"data_offsets":[0,{a}]}},"activations":{{"dtype":"F32","shape":[{tokens},{width}],"data_offsets":[{a},{b}]}}}}"#,
        a = tokens * 4,
        b = tokens * 4 + tokens * width * 4
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..tokens as i32).flat_map(i32::to_le_bytes));
    let mut x = seed | 1;
    for _ in 0..tokens * width {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&((x >> 40) as f32 / 16_777_216.0 - 0.5).to_le_bytes());
    }
    out
}

async fn commit(client: &HubClient, repo: &Repo, ops: Vec<CommitOperation>, summary: &str) {
    client
        .commit(
            repo,
            "main",
            &ops,
            &CommitOptions {
                summary: summary.into(),
                ..CommitOptions::default()
            },
        )
        .await
        .expect("commit");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, mode, n] = args.as_slice() else {
        return Err(
            "usage: verify_ledger STORE_DIR shallow N | STORE_DIR deep MIB | - sha256 MIB".into(),
        );
    };
    let n: u64 = n.parse()?;
    if mode == "sha256" {
        // One 1 MiB block hashed over and over: it stays in cache, so this is sha256's compute
        // speed on one core, the most a single hashing thread could reach.
        let block = artifact(256, 1023, "", 7);
        let mut best = 0.0f64;
        for _ in 0..3 {
            let started = Instant::now();
            let mut hasher = Sha256::new();
            for _ in 0..n {
                hasher.update(std::hint::black_box(&block));
            }
            std::hint::black_box(hasher.finalize());
            best =
                best.max((n as usize * block.len()) as f64 / started.elapsed().as_secs_f64() / 1e6);
        }
        println!("{best:.1}");
        return Ok(());
    }
    let mut config = ServerConfig::new(store.into());
    config.addr = "127.0.0.1:0".parse()?;
    let server = Server::start(config).await?;
    let client = HubClient::builder(server.base_url())?.build()?;
    let started = Instant::now();
    let name = if mode == "deep" {
        "verify-deep"
    } else {
        "verify-shallow"
    };
    let repo = Repo::dataset(RepoId::new("bench", name)?);
    client.create_repo(&repo, false, true).await?;
    let manifest_bytes = Bytes::from(serde_json::to_vec_pretty(&manifest())?);
    let mut all = Vec::new();
    if mode == "deep" {
        let (tokens, width) = (16_384usize, 1024usize); // 64 MiB of f32 per artifact
        let files = (n * (1 << 20)).div_ceil((tokens * width * 4) as u64);
        for i in 0..files {
            // The id does not cover files: compute it first, then write the file naming it.
            let placeholder = LfsObject::from_bytes(Bytes::new());
            let id = record(i, &placeholder, tokens as u64).id;
            let object = LfsObject::from_bytes(Bytes::from(artifact(tokens, width, &id, i + 1)));
            client.upload_lfs_object(&repo, "main", &object).await?;
            let r = record(i, &object, tokens as u64);
            let segment = ledger::segment(std::slice::from_ref(&r));
            let mut ops = vec![
                CommitOperation::AddLfs {
                    path: r.files[0].path.clone(),
                    sha256: object.sha256.clone(),
                    size: object.size,
                },
                CommitOperation::AddRegular {
                    path: segment.path,
                    content: Bytes::from(segment.content),
                },
            ];
            if i == 0 {
                ops.push(CommitOperation::AddRegular {
                    path: ledger::MANIFEST_PATH.into(),
                    content: manifest_bytes.clone(),
                });
            }
            commit(&client, &repo, ops, "artifact").await;
            all.push(r);
        }
    } else {
        let objects: Vec<LfsObject> = (0..16u8)
            .map(|k| LfsObject::from_bytes(Bytes::from(vec![k; 1024 + k as usize])))
            .collect();
        client.upload_lfs_objects(&repo, "main", &objects).await?;
        let per_commit = 10_000;
        let mut i = 0;
        while i < n {
            let end = (i + per_commit).min(n);
            let records: Vec<Record> = (i..end)
                .map(|j| record(j, &objects[(j % 16) as usize], 0))
                .collect();
            let segment = ledger::segment(&records);
            let mut ops: Vec<CommitOperation> = records
                .iter()
                .map(|r| CommitOperation::AddLfs {
                    path: r.files[0].path.clone(),
                    sha256: r.files[0].sha256.clone(),
                    size: r.files[0].size,
                })
                .collect();
            ops.push(CommitOperation::AddRegular {
                path: segment.path,
                content: Bytes::from(segment.content),
            });
            if i == 0 {
                ops.push(CommitOperation::AddRegular {
                    path: ledger::MANIFEST_PATH.into(),
                    content: manifest_bytes.clone(),
                });
            }
            commit(&client, &repo, ops, "records").await;
            all.extend(records);
            i = end;
        }
    }
    commit(
        &client,
        &repo,
        vec![CommitOperation::AddRegular {
            path: ledger::INDEX_PATH.into(),
            content: Bytes::from(ledger::compact(all.iter())),
        }],
        "index",
    )
    .await;
    println!(
        "{{\"repo\": \"local://bench/{name}\", \"records\": {}, \"build_s\": {:.1}}}",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    server.shutdown().await;
    Ok(())
}
