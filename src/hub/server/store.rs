//! The server's on-disk store: content-addressed objects, immutable commit records and one
//! refs file per repo.
//!
//! Layout under the store root:
//!
//! ```text
//! objects/<aa>/<sha256>             file contents (LFS objects and regular files alike)
//! uploads/<sha256>/<part>           multipart parts waiting for completion
//! tmp/                              temp files, renamed into place (same filesystem)
//! repos/<models|datasets>/<ns>/<name>/repo.json        creation time, visibility
//! repos/<models|datasets>/<ns>/<name>/commits/<id>.json one immutable record per commit
//! repos/<models|datasets>/<ns>/<name>/refs.json        branches, tags, pull requests
//! xet/…                             Xet xorbs, file records and indexes (see `xet::cas`)
//! ```
//!
//! Crash safety: every file is written to `tmp/`, fsynced, renamed into place and its folder
//! fsynced. A commit becomes visible only when `refs.json` is renamed over the old one, which
//! happens after its record and all its objects are durable, so a `kill -9` at any point leaves
//! either the old head or the new one, never a half-visible commit.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use super::paths::{self, DEFAULT_GITATTRIBUTES};
use crate::hub::RepoType;

/// A failure of the store's filesystem layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a store file failed.
    #[error("store i/o failed")]
    Io(#[from] std::io::Error),
    /// A store record could not be parsed (the store was edited by hand or is corrupt).
    #[error("store record `{path}` is corrupt")]
    Corrupt {
        /// The record's path.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// One file in a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size of the content in bytes.
    pub size: u64,
    /// sha256 of the content: the object's name in `objects/`, and the LFS oid.
    pub sha256: String,
    /// Whether the file is stored as an LFS pointer (answers with `lfs` and a redirect).
    pub lfs: bool,
    /// The git blob id the Hub reports: of the content for regular files, of the pointer for
    /// LFS files.
    pub git_oid: String,
}

/// One immutable commit: its parents, message and full file tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRecord {
    /// 40-hex id (sha1 of the record without this field).
    pub id: String,
    /// Parent commit ids (empty for the initial commit).
    pub parents: Vec<String>,
    /// First line of the message.
    pub title: String,
    /// The rest of the message.
    pub message: String,
    /// Author name.
    pub author: String,
    /// Unix seconds.
    pub time: u64,
    /// Every file of the tree, by path.
    pub files: BTreeMap<String, FileEntry>,
}

/// The mutable part of a repo: where each branch, tag and pull request points.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Refs {
    /// Branch name → commit id.
    pub branches: BTreeMap<String, String>,
    /// Tag name → commit id.
    pub tags: BTreeMap<String, String>,
    /// Pull request number → commit id (`refs/pr/N`).
    pub pull_requests: BTreeMap<u64, String>,
}

/// What a repo is, besides its refs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoMeta {
    /// Unix seconds of creation.
    pub created: u64,
    /// Visibility flag as the client asked for it (reads are not restricted by it).
    pub private: bool,
}

/// A repo address inside the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoKey {
    /// Model or dataset.
    pub kind: RepoType,
    /// Namespace (user or organisation).
    pub namespace: String,
    /// Repo name.
    pub name: String,
}

impl RepoKey {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A resolved revision: the ref it names (if any) and its commit.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The commit id.
    pub commit: String,
}

/// What deleting a repo freed in `objects/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freed {
    /// Objects removed.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The store rooted at one directory. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    temp_counter: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) a store at `root`, removing temp files a crash left behind.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["objects", "uploads", "tmp", "repos"] {
            fs_err::create_dir_all(root.join(sub))?;
        }
        for entry in fs_err::read_dir(root.join("tmp"))? {
            let entry = entry?;
            let _ = fs_err::remove_file(entry.path());
        }
        Ok(Self {
            root: root.to_owned(),
            temp_counter: AtomicU64::new(0),
        })
    }

    /// A fresh temp file path on the store's filesystem.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!(
            "{}-{n}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    /// The store's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `bytes` to `target` crash-safe (temp file, fsync, rename, fsync of the folder),
    /// creating the folder if needed.
    pub fn write_file_atomic(&self, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        fs_err::create_dir_all(target.parent().expect("store files live in a folder"))?;
        write_atomic(self, target, bytes)
    }

    fn repo_dir(&self, key: &RepoKey) -> PathBuf {
        self.root
            .join("repos")
            .join(key.kind.api_plural())
            .join(&key.namespace)
            .join(&key.name)
    }

    /// Where the object with this sha256 lives (whether or not it exists).
    pub fn object_path(&self, sha256: &str) -> PathBuf {
        self.root.join("objects").join(&sha256[..2]).join(sha256)
    }

    /// The size of a stored object, if it exists: a file in `objects/`, or a file stored as
    /// Xet xorbs (see `xet::cas`).
    pub fn object_size(&self, sha256: &str) -> Option<u64> {
        std::fs::metadata(self.object_path(sha256))
            .ok()
            .map(|m| m.len())
            .or_else(|| super::xet::cas::record_of_sha256(self, sha256).map(|r| r.size))
    }

    /// The folder holding the parts of a multipart upload.
    pub fn upload_dir(&self, sha256: &str) -> PathBuf {
        self.root.join("uploads").join(sha256)
    }

    /// Moves a complete, verified temp file into `objects/` (durably). A concurrent upload of the
    /// same object is harmless: both have the same bytes, the last rename wins.
    pub fn install_object(&self, temp: &Path, sha256: &str) -> Result<(), StoreError> {
        let target = self.object_path(sha256);
        let folder = target.parent().expect("object path has a parent");
        fs_err::create_dir_all(folder)?;
        fs_err::File::open(temp)?.sync_all()?;
        fs_err::rename(temp, &target)?;
        sync_dir(folder)?;
        Ok(())
    }

    /// Stores bytes as an object (for regular files that arrive inline in a commit).
    pub fn put_object_bytes(&self, sha256: &str, content: &[u8]) -> Result<(), StoreError> {
        if self.object_size(sha256) == Some(content.len() as u64) {
            return Ok(());
        }
        let temp = self.temp_path();
        let mut file = fs_err::File::create(&temp)?;
        file.write_all(content)?;
        drop(file);
        self.install_object(&temp, sha256)
    }

    /// Stores bytes as an object without making it durable yet (a commit's inline files, many
    /// at a time): [`Store::sync_objects`] does that for all of them before the commit that
    /// refers to them is written. Returns whether the object was new.
    pub fn put_object_unsynced(&self, sha256: &str, content: &[u8]) -> Result<bool, StoreError> {
        if self.object_size(sha256) == Some(content.len() as u64) {
            return Ok(false);
        }
        let target = self.object_path(sha256);
        fs_err::create_dir_all(target.parent().expect("object path has a parent"))?;
        let temp = self.temp_path();
        fs_err::write(&temp, content)?;
        fs_err::rename(&temp, &target)?;
        Ok(true)
    }

    /// Makes objects written by [`Store::put_object_unsynced`] durable: one `syncfs` of the
    /// store's filesystem where the platform has it, else an fsync per object and folder.
    pub fn sync_objects(&self, sha256s: &[String]) -> Result<(), StoreError> {
        if sha256s.is_empty() || super::disk::sync_filesystem(&self.root)? {
            return Ok(());
        }
        let mut folders = std::collections::BTreeSet::new();
        for sha256 in sha256s {
            let path = self.object_path(sha256);
            fs_err::File::open(&path)?.sync_all()?;
            folders.insert(path.parent().expect("object path has a parent").to_owned());
        }
        for folder in folders {
            sync_dir(&folder)?;
        }
        Ok(())
    }

    /// Bytes that can still be written to the store's disk (`None`: the platform does not say).
    pub fn available_bytes(&self) -> Option<u64> {
        super::disk::available_bytes(&self.root)
    }

    /// Reads a whole object (only used for small regular files such as `.gitattributes`).
    pub fn read_object(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        Ok(fs_err::read(self.object_path(sha256))?)
    }

    /// Whether the repo exists.
    pub fn repo_exists(&self, key: &RepoKey) -> bool {
        self.repo_dir(key).join("refs.json").is_file()
    }

    /// Creates a repo with an initial commit holding the default `.gitattributes`. Returns
    /// `None` if it already exists. The caller holds the repo's lock.
    pub fn create_repo(
        &self,
        key: &RepoKey,
        private: bool,
    ) -> Result<Option<CommitRecord>, StoreError> {
        if self.repo_exists(key) {
            return Ok(None);
        }
        let dir = self.repo_dir(key);
        fs_err::create_dir_all(dir.join("commits"))?;
        let now = paths::unix_now();
        write_atomic(
            self,
            &dir.join("repo.json"),
            &serde_json::to_vec(&RepoMeta {
                created: now,
                private,
            })?,
        )?;
        let content = DEFAULT_GITATTRIBUTES.as_bytes();
        let sha256 = sha256_hex(content);
        self.put_object_bytes(&sha256, content)?;
        let entry = FileEntry {
            size: content.len() as u64,
            sha256,
            lfs: false,
            git_oid: paths::git_blob_id(content),
        };
        let commit = CommitRecord::new(
            Vec::new(),
            "initial commit".to_owned(),
            String::new(),
            BTreeMap::from([(".gitattributes".to_owned(), entry)]),
        );
        self.write_commit(key, &commit)?;
        let refs = Refs {
            branches: BTreeMap::from([("main".to_owned(), commit.id.clone())]),
            ..Refs::default()
        };
        // refs.json last: the repo exists only once its first commit is durable.
        self.write_refs(key, &refs)?;
        Ok(Some(commit))
    }

    /// The repo's metadata.
    pub fn repo_meta(&self, key: &RepoKey) -> Result<RepoMeta, StoreError> {
        read_json(&self.repo_dir(key).join("repo.json"))
    }

    /// The repo's refs.
    pub fn refs(&self, key: &RepoKey) -> Result<Refs, StoreError> {
        read_json(&self.repo_dir(key).join("refs.json"))
    }

    /// Replaces the repo's refs atomically. The caller holds the repo's lock.
    pub fn write_refs(&self, key: &RepoKey, refs: &Refs) -> Result<(), StoreError> {
        write_atomic(
            self,
            &self.repo_dir(key).join("refs.json"),
            &serde_json::to_vec_pretty(refs)?,
        )
    }

    /// Writes a commit record durably (not yet visible: no ref points at it).
    pub fn write_commit(&self, key: &RepoKey, commit: &CommitRecord) -> Result<(), StoreError> {
        let path = self
            .repo_dir(key)
            .join("commits")
            .join(format!("{}.json", commit.id));
        write_atomic(self, &path, &serde_json::to_vec(commit)?)
    }

    /// Reads a commit record, `None` if there is none with that id.
    pub fn commit(&self, key: &RepoKey, id: &str) -> Result<Option<CommitRecord>, StoreError> {
        if !paths::is_commit_id(id) {
            return Ok(None);
        }
        let path = self
            .repo_dir(key)
            .join("commits")
            .join(format!("{id}.json"));
        if !path.is_file() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// The commit a named revision points at: a branch, a tag, `refs/heads/B`, `refs/tags/T`
    /// or `refs/pr/N` (a commit id is not a name; see [`Store::resolve`]).
    pub fn resolve_named(
        &self,
        key: &RepoKey,
        revision: &str,
    ) -> Result<Option<String>, StoreError> {
        let refs = self.refs(key)?;
        let named = if let Some(branch) = revision.strip_prefix("refs/heads/") {
            refs.branches.get(branch)
        } else if let Some(tag) = revision.strip_prefix("refs/tags/") {
            refs.tags.get(tag)
        } else if let Some(number) = revision.strip_prefix("refs/pr/") {
            number
                .parse::<u64>()
                .ok()
                .and_then(|n| refs.pull_requests.get(&n))
        } else {
            refs.branches
                .get(revision)
                .or_else(|| refs.tags.get(revision))
        };
        Ok(named.cloned())
    }

    /// Resolves a revision: a name ([`Store::resolve_named`]) or a full commit id of this repo.
    pub fn resolve(&self, key: &RepoKey, revision: &str) -> Result<Option<Resolved>, StoreError> {
        if let Some(commit) = self.resolve_named(key, revision)? {
            return Ok(Some(Resolved { commit }));
        }
        Ok(self
            .commit(key, revision)?
            .map(|c| Resolved { commit: c.id }))
    }

    /// Deletes a repo, then the objects that no commit of any other repo references (objects
    /// are content-addressed and shared between repos, so only those are its own) — files in
    /// `objects/`, and files stored through Xet with the xorbs no other file uses. The caller
    /// holds the repo's lock.
    ///
    /// `refs.json` goes first: from then on the repo does not exist for any request, and a crash
    /// part-way leaves only unreachable files (whose commits still count as references, so a
    /// crash never frees an object another repo needs). An object uploaded for a commit another
    /// writer has not made yet is referenced by no commit: deleting a repo while another writer
    /// on the same store is between its upload and its commit can free it under that writer
    /// (its commit is then refused with 422, the object never uploaded).
    pub fn delete_repo(&self, key: &RepoKey) -> Result<Freed, StoreError> {
        let dir = self.repo_dir(key);
        let mut ours = std::collections::HashSet::new();
        collect_objects(&dir.join("commits"), &mut ours)?;
        fs_err::remove_file(dir.join("refs.json"))?;
        sync_dir(&dir)?;
        fs_err::remove_dir_all(&dir)?;
        let mut others = std::collections::HashSet::new();
        for kind in [RepoType::Model, RepoType::Dataset] {
            let kind_dir = self.root.join("repos").join(kind.api_plural());
            for namespace in read_dir_or_empty(&kind_dir)? {
                for repo in read_dir_or_empty(&namespace)? {
                    collect_objects(&repo.join("commits"), &mut others)?;
                }
            }
        }
        let mut freed = Freed::default();
        let unreferenced: Vec<&str> = ours.difference(&others).map(String::as_str).collect();
        for sha256 in &unreferenced {
            let path = self.object_path(sha256);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if std::fs::remove_file(&path).is_ok() {
                freed.objects += 1;
                freed.bytes += meta.len();
            }
        }
        // Files stored through Xet: their records, and the xorbs only they used.
        let (files, bytes) =
            super::xet::cas::forget_files(self, &unreferenced).map_err(|e| match e {
                super::xet::cas::CasError::Store(e) => e,
                other => StoreError::Io(std::io::Error::other(other.to_string())),
            })?;
        freed.objects += files;
        freed.bytes += bytes;
        Ok(freed)
    }

    /// The first-parent history from `head`, newest first.
    pub fn history(&self, key: &RepoKey, head: &str) -> Result<Vec<CommitRecord>, StoreError> {
        let mut out = Vec::new();
        let mut next = Some(head.to_owned());
        while let Some(id) = next {
            let Some(commit) = self.commit(key, &id)? else {
                break;
            };
            next = commit.parents.first().cloned();
            out.push(commit);
        }
        Ok(out)
    }
}

impl CommitRecord {
    /// A record whose id is derived from its content: the sha1 of its parents, message, author
    /// and tree, not of its time. Importing the same files with the same message onto the same
    /// parent gives the same commit on every machine and every time (a repo's first commit is
    /// the same everywhere too), so node ids pinned to an imported model agree between homes.
    /// Two commits can only share an id if they have the same parent and the same content, and
    /// then they are the same commit (as two git commits with the same date would be).
    pub fn new(
        parents: Vec<String>,
        title: String,
        message: String,
        files: BTreeMap<String, FileEntry>,
    ) -> Self {
        let author = "hubsweep".to_owned();
        let content = serde_json::to_vec(&(&parents, &title, &message, &author, &files))
            .expect("commit content serializes");
        Self {
            id: hex::encode(Sha1::digest(&content)),
            parents,
            title,
            message,
            author,
            time: paths::unix_now(),
            files,
        }
    }
}

/// sha256 in lowercase hex.
pub fn sha256_hex(content: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(content))
}

/// The entries of a folder, none if it does not exist.
pub(crate) fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(fs_err::read_dir(dir).err().map_or(e, Into::into).into()),
    }
}

/// Adds the object of every file of every commit record in `commits` to `into`.
fn collect_objects(
    commits: &Path,
    into: &mut std::collections::HashSet<String>,
) -> Result<(), StoreError> {
    for path in read_dir_or_empty(commits)? {
        if path.extension().is_some_and(|e| e == "json") {
            let commit: CommitRecord = read_json(&path)?;
            into.extend(commit.files.into_values().map(|f| f.sha256));
        }
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs_err::read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    })
}

impl From<serde_json::Error> for StoreError {
    fn from(source: serde_json::Error) -> Self {
        StoreError::Io(std::io::Error::other(source))
    }
}

/// temp file → fsync → rename → fsync folder: the crash-safe write every store file goes
/// through.
fn write_atomic(store: &Store, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = store.temp_path();
    let mut file = fs_err::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs_err::rename(&temp, target)?;
    sync_dir(target.parent().expect("store files live in a folder"))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // Directories can be opened read-only and fsynced on Unix; that makes the rename durable.
    fs_err::File::open(dir)?.sync_all()?;
    Ok(())
}
