//! Our client against our server: every call of the protocol, from memory and from files.

use std::sync::{Arc, Mutex};

use hubsweep::hub::{CommitOperation, CommitOptions, HubError, HubEvent, LfsObject, UploadOutcome};

use super::{client, client_with_events, model, pseudo_random, sha256_hex, start_server};
use crate::common::TestContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_commit_list_and_resolve_round_trip() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new("secret-token"));
        config.limits.multipart_threshold = 1 << 20;
        config.limits.part_size = 256 << 10;
        config.limits.tree_page_size = 2;
    })
    .await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let hub = client_with_events(
        &server,
        Some("secret-token"),
        Some(Arc::new(move |e: &HubEvent| {
            sink.lock().unwrap().push(e.clone())
        })),
    );
    let repo = model("org/artifacts");
    hub.create_repo(&repo, false, false).await.unwrap();
    hub.create_repo(&repo, false, true).await.unwrap();
    assert!(matches!(
        hub.create_repo(&repo, false, false).await,
        Err(HubError::Status { status: 409, .. })
    ));

    // 3 MiB in memory → multipart with 12 parts of 256 KiB; 200 KiB → basic.
    let big = LfsObject::from_bytes(pseudo_random(3 << 20, 1));
    let small = LfsObject::from_bytes(pseudo_random(200 << 10, 2));
    let outcomes = hub
        .upload_lfs_objects(&repo, "main", &[big.clone(), small.clone()])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![UploadOutcome::Uploaded, UploadOutcome::Uploaded]
    );
    // Already stored → nothing sent again.
    let puts_before = server.stats();
    assert_eq!(
        hub.upload_lfs_object(&repo, "main", &big).await.unwrap(),
        UploadOutcome::AlreadyPresent
    );
    assert_eq!(server.stats().part_puts, puts_before.part_puts);
    assert_eq!(puts_before.part_puts, 12);
    assert_eq!(puts_before.object_puts, 1);

    let operations = vec![
        CommitOperation::AddLfs {
            path: "acts/L0.safetensors".into(),
            sha256: big.sha256.clone(),
            size: big.size,
        },
        CommitOperation::AddLfs {
            path: "acts/L1.safetensors".into(),
            sha256: small.sha256.clone(),
            size: small.size,
        },
        CommitOperation::AddRegular {
            path: "ledger/run.json".into(),
            content: bytes::Bytes::from_static(b"{\"ok\":true}\n"),
        },
    ];
    let before = hub.head(&repo, "main").await.unwrap();
    let options = CommitOptions {
        summary: "add activations".into(),
        parent_commit: Some(before.clone()),
        ..Default::default()
    };
    let info = hub
        .commit(&repo, "main", &operations, &options)
        .await
        .unwrap();
    assert!(!info.recovered);
    assert_eq!(hub.head(&repo, "main").await.unwrap(), info.commit_oid);
    // The same parent again is stale now.
    let stale = hub.commit(&repo, "main", &operations[2..], &options).await;
    assert!(
        matches!(stale, Err(HubError::ParentMismatch { .. })),
        "{stale:?}"
    );

    let entries = hub
        .paths_info(
            &repo,
            "main",
            &[
                "acts/L0.safetensors".into(),
                "ledger/run.json".into(),
                "missing".into(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].lfs.as_ref().unwrap().oid, big.sha256);
    // More paths than one call may carry (the server refuses > 1000): the client batches 500.
    let many: Vec<String> = (0..1200)
        .map(|n| format!("missing/{n}"))
        .chain(["ledger/run.json".to_owned()])
        .collect();
    assert_eq!(hub.paths_info(&repo, "main", &many).await.unwrap().len(), 1);
    assert!(entries[1].lfs.is_none());
    // Page size 2 forces the client through several Link pages.
    let tree = hub.list_tree(&repo, "main", "", true).await.unwrap();
    let files: Vec<&str> = tree
        .iter()
        .filter(|e| e.is_file())
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(
        files,
        [
            ".gitattributes",
            "acts/L0.safetensors",
            "acts/L1.safetensors",
            "ledger/run.json"
        ]
    );
    assert_eq!(tree.iter().filter(|e| !e.is_file()).count(), 2);

    let lfs_meta = hub
        .file_metadata(&repo, "main", "acts/L0.safetensors")
        .await
        .unwrap();
    assert_eq!(
        (
            lfs_meta.etag.as_str(),
            lfs_meta.size,
            lfs_meta.commit.as_str()
        ),
        (big.sha256.as_str(), big.size, info.commit_oid.as_str())
    );
    assert!(
        !lfs_meta.location.starts_with(server.base_url()),
        "LFS redirects go to another origin"
    );
    let regular_meta = hub
        .file_metadata(&repo, "main", "ledger/run.json")
        .await
        .unwrap();
    assert_eq!(regular_meta.size, 12);
    assert!(matches!(
        hub.file_metadata(&repo, "main", "nope.txt").await,
        Err(HubError::EntryNotFound { .. })
    ));
    let downloaded = hub
        .download_bytes(&repo, "main", "acts/L0.safetensors")
        .await
        .unwrap();
    assert_eq!(sha256_hex(&downloaded), big.sha256);

    let pr = hub
        .commit(
            &repo,
            "main",
            &[CommitOperation::Delete {
                path: "ledger/run.json".into(),
            }],
            &CommitOptions {
                create_pr: true,
                summary: "pr".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        pr.pull_request_url
            .as_deref()
            .unwrap()
            .ends_with("/discussions/1")
    );
    let refs = hub.list_refs(&repo, true).await.unwrap();
    assert_eq!(refs.pull_requests[0].target_commit, pr.commit_oid);
    assert_eq!(refs.branches[0].target_commit, info.commit_oid);
    let history = hub.list_commits(&repo, "main").await.unwrap();
    assert_eq!(
        history.iter().map(|c| c.title.as_str()).collect::<Vec<_>>(),
        ["add activations", "initial commit"]
    );
    hub.create_branch(&repo, "exp", "main").await.unwrap();
    assert_eq!(hub.head(&repo, "exp").await.unwrap(), info.commit_oid);

    // The token went only to the Hub origin, never to storage or completion URLs.
    assert_eq!(server.stats().storage_requests_with_auth, 0);
    let seen = events.lock().unwrap();
    assert!(seen.contains(&HubEvent::ObjectSkipped {
        oid: big.sha256.clone(),
        size: big.size
    }));
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, HubEvent::PartUploaded { .. }))
            .count(),
        13
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token_and_errors_are_typed() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.token = Some(hubsweep::hub::Token::new("right"))
    })
    .await;
    let repo = model("org/locked");
    let wrong = client(&server, Some("wrong"));
    assert!(matches!(
        wrong.create_repo(&repo, false, false).await,
        Err(HubError::Unauthorized { .. })
    ));
    assert!(matches!(
        wrong.repo_info(&repo, "main").await,
        Err(HubError::RepoNotFound { .. })
    ));
    let right = client(&server, Some("right"));
    right.create_repo(&repo, false, false).await.unwrap();
    assert!(matches!(
        right.repo_info(&repo, "nope").await,
        Err(HubError::RevisionNotFound { .. })
    ));
    let error = wrong
        .commit(
            &repo,
            "main",
            &[CommitOperation::AddRegular {
                path: "a".into(),
                content: "x".into(),
            }],
            &CommitOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, HubError::Unauthorized { .. }), "{error:?}");
    assert!(
        !format!("{error:?} {error} {wrong:?}").contains("wrong"),
        "the token must not appear in errors or Debug"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_upload_skips_unchanged_files() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.limits.multipart_threshold = 1 << 20;
        config.limits.part_size = 512 << 10;
    })
    .await;
    let hub = client(&server, None);
    let dir = context.child("model");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
    let weights = pseudo_random(2 << 20, 9);
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    std::fs::write(dir.join("sub/notes.md"), b"# notes\n").unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    let repo = model("org/folder");
    hub.create_repo(&repo, false, true).await.unwrap();
    let first = hub
        .upload_folder(&repo, "main", &dir, "import")
        .await
        .unwrap();
    assert_eq!(
        (first.changed, first.unchanged, first.lfs_uploaded),
        (4, 0, 1)
    );
    let again = hub
        .upload_folder(&repo, "main", &dir, "import again")
        .await
        .unwrap();
    assert_eq!(
        (again.changed, again.unchanged, again.commit.is_none()),
        (0, 4, true)
    );
    let entries = hub
        .paths_info(
            &repo,
            "main",
            &["model.safetensors".into(), "empty.txt".into()],
        )
        .await
        .unwrap();
    assert_eq!(entries[0].lfs.as_ref().unwrap().oid, sha256_hex(&weights));
    assert_eq!(entries[1].size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_when_the_hub_is_gone() {
    let context = TestContext::new();
    let server = start_server(context.path(), |_| {}).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let hub = client_with_events(
        &server,
        None,
        Some(Arc::new(move |e: &HubEvent| {
            sink.lock().unwrap().push(e.clone())
        })),
    );
    server.shutdown().await;
    let error = hub
        .create_repo(&model("org/gone"), false, true)
        .await
        .unwrap_err();
    assert!(
        matches!(error, HubError::RetriesExhausted { attempts: 5, .. }),
        "{error:?}"
    );
    assert_eq!(
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, HubEvent::Retrying { .. }))
            .count(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_repos_work_like_model_repos() {
    let context = TestContext::new();
    let server = start_server(context.path(), |_| {}).await;
    let hub = client(&server, None);
    let repo = hubsweep::hub::Repo::dataset("org/acts".parse().unwrap());
    hub.create_repo(&repo, false, true).await.unwrap();
    let object = LfsObject::from_bytes(pseudo_random(100_000, 21));
    // Uploads run on spawned tasks in the sink, so the future must be `Send`.
    let upload = {
        let (hub, repo, object) = (hub.clone(), repo.clone(), object.clone());
        tokio::spawn(async move { hub.upload_lfs_object(&repo, "main", &object).await })
    };
    upload.await.unwrap().unwrap();
    let operations = [
        CommitOperation::AddLfs {
            path: "data/train.safetensors".into(),
            sha256: object.sha256.clone(),
            size: object.size,
        },
        CommitOperation::AddRegular {
            path: "README.md".into(),
            content: "# acts\n".into(),
        },
    ];
    hub.commit(&repo, "main", &operations, &CommitOptions::default())
        .await
        .unwrap();
    let metadata = hub
        .file_metadata(&repo, "main", "data/train.safetensors")
        .await
        .unwrap();
    assert_eq!(metadata.etag, object.sha256);
    assert_eq!(
        sha256_hex(
            &hub.download_bytes(&repo, "main", "data/train.safetensors")
                .await
                .unwrap()
        ),
        object.sha256
    );
    // A model repo of the same name does not exist.
    assert!(matches!(
        hub.repo_info(&model("org/acts"), "main").await,
        Err(HubError::RepoNotFound { .. })
    ));
}
