//! The same results in every home: two fresh `HUBSWEEP_HOME`s import the bundled models at the
//! same commits and run the quickstart to the same node ids, artifact files and ledger records
//! (all but the timings, which measure the run); one home's results reproduce bitwise from the
//! other; `hub import` of the same folder gives the same commit in every store, every time.

use hubsweep::hub::client::PathInfo;
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::hub::{HubClient, Repo, RepoId};

use crate::common::{TestContext, isolated_hubsweep as hubsweep, output_text as text, repo_root};

/// What must be equal between homes: model heads, the output repo's files with their ids
/// (ledger segments, named by their content, carry timings and are left out), the manifest,
/// and the index's records without their `timing`.
#[derive(Debug, PartialEq)]
struct Results {
    model_heads: Vec<String>,
    files: Vec<PathInfo>,
    manifest: bytes::Bytes,
    records: Vec<serde_json::Value>,
}

async fn results(ctx: &TestContext) -> Results {
    let server = Server::start(ServerConfig::new(ctx.child("hubsweep-home/hub")))
        .await
        .unwrap();
    let hub = HubClient::builder(server.base_url())
        .unwrap()
        .build()
        .unwrap();
    let mut model_heads = Vec::new();
    for name in ["tiny-gpt-neox", "tiny-llama"] {
        let repo = Repo::model(RepoId::new("hubsweep", name).unwrap());
        model_heads.push(hub.head(&repo, "main").await.unwrap());
    }
    let output = Repo::dataset(RepoId::new("hubsweep", "quickstart").unwrap());
    let files = hub
        .list_tree(&output, "main", "", true)
        .await
        .unwrap()
        .into_iter()
        // Files only: a folder's id hashes the commit it is listed at.
        .filter(|f| f.kind == "file")
        .filter(|f| !f.path.starts_with("ledger/segments/") && f.path != "ledger/index.jsonl")
        .collect();
    let manifest = hub
        .download_bytes(&output, "main", "ledger/manifest.json")
        .await
        .unwrap();
    let index = hub
        .download_bytes(&output, "main", "ledger/index.jsonl")
        .await
        .unwrap();
    let records = String::from_utf8_lossy(&index)
        .lines()
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            record.as_object_mut().unwrap().remove("timing");
            record
        })
        .collect();
    server.shutdown().await;
    Results {
        model_heads,
        files,
        manifest,
        records,
    }
}

#[test]
fn two_fresh_homes_give_the_same_quickstart_and_reproduce_each_other() {
    let (first, second) = (TestContext::new(), TestContext::new());
    crate::reproduce::run_quickstart(&first);
    crate::reproduce::run_quickstart(&second);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ours, theirs) =
        runtime.block_on(async { (results(&first).await, results(&second).await) });
    assert_eq!(ours.model_heads, theirs.model_heads);
    assert_eq!(ours.files, theirs.files);
    assert_eq!(ours.manifest, theirs.manifest);
    assert!(ours.records.len() > 36, "{} records", ours.records.len());
    assert_eq!(ours.records, theirs.records);

    // The second home reproduces the first's repo: the first's hub served over HTTP, the
    // bundled models resolved in the second home's own hub at the pinned commits.
    let (server, url) = crate::hub::spawn_serve(&first, &first.child("hubsweep-home/hub"));
    let server = crate::hub::KillOnDrop(server);
    let output = hubsweep(&second)
        .env("HF_ENDPOINT", &url)
        .args([
            "reproduce",
            "hf://datasets/hubsweep/quickstart",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    drop(server);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let text_report = report.to_string();
    assert!(!text_report.contains("\"FAIL\""), "{text_report}");
}

#[test]
fn importing_the_same_folder_gives_the_same_commit_in_every_store() {
    // Each "machine" has the folder at its own path: only the content and its name count.
    let import = |ctx: &TestContext| {
        let folder = ctx.child("tiny-llama");
        if !folder.is_dir() {
            std::fs::create_dir_all(&folder).unwrap();
            for file in ["config.json", "model.safetensors", "tokenizer.json"] {
                std::fs::copy(
                    repo_root().join("tests/fixtures/llama_tiny").join(file),
                    folder.join(file),
                )
                .unwrap();
            }
        }
        let output = hubsweep(ctx)
            .args(["hub", "import", "--local", "--repo", "someone/tiny"])
            .arg(&folder)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        summary["commit"].as_str().map(str::to_owned)
    };
    let (first, second) = (TestContext::new(), TestContext::new());
    let commit = import(&first).expect("the first import commits");
    assert_eq!(import(&second).as_deref(), Some(commit.as_str()));
    // Again into the same store: nothing changed, no new commit, the same head.
    let again = import(&first);
    assert!(
        again.is_none() || again.as_deref() == Some(commit.as_str()),
        "{again:?}"
    );
}
