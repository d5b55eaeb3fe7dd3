//! Downloads into the standard HF cache: ours (`hubsweep::hub::download`, what models, weights,
//! tokenizers, dataset files and `hub download` use) keeps the token on the Hub's origin while
//! LFS files come from a storage origin, reads gated repos, shares the cache with the official
//! Python client both ways and answers offline from it; the `hf-hub` crate, an independent
//! downloader, fetches what our server serves.

use std::path::Path;

use hubsweep::hub::download::{DownloadError, Downloader, HubSource};
use hubsweep::hub::server::ServerHandle;
use hubsweep::hub::{CommitOperation, CommitOptions, HubError, LfsObject, Repo, Token};

use super::{client, hub_python, model, pseudo_random, sha256_hex, start_server};
use crate::common::{TestContext, output_text, repo_root};
use crate::run::{hubsweep, runtime, stderr};

/// A repo `org/weights` (private: readable with the token only, like a gated model) with a
/// multipart LFS file (25 MB), a basic LFS file in a folder and a regular file; its commit id and
/// the files with their sha256.
async fn weights(
    server: &ServerHandle,
    private: bool,
) -> (Repo, String, Vec<(&'static str, String)>) {
    let hub = client(server, Some("tok"));
    let repo = model("org/weights");
    hub.create_repo(&repo, private, true).await.unwrap();
    let multipart = LfsObject::from_bytes(pseudo_random(25_000_000, 3));
    let basic = LfsObject::from_bytes(pseudo_random(1 << 20, 4));
    let config = bytes::Bytes::from_static(b"{\"model_type\": \"gpt_neox\"}\n");
    hub.upload_lfs_objects(&repo, "main", &[multipart.clone(), basic.clone()])
        .await
        .unwrap();
    let operations = vec![
        CommitOperation::AddLfs {
            path: "model.safetensors".into(),
            sha256: multipart.sha256.clone(),
            size: multipart.size,
        },
        CommitOperation::AddLfs {
            path: "shards/extra.bin".into(),
            sha256: basic.sha256.clone(),
            size: basic.size,
        },
        CommitOperation::AddRegular {
            path: "config.json".into(),
            content: config.clone(),
        },
    ];
    let options = CommitOptions {
        summary: "weights".into(),
        ..Default::default()
    };
    let commit = hub
        .commit(&repo, "main", &operations, &options)
        .await
        .unwrap();
    let files = vec![
        ("model.safetensors", multipart.sha256.clone()),
        ("shards/extra.bin", basic.sha256.clone()),
        ("config.json", sha256_hex(&config)),
    ];
    (repo, commit.commit_oid, files)
}

async fn token_server(ctx: &TestContext) -> ServerHandle {
    start_server(ctx.path(), |config| {
        config.token = Some(Token::new("tok"));
        config.limits.multipart_threshold = 4 << 20;
        config.limits.part_size = 1 << 20;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_fill_the_shared_cache_and_keep_the_token_on_the_hub_origin() {
    let ctx = TestContext::new();
    let server = token_server(&ctx).await;
    let (repo, commit, files) = weights(&server, true).await;
    let cache_dir = ctx.child("hf-cache");
    let source = HubSource {
        endpoint: server.base_url().to_owned(),
        token: Some(Token::new("tok")),
        cache_dir: cache_dir.clone(),
        offline: false,
        xet: false,
    };
    // The token's Debug is masked.
    assert!(!format!("{source:?}").contains("tok\""), "{source:?}");
    let downloader = Downloader::new(source.clone()).unwrap();
    for (path, expected) in &files {
        let local = downloader.get(&repo, "main", path).await.unwrap();
        assert_eq!(
            &sha256_hex(&std::fs::read(&local).unwrap()),
            expected,
            "{path}"
        );
        // The standard cache layout: a relative link into blobs/, and the ref.
        let snapshot = cache_dir
            .join("models--org--weights/snapshots")
            .join(&commit);
        assert_eq!(local, snapshot.join(path));
        let link = std::fs::read_link(&local).unwrap();
        assert!(link.is_relative() && link.starts_with(".."), "{link:?}");
    }
    assert_eq!(
        std::fs::read_to_string(cache_dir.join("models--org--weights/refs/main")).unwrap(),
        commit
    );
    // Both LFS files came from storage, another origin: none of those requests had the token.
    assert_eq!(server.stats().storage_requests_with_auth, 0);

    // Gated: without the token the Hub refuses.
    let anonymous = Downloader::new(HubSource {
        token: None,
        cache_dir: ctx.child("other-cache"),
        ..source.clone()
    })
    .unwrap();
    let refused = anonymous
        .get(&repo, "main", "config.json")
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, DownloadError::Hub { source, .. } if matches!(**source, HubError::Unauthorized { .. })),
        "{refused:?}"
    );

    // Offline: the cache answers, a missing file is said to be missing.
    let offline = Downloader::new(HubSource {
        offline: true,
        ..source
    })
    .unwrap();
    let cached = offline.get(&repo, "main", "config.json").await.unwrap();
    assert!(cached.starts_with(&cache_dir));
    assert!(matches!(
        offline.get(&repo, "main", "absent.txt").await,
        Err(DownloadError::NotCached { .. })
    ));
    let by_commit = offline.get(&repo, &commit, "shards/extra.bin").await;
    assert!(by_commit.is_ok(), "{by_commit:?}");

    // The official Python client reads the cache we filled, and we read the one it fills.
    let Some(python) = hub_python() else {
        return;
    };
    let script = r#"
import os, sys
from huggingface_hub import hf_hub_download
mode, cache = sys.argv[1], sys.argv[2]
kw = {"local_files_only": True} if mode == "read" else {}
for path in ["model.safetensors", "shards/extra.bin", "config.json"]:
    print(hf_hub_download("org/weights", path, cache_dir=cache, **kw))
"#;
    let python_run = |mode: &str, cache: &Path| {
        let output = std::process::Command::new(&python)
            .args(["-c", script, mode])
            .arg(cache)
            .env("HF_ENDPOINT", server.base_url())
            .env("HF_TOKEN", "tok")
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", output_text(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    let read = tokio::task::block_in_place(|| python_run("read", &cache_dir));
    assert_eq!(read.lines().count(), 3, "{read}");
    let python_cache = ctx.child("python-cache");
    tokio::task::block_in_place(|| python_run("fill", &python_cache));
    let ours = Downloader::new(HubSource {
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        cache_dir: python_cache,
        offline: true,
        xet: false,
    })
    .unwrap();
    for (path, expected) in &files {
        let local = ours.get(&repo, "main", path).await.unwrap();
        assert_eq!(&sha256_hex(&std::fs::read(&local).unwrap()), expected);
    }
    server.shutdown().await;
}

/// The `hf-hub` crate (0.5) fetches what our server serves, public repos without a token (it
/// would send one to storage too: `docs/hub.md`, "Tokens").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hf_hub_crate_downloads_what_our_server_serves() {
    let ctx = TestContext::new();
    let server = token_server(&ctx).await;
    let (repo, commit, files) = weights(&server, false).await;
    let api = hf_hub::api::tokio::ApiBuilder::from_cache(hf_hub::Cache::new(ctx.child("hf")))
        .with_endpoint(server.base_url().to_owned())
        .with_progress(false)
        .build()
        .unwrap();
    let hub_repo =
        hf_hub::Repo::with_revision(repo.id.to_string(), hf_hub::RepoType::Model, "main".into());
    for (path, expected) in &files {
        let local = api.repo(hub_repo.clone()).get(path).await.unwrap();
        assert_eq!(
            &sha256_hex(&std::fs::read(&local).unwrap()),
            expected,
            "{path}"
        );
        assert!(local.to_string_lossy().contains(&commit), "{local:?}");
    }
    server.shutdown().await;
}

/// `hubsweep run` with `HF_TOKEN` over a gated model and a gated dataset whose LFS files (the
/// weights, the tokenizer, the prompts) live on the hub's storage origin: the run completes,
/// and not one storage request carried credentials. Without the token the Hub refuses: exit 2,
/// naming what it refused.
#[test]
fn a_run_with_hf_token_sends_it_to_the_hub_origin_only() {
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(async {
        let server = start_server(ctx.path(), |config| {
            config.token = Some(Token::new("secret"));
            // Every file but the config goes LFS, so through storage.
            config.limits.lfs_threshold = 1024;
        })
        .await;
        let hub = client(&server, Some("secret"));
        let weights = model("org/gated-model");
        hub.create_repo(&weights, true, true).await.unwrap();
        let fixture = repo_root().join("tests/fixtures/gpt_neox_tiny");
        let folder = ctx.child("upload-model");
        std::fs::create_dir_all(&folder).unwrap();
        for name in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::copy(fixture.join(name), folder.join(name)).unwrap();
        }
        hub.upload_folder(&weights, "main", &folder, "model")
            .await
            .unwrap();
        let prompts = Repo::dataset("org/gated-prompts".parse().unwrap());
        hub.create_repo(&prompts, true, true).await.unwrap();
        let folder = ctx.child("upload-prompts");
        std::fs::create_dir_all(&folder).unwrap();
        let line = "The quick brown fox jumps over the lazy dog, and the ledger records it.\n";
        std::fs::write(folder.join("prompts.txt"), line.repeat(40)).unwrap();
        hub.upload_folder(&prompts, "main", &folder, "prompts")
            .await
            .unwrap();
        server
    });
    let spec = ctx.child("gated.yaml");
    std::fs::write(
        &spec,
        "name: gated\noutput: local://alice/gated\nmodels:\n  - family: gpt_neox\n    repo: org/gated-model\ndata:\n  source: hf://datasets/org/gated-prompts/prompts.txt@main\n  max_tokens: 64\n  seq_len: 16\ncapture:\n  hooks: [hook_resid_post]\n  layers: all\n  dtype: f32\nanalyses:\n  - spectrum: {top_k: 4}\nlimits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n  batch_size: 4\n",
    )
    .unwrap();
    let run = |token: Option<&str>| {
        let mut cmd = hubsweep(&ctx);
        cmd.args(["run", "--format", "json"])
            .arg(&spec)
            .env("HF_ENDPOINT", server.base_url())
            .env("HF_HUB_CACHE", ctx.child("hf-cache"));
        if let Some(token) = token {
            cmd.env("HF_TOKEN", token);
        }
        cmd.output().unwrap()
    };
    let refused = run(None);
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
    // The data is fetched first: the error names it, and what the Hub said.
    assert!(
        stderr(&refused).contains("datasets/org/gated-prompts")
            && stderr(&refused).contains("not authorized"),
        "{}",
        stderr(&refused)
    );
    let output = run(Some("secret"));
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    // The LFS files were downloaded, through storage.
    let blobs = ctx.child("hf-cache/models--org--gated-model/blobs");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 3, "{blobs:?}");
    assert!(
        ctx.child("hf-cache/datasets--org--gated-prompts/snapshots")
            .is_dir()
    );
    let stats = server.stats();
    assert_eq!(
        stats.storage_requests_with_auth, 0,
        "the token went to storage: {stats:?}"
    );
    assert!(!stderr(&output).contains("secret"), "{}", stderr(&output));
    rt.block_on(server.shutdown());
}
