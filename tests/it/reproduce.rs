//! `hubsweep reproduce` against the embedded hub: the quickstart rebuilt from its ledger alone
//! reruns bitwise identical on the CPU and its scratch repo is deleted with the objects only it
//! held (`--keep` keeps it); `--nodes` and `--sample` narrow what reruns; a
//! perturbed capture kernel (the test-only `HUBSWEEP_TEST_PERTURB=capture`) is caught, naming
//! the captures and their files, and its scratch repo is kept; a manifest that is edited, invalid or missing cannot be
//! reproduced (exit 2), and a forged spec with consistent hashes shows as id findings (exit 1).

use std::path::PathBuf;
use std::process::Output;

use bytes::Bytes;
use hubsweep::hub::server::{Server, ServerConfig};
use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, Repo, RepoId};
use hubsweep::ledger::{self, Manifest};
use sha2::{Digest, Sha256};

use crate::common::{TestContext, isolated_hubsweep as hubsweep, output_text as text, repo_root};

const REPO: &str = "local://hubsweep/quickstart";

pub(crate) fn run_quickstart(ctx: &TestContext) {
    let spec = ctx.child("quickstart.yaml");
    std::fs::copy(repo_root().join("sweeps/quickstart.yaml"), &spec).unwrap();
    let output = hubsweep(ctx).arg("run").arg(&spec).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

fn reproduce(ctx: &TestContext, args: &[&str]) -> Output {
    hubsweep(ctx)
        .arg("reproduce")
        .args(args)
        .output()
        .expect("run hubsweep reproduce")
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("--format json is not JSON ({e}):\n{}", text(output)))
}

/// Table rows of a text report (the header line dropped), split on runs of two spaces.
fn table_rows(output: &Output) -> Vec<Vec<String>> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("node") && header.ends_with("ok"),
        "{header}"
    );
    lines
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The scratch repos in the context's embedded hub store.
fn scratch_repos(ctx: &TestContext) -> Vec<String> {
    let dir = ctx.child("hubsweep-home/hub/repos/datasets/reproduce");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every object in the store (content-addressed, shared between repos), with its size.
fn store_objects(ctx: &TestContext) -> std::collections::BTreeMap<String, u64> {
    let mut objects = std::collections::BTreeMap::new();
    for folder in std::fs::read_dir(ctx.child("hubsweep-home/hub/objects")).unwrap() {
        for object in std::fs::read_dir(folder.unwrap().path()).unwrap() {
            let object = object.unwrap();
            let size = object.metadata().unwrap().len();
            objects.insert(object.file_name().to_string_lossy().into_owned(), size);
        }
    }
    objects
}

#[test]
fn quickstart_reproduces_bitwise_and_selections_narrow_it() {
    let ctx = TestContext::new();
    run_quickstart(&ctx);
    let before = store_objects(&ctx);

    let all = reproduce(&ctx, &[REPO]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all));
    // Reproduced: the scratch repo is gone, and with it every object only it referenced (its
    // ledger files); its artifacts are the source's, byte for byte, so they stay as the
    // source's. The store holds exactly what it held before.
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert!(
        stderr.contains("deleted the scratch repo local://datasets/reproduce/quickstart-"),
        "{stderr}"
    );
    let freed: u64 = stderr
        .split("freeing ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no freed bytes in:\n{stderr}"));
    assert!(freed > 0, "the scratch ledger's own objects were not freed");
    assert_eq!(scratch_repos(&ctx), Vec::<String>::new());
    assert_eq!(
        store_objects(&ctx),
        before,
        "the store did not get its bytes back"
    );
    let rows = table_rows(&all);
    assert!(
        rows.iter().all(|r| r.last().is_some_and(|s| s == "ok")),
        "{}",
        text(&all)
    );
    // The quickstart's 36 files (18 artifacts, 18 spectra) each compared bitwise, and 18
    // spectra's metrics: every node of the 43 reran.
    let files = rows.iter().filter(|r| r[2].starts_with("file ")).count();
    assert_eq!(files, 36, "{}", text(&all));
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert!(
        stderr.contains("43 nodes, 43 with their recorded ids"),
        "{stderr}"
    );
    assert!(stderr.contains("reran 43 of 43"), "{stderr}");
    assert!(
        stderr.contains("reproduced: every compared node is as recorded"),
        "{stderr}"
    );

    // --nodes: the tiny Llama's layer-1 spectra bring their artifacts, capture and resolve.
    let narrow = reproduce(
        &ctx,
        &[
            REPO,
            "--nodes",
            "spectrum,tiny-llama,layer=1",
            "--format",
            "json",
        ],
    );
    assert_eq!(narrow.status.code(), Some(0), "{}", text(&narrow));
    let report = json(&narrow);
    assert_eq!(report["passed"], true);
    assert_eq!(
        report["compared"], 8,
        "3 spectra, 3 artifacts, capture, resolve"
    );
    let rows = report["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{report:#}");
    assert!(
        rows.iter()
            .all(|r| r["label"].as_str().unwrap().contains("tiny-llama")),
        "{report:#}"
    );
    assert!(
        rows.iter()
            .filter(|r| r["kind"] == "spectrum")
            .all(|r| r["label"].as_str().unwrap().contains("blocks.1.")),
        "{report:#}"
    );

    // --sample 1: one capture group (the capture and its 9 artifacts) and its resolve; the same
    // seed draws the same group.
    let sample = |seed: &str| {
        let output = reproduce(
            &ctx,
            &[REPO, "--sample", "1", "--seed", seed, "--format", "json"],
        );
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let report = json(&output);
        assert_eq!(report["compared"], 11, "{report:#}");
        let captures: Vec<String> = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "capture")
            .map(|r| r["node"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(captures.len(), 1, "{report:#}");
        captures[0].clone()
    };
    assert_eq!(sample("7"), sample("7"));
    assert_eq!(scratch_repos(&ctx), Vec::<String>::new());

    // --keep keeps it, and says where.
    let kept = reproduce(&ctx, &[REPO, "--sample", "1", "--keep"]);
    assert_eq!(kept.status.code(), Some(0), "{}", text(&kept));
    let repos = scratch_repos(&ctx);
    assert_eq!(repos.len(), 1, "{repos:?}");
    assert!(
        String::from_utf8_lossy(&kept.stderr).contains(&format!(
            "the rerun is kept in local://datasets/reproduce/{}",
            repos[0]
        )),
        "{}",
        text(&kept)
    );

    let unknown = reproduce(&ctx, &[REPO, "--nodes", "no-such-node"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("matches no node"));
}

#[test]
fn a_perturbed_capture_kernel_is_caught() {
    let ctx = TestContext::new();
    run_quickstart(&ctx);
    let output = hubsweep(&ctx)
        .args(["reproduce", REPO])
        .env("HUBSWEEP_TEST_PERTURB", "capture")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let rows = table_rows(&output);
    let failed_captures: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[1] == "capture" && r.last().is_some_and(|s| s == "FAIL"))
        .collect();
    assert_eq!(failed_captures.len(), 2, "{}", text(&output));
    for model in ["tiny-gpt-neox", "tiny-llama"] {
        // The capture's row names the files that differ, and each file has its own row.
        assert!(
            failed_captures.iter().any(|r| r[4].contains(&format!(
                "acts/hubsweep--{model}/main/hook_resid_pre/layer000/"
            ))),
            "{}",
            text(&output)
        );
    }
    let failed_artifacts = rows
        .iter()
        .filter(|r| r[1] == "artifact" && r.last().is_some_and(|s| s == "FAIL"))
        .count();
    assert_eq!(failed_artifacts, 18, "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT reproduced"));
    // What differs stays for inspection, and the message names it.
    let repos = scratch_repos(&ctx);
    assert_eq!(repos.len(), 1, "{repos:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "the rerun is kept in local://datasets/reproduce/{} for inspection",
            repos[0]
        )),
        "{}",
        text(&output)
    );

    let bogus = hubsweep(&ctx)
        .args(["reproduce", REPO])
        .env("HUBSWEEP_TEST_PERTURB", "yes")
        .output()
        .unwrap();
    assert_eq!(bogus.status.code(), Some(2), "{}", text(&bogus));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sets both spec hashes of `manifest` to match its text, as a careful forger would.
fn rehash(manifest: &mut Manifest) {
    let text = &manifest.spec.text;
    manifest.spec.sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let tree = hubsweep::spec::load("spec.yaml", text.as_bytes())
        .tree
        .expect("the edited spec is YAML");
    let canonical = hubsweep::plan::id::canonical_json(&tree.to_json());
    manifest.spec.canonical_sha256 = hex::encode(Sha256::digest(canonical.as_bytes()));
}

#[test]
fn an_edited_or_missing_manifest_cannot_be_reproduced() {
    let ctx = TestContext::new();
    run_quickstart(&ctx);
    let home: PathBuf = ctx.child("hubsweep-home");
    runtime().block_on(async {
        let mut config = ServerConfig::new(home.join("hub"));
        config.addr = "127.0.0.1:0".parse().unwrap();
        let server = Server::start(config).await.expect("open the store");
        let client = HubClient::builder(server.base_url())
            .unwrap()
            .xet(false)
            .build()
            .unwrap();
        let repo = Repo::dataset(RepoId::new("hubsweep", "quickstart").unwrap());
        let original: Manifest = ledger::parse_manifest(
            &client
                .download_bytes(&repo, "main", ledger::MANIFEST_PATH)
                .await
                .unwrap(),
        )
        .unwrap();
        let branch = |name: &'static str, manifest: Option<Manifest>| {
            let (client, repo) = (client.clone(), repo.clone());
            async move {
                client.create_branch(&repo, name, "main").await.unwrap();
                let operation = match manifest {
                    Some(m) => CommitOperation::AddRegular {
                        path: ledger::MANIFEST_PATH.into(),
                        content: Bytes::from(serde_json::to_vec_pretty(&m).unwrap()),
                    },
                    None => CommitOperation::Delete {
                        path: ledger::MANIFEST_PATH.into(),
                    },
                };
                let options = CommitOptions {
                    summary: format!("tamper: {name}"),
                    ..CommitOptions::default()
                };
                client
                    .commit(&repo, name, &[operation], &options)
                    .await
                    .unwrap();
            }
        };
        let edit = |from: &str, to: &str, rehashed: bool| {
            let mut m = original.clone();
            assert!(m.spec.text.contains(from), "{from}");
            m.spec.text = m.spec.text.replace(from, to);
            if rehashed {
                rehash(&mut m);
            }
            m
        };
        branch("edited", Some(edit("seq_len: 16", "seq_len: 8", false))).await;
        branch("invalid", Some(edit("dtype: f32", "dtype: f64", true))).await;
        branch("forged", Some(edit("top_k: 16", "top_k: 8", true))).await;
        branch("no-manifest", None).await;
        server.shutdown().await;
    });

    let cases = [
        ("edited", "the manifest's spec was edited"),
        ("invalid", "does not validate"),
        ("no-manifest", "has no `ledger/manifest.json`"),
    ];
    for (branch, message) in cases {
        let output = reproduce(&ctx, &[&format!("{REPO}@{branch}")]);
        assert_eq!(output.status.code(), Some(2), "{branch}: {}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(message),
            "{branch}: {}",
            text(&output)
        );
    }
    let missing = reproduce(&ctx, &["local://hubsweep/no-such-results"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));

    // Spec and hashes forged together: the rebuilt spectra are other nodes than the recorded
    // ones, and each is named.
    let forged = reproduce(&ctx, &[&format!("{REPO}@forged"), "--format", "json"]);
    assert_eq!(forged.status.code(), Some(1), "{}", text(&forged));
    let report = json(&forged);
    let id_failures: Vec<&serde_json::Value> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["check"] == "id" && r["status"] == "fail")
        .collect();
    let named = |kind: &str, got: &str| {
        id_failures
            .iter()
            .filter(|r| r["kind"] == kind && r["got"].as_str().unwrap().contains(got))
            .count()
    };
    // `top_k` is a spectrum parameter: the 18 recorded spectra are not in the rebuilt plan; the
    // ledger commits are the same nodes with other inputs.
    assert_eq!(
        named("spectrum", "not in the rebuilt plan"),
        18,
        "{report:#}"
    );
    assert_eq!(named("ledger_commit", "inputs differ"), 3, "{report:#}");
    assert_eq!(id_failures.len(), 21, "{report:#}");
}

/// A sweep over the bundled models and 1,024 token ids (64 windows: many Gram blocks) into
/// `output`, with `batch_size` windows per forward pass.
fn batched_spec(ctx: &TestContext, name: &str, output: &str, batch_size: u32) -> PathBuf {
    let ids: Vec<String> = (0..1024u64)
        .map(|i| ((i * 7919 + 13) % 300 + 1).to_string())
        .collect();
    let path = ctx.child(name);
    std::fs::write(
        &path,
        format!(
            "name: batched\noutput: {output}\nmodels:\n  - family: gpt_neox\n    repo: local://hubsweep/tiny-gpt-neox\n  - family: llama\n    repo: local://hubsweep/tiny-llama\ndata:\n  token_ids: [[{}]]\n  seq_len: 16\ncapture:\n  hooks: [hook_resid_post, hook_mlp_out]\n  layers: all\n  dtype: f32\nanalyses:\n  - spectrum: {{top_k: 8}}\nlimits:\n  memory: 16MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n  batch_size: {batch_size}\n",
            ids.join(", ")
        ),
    )
    .unwrap();
    path
}

/// node id → its files' (path, sha256), from the ledger of `repo` in the context's store.
fn files_by_node(
    ctx: &TestContext,
    repo: &str,
) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    runtime().block_on(async {
        let (server, client) = crate::run::open_store(&ctx.child("hubsweep-home")).await;
        let repo = crate::run::dataset(repo);
        let state = hubsweep::ledger::LedgerState::read(&client, &repo, "main")
            .await
            .unwrap();
        let files = state
            .records
            .values()
            .map(|record| {
                let files = record
                    .files
                    .iter()
                    .map(|f| (f.path.clone(), f.sha256.clone()))
                    .collect();
                (record.id.clone(), files)
            })
            .collect();
        server.shutdown().await;
        files
    })
}

/// The same node id means the same bytes: the batch size is not part of a node's id, so a run
/// with 3 windows per forward pass and one thread writes, under every id, the very files a run
/// with 4 and two threads wrote — spectra included (their Gram sums go in fixed row blocks,
/// whatever the batching). And `reproduce` on one thread reruns the first bitwise.
#[test]
fn the_same_node_id_means_the_same_bytes_whatever_the_batch_size_and_thread_count() {
    let ctx = TestContext::new();
    let run = |spec: &PathBuf, threads: &str| {
        let output = hubsweep(&ctx)
            .arg("run")
            .arg(spec)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    };
    run(
        &batched_spec(&ctx, "four.yaml", "local://alice/batch-4", 4),
        "2",
    );
    run(
        &batched_spec(&ctx, "three.yaml", "local://alice/batch-3", 3),
        "1",
    );
    let four = files_by_node(&ctx, "alice/batch-4");
    let three = files_by_node(&ctx, "alice/batch-3");
    assert_eq!(
        four.keys().collect::<Vec<_>>(),
        three.keys().collect::<Vec<_>>(),
        "the batch size changed node ids"
    );
    let spectra = four
        .values()
        .flatten()
        .filter(|(path, _)| path.starts_with("spectra/"))
        .count();
    assert!(spectra >= 2 * 2 * 3, "{four:?}");
    let differ: Vec<&String> = four
        .iter()
        .filter(|(id, files)| three[*id] != **files)
        .map(|(id, _)| id)
        .collect();
    assert!(
        differ.is_empty(),
        "{} nodes' files differ: {differ:?}",
        differ.len()
    );

    let output = hubsweep(&ctx)
        .args(["reproduce", "local://alice/batch-4"])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let rows = table_rows(&output);
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.last().is_some_and(|s| s == "ok")),
        "{}",
        text(&output)
    );
}
