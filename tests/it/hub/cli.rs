//! `hubsweep hub serve|import|mirror` through the binary, and the store surviving `kill -9`.

use hubsweep::hub::{CommitOperation, CommitOptions, LfsObject};

use super::{client, client_for, model, pseudo_random, sha256_hex, spawn_serve, start_server};
use crate::common::TestContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_survives_kill_9_without_half_visible_commits() {
    let context = TestContext::new();
    let store = context.child("store");
    let (mut child, url) = spawn_serve(&context, &store);
    let hub = client_for(&url);
    let repo = model("org/crash");
    hub.create_repo(&repo, false, true).await.unwrap();
    // Commit as fast as possible (regular and LFS files), and kill -9 the server mid-stream,
    // once the writer has seen its third commit land.
    let landed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (hub, repo, landed) = (hub.clone(), repo.clone(), landed.clone());
        tokio::spawn(async move {
            for n in 0u64.. {
                let object = LfsObject::from_bytes(pseudo_random(64 << 10, n + 100));
                if hub.upload_lfs_object(&repo, "main", &object).await.is_err() {
                    return;
                }
                let ops = [
                    CommitOperation::AddLfs {
                        path: format!("w/{n}.bin"),
                        sha256: object.sha256.clone(),
                        size: object.size,
                    },
                    CommitOperation::AddRegular {
                        path: format!("w/{n}.txt"),
                        content: format!("{n}").into(),
                    },
                ];
                if hub
                    .commit(&repo, "main", &ops, &CommitOptions::default())
                    .await
                    .is_err()
                {
                    return;
                }
                landed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while landed.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(
            std::time::Instant::now() < deadline && !writer.is_finished(),
            "the writer did not get three commits in"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let _ = writer.await;

    let (mut child, url) = spawn_serve(&context, &store);
    let hub = client_for(&url);
    let history = hub.list_commits(&repo, "main").await.unwrap();
    assert!(
        history.len() > 2,
        "the writer got some commits in before the kill"
    );
    let files: Vec<_> = hub.list_tree(&repo, "main", "w", false).await.unwrap();
    // Every visible commit is whole: both of its files, with intact content.
    assert_eq!(files.len(), 2 * (history.len() - 1));
    for entry in &files {
        let content = hub
            .download_bytes(&repo, "main", &entry.path)
            .await
            .unwrap();
        match &entry.lfs {
            Some(lfs) => assert_eq!(sha256_hex(&content), lfs.oid),
            None => assert_eq!(content.len() as u64, entry.size),
        }
    }
    // And the store still takes writes.
    let ops = [CommitOperation::AddRegular {
        path: "after.txt".into(),
        content: "ok".into(),
    }];
    hub.commit(&repo, "main", &ops, &CommitOptions::default())
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_mirror_through_the_binary() {
    let context = TestContext::new();
    let source = start_server(&context.child("a"), |config| {
        config.limits.multipart_threshold = 1 << 20;
        config.limits.part_size = 512 << 10;
    })
    .await;
    let target = start_server(&context.child("b"), |config| {
        config.token = Some(hubsweep::hub::Token::new("target-token"))
    })
    .await;
    let folder = context.child("pythia-tiny");
    std::fs::create_dir_all(folder.join("tokenizer")).unwrap();
    std::fs::write(
        folder.join("config.json"),
        b"{\"model_type\": \"gpt_neox\"}",
    )
    .unwrap();
    std::fs::write(folder.join("tokenizer/tokenizer.json"), b"{}").unwrap();
    let weights = pseudo_random(3 << 20, 77);
    std::fs::write(folder.join("model.safetensors"), &weights).unwrap();

    let run = |args: Vec<String>, token: Option<&'static str>| {
        let mut command = context.command();
        command.args(args);
        if let Some(token) = token {
            command.env("HF_TOKEN", token);
        }
        command.output().unwrap()
    };
    let import_args = vec![
        "hub".into(),
        "import".into(),
        folder.display().to_string(),
        "--repo".into(),
        "org/tiny".into(),
        "--endpoint".into(),
        source.base_url().to_owned(),
    ];
    let output = tokio::task::block_in_place(|| run(import_args, None));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (
            summary["changed"].as_u64(),
            summary["lfs_uploaded"].as_u64()
        ),
        (Some(3), Some(1))
    );

    let mirror_args = vec![
        "hub".into(),
        "mirror".into(),
        "org/tiny".into(),
        "--from".into(),
        source.base_url().to_owned(),
        "--to".into(),
        target.base_url().to_owned(),
    ];
    let output = tokio::task::block_in_place(|| run(mirror_args.clone(), Some("target-token")));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let source_hub = client(&source, None);
    let target_hub = client(&target, None);
    let repo = model("org/tiny");
    let strip = |entries: Vec<hubsweep::hub::client::PathInfo>| {
        entries
            .into_iter()
            .filter(|e| e.is_file())
            .collect::<Vec<_>>()
    };
    let source_tree = strip(source_hub.list_tree(&repo, "main", "", true).await.unwrap());
    assert_eq!(
        strip(target_hub.list_tree(&repo, "main", "", true).await.unwrap()),
        source_tree
    );
    let lfs = target_hub
        .paths_info(&repo, "main", &["model.safetensors".into()])
        .await
        .unwrap();
    assert_eq!(lfs[0].lfs.as_ref().unwrap().oid, sha256_hex(&weights));

    // Mirroring again changes nothing; without the target's token it cannot run (exit 2).
    let output = tokio::task::block_in_place(|| run(mirror_args.clone(), Some("target-token")));
    let again: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (again["commit"].is_null(), again["unchanged"].as_u64()),
        (true, Some(4))
    );
    let output = tokio::task::block_in_place(|| run(mirror_args, None));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not authorized"));

    // `hub download` honours HF_ENDPOINT and HF_HUB_CACHE, and HF_HUB_OFFLINE afterwards.
    let download = |offline: &str, file: &str| {
        let mut command = context.command();
        command
            .args(["hub", "download", "org/tiny", file])
            .env("HF_ENDPOINT", target.base_url())
            .env("HF_HUB_CACHE", context.child("hf-cache"))
            .env("HF_HUB_OFFLINE", offline);
        command.output().unwrap()
    };
    let output = tokio::task::block_in_place(|| download("0", "model.safetensors"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8(output.stdout).unwrap();
    assert!(
        path.trim().starts_with(
            context
                .child("hf-cache/models--org--tiny/snapshots")
                .to_str()
                .unwrap()
        ),
        "{path}"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(path.trim()).unwrap()),
        sha256_hex(&weights)
    );
    let offline = tokio::task::block_in_place(|| download("1", "model.safetensors"));
    assert_eq!(String::from_utf8(offline.stdout).unwrap(), path);
    let missing = tokio::task::block_in_place(|| download("1", "config.json"));
    assert_eq!(missing.status.code(), Some(2));
    // Named, with why it was not fetched.
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("`config.json` of `org/tiny` at `main` is not in the cache")
            && err.contains("offline"),
        "{err}"
    );
}
