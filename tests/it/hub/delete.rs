//! Deleting a repo on the embedded hub: the repo is gone, the objects only it referenced are
//! freed, and an object another repo shares stays readable there; the official Python client's
//! `delete_repo` works against it.

use bytes::Bytes;
use hubsweep::hub::{CommitOperation, CommitOptions, HubError};

use super::{client, hub_python, model, start_server};
use crate::common::TestContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_repo_frees_only_the_objects_no_other_repo_references() {
    let context = TestContext::new();
    let server = start_server(context.path(), |_| {}).await;
    let hub = client(&server, None);
    let shared = Bytes::from_static(b"the same bytes in both repos\n");
    let own = Bytes::from_static(b"only the doomed repo has these bytes\n");
    let (kept, doomed) = (model("org/kept"), model("org/doomed"));
    for (repo, files) in [
        (&kept, vec![("shared.txt", shared.clone())]),
        (
            &doomed,
            vec![("shared.txt", shared.clone()), ("own.txt", own.clone())],
        ),
    ] {
        hub.create_repo(repo, false, false).await.unwrap();
        let operations: Vec<CommitOperation> = files
            .into_iter()
            .map(|(path, content)| CommitOperation::AddRegular {
                path: path.into(),
                content,
            })
            .collect();
        let options = CommitOptions {
            summary: "files".into(),
            ..CommitOptions::default()
        };
        hub.commit(repo, "main", &operations, &options)
            .await
            .unwrap();
    }

    let freed = hub.delete_repo(&doomed).await.unwrap();
    assert_eq!(freed, Some(own.len() as u64), "only `own.txt` was its own");
    assert!(matches!(
        hub.head(&doomed, "main").await,
        Err(HubError::RepoNotFound { .. })
    ));
    let object = |content: &[u8]| {
        let sha = super::sha256_hex(content);
        context
            .path()
            .join("store/objects")
            .join(&sha[..2])
            .join(sha)
    };
    assert!(!object(&own).exists(), "its own object stays in the store");
    assert!(object(&shared).exists());
    let read = hub
        .download_bytes(&kept, "main", "shared.txt")
        .await
        .unwrap();
    assert_eq!(read, shared);
    // A repo that is not there: the Hub's 404.
    assert!(matches!(
        hub.delete_repo(&doomed).await,
        Err(HubError::RepoNotFound { .. })
    ));

    // The official client's `delete_repo` speaks the same route (and `missing_ok` reads 404).
    let Some(python) = hub_python() else {
        server.shutdown().await;
        return;
    };
    let script = r#"
import sys
from huggingface_hub import HfApi
api = HfApi()
api.delete_repo(sys.argv[1], repo_type="dataset")
api.delete_repo(sys.argv[1], repo_type="dataset", missing_ok=True)
"#;
    let dataset = hubsweep::hub::Repo::dataset("org/data".parse().unwrap());
    hub.create_repo(&dataset, false, false).await.unwrap();
    let endpoint = server.base_url().to_owned();
    let home = context.child("hf-home");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg("org/data")
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
    assert!(matches!(
        hub.head(&dataset, "main").await,
        Err(HubError::RepoNotFound { .. })
    ));
    assert!(kept_is_readable(&hub, &kept, &shared).await);
    server.shutdown().await;
}

async fn kept_is_readable(
    hub: &hubsweep::hub::HubClient,
    repo: &hubsweep::hub::Repo,
    content: &[u8],
) -> bool {
    hub.download_bytes(repo, "main", "shared.txt")
        .await
        .is_ok_and(|read| read == content)
}
