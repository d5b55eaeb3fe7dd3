//! The embedded defaults: two tiny committed models (a GPT-NeoX with parallel blocks and a
//! Llama with grouped-query attention, made by `scripts/fixtures/gen_fixtures.py` from
//! transformers), compiled into the binary so `hubsweep run sweeps/quickstart.yaml` works on a
//! machine with no network. On first use they are imported into the embedded hub as
//! `local://hubsweep/tiny-gpt-neox` and `local://hubsweep/tiny-llama`.

use bytes::Bytes;

use super::{CommitOperation, CommitOptions, HubClient, HubError, LfsObject, Repo, RepoId};

/// Namespace of the bundled models on the embedded hub.
pub const NAMESPACE: &str = "hubsweep";

struct Bundled {
    name: &'static str,
    config: &'static [u8],
    weights: &'static [u8],
    tokenizer: &'static [u8],
}

const MODELS: &[Bundled] = &[
    Bundled {
        name: "tiny-gpt-neox",
        config: include_bytes!("../../tests/fixtures/gpt_neox_tiny/config.json"),
        weights: include_bytes!("../../tests/fixtures/gpt_neox_tiny/model.safetensors"),
        tokenizer: include_bytes!("../../tests/fixtures/gpt_neox_tiny/tokenizer.json"),
    },
    Bundled {
        name: "tiny-llama",
        config: include_bytes!("../../tests/fixtures/llama_tiny/config.json"),
        weights: include_bytes!("../../tests/fixtures/llama_tiny/model.safetensors"),
        tokenizer: include_bytes!("../../tests/fixtures/llama_tiny/tokenizer.json"),
    },
];

/// Names of the bundled models (`hubsweep/NAME`).
pub fn names() -> Vec<String> {
    MODELS
        .iter()
        .map(|m| format!("{NAMESPACE}/{}", m.name))
        .collect()
}

/// The `config.json` of bundled model `repo_id`, if it is one (lets `plan` size the quickstart
/// offline).
pub fn config(repo_id: &str) -> Option<&'static [u8]> {
    MODELS
        .iter()
        .find(|m| format!("{NAMESPACE}/{}", m.name) == repo_id)
        .map(|m| m.config)
}

/// Imports bundled model `repo_id` into the hub behind `client` unless it is there already.
/// Returns whether it imported. Everything goes from memory; nothing is written locally.
pub async fn ensure(client: &HubClient, repo_id: &str) -> Result<bool, HubError> {
    let Some(model) = MODELS
        .iter()
        .find(|m| format!("{NAMESPACE}/{}", m.name) == repo_id)
    else {
        return Ok(false);
    };
    let Ok(id) = RepoId::new(NAMESPACE, model.name) else {
        return Ok(false);
    };
    let repo = Repo::model(id);
    if client.head(&repo, "main").await.is_ok_and(|_| true)
        && client
            .list_tree(&repo, "main", "", false)
            .await?
            .iter()
            .any(|e| e.path == "model.safetensors")
    {
        return Ok(false);
    }
    client.create_repo(&repo, false, true).await?;
    let weights = LfsObject::from_bytes(Bytes::from_static(model.weights));
    client.upload_lfs_object(&repo, "main", &weights).await?;
    let operations = vec![
        CommitOperation::AddRegular {
            path: "config.json".into(),
            content: Bytes::from_static(model.config),
        },
        CommitOperation::AddRegular {
            path: "tokenizer.json".into(),
            content: Bytes::from_static(model.tokenizer),
        },
        CommitOperation::AddLfs {
            path: "model.safetensors".into(),
            sha256: weights.sha256.clone(),
            size: weights.size,
        },
    ];
    let options = CommitOptions {
        summary: format!("Import bundled model {NAMESPACE}/{}", model.name),
        description: String::new(),
        parent_commit: None,
        create_pr: false,
    };
    client.commit(&repo, "main", &operations, &options).await?;
    Ok(true)
}
