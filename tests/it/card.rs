//! The output repo's dataset card through the front door: a run writes `README.md` with the
//! index; the official client's card parser and the real `datasets` library read it from the
//! embedded hub; a rerun leaves it byte-identical; a run that adds nodes rewrites it in the
//! index's commit; `verify` catches a card that claims what the ledger does not hold; a card
//! somebody else wrote is left alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use hubsweep::hub::{CommitOperation, CommitOptions, HubClient, Repo};
use hubsweep::ledger::card::{CARD_MARKER, CARD_PATH};

use crate::common::{TestContext, output_text, peers_required, repo_root};
use crate::run::{dataset, hubsweep, open_store, run_json, runtime, stderr};

const REPO: &str = "hubsweep/quickstart";

/// The quickstart with a license and `hooks` as given.
fn spec(ctx: &TestContext, hooks: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("sweeps/quickstart.yaml"))
        .unwrap()
        .replace(
            "output: local://hubsweep/quickstart\n",
            "output: local://hubsweep/quickstart\nlicense: cc-by-4.0\n",
        )
        .replace(
            "hooks: [hook_resid_pre, hook_resid_post, hook_mlp_out]",
            &format!("hooks: [{hooks}]"),
        );
    let path = ctx.child("quickstart.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_ok(ctx: &TestContext, spec: &Path) -> (serde_json::Value, String) {
    let (output, json) = run_json(ctx, spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    (json, stderr(&output))
}

async fn file_at(client: &HubClient, repo: &Repo, revision: &str, path: &str) -> Option<String> {
    client
        .download_bytes(repo, revision, path)
        .await
        .ok()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

/// The Python with the real `datasets` library (scripts/test.d/15-python-datasets.sh).
#[allow(clippy::print_stderr)] // the skip note the conventions ask for
fn datasets_python() -> Option<PathBuf> {
    match std::env::var_os("HUBSWEEP_DATASETS_PYTHON") {
        Some(path) => Some(path.into()),
        None if peers_required() => {
            panic!("HUBSWEEP_DATASETS_PYTHON is not set: scripts/test.sh sets it")
        }
        None => {
            eprintln!("skip: HUBSWEEP_DATASETS_PYTHON not set (run scripts/test.sh)");
            None
        }
    }
}

/// Reads the card with `huggingface_hub.DatasetCard` and every config with `load_dataset`;
/// prints `{"card": …, "rows": {config: n}}`.
const READ_CARD: &str = r#"
import json, sys
from huggingface_hub import DatasetCard
import datasets
datasets.disable_progress_bars()
repo = sys.argv[1]
card = DatasetCard.load(repo, repo_type="dataset")
data = card.data.to_dict()
rows = {}
for config in data["configs"]:
    name = config["config_name"]
    rows[name] = len(datasets.load_dataset(repo, name, split="train"))
print(json.dumps({"card": data, "rows": rows}))
"#;

#[test]
fn a_run_writes_a_dataset_card_that_the_hub_clients_read_and_verify_checks() {
    let ctx = TestContext::new();
    let spec = spec(&ctx, "hook_resid_pre, hook_resid_post, hook_mlp_out");
    let (first, _) = run_ok(&ctx, &spec);
    let rt = runtime();
    let (server, client) = rt.block_on(open_store(&ctx.child("hubsweep-home")));
    let repo = dataset(REPO);
    let card = rt
        .block_on(file_at(&client, &repo, "main", CARD_PATH))
        .expect("the run wrote README.md");
    assert!(card.starts_with("---\n"), "{card}");
    for expected in [
        "pretty_name: \"quickstart\"",
        "license: \"cc-by-4.0\"",
        "- \"interpretability\"",
        "- \"activations\"",
        "- \"gpt_neox\"",
        "- \"llama\"",
        "- config_name: \"spectra\"\n  data_files: \"metrics/spectra.jsonl\"",
        "- config_name: \"ledger\"\n  data_files: \"ledger/index.jsonl\"",
        "  nodes: 43\n",
        "- repo: \"local://hubsweep/tiny-llama\"",
        "hubsweep verify local://datasets/hubsweep/quickstart",
        "| `local://hubsweep/tiny-gpt-neox` | `main` | `hook_resid_post` | 3 |",
    ] {
        assert!(card.contains(expected), "`{expected}` not in:\n{card}");
    }
    // Tables without rows get no config: the viewer would fail on an empty file.
    assert!(!card.contains("\"overlaps\""), "{card}");
    assert!(!card.contains("\"weights\""), "{card}");
    // No clock, no host: nothing that differs between two runs of the same ledger.
    assert!(!card.contains("2026-") && !card.contains("T00:"), "{card}");

    // The real readers: the official client's card parser, and `datasets.load_dataset` for
    // each config, through the embedded hub's API (info, tree, paths-info, resolve).
    if let Some(python) = datasets_python() {
        let spectra_rows = rt
            .block_on(file_at(&client, &repo, "main", "metrics/spectra.jsonl"))
            .unwrap()
            .lines()
            .count();
        let out = Command::new(python)
            .args(["-c", READ_CARD, REPO])
            .env("HF_ENDPOINT", server.base_url())
            .env("HF_HUB_DISABLE_XET", "1")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HOME", ctx.child("py-hf-home"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        let read: serde_json::Value =
            serde_json::from_slice(out.stdout.rsplit(|&b| b == b'\n').nth(1).unwrap()).unwrap();
        assert_eq!(read["card"]["license"], "cc-by-4.0", "{read}");
        assert_eq!(read["card"]["pretty_name"], "quickstart", "{read}");
        assert_eq!(read["card"][CARD_MARKER]["nodes"], 43, "{read}");
        assert_eq!(read["rows"]["spectra"], spectra_rows, "{read}");
        assert_eq!(read["rows"]["ledger"], 43, "{read}");
    }

    // A rerun with nothing new commits nothing: the card is the same bytes at the same head.
    let (second, _) = run_ok(&ctx, &spec);
    assert_eq!(second["commits"], 0, "{second}");
    assert_eq!(second["head"], first["head"]);

    // A run that adds nodes rewrites the card in the commit that rewrites the index.
    rt.block_on(server.shutdown());
    let spec = self::spec(
        &ctx,
        "hook_resid_pre, hook_resid_post, hook_mlp_out, hook_attn_out",
    );
    let (third, _) = run_ok(&ctx, &spec);
    assert!(third["executed"].as_u64().unwrap() > 0, "{third}");
    let (server, client) = rt.block_on(open_store(&ctx.child("hubsweep-home")));
    rt.block_on(async {
        let commits = client.list_commits(&repo, "main").await.unwrap();
        let (head, parent) = (&commits[0].id, &commits[1].id);
        for path in [CARD_PATH, "ledger/index.jsonl"] {
            let before = file_at(&client, &repo, parent, path).await;
            let after = file_at(&client, &repo, head, path).await;
            assert_ne!(before, after, "{path} did not change in the last commit");
        }
        let card = file_at(&client, &repo, head, CARD_PATH).await.unwrap();
        assert!(card.contains("`hook_attn_out`"), "{card}");
    });
    rt.block_on(server.shutdown());
    let verified = hubsweep(&ctx)
        .args(["verify", "local://hubsweep/quickstart"])
        .output()
        .unwrap();
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        output_text(&verified)
    );
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("card"),
        "{}",
        output_text(&verified)
    );

    // A card that claims what the ledger does not hold is a finding of `verify`.
    let (server, client) = rt.block_on(open_store(&ctx.child("hubsweep-home")));
    rt.block_on(async {
        let card = file_at(&client, &repo, "main", CARD_PATH).await.unwrap();
        let forged =
            card.replacen("  nodes: ", "  nodes: 1", 1)
                .replacen("commit: \"", "commit: \"0", 1);
        client.create_branch(&repo, "forged", "main").await.unwrap();
        commit_card(&client, &repo, "forged", forged).await;
    });
    rt.block_on(server.shutdown());
    let verified = hubsweep(&ctx)
        .args(["verify", "local://hubsweep/quickstart@forged"])
        .output()
        .unwrap();
    let text = output_text(&verified);
    assert_eq!(verified.status.code(), Some(1), "{text}");
    assert!(text.contains("README.md"), "{text}");
    assert!(text.contains("the card claims nodes: 1"), "{text}");
    assert!(text.contains("the ledger has no such pin"), "{text}");
}

async fn commit_card(client: &HubClient, repo: &Repo, revision: &str, card: String) {
    client
        .commit(
            repo,
            revision,
            &[CommitOperation::AddRegular {
                path: CARD_PATH.into(),
                content: Bytes::from(card),
            }],
            &CommitOptions {
                summary: "edit the card".into(),
                ..CommitOptions::default()
            },
        )
        .await
        .unwrap();
}

#[test]
fn a_card_somebody_else_wrote_is_left_as_it_is() {
    let ctx = TestContext::new();
    let spec = spec(&ctx, "hook_resid_post");
    run_ok(&ctx, &spec);
    let rt = runtime();
    let repo = dataset(REPO);
    let theirs = "---\nlicense: mit\n---\n# Our sweep\n\nWritten by hand.\n".to_owned();
    let (server, client) = rt.block_on(open_store(&ctx.child("hubsweep-home")));
    rt.block_on(commit_card(&client, &repo, "main", theirs.clone()));
    rt.block_on(server.shutdown());

    let spec = self::spec(&ctx, "hook_resid_post, hook_mlp_out");
    let (report, err) = run_ok(&ctx, &spec);
    assert!(report["executed"].as_u64().unwrap() > 0, "{report}");
    assert!(
        err.contains("README.md was not written by hubsweep"),
        "{err}"
    );
    let (server, client) = rt.block_on(open_store(&ctx.child("hubsweep-home")));
    let card = rt.block_on(file_at(&client, &repo, "main", CARD_PATH));
    rt.block_on(server.shutdown());
    assert_eq!(card.as_deref(), Some(theirs.as_str()));
    // Not ours, so not checked: the ledger still verifies.
    let verified = hubsweep(&ctx)
        .args(["verify", "local://hubsweep/quickstart"])
        .output()
        .unwrap();
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        output_text(&verified)
    );
}

/// The official client commits a card only after the Hub's `validate-yaml` accepts it: the
/// embedded hub answers that call, and a card with bad metadata is refused with the reason.
#[test]
fn the_official_client_uploads_cards_and_sees_bad_metadata_refused() {
    let Some(python) = crate::hub::hub_python() else {
        return;
    };
    let ctx = TestContext::new();
    let rt = runtime();
    let (server, _) = rt.block_on(open_store(&ctx.child("home")));
    let script = r#"
import sys
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("alice/cards", repo_type="dataset")
good = b"---\nlicense: mit\nconfigs:\n- config_name: a\n  data_files: a.jsonl\n---\n# A\n"
api.upload_file(path_or_fileobj=good, path_in_repo="README.md", repo_id="alice/cards", repo_type="dataset")
try:
    api.upload_file(path_or_fileobj=b"---\nlicense: MIT\n---\n", path_in_repo="README.md", repo_id="alice/cards", repo_type="dataset")
except ValueError as e:
    print("refused:", e)
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .env("HF_ENDPOINT", server.base_url())
        .env("HF_TOKEN", "hf_anything")
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HOME", ctx.child("py-hf-home"))
        .output()
        .unwrap();
    rt.block_on(server.shutdown());
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("refused: Invalid metadata in README.md."),
        "{text}"
    );
    assert!(text.contains("\"license\" must be a lowercase"), "{text}");
}
