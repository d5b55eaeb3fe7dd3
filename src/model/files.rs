//! Finding a checkpoint's files: a local folder, the standard HF cache layout, or any Hub
//! endpoint through [`Downloader`] (which fills that same cache); and deleting downloaded
//! weights from that cache again.
//!
//! The cache layout is `models--{ns}--{name}/refs/{revision}` (a commit sha) and
//! `models--{ns}--{name}/snapshots/{sha}/{file}`, as `huggingface_hub` writes it.

use std::path::{Path, PathBuf};

use super::ModelError;
use super::weights::shards_from_index;
use crate::hub::RepoType;
use crate::hub::client::Repo;
use crate::hub::download::{Downloader, HubSource, is_commit_id, parse_repo};

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
        let commit = if is_commit_id(revision) {
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
        let (downloader, hub_repo) = open(source, repo)?;
        let get = |at: &str, file: &'static str| {
            let at = at.to_owned();
            let (downloader, hub_repo) = (&downloader, &hub_repo);
            async move { downloader.get(hub_repo, &at, file).await }
        };
        let config = get(revision, CONFIG).await.map_err(download_err)?;
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        let commit = dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_commit_id(n))
            .map(str::to_string);
        // The rest comes from the commit the config came from, even if the branch moves.
        let at = commit.as_deref().unwrap_or(revision);
        let weights = if dir.join(SINGLE).is_file() {
            vec![dir.join(SINGLE)]
        } else if dir.join(INDEX).is_file() {
            shards_from_index(&dir.join(INDEX))?
        } else {
            match get(at, INDEX).await {
                Ok(index) => shards_from_index(&index)?,
                // No index on the Hub (or none readable): one file, whose download reports
                // what is wrong if it is missing too.
                Err(_) => vec![dir.join(SINGLE)],
            }
        };
        let tokenizer = get(at, TOKENIZER).await.ok();
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
    /// downloaded (none when all were there). A file another download (this run's next model,
    /// or another worker on a shared cache) is bringing is waited for.
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
        let (downloader, hub_repo) = open(source, repo)?;
        let mut fetched = Vec::with_capacity(missing.len());
        for path in missing {
            let name = path
                .strip_prefix(&self.dir)
                .ok()
                .and_then(Path::to_str)
                .unwrap_or_default();
            let got = downloader
                .get(&hub_repo, revision, name)
                .await
                .map_err(download_err)?;
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
    /// another snapshot links to it too), then the entry. Entries that
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
            // Downloads link snapshot entries to content-addressed blobs; a plain file is the
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

/// A downloader for `source` and `repo` as a model repo.
/// Fetches `names` from `folder` (`None`: the root) of model repo `repo` at `revision` into the
/// cache, the first one resolving the revision and the rest taken at the commit it resolved to
/// (so a branch that moves meanwhile cannot mix two commits). Returns the local folder holding
/// them and that commit, when the cache layout shows it.
pub async fn fetch_folder(
    source: &HubSource,
    repo: &str,
    revision: &str,
    folder: Option<&str>,
    names: &[&str],
) -> Result<(PathBuf, Option<String>), ModelError> {
    let (downloader, hub_repo) = open(source, repo)?;
    let path_of = |name: &str| match folder {
        Some(folder) => format!("{}/{name}", folder.trim_end_matches('/')),
        None => name.to_owned(),
    };
    let mut dir = None;
    let mut commit: Option<String> = None;
    for name in names {
        let at = commit.as_deref().unwrap_or(revision);
        let got = downloader
            .get(&hub_repo, at, &path_of(name))
            .await
            .map_err(download_err)?;
        let folder_dir = got.parent().map(Path::to_path_buf).unwrap_or_default();
        if commit.is_none() {
            let mut snapshot = folder_dir.clone();
            for _ in 0..folder.map_or(0, |f| f.trim_end_matches('/').split('/').count()) {
                snapshot.pop();
            }
            commit = snapshot
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| is_commit_id(n))
                .map(str::to_string);
        }
        dir.get_or_insert(folder_dir);
    }
    Ok((dir.unwrap_or_default(), commit))
}

fn open(source: &HubSource, repo: &str) -> Result<(Downloader, Repo), ModelError> {
    let downloader = Downloader::new(source.clone()).map_err(download_err)?;
    let repo = parse_repo(RepoType::Model, repo).map_err(download_err)?;
    Ok((downloader, repo))
}

fn download_err(error: crate::hub::download::DownloadError) -> ModelError {
    ModelError::Download(Box::new(error))
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
        // `one` (3 bytes) goes; `shared` stays for snapshot b, only a's entry goes.
        assert_eq!(freed, 3);
        assert!(!repo.join("blobs/one").exists());
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
