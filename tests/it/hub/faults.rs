//! Our client under every fault the server can inject: uploads complete, no commit is applied
//! twice, no file is lost, retries stay bounded.

use std::sync::{Arc, Mutex};

use hubsweep::hub::server::Faults;
use hubsweep::hub::{
    CommitOperation, CommitOptions, HubClient, HubError, HubEvent, LfsObject, Repo,
};

use super::{client, client_with_events, model, pseudo_random, start_server};
use crate::common::TestContext;

/// Uploads a fresh 1 MiB object (4 parts of 256 KiB) and commits it at `path`.
async fn upload_and_commit(
    hub: &HubClient,
    repo: &Repo,
    path: &str,
    seed: u64,
) -> (LfsObject, hubsweep::hub::CommitInfo) {
    let object = LfsObject::from_bytes(pseudo_random(1 << 20, seed));
    hub.upload_lfs_object(repo, "main", &object).await.unwrap();
    let operations = [CommitOperation::AddLfs {
        path: path.into(),
        sha256: object.sha256.clone(),
        size: object.size,
    }];
    let info = hub
        .commit(
            repo,
            "main",
            &operations,
            &CommitOptions {
                summary: format!("add {path}"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (object, info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_every_fault_without_duplicates() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.admin = true;
        config.limits.multipart_threshold = 512 << 10;
        config.limits.part_size = 256 << 10;
    })
    .await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let hub = client_with_events(
        &server,
        None,
        Some(Arc::new(move |e: &HubEvent| {
            sink.lock().unwrap().push(e.clone())
        })),
    );
    let repo = model("org/faulty");
    hub.create_repo(&repo, false, true).await.unwrap();

    // A part fails once with 500: retried, 5 part PUTs for 4 parts.
    let before = server.stats();
    server.set_faults(Faults {
        fail_part_once: Some(2),
        ..Faults::default()
    });
    upload_and_commit(&hub, &repo, "a.bin", 1).await;
    assert_eq!(server.stats().part_puts - before.part_puts, 5);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, HubEvent::Retrying { .. }))
    );

    // The connection drops mid-part: retried on a new connection.
    let before = server.stats();
    server.set_faults(Faults {
        drop_connection_part_once: Some(3),
        ..Faults::default()
    });
    upload_and_commit(&hub, &repo, "b.bin", 2).await;
    assert_eq!(server.stats().part_puts - before.part_puts, 5);
    assert_eq!(server.faults(), Faults::default(), "the fault fired");

    // Presigned URLs expired: the client asks the batch endpoint again.
    let before = server.stats();
    server.set_faults(Faults {
        expire_next_batches: 1,
        ..Faults::default()
    });
    let (object, _) = upload_and_commit(&hub, &repo, "c.bin", 3).await;
    assert_eq!(server.stats().batch_calls - before.batch_calls, 2);
    assert!(
        events
            .lock()
            .unwrap()
            .contains(&HubEvent::BatchRenewed { oid: object.sha256 })
    );

    // 429 on a commit: refused, waited out, sent again; applied once.
    let before = server.stats();
    server.set_faults(Faults {
        rate_limit_next_commit: true,
        ..Faults::default()
    });
    upload_and_commit(&hub, &repo, "d.bin", 4).await;
    let after = server.stats();
    assert_eq!(
        (
            after.commit_posts - before.commit_posts,
            after.commits_applied - before.commits_applied
        ),
        (2, 1)
    );

    // The commit is applied but answered 500: the client reads the Hub back instead of
    // re-sending, so there is exactly one commit.
    let before = server.stats();
    server.set_faults(Faults {
        commit_applied_then_500: true,
        ..Faults::default()
    });
    let (_, info) = upload_and_commit(&hub, &repo, "e.bin", 5).await;
    let after = server.stats();
    assert!(info.recovered);
    assert_eq!(
        (
            after.commit_posts - before.commit_posts,
            after.commits_applied - before.commits_applied
        ),
        (1, 1)
    );
    assert_eq!(hub.head(&repo, "main").await.unwrap(), info.commit_oid);

    // The same with create_pr: one pull request, not two.
    server.set_faults(Faults {
        commit_applied_then_500: true,
        ..Faults::default()
    });
    let options = CommitOptions {
        create_pr: true,
        summary: "pr".into(),
        ..Default::default()
    };
    let pr = hub
        .commit(
            &repo,
            "main",
            &[CommitOperation::AddRegular {
                path: "pr.txt".into(),
                content: "x".into(),
            }],
            &options,
        )
        .await
        .unwrap();
    assert!(
        pr.recovered
            && pr
                .pull_request_url
                .as_deref()
                .unwrap()
                .ends_with("/discussions/1")
    );
    assert_eq!(
        hub.list_refs(&repo, true)
            .await
            .unwrap()
            .pull_requests
            .len(),
        1
    );

    // Slow answers, set through the admin endpoint this time.
    let admin = reqwest::Client::new();
    let response = admin
        .put(format!("{}/_admin/faults", server.base_url()))
        .json(&serde_json::json!({"slow_ms": 30}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(server.faults().slow_ms, 30);
    upload_and_commit(&hub, &repo, "f.bin", 6).await;
    server.set_faults(Faults::default());

    // Nothing lost: every file is there, and one commit per upload.
    let files: Vec<String> = hub
        .list_tree(&repo, "main", "", true)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        files,
        [
            ".gitattributes",
            "a.bin",
            "b.bin",
            "c.bin",
            "d.bin",
            "e.bin",
            "f.bin"
        ]
    );
    assert_eq!(hub.list_commits(&repo, "main").await.unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_rate_limit_is_reported_not_waited_for_hours() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        config.limits.commits_per_hour = Some(2)
    })
    .await;
    let hub = client(&server, None);
    let repo = model("org/limited");
    hub.create_repo(&repo, false, true).await.unwrap();
    for n in 0..2 {
        let ops = [CommitOperation::AddRegular {
            path: format!("{n}.txt"),
            content: "x".into(),
        }];
        hub.commit(&repo, "main", &ops, &CommitOptions::default())
            .await
            .unwrap();
    }
    let ops = [CommitOperation::AddRegular {
        path: "2.txt".into(),
        content: "x".into(),
    }];
    let started = std::time::Instant::now();
    let error = hub
        .commit(&repo, "main", &ops, &CommitOptions::default())
        .await
        .unwrap_err();
    match error {
        HubError::RateLimited {
            retry_after: Some(wait),
            ..
        } => assert!(wait.as_secs() > 3000, "{wait:?}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // The server asked for about an hour; the policy allows 5 s, so the client gave up at once.
    assert!(started.elapsed().as_secs() < 5);
    assert_eq!(server.stats().commits_applied, 2);
}
