//! Tree listings longer than one page (the Hub's page is 1,000 entries): complete, in path
//! order, each entry once, recursive and per folder, through our client and the official
//! Python client, and a pinned commit listed while the branch moves on.

use bytes::Bytes;
use hubsweep::hub::client::PathInfo;
use hubsweep::hub::{CommitOperation, CommitOptions};

use super::{client, hub_python, model, start_server};
use crate::common::TestContext;

/// 2,500 files: 1,200 directly in `many/`, the rest spread over nested folders, so the
/// recursive listing spans three pages and `many/` alone spans two.
fn paths() -> Vec<String> {
    (0..2500)
        .map(|n| {
            if n < 1200 {
                format!("many/f{n:04}.txt")
            } else {
                format!("nested/d{}/e{}/f{n:04}.txt", n % 7, n % 3)
            }
        })
        .collect()
}

/// Every folder above the given files.
fn folders(paths: &[String]) -> Vec<String> {
    let mut out: Vec<String> = paths
        .iter()
        .flat_map(|p| p.match_indices('/').map(move |(i, _)| p[..i].to_owned()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn listed(entries: &[PathInfo]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_page_listings_are_complete_and_in_order() {
    let context = TestContext::new();
    let server = start_server(context.path(), |config| {
        assert_eq!(config.limits.tree_page_size, 1000, "the Hub's page size");
    })
    .await;
    let hub = client(&server, None);
    let repo = model("org/many-files");
    hub.create_repo(&repo, false, false).await.unwrap();
    let files = paths();
    let operations: Vec<CommitOperation> = files
        .iter()
        .map(|path| CommitOperation::AddRegular {
            path: path.clone(),
            content: Bytes::from(format!("content of {path}\n")),
        })
        .collect();
    let options = CommitOptions {
        summary: "2,500 files".into(),
        ..CommitOptions::default()
    };
    let head = hub
        .commit(&repo, "main", &operations, &options)
        .await
        .unwrap()
        .commit_oid;

    let mut expected: Vec<String> = files.clone();
    expected.push(".gitattributes".into());
    expected.extend(folders(&files));
    expected.sort();
    let tree = hub.list_tree(&repo, "main", "", true).await.unwrap();
    assert_eq!(tree.len(), expected.len());
    assert_eq!(listed(&tree), expected);
    let entry = tree.iter().find(|e| e.path == "many/f0042.txt").unwrap();
    assert!(entry.is_file() && entry.size == "content of many/f0042.txt\n".len() as u64);

    // One folder, its children only: 1,200 files over two pages, no entry of `nested/`.
    let many = hub.list_tree(&repo, "main", "many", false).await.unwrap();
    let mut expected_many: Vec<String> = files
        .iter()
        .filter(|p| p.starts_with("many/"))
        .cloned()
        .collect();
    expected_many.sort();
    assert_eq!(listed(&many), expected_many);
    let root = hub.list_tree(&repo, "main", "", false).await.unwrap();
    assert_eq!(listed(&root), [".gitattributes", "many", "nested"]);

    // The pinned commit keeps listing the same tree after the branch moves on, across pages.
    let moved = vec![CommitOperation::AddRegular {
        path: "many/f0000-new.txt".into(),
        content: Bytes::from_static(b"new\n"),
    }];
    hub.commit(&repo, "main", &moved, &options).await.unwrap();
    let pinned = hub.list_tree(&repo, &head, "", true).await.unwrap();
    assert_eq!(listed(&pinned), expected);
    let latest = hub.list_tree(&repo, "main", "", true).await.unwrap();
    assert_eq!(latest.len(), expected.len() + 1);

    let Some(python) = hub_python() else {
        server.shutdown().await;
        return;
    };
    // The official client pages through `Link` on its own (`list_repo_tree` yields page by page).
    let script = r#"
import json, sys
from huggingface_hub import HfApi
api = HfApi()
repo, head = sys.argv[1], sys.argv[2]
every = [e.path for e in api.list_repo_tree(repo, recursive=True, revision=head)]
files = api.list_repo_files(repo, revision=head)
many = [e.path for e in api.list_repo_tree(repo, path_in_repo="many", revision=head)]
print(json.dumps({"every": every, "files": files, "many": many}))
"#;
    let endpoint = server.base_url().to_owned();
    let repo_id = repo.id.to_string();
    let home = context.child("hf-home");
    let head_arg = head.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(repo_id)
            .arg(head_arg)
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HUB_DISABLE_XET", "1")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HOME", home)
            .output()
            .expect("run the official client")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let strings = |key: &str| -> Vec<String> {
        answer[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(strings("every"), expected);
    let mut expected_files = files.clone();
    expected_files.push(".gitattributes".into());
    expected_files.sort();
    let mut python_files = strings("files");
    python_files.sort();
    assert_eq!(python_files, expected_files);
    assert_eq!(strings("many"), expected_many);
    server.shutdown().await;
}
