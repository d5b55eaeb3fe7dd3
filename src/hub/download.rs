//! Downloads of Hub files (model checkpoints, tokenizers, dataset files) into the standard HF
//! cache shared with Python: `{models|datasets}--{ns}--{name}/` with `blobs/{etag}`,
//! `snapshots/{commit}/{path}` (a relative link to the blob) and `refs/{revision}` (the commit a
//! branch or tag resolved to), locked per blob at `.locks/{repo folder}/{etag}.lock` as
//! `huggingface_hub` locks it, so both can fill one cache at the same time.
//!
//! Every request goes through [`HubClient`], so the token goes where the client sends it and
//! nowhere else: to the configured endpoint's origin, never to the storage an LFS file redirects
//! to, nor to any hop after a redirect left that origin (`docs/hub.md`, "Tokens").
//!
//! Every setting is explicit ([`HubSource`]): the CLI reads `HF_ENDPOINT`, `HF_TOKEN`,
//! `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` and passes them here.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::client::{HubClient, HubError, Repo};
use super::{RepoId, RepoType, Token};

/// A Hub to download from: its endpoint, the token for it (masked in `Debug`), the HF cache
/// downloads go to and are reused from, and whether the network may be used at all. The one
/// settings type of every download (models, weights, tokenizers, dataset files,
/// `hub download`).
#[derive(Clone)]
pub struct HubSource {
    /// Base URL, e.g. `https://huggingface.co` or the embedded server's URL.
    pub endpoint: String,
    /// Token for gated or private repos, sent only to `endpoint`'s origin.
    pub token: Option<Token>,
    /// The HF hub cache folder (`$HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Never touch the network: answer from the cache or fail.
    pub offline: bool,
    /// Offer the `xet` transfer when uploading to this hub (`HF_HUB_DISABLE_XET` unset).
    pub xet: bool,
}

impl fmt::Debug for HubSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSource")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "****"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("xet", &self.xet)
            .finish()
    }
}

/// Why a download failed. Repos are named as the Hub's URLs name them (`ns/name` for a model,
/// `datasets/ns/name` for a dataset).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The endpoint is not a usable URL.
    #[error("cannot use the Hub endpoint `{endpoint}`")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: HubError,
    },
    /// The repo id is not `namespace/name`.
    #[error("`{repo}` is not a repo id `namespace/name`")]
    InvalidRepo {
        /// What was given.
        repo: String,
    },
    /// The Hub refused or failed (no such repo, revision or file; network; bad answer).
    #[error("cannot download `{path}` of `{repo}` at `{revision}` from `{endpoint}`")]
    Hub {
        /// Repo.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// File path.
        path: String,
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: Box<HubError>,
    },
    /// The bytes that came are not the file the Hub described.
    #[error("`{path}` of `{repo}` at `{revision}` from `{endpoint}` arrived damaged: {reason}")]
    Damaged {
        /// Repo.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// File path.
        path: String,
        /// The endpoint.
        endpoint: String,
        /// What did not match.
        reason: String,
    },
    /// Offline and the file is not in the cache.
    #[error(
        "`{path}` of `{repo}` at `{revision}` is not in the cache and downloads are off (offline)"
    )]
    NotCached {
        /// Repo.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// File path.
        path: String,
    },
    /// The cache could not be written (or its lock taken).
    #[error("cannot write `{}` in the HF cache{}", path.display(), disk_full_hint(source))]
    Cache {
        /// The path.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether the disk holding the cache is full (a failure the user fixes by freeing space).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::Cache { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// What to do when the disk holding the HF cache is full.
fn disk_full_hint(source: &std::io::Error) -> &'static str {
    if source.kind() == std::io::ErrorKind::StorageFull {
        ": the disk holding the HF cache is full (free space there, point `HF_HUB_CACHE` at a larger disk, or run with `--evict-models` so each model's weights leave once it is done)"
    } else {
        ""
    }
}

/// `namespace/name` as a repo of `kind`.
pub fn parse_repo(kind: RepoType, repo: &str) -> Result<Repo, DownloadError> {
    let id = repo
        .parse::<RepoId>()
        .map_err(|_| DownloadError::InvalidRepo {
            repo: repo.to_owned(),
        })?;
    Ok(Repo { kind, id })
}

/// A repo as the Hub's URLs name it.
fn repo_name(repo: &Repo) -> String {
    format!("{}{}", repo.kind.git_prefix(), repo.id)
}

/// How long a download waits for the server (to connect, between two reads) before it fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the body of one file is fetched again after it broke off midway.
const BODY_ATTEMPTS: u32 = 3;
/// How often a held lock is tried again.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// Downloads files into the HF cache; cache-first, like `hf_hub_download`.
pub struct Downloader {
    source: HubSource,
    client: HubClient,
}

impl fmt::Debug for Downloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Downloader")
            .field("source", &self.source)
            .finish()
    }
}

impl Downloader {
    /// A downloader for `source`.
    pub fn new(source: HubSource) -> Result<Self, DownloadError> {
        let endpoint_err = |e| DownloadError::Endpoint {
            endpoint: source.endpoint.clone(),
            source: e,
        };
        let client = HubClient::builder(&source.endpoint)
            .map_err(endpoint_err)?
            .token(source.token.clone())
            .xet(source.xet)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(endpoint_err)?;
        Ok(Self { source, client })
    }

    /// The settings this downloader uses.
    pub fn source(&self) -> &HubSource {
        &self.source
    }

    /// The cached copy of `path` in `repo` at `revision` (a commit id, or a branch or tag the
    /// cache has a ref for), if there is one.
    pub fn cached(&self, repo: &Repo, revision: &str, path: &str) -> Option<PathBuf> {
        let cache = CacheRepo::new(&self.source.cache_dir, repo);
        let commit = cache.commit_of(revision)?;
        let pointer = cache.snapshot(&commit).join(path);
        pointer.is_file().then_some(pointer)
    }

    /// The local path of `path` in `repo` at `revision`: from the cache if it is there, else
    /// downloaded (unless offline). A download of the same file by another process (or task)
    /// holding its lock is waited for, however long it takes: the lock is an `flock`, which
    /// dies with its holder, so a held lock is a live download.
    pub async fn get(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
    ) -> Result<PathBuf, DownloadError> {
        if let Some(cached) = self.cached(repo, revision, path) {
            return Ok(cached);
        }
        if self.source.offline {
            return Err(DownloadError::NotCached {
                repo: repo_name(repo),
                revision: revision.to_owned(),
                path: path.to_owned(),
            });
        }
        let hub_err = |source| DownloadError::Hub {
            repo: repo_name(repo),
            revision: revision.to_owned(),
            path: path.to_owned(),
            endpoint: self.source.endpoint.clone(),
            source: Box::new(source),
        };
        let metadata = self
            .client
            .file_metadata(repo, revision, path)
            .await
            .map_err(hub_err)?;
        let cache = CacheRepo::new(&self.source.cache_dir, repo);
        let blob = cache.blob(&metadata.etag);
        if !blob.is_file() {
            let lock = cache.lock(&metadata.etag).await?;
            // Whoever held the lock before may have brought the blob meanwhile.
            if !blob.is_file() {
                self.fetch_blob(repo, revision, path, &metadata.commit, &blob)
                    .await?;
            }
            drop(lock);
        }
        let pointer = cache.snapshot(&metadata.commit).join(path);
        link(&blob, &pointer, path)?;
        if revision != metadata.commit {
            cache.write_ref(revision, &metadata.commit)?;
        }
        Ok(pointer)
    }

    /// Brings `path` (at `commit`, so that a branch moving meanwhile cannot mix two files) into
    /// `blob` through `blob.incomplete`, checking its size and, for an LFS file (whose etag is
    /// its sha256), its hash. A `.incomplete` file left by a download cut short (ours or the
    /// Python client's: both write it under the same lock) is resumed; if the whole then does
    /// not check out, the file is fetched once more from its first byte.
    async fn fetch_blob(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
        commit: &str,
        blob: &Path,
    ) -> Result<(), DownloadError> {
        let incomplete = with_suffix(blob, ".incomplete");
        create_parent(blob).map_err(|source| DownloadError::Cache {
            path: blob.to_path_buf(),
            source,
        })?;
        let mut attempt = 0;
        let mut resume = true;
        loop {
            attempt += 1;
            let failure = match self
                .stream_into(repo, commit, path, &incomplete, resume)
                .await
            {
                Ok(()) => break,
                Err(failure) => failure,
            };
            match failure {
                // A body that broke off midway goes on where it stopped; the client already
                // retried the request itself.
                Fetch::Hub(HubError::Transport { .. }) if attempt < BODY_ATTEMPTS => {}
                Fetch::Damaged { resumed: true, .. } if attempt < BODY_ATTEMPTS => resume = false,
                Fetch::Hub(source) => {
                    return Err(DownloadError::Hub {
                        repo: repo_name(repo),
                        revision: revision.to_owned(),
                        path: path.to_owned(),
                        endpoint: self.source.endpoint.clone(),
                        source: Box::new(source),
                    });
                }
                Fetch::Damaged { reason, .. } => {
                    let _ = std::fs::remove_file(&incomplete);
                    return Err(DownloadError::Damaged {
                        repo: repo_name(repo),
                        revision: revision.to_owned(),
                        path: path.to_owned(),
                        endpoint: self.source.endpoint.clone(),
                        reason,
                    });
                }
                Fetch::Cache(source) => {
                    return Err(DownloadError::Cache {
                        path: incomplete,
                        source,
                    });
                }
            }
        }
        std::fs::rename(&incomplete, blob).map_err(|source| DownloadError::Cache {
            path: blob.to_path_buf(),
            source,
        })
    }

    /// One attempt: the file's bytes into `into`, after what it holds already when `resume`
    /// (and the server sends the rest), else from the first byte; then checked.
    async fn stream_into(
        &self,
        repo: &Repo,
        commit: &str,
        path: &str,
        into: &Path,
        resume: bool,
    ) -> Result<(), Fetch> {
        let have = match std::fs::metadata(into) {
            Ok(meta) if resume => meta.len(),
            _ => 0,
        };
        let mut stream = self
            .client
            .download_stream_from(repo, commit, path, have)
            .await
            .map_err(Fetch::Hub)?;
        let mut hasher = Sha256::new();
        let mut size = stream.offset;
        let file = if stream.offset > 0 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(into)
                .map_err(Fetch::Cache)?;
            let mut head = (&mut file).take(stream.offset);
            std::io::copy(&mut head, &mut HashWriter(&mut hasher)).map_err(Fetch::Cache)?;
            file
        } else {
            std::fs::File::create(into).map_err(Fetch::Cache)?
        };
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        while let Some(chunk) = stream.chunk().await.map_err(Fetch::Hub)? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(Fetch::Cache)?;
        }
        let file = file
            .into_inner()
            .map_err(|e| Fetch::Cache(e.into_error()))?;
        file.sync_all().map_err(Fetch::Cache)?;
        let expected = &stream.metadata;
        let damaged = |reason| Fetch::Damaged {
            reason,
            resumed: stream.offset > 0,
        };
        if size != expected.size {
            return Err(damaged(format!(
                "{size} bytes where the Hub announced {}",
                expected.size
            )));
        }
        let sha256 = hex::encode(hasher.finalize());
        if is_sha256(&expected.etag) && sha256 != expected.etag {
            return Err(damaged(format!(
                "sha256 `{sha256}` where the Hub announced `{}`",
                expected.etag
            )));
        }
        Ok(())
    }
}

/// Feeds what is written to a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What went wrong in one attempt at a file's bytes.
enum Fetch {
    Hub(HubError),
    /// The bytes do not check out; `resumed` if part of them came from an earlier attempt.
    Damaged {
        reason: String,
        resumed: bool,
    },
    Cache(std::io::Error),
}

/// One repo's folder in the HF cache.
struct CacheRepo {
    cache: PathBuf,
    folder: String,
}

impl CacheRepo {
    fn new(cache: &Path, repo: &Repo) -> Self {
        let kind = match repo.kind {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        };
        Self {
            cache: cache.to_path_buf(),
            folder: format!("{kind}--{}", repo.id.to_string().replace('/', "--")),
        }
    }

    fn dir(&self) -> PathBuf {
        self.cache.join(&self.folder)
    }

    /// The commit `revision` names: itself if it is a commit id, else what its ref says.
    fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_id(revision) {
            return Some(revision.to_owned());
        }
        let text = std::fs::read_to_string(self.dir().join("refs").join(revision)).ok()?;
        Some(text.trim().to_owned()).filter(|c| is_commit_id(c))
    }

    fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir().join("snapshots").join(commit)
    }

    fn blob(&self, etag: &str) -> PathBuf {
        self.dir().join("blobs").join(etag)
    }

    /// Takes the blob's lock (where `huggingface_hub` takes it), waiting while another
    /// download holds it.
    async fn lock(&self, etag: &str) -> Result<std::fs::File, DownloadError> {
        let path = self
            .cache
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"));
        let failed = |source| DownloadError::Cache {
            path: path.clone(),
            source,
        };
        create_parent(&path).map_err(failed)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(failed)?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => tokio::time::sleep(LOCK_POLL).await,
                Err(std::fs::TryLockError::Error(source)) => return Err(failed(source)),
            }
        }
    }

    /// `refs/{revision}` ← `commit` (written whole, then renamed into place).
    fn write_ref(&self, revision: &str, commit: &str) -> Result<(), DownloadError> {
        let path = self.dir().join("refs").join(revision);
        let failed = |source| DownloadError::Cache {
            path: path.clone(),
            source,
        };
        if std::fs::read_to_string(&path).is_ok_and(|text| text.trim() == commit) {
            return Ok(());
        }
        create_parent(&path).map_err(failed)?;
        let temp = with_suffix(&path, &format!(".{}.tmp", std::process::id()));
        std::fs::write(&temp, commit).map_err(failed)?;
        std::fs::rename(&temp, &path).map_err(failed)
    }
}

/// Links the snapshot entry `pointer` (of repo path `path`) to `blob`, relatively, as Python
/// does (`../../blobs/{etag}`, one more `..` per folder in `path`).
fn link(blob: &Path, pointer: &Path, path: &str) -> Result<(), DownloadError> {
    let failed = |source| DownloadError::Cache {
        path: pointer.to_path_buf(),
        source,
    };
    if pointer.is_file() {
        return Ok(());
    }
    create_parent(pointer).map_err(failed)?;
    let mut target = PathBuf::new();
    for _ in 0..Path::new(path).components().count() + 1 {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    // A dangling entry (its blob evicted) is replaced.
    if pointer.symlink_metadata().is_ok() {
        std::fs::remove_file(pointer).map_err(failed)?;
    }
    match std::os::unix::fs::symlink(&target, pointer) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && pointer.is_file() => Ok(()),
        other => other.map_err(failed),
    }
}

fn create_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut text = path.as_os_str().to_owned();
    text.push(suffix);
    PathBuf::from(text)
}

/// A 40-hex commit id.
pub(crate) fn is_commit_id(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}
