//! Finding a checkpoint's files: a local folder, the standard HF cache layout, or any Hub
//! endpoint through `hf-hub` (which fills that same cache).
//!
//! The cache layout is `models--{ns}--{name}/refs/{revision}` (a commit sha) and
//! `models--{ns}--{name}/snapshots/{sha}/{file}`, as `huggingface_hub` writes it.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ModelError;
use super::weights::shards_from_index;

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";

/// The files of one checkpoint in the HF layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The folder (a snapshot folder for cached models).
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
    /// The commit sha the files come from, when they come from a cache or a Hub.
    pub commit: Option<String>,
}

impl ModelFiles {
    /// The checkpoint in a local folder.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let missing = |file: &str| ModelError::MissingFile {
            path: dir.to_path_buf(),
            file: file.to_string(),
        };
        let config = dir.join(CONFIG);
        if !config.is_file() {
            return Err(missing(CONFIG));
        }
        let weights = if dir.join(SINGLE).is_file() {
            vec![dir.join(SINGLE)]
        } else if dir.join(INDEX).is_file() {
            shards_from_index(&dir.join(INDEX))?
        } else {
            return Err(missing(
                "model.safetensors` or `model.safetensors.index.json",
            ));
        };
        let tokenizer = Some(dir.join(TOKENIZER)).filter(|p| p.is_file());
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            commit: None,
        })
    }

    /// The checkpoint `repo` at `revision` (branch, tag or commit sha) in the HF cache folder
    /// `cache` (what `HF_HUB_CACHE` points to, by default `$HF_HOME/hub`).
    pub fn from_cache(cache: &Path, repo: &str, revision: &str) -> Result<Self, ModelError> {
        let not_cached = || ModelError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: cache.to_path_buf(),
        };
        let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
        let commit = if is_commit_sha(revision) {
            revision.to_string()
        } else {
            let reference = repo_dir.join("refs").join(revision);
            let text = fs_err::read_to_string(&reference).map_err(|_| not_cached())?;
            text.trim().to_string()
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        if !snapshot.join(CONFIG).is_file() {
            return Err(not_cached());
        }
        let mut files = Self::from_dir(&snapshot)?;
        files.commit = Some(commit);
        Ok(files)
    }

    /// Downloads (or reuses from `source.cache_dir`) `config.json`, the weights and
    /// `tokenizer.json` of `repo` at `revision` from `source.endpoint`.
    pub async fn download(
        source: &HubSource,
        repo: &str,
        revision: &str,
    ) -> Result<Self, ModelError> {
        use hf_hub::api::tokio::ApiBuilder;
        use hf_hub::{Cache, Repo, RepoType};
        let download_err =
            |file: &str, source_err: hf_hub::api::tokio::ApiError| ModelError::Download {
                repo: repo.to_string(),
                revision: revision.to_string(),
                file: file.to_string(),
                endpoint: source.endpoint.clone(),
                source: Box::new(source_err),
            };
        let api = ApiBuilder::from_cache(Cache::new(source.cache_dir.clone()))
            .with_endpoint(source.endpoint.trim_end_matches('/').to_string())
            .with_token(source.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| download_err(CONFIG, e))?;
        let api_repo = api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let config = api_repo
            .get(CONFIG)
            .await
            .map_err(|e| download_err(CONFIG, e))?;
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        let weights = match api_repo.get(SINGLE).await {
            Ok(path) => vec![path],
            Err(single_err) => match api_repo.get(INDEX).await {
                Ok(index) => {
                    let shards = shards_from_index(&index)?;
                    let mut paths = Vec::with_capacity(shards.len());
                    for shard in shards {
                        let name = shard
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or_default()
                            .to_string();
                        paths.push(
                            api_repo
                                .get(&name)
                                .await
                                .map_err(|e| download_err(&name, e))?,
                        );
                    }
                    paths
                }
                // Report the single-file error: an auth or network failure shows there first.
                Err(_) => return Err(download_err(SINGLE, single_err)),
            },
        };
        let tokenizer = api_repo.get(TOKENIZER).await.ok();
        let commit = dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_commit_sha(n))
            .map(str::to_string);
        Ok(Self {
            dir,
            config,
            weights,
            tokenizer,
            commit,
        })
    }
}

fn is_commit_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A Hub endpoint to download from, with explicit credentials and cache (the library never
/// reads the environment).
#[derive(Clone)]
pub struct HubSource {
    /// Base URL, e.g. `https://huggingface.co` or a local `hubsweep hub serve`.
    pub endpoint: String,
    /// Bearer token, sent only to `endpoint`.
    pub token: Option<String>,
    /// The HF cache folder downloads go to (and are reused from).
    pub cache_dir: PathBuf,
}

impl fmt::Debug for HubSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSource")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}
