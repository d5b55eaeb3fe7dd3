//! Finding a checkpoint's files: a local folder, the standard HF cache layout, or any Hub
//! endpoint through `hf-hub` (which fills that same cache); and deleting downloaded weights
//! from that cache again.
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

    /// Resolves `repo` at `revision` on `source.endpoint` and downloads (or reuses from
    /// `source.cache_dir`) what pinning needs: `config.json`, `tokenizer.json` and, for a
    /// sharded checkpoint, `model.safetensors.index.json`. The weights are not downloaded:
    /// `weights` names where they go in the snapshot folder, and [`fetch_weights`] brings them
    /// when the model's turn comes, so planning, `status` and `--dry-run` download none.
    ///
    /// A checkpoint whose weights are in the cache is taken as it is there; otherwise it is
    /// sharded when the Hub has an index, else a single `model.safetensors`.
    ///
    /// [`fetch_weights`]: ModelFiles::fetch_weights
    pub async fn resolve(
        source: &HubSource,
        repo: &str,
        revision: &str,
    ) -> Result<Self, ModelError> {
        let api_repo = source.api_repo(repo, revision)?;
        let download_err = |file: &str, e| source.download_err(repo, revision, file, e);
        let config = get_waiting(&api_repo, CONFIG)
            .await
            .map_err(|e| download_err(CONFIG, e))?;
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        let weights = if dir.join(SINGLE).is_file() {
            vec![dir.join(SINGLE)]
        } else if dir.join(INDEX).is_file() {
            shards_from_index(&dir.join(INDEX))?
        } else {
            match get_waiting(&api_repo, INDEX).await {
                Ok(index) => shards_from_index(&index)?,
                // No index on the Hub (or none readable): one file, whose download reports
                // what is wrong if it is missing too.
                Err(_) => vec![dir.join(SINGLE)],
            }
        };
        let tokenizer = get_waiting(&api_repo, TOKENIZER).await.ok();
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

    /// Downloads the weight files of a checkpoint [`resolve`](ModelFiles::resolve)d from
    /// `source` that are not in its snapshot folder yet, at its commit. Returns the files it
    /// downloaded (none when all were there).
    pub async fn fetch_weights(
        &self,
        source: &HubSource,
        repo: &str,
    ) -> Result<Vec<PathBuf>, ModelError> {
        let missing: Vec<&PathBuf> = self.weights.iter().filter(|p| !p.is_file()).collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let revision = self.commit.as_deref().unwrap_or_default();
        let api_repo = source.api_repo(repo, revision)?;
        let mut fetched = Vec::with_capacity(missing.len());
        for path in missing {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let got = get_waiting(&api_repo, name)
                .await
                .map_err(|e| source.download_err(repo, revision, name, e))?;
            if &got != path {
                return Err(ModelError::Read {
                    path: got,
                    source: std::io::Error::other(format!(
                        "downloaded outside the pinned snapshot `{}`",
                        self.dir.display()
                    )),
                });
            }
            fetched.push(got);
        }
        Ok(fetched)
    }

    /// [`resolve`](ModelFiles::resolve), then [`fetch_weights`](ModelFiles::fetch_weights):
    /// every file of `repo` at `revision`.
    pub async fn download(
        source: &HubSource,
        repo: &str,
        revision: &str,
    ) -> Result<Self, ModelError> {
        let files = Self::resolve(source, repo, revision).await?;
        files.fetch_weights(source, repo).await?;
        Ok(files)
    }

    /// Deletes from the HF cache `cache` what the snapshot entries of these weights point to,
    /// except the entries in `keep` and anything outside the cache: each entry's blob (unless
    /// another snapshot links to it too) with its `hf-hub` lock, then the entry. Entries that
    /// are not there (never fetched) are skipped. Returns the bytes freed, or the path that
    /// could not be deleted and why.
    pub fn evict_weights(
        &self,
        cache: &Path,
        keep: &[PathBuf],
    ) -> Result<u64, (PathBuf, std::io::Error)> {
        let cache = cache.canonicalize().unwrap_or(cache.to_path_buf());
        let mut freed = 0;
        for entry in self.weights.iter().filter(|entry| !keep.contains(entry)) {
            let failed = |e| (entry.clone(), e);
            // `hf-hub` links snapshot entries to content-addressed blobs; a plain file is the
            // data itself.
            let Ok(target) = entry.canonicalize() else {
                continue;
            };
            if !target.starts_with(&cache) {
                continue;
            }
            // A blob another snapshot links to as well (the same file in two revisions)
            // stays; only this snapshot's entry goes.
            if !linked_elsewhere(entry, &target) {
                freed += std::fs::metadata(&target).map_err(failed)?.len();
                std::fs::remove_file(&target).map_err(failed)?;
                let mut lock = target.into_os_string();
                lock.push(".lock");
                let _ = std::fs::remove_file(lock);
            }
            if entry.symlink_metadata().is_ok() {
                std::fs::remove_file(entry).map_err(failed)?;
            }
        }
        Ok(freed)
    }
}

/// Whether an entry of another snapshot of the same cached repo than `entry`
/// (`…/snapshots/{sha}/{file}`) resolves to `blob`.
fn linked_elsewhere(entry: &Path, blob: &Path) -> bool {
    let Some(snapshots) = entry.parent().and_then(Path::parent) else {
        return false;
    };
    let Ok(folders) = std::fs::read_dir(snapshots) else {
        return false;
    };
    folders
        .flatten()
        .filter_map(|folder| std::fs::read_dir(folder.path()).ok())
        .flatten()
        .flatten()
        .any(|other| other.path() != entry && other.path().canonicalize().is_ok_and(|p| p == blob))
}

/// `repo.get(name)` (the cache, else a download), waiting for as long as another download of
/// the same file holds its lock. `hf-hub` gives up on a held lock after 5 s, but a checkpoint
/// takes minutes, and the holder may be this very run (the next model's weights downloading
/// ahead while a weight delta reads them as its base) or a second worker on a shared cache.
/// The lock is an `flock`, which dies with its process, so a held lock is a live download:
/// once it is released, the file is in the cache (or, if that download failed, this one
/// starts). A lock that cannot be taken for another reason (a filesystem without `flock`)
/// is `hf-hub`'s error, as before.
pub(crate) async fn get_waiting(
    repo: &hf_hub::api::tokio::ApiRepo,
    name: &str,
) -> Result<PathBuf, hf_hub::api::tokio::ApiError> {
    use hf_hub::api::tokio::ApiError;
    loop {
        let held = match repo.get(name).await {
            Err(ApiError::LockAcquisition(lock)) => lock,
            done => return done,
        };
        loop {
            let free = std::fs::File::open(&held).map(|file| file.try_lock());
            match free {
                // Free now, or deleted with its blob: ask the cache again.
                Ok(Ok(())) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Ok(Err(std::fs::TryLockError::WouldBlock)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Ok(Err(std::fs::TryLockError::Error(_))) | Err(_) => {
                    return Err(ApiError::LockAcquisition(held));
                }
            }
        }
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

impl HubSource {
    /// `repo` at `revision` through `hf-hub`, cache-first.
    fn api_repo(
        &self,
        repo: &str,
        revision: &str,
    ) -> Result<hf_hub::api::tokio::ApiRepo, ModelError> {
        use hf_hub::api::tokio::ApiBuilder;
        use hf_hub::{Cache, Repo, RepoType};
        let api = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.trim_end_matches('/').to_string())
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| self.download_err(repo, revision, CONFIG, e))?;
        Ok(api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        )))
    }

    fn download_err(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        source: hf_hub::api::tokio::ApiError,
    ) -> ModelError {
        ModelError::Download {
            repo: repo.to_string(),
            revision: revision.to_string(),
            file: file.to_string(),
            endpoint: self.endpoint.clone(),
            source: Box::new(source),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(entries: &[PathBuf]) -> ModelFiles {
        ModelFiles {
            dir: PathBuf::new(),
            config: PathBuf::new(),
            weights: entries.to_vec(),
            tokenizer: None,
            commit: None,
        }
    }

    /// A cache with two snapshots of one repo: `a` links `w1` to its own blob and `w2` to a
    /// blob `b` links to as well; `b` also links `w3`; `outside` is a file beyond the cache.
    fn cache() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("cache/models--ns--m");
        let blobs = repo.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        for (name, len) in [("one", 3), ("shared", 5), ("three", 7)] {
            std::fs::write(blobs.join(name), vec![0u8; len]).unwrap();
        }
        std::fs::write(blobs.join("one.lock"), b"").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep me").unwrap();
        for (snapshot, links) in [
            ("a", vec![("w1", "one"), ("w2", "shared")]),
            ("b", vec![("w2", "shared"), ("w3", "three")]),
        ] {
            let folder = repo.join("snapshots").join(snapshot);
            std::fs::create_dir_all(&folder).unwrap();
            for (entry, blob) in links {
                std::os::unix::fs::symlink(format!("../../blobs/{blob}"), folder.join(entry))
                    .unwrap();
            }
        }
        std::os::unix::fs::symlink(&outside, repo.join("snapshots/a/w4")).unwrap();
        let cache = dir.path().join("cache");
        (dir, cache, repo, outside)
    }

    #[test]
    fn eviction_frees_only_blobs_no_other_snapshot_needs_and_nothing_kept_or_outside() {
        let (_dir, cache, repo, outside) = cache();
        let a = repo.join("snapshots/a");
        let entries = [a.join("w1"), a.join("w2"), a.join("w4"), a.join("missing")];
        let freed = weights(&entries).evict_weights(&cache, &[]).unwrap();
        // `one` (3 bytes) and its lock go; `shared` stays for snapshot b, only a's entry goes.
        assert_eq!(freed, 3);
        assert!(!repo.join("blobs/one").exists() && !repo.join("blobs/one.lock").exists());
        assert!(!a.join("w1").exists() && a.join("w2").symlink_metadata().is_err());
        assert!(repo.join("blobs/shared").is_file() && repo.join("snapshots/b/w2").is_file());
        // The link to a file outside the cache is left, and so is the file.
        assert!(outside.is_file() && a.join("w4").is_file());
        // Now nothing else links to `shared`: evicting b frees it, unless it is kept.
        let b = repo.join("snapshots/b");
        let kept = [b.join("w3")];
        let freed = weights(&[b.join("w2"), b.join("w3")])
            .evict_weights(&cache, &kept)
            .unwrap();
        assert_eq!(freed, 5);
        assert!(!repo.join("blobs/shared").exists());
        assert!(repo.join("blobs/three").is_file() && b.join("w3").is_file());
    }
}
