//! The `hf-hub` crate (0.5), an independent downloader, fetches what our client uploaded —
//! regular and LFS files (basic and multipart) — with equal sha256, into the standard HF cache;
//! offline mode answers from that cache, and the official Python client reads it too.

use hubsweep::hub::download::{DownloadError, DownloadSettings, Downloader};
use hubsweep::hub::{CommitOperation, CommitOptions, LfsObject};

use super::{client, model, pseudo_random, sha256_hex, start_server};
use crate::common::TestContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hf_hub_crate_downloads_what_our_client_uploaded() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new("tok"));
        config.limits.multipart_threshold = 4 << 20;
        config.limits.part_size = 1 << 20;
    })
    .await;
    let hub = client(&server, Some("tok"));
    let repo = model("org/weights");
    hub.create_repo(&repo, false, true).await.unwrap();
    // 25 MB crosses hf-hub's 10 MB download chunks; 6 MiB goes multipart; 1 MiB basic.
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
    let commit = hub
        .commit(
            &repo,
            "main",
            &operations,
            &CommitOptions {
                summary: "weights".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let cache_dir = context.child("hf-cache");
    let token = Some(hubsweep::hub::Token::new("tok"));
    let settings = DownloadSettings {
        endpoint: server.base_url().to_owned(),
        token,
        cache_dir: cache_dir.clone(),
        offline: false,
    };
    let downloader = Downloader::new(settings.clone()).unwrap();
    for (path, expected) in [
        ("model.safetensors", &multipart.sha256),
        ("shards/extra.bin", &basic.sha256),
        ("config.json", &sha256_hex(&config)),
    ] {
        let local = downloader.get(&repo, "main", path).await.unwrap();
        assert_eq!(
            &sha256_hex(&std::fs::read(&local).unwrap()),
            expected,
            "{path}"
        );
        // The standard cache layout, shared with Python.
        assert!(
            local.starts_with(
                cache_dir
                    .join("models--org--weights/snapshots")
                    .join(&commit.commit_oid)
            ),
            "{}",
            local.display()
        );
    }
    // A finding about hf-hub 0.5, not about us: its metadata probe re-sends the Authorization
    // header to the LFS redirect target (another origin). Documented in docs/hub.md; pass no
    // token for public repos. If a newer pin stops doing this, flip this assertion.
    assert!(server.stats().storage_requests_with_auth >= 1);
    let offline = Downloader::new(DownloadSettings {
        offline: true,
        ..settings
    })
    .unwrap();
    let cached = offline.get(&repo, "main", "config.json").await.unwrap();
    assert_eq!(std::fs::read(cached).unwrap(), config.as_ref());
    assert!(matches!(
        offline.get(&repo, "main", "absent.txt").await,
        Err(DownloadError::NotCached { .. })
    ));
}
