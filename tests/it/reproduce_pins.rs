//! What `reproduce` reads besides the models, through the binary against the embedded hub: a
//! Hub data file is read at the commit the ledger records (a branch that moved since changes
//! nothing; a commit the hub lost is exit 2 naming repo, path and commit), and relative local
//! model folders and data files are read from `--relative-to` (default the current directory,
//! with a hint naming the flag when one is missing there).

use std::path::Path;
use std::process::Output;

use bytes::Bytes;
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, Repo, RepoId};
use hubsweep::ledger;

use crate::common::{TestContext, isolated_hubsweep as hubsweep, output_text as text};

/// One tiny bundled model, two hooks, over `source`: small enough to run and rerun quickly.
fn spec_over(source: &str, output: &str) -> String {
    spec_with("local://hubsweep/tiny-llama", source, output)
}

/// One tiny Llama from `model`, two hooks, over `source`.
fn spec_with(model: &str, source: &str, output: &str) -> String {
    format!(
        "name: pins\noutput: {output}\nmodels:\n  - family: llama\n    repo: {model}\n\
         data:\n  source: {source}\n  seq_len: 8\n  max_tokens: 1024\n  prepend_bos: true\n\
         capture:\n  hooks: [hook_resid_post, hook_mlp_out]\n  layers: [0, 1]\n  dtype: f32\n\
         analyses:\n  - spectrum: {{top_k: 8}}\n\
         limits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n  batch_size: 4\n"
    )
}

const PROMPTS: &str = "The quick brown fox jumps over the lazy dog.\n\
    Interpretability asks what a network computes, and how.\n\
    Checkpoints along training show representations forming.\n\
    A ledger on the Hub lets anyone check the results.\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` with a client of the context's embedded hub store (the CLI is not running then).
fn with_store<T>(ctx: &TestContext, f: impl AsyncFnOnce(HubClient) -> T) -> T {
    runtime().block_on(async {
        let mut config = ServerConfig::new(ctx.child("hubsweep-home").join("hub"));
        config.addr = "127.0.0.1:0".parse().unwrap();
        let server = Server::start(config).await.expect("open the store");
        let client = HubClient::builder(server.base_url())
            .unwrap()
            .xet(false)
            .build()
            .unwrap();
        let result = f(client).await;
        server.shutdown().await;
        result
    })
}

async fn commit_file(client: &HubClient, repo: &Repo, branch: &str, path: &str, text: String) {
    let options = CommitOptions {
        summary: format!("write {path}"),
        ..CommitOptions::default()
    };
    let operation = CommitOperation::AddRegular {
        path: path.into(),
        content: Bytes::from(text),
    };
    client
        .commit(repo, branch, &[operation], &options)
        .await
        .unwrap();
}

fn run(ctx: &TestContext, spec: &Path) {
    let output = hubsweep(ctx).arg("run").arg(spec).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

fn reproduce(ctx: &TestContext, cwd: &Path, args: &[&str]) -> Output {
    hubsweep(ctx)
        .current_dir(cwd)
        .arg("reproduce")
        .args(args)
        .output()
        .unwrap()
}

fn assert_reproduced(output: &Output) {
    assert_eq!(output.status.code(), Some(0), "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reproduced: every compared node"),
        "{stderr}"
    );
    // 4 artifacts (2 hooks × 2 layers, one shard) and 4 spectra, each compared bitwise.
    let files = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(" file ") && l.ends_with(" ok"))
        .count();
    assert_eq!(files, 8, "{}", text(output));
}

#[test]
fn a_hub_data_file_is_read_at_its_recorded_commit() {
    let ctx = TestContext::new();
    let data = Repo::dataset(RepoId::new("hubsweep", "prompts").unwrap());
    let first = with_store(&ctx, async |client| {
        client.create_repo(&data, false, true).await.unwrap();
        commit_file(&client, &data, "main", "prompts.txt", PROMPTS.into()).await;
        client.head(&data, "main").await.unwrap()
    });
    let spec = ctx.child("pins.yaml");
    let source = "local://datasets/hubsweep/prompts/prompts.txt@main";
    std::fs::write(&spec, spec_over(source, "local://hubsweep/pins")).unwrap();
    run(&ctx, &spec);

    // The branch moves to other text: a resumed run and a reproduce both hold to `first`.
    let results = Repo::dataset(RepoId::new("hubsweep", "pins").unwrap());
    let (resolve, segments) = with_store(&ctx, async |client| {
        commit_file(
            &client,
            &data,
            "main",
            "prompts.txt",
            PROMPTS.replace("fox", "cat"),
        )
        .await;
        let state = ledger::LedgerState::read(&client, &results, "main")
            .await
            .unwrap();
        let resolve = state
            .records
            .values()
            .find(|r| r.kind == "resolve")
            .cloned()
            .expect("a resolve record");
        (resolve, state.segments.len())
    });
    let recorded = &resolve.metrics.as_ref().unwrap()["data"];
    assert_eq!(recorded["commit"], first.as_str(), "{recorded:#}");
    assert_eq!(recorded["path"], "prompts.txt");
    assert_eq!(recorded["revision"], "main");
    assert_eq!(recorded["repo"], "hubsweep/prompts");
    // Without the download cache (which would remember where `main` was), as on another
    // machine: resuming against the recorded commit finds every node done and commits nothing.
    let cache = ctx.child("hubsweep-home").join("cache");
    std::fs::remove_dir_all(&cache).unwrap();
    let status = hubsweep(&ctx)
        .args(["status", "--format", "json"])
        .arg(&spec)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["complete"], true, "{status}");
    std::fs::remove_dir_all(&cache).unwrap();
    run(&ctx, &spec);
    let after = with_store(&ctx, async |client| {
        ledger::LedgerState::read(&client, &results, "main")
            .await
            .unwrap()
            .segments
            .len()
    });
    assert_eq!(after, segments, "the resumed run recomputed something");
    std::fs::remove_dir_all(&cache).unwrap();
    assert_reproduced(&reproduce(&ctx, ctx.path(), &["local://hubsweep/pins"]));

    // A ledger pinning the data to a commit the hub does not have: exit 2, naming all three.
    let gone = "0123456789abcdef0123456789abcdef01234567";
    with_store(&ctx, async |client| {
        client
            .create_branch(&results, "lost-data", "main")
            .await
            .unwrap();
        let state = ledger::LedgerState::read(&client, &results, "main")
            .await
            .unwrap();
        let mut paths = state.segments.clone();
        paths.push(ledger::INDEX_PATH.to_owned());
        for path in paths {
            let bytes = client
                .download_bytes(&results, "main", &path)
                .await
                .unwrap();
            let edited = String::from_utf8(bytes.to_vec())
                .unwrap()
                .replace(&first, gone);
            commit_file(&client, &results, "lost-data", &path, edited).await;
        }
    });
    let lost = reproduce(&ctx, ctx.path(), &["local://hubsweep/pins@lost-data"]);
    assert_eq!(lost.status.code(), Some(2), "{}", text(&lost));
    let stderr = String::from_utf8_lossy(&lost.stderr);
    for named in ["hubsweep/prompts", "prompts.txt", gone] {
        assert!(stderr.contains(named), "`{named}` not named:\n{stderr}");
    }
}

/// Copies the committed tiny Llama folder to `to`.
fn copy_tiny_llama(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let from = crate::common::repo_root().join("tests/fixtures/llama_tiny");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

#[test]
fn relative_paths_are_read_from_relative_to() {
    let ctx = TestContext::new();
    let folder = ctx.child("specs");
    copy_tiny_llama(&folder.join("llama_tiny"));
    std::fs::write(folder.join("prompts.txt"), PROMPTS).unwrap();
    let spec = folder.join("relative.yaml");
    let yaml = spec_with("./llama_tiny", "prompts.txt", "local://hubsweep/relative");
    std::fs::write(&spec, yaml).unwrap();
    // Run from the context folder: the spec's folder is `specs`, its model `specs/llama_tiny`
    // and its data `specs/prompts.txt`.
    let output = hubsweep(&ctx)
        .args(["run", "specs/relative.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // From another folder, without the flag, the model folder is missing; in a folder with the
    // model but not the data, the data file is; both errors name the flag.
    let elsewhere = ctx.child("elsewhere");
    copy_tiny_llama(&elsewhere.join("partial/llama_tiny"));
    for (flag, missing_path) in [(None, "llama_tiny"), (Some("partial"), "prompts.txt")] {
        let mut args = vec!["local://hubsweep/relative"];
        args.extend(flag.iter().flat_map(|dir| ["--relative-to", dir]));
        let missing = reproduce(&ctx, &elsewhere, &args);
        assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(
            stderr.contains(missing_path) && stderr.contains("--relative-to"),
            "{stderr}"
        );
    }
    let folder = folder.to_str().unwrap();
    assert_reproduced(&reproduce(
        &ctx,
        &elsewhere,
        &["local://hubsweep/relative", "--relative-to", folder],
    ));
    // A relative `--relative-to` is taken from the current directory.
    assert_reproduced(&reproduce(
        &ctx,
        &elsewhere,
        &["local://hubsweep/relative", "--relative-to", "../specs"],
    ));
}
