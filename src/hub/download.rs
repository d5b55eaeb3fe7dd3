//! Model and file downloads through the `hf-hub` crate (0.5, the light line without Xet),
//! into the standard HF cache shared with Python (`models--ns--name/{blobs,snapshots,refs}`).
//!
//! Every setting is explicit: the CLI reads `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`,
//! `HF_HUB_CACHE` and `HF_HUB_OFFLINE` and passes them here.

use std::path::PathBuf;

use super::client::Repo;
use super::{RepoType, Token};

/// Where and how to download.
#[derive(Debug, Clone)]
pub struct DownloadSettings {
    /// Hub endpoint (`https://huggingface.co` or the embedded server's URL).
    pub endpoint: String,
    /// Token for gated or private repos.
    pub token: Option<Token>,
    /// The HF hub cache folder (`$HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Never touch the network: answer from the cache or fail.
    pub offline: bool,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The `hf-hub` crate failed (network, missing file, bad answer).
    #[error("cannot download `{path}` from `{repo}` at `{revision}`")]
    Hub {
        /// Repo id.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// File path.
        path: String,
        /// The cause.
        #[source]
        source: hf_hub::api::tokio::ApiError,
    },
    /// Offline and the file is not in the cache.
    #[error(
        "`{path}` of `{repo}` at `{revision}` is not in the cache and downloads are off (offline)"
    )]
    NotCached {
        /// Repo id.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// File path.
        path: String,
    },
}

/// Downloads files into the HF cache; cache-first, like `hf_hub_download`.
pub struct Downloader {
    settings: DownloadSettings,
    api: hf_hub::api::tokio::Api,
}

impl Downloader {
    /// A downloader with these settings.
    pub fn new(settings: DownloadSettings) -> Result<Self, hf_hub::api::tokio::ApiError> {
        let api = hf_hub::api::tokio::ApiBuilder::from_cache(hf_hub::Cache::new(
            settings.cache_dir.clone(),
        ))
        .with_endpoint(settings.endpoint.trim_end_matches('/').to_owned())
        .with_token(settings.token.as_ref().map(|t| t.expose().to_owned()))
        .with_progress(false)
        .build()?;
        Ok(Self { settings, api })
    }

    /// The local path of `path` in `repo` at `revision`: from the cache if it is there
    /// (for a 40-hex commit id or a ref the cache knows), else downloaded (unless offline).
    pub async fn get(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
    ) -> Result<PathBuf, DownloadError> {
        let kind = match repo.kind {
            RepoType::Model => hf_hub::RepoType::Model,
            RepoType::Dataset => hf_hub::RepoType::Dataset,
        };
        let hub_repo = hf_hub::Repo::with_revision(repo.id.to_string(), kind, revision.to_owned());
        if self.settings.offline {
            return hf_hub::Cache::new(self.settings.cache_dir.clone())
                .repo(hub_repo)
                .get(path)
                .ok_or_else(|| DownloadError::NotCached {
                    repo: repo.id.to_string(),
                    revision: revision.to_owned(),
                    path: path.to_owned(),
                });
        }
        self.api
            .repo(hub_repo)
            .get(path)
            .await
            .map_err(|source| DownloadError::Hub {
                repo: repo.id.to_string(),
                revision: revision.to_owned(),
                path: path.to_owned(),
                source,
            })
    }
}
