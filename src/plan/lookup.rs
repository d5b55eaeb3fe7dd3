//! What the planner can learn about a model without running anything: its dimensions from a
//! `config.json` at hand, and its commit sha when a revision is already pinned locally.
//!
//! Sources, in order: a local folder in HF layout (the spec's `repo` is a path); the standard HF
//! cache (`$HF_HUB_CACHE/models--NS--NAME/{refs,snapshots}`), which Python and Rust clients
//! share; a revision that is itself a 40-hex commit sha. Anything else is "unknown", and the plan
//! says so instead of guessing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::{Family, ModelSource};

/// Dimensions of a model, as far as the plan needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelDims {
    /// Residual width.
    pub d_model: u64,
    /// Number of blocks.
    pub n_layers: u32,
    /// MLP hidden width.
    pub d_mlp: u64,
    /// Attention heads.
    pub n_heads: u64,
    /// Key/value heads (GQA).
    pub n_kv_heads: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Whether blocks are parallel (GPT-NeoX `use_parallel_residual`).
    pub parallel_residual: bool,
    /// Whether the unembedding shares the embedding matrix.
    pub tied_embeddings: bool,
}

impl ModelDims {
    /// Parameter count (weights only, biases and norms included approximately).
    pub fn parameters(&self) -> u64 {
        let d = self.d_model;
        let head = d / self.n_heads.max(1);
        let attention = d * d + 2 * d * head * self.n_kv_heads + d * d;
        let mlp = 3 * d * self.d_mlp;
        let embeddings = if self.tied_embeddings {
            self.vocab * d
        } else {
            2 * self.vocab * d
        };
        u64::from(self.n_layers) * (attention + mlp + 4 * d) + embeddings
    }

    /// Reads the dimensions from a `config.json` (transformers-4 and -5 key styles).
    pub fn from_config_json(text: &str) -> Result<(Family, ModelDims), String> {
        #[derive(Deserialize)]
        struct Config {
            model_type: Option<String>,
            architectures: Option<Vec<String>>,
            // GPT-2 spells these n_embd, n_layer, n_inner, n_head.
            #[serde(alias = "n_embd")]
            hidden_size: Option<u64>,
            #[serde(alias = "n_layer")]
            num_hidden_layers: Option<u32>,
            #[serde(alias = "n_inner")]
            intermediate_size: Option<u64>,
            #[serde(alias = "n_head")]
            num_attention_heads: Option<u64>,
            num_key_value_heads: Option<u64>,
            vocab_size: Option<u64>,
            use_parallel_residual: Option<bool>,
            tie_word_embeddings: Option<bool>,
        }
        let c: Config =
            serde_json::from_str(text).map_err(|e| format!("config.json is not valid: {e}"))?;
        let family = match (c.model_type.as_deref(), c.architectures.as_deref()) {
            (Some(model_type), _) => Family::from_model_type(model_type).ok_or_else(|| {
                format!(
                    "unsupported `model_type` `{model_type}` (expected one of {})",
                    Family::supported_list()
                )
            })?,
            (None, Some([architecture, ..])) => Family::from_architecture(architecture)
                .ok_or_else(|| format!("unsupported `architectures` entry `{architecture}`"))?,
            (None, _) => return Err("config.json has no `model_type`".to_owned()),
        };
        let need =
            |v: Option<u64>, key: &str| v.ok_or_else(|| format!("config.json has no `{key}`"));
        let d_model = need(c.hidden_size, "hidden_size")?;
        let n_heads = need(c.num_attention_heads, "num_attention_heads")?;
        let dims = ModelDims {
            d_model,
            n_layers: c
                .num_hidden_layers
                .ok_or("config.json has no `num_hidden_layers`")?,
            d_mlp: c.intermediate_size.unwrap_or(4 * d_model),
            n_heads,
            n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
            vocab: c.vocab_size.unwrap_or(0),
            parallel_residual: family == Family::GptNeox && c.use_parallel_residual.unwrap_or(true),
            tied_embeddings: c
                .tie_word_embeddings
                .unwrap_or(matches!(family, Family::Llama | Family::Gpt2)),
        };
        Ok((family, dims))
    }
}

/// What is known about one (model, revision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFacts {
    /// The commit sha the revision resolves to, when known.
    pub commit: Option<String>,
    /// Dimensions, when a config is at hand.
    pub dims: Option<ModelDims>,
    /// A problem with the config that was found (unsupported family, unreadable file).
    pub problem: Option<String>,
    /// Token windows the data yields for this model (known once its tokenizer has run).
    pub windows: Option<u64>,
    /// Content hash of this model's token windows (tokenizers differ between models).
    pub data_hash: Option<String>,
}

/// Answers what is known about a model at a revision. The planner only asks; implementations
/// decide where to look.
pub trait ModelLookup: Sync {
    /// Facts about `source` at `revision`.
    fn lookup(&self, source: &ModelSource, revision: &str) -> ModelFacts;

    /// The pin of an adapter (commit sha, or `sha256:` of a local folder's files), and the
    /// folder holding its files, when pinned.
    fn adapter(
        &self,
        _adapter: &crate::spec::expand::AdapterInstance,
    ) -> Option<(String, PathBuf)> {
        None
    }

    /// The base an adapter's `adapter_config.json` names (`base_model_name_or_path`), when
    /// the config is at hand.
    fn adapter_base(&self, _adapter: &crate::spec::expand::AdapterInstance) -> Option<String> {
        None
    }
}

/// `base_model_name_or_path` of the `adapter_config.json` in `dir`, if readable.
pub fn adapter_config_base(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config["base_model_name_or_path"]
        .as_str()
        .filter(|base| !base.is_empty())
        .map(str::to_owned)
}

/// A lookup that knows nothing: every model is unpinned with unknown dimensions.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLookup;

impl ModelLookup for NoLookup {
    fn lookup(&self, _: &ModelSource, revision: &str) -> ModelFacts {
        ModelFacts {
            commit: is_commit_sha(revision).then(|| revision.to_owned()),
            ..ModelFacts::default()
        }
    }
}

/// Looks in local folders (relative to `base_dir`) and the standard HF cache.
#[derive(Debug, Clone)]
pub struct LocalLookup {
    /// Folder relative paths in the spec are resolved against (the spec's folder).
    pub base_dir: PathBuf,
    /// The HF hub cache (`$HF_HUB_CACHE`, or `$HF_HOME/hub`), if any.
    pub hf_cache: Option<PathBuf>,
}

/// Whether `revision` is a full 40-hex commit sha.
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ModelLookup for LocalLookup {
    /// A local folder adapter's config (a Hub adapter's is read when `run` pins it).
    fn adapter_base(&self, adapter: &crate::spec::expand::AdapterInstance) -> Option<String> {
        let ModelSource::Path(path) = &adapter.source else {
            return None;
        };
        let mut dir = self.base_dir.join(path);
        if let Some(folder) = &adapter.subfolder {
            dir.push(folder);
        }
        adapter_config_base(&dir)
    }

    fn lookup(&self, source: &ModelSource, revision: &str) -> ModelFacts {
        match source {
            ModelSource::Path(path) => {
                let folder = if path.is_absolute() {
                    path.clone()
                } else {
                    self.base_dir.join(path)
                };
                let mut facts = read_config(&folder.join("config.json"));
                // A folder has no commit; its content hash is computed when the run pins it.
                facts.commit = None;
                facts
            }
            ModelSource::Hub(id) => self.in_cache(id, revision),
            // The embedded hub's store is read by the run, not by the planner.
            ModelSource::Local(_) => NoLookup.lookup(source, revision),
        }
    }
}

impl LocalLookup {
    fn in_cache(&self, repo_id: &str, revision: &str) -> ModelFacts {
        let pinned = is_commit_sha(revision).then(|| revision.to_owned());
        let Some(cache) = &self.hf_cache else {
            return ModelFacts {
                commit: pinned,
                ..ModelFacts::default()
            };
        };
        let repo_dir = cache.join(format!("models--{}", repo_id.replace('/', "--")));
        let commit = pinned.or_else(|| {
            let text = fs_err::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
            let sha = text.trim().to_owned();
            is_commit_sha(&sha).then_some(sha)
        });
        match &commit {
            Some(sha) => {
                let mut facts =
                    read_config(&repo_dir.join("snapshots").join(sha).join("config.json"));
                facts.commit = Some(sha.clone());
                facts
            }
            None => ModelFacts::default(),
        }
    }
}

fn read_config(path: &Path) -> ModelFacts {
    let Ok(text) = fs_err::read_to_string(path) else {
        return ModelFacts::default();
    };
    match ModelDims::from_config_json(&text) {
        Ok((_, dims)) => ModelFacts {
            dims: Some(dims),
            ..ModelFacts::default()
        },
        Err(problem) => ModelFacts {
            problem: Some(format!("{}: {problem}", path.display())),
            ..ModelFacts::default()
        },
    }
}

/// Content hash of a local data file together with how it is read (field), so a changed file
/// or field changes the capture ids. `None` for sources that are not local files.
pub fn local_data_hash(source: &crate::spec::DataSource, base_dir: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let crate::spec::DataSource::File { path, field } = source else {
        return None;
    };
    let path = if path.is_absolute() {
        path.clone()
    } else {
        base_dir.join(path)
    };
    let bytes = fs_err::read(&path).ok()?;
    let mut hasher = Sha256::new();
    hasher.update(Sha256::digest(&bytes));
    hasher.update(field.as_deref().unwrap_or("").as_bytes());
    Some(hex::encode(hasher.finalize()))
}
