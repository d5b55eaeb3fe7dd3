//! Whole-repo operations built from the primitives: upload a local folder as one commit
//! (`hub import`), and copy a repo's head from one Hub to another (`hub mirror`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt as _;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use super::commit::git_blob_id;
use super::error::{HubError, redact};
use super::{
    CommitInfo, CommitOperation, CommitOptions, HubClient, LfsObject, LfsSource, PreuploadFile,
    Repo, UploadOutcome,
};

/// What a folder upload or a mirror did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderUpload {
    /// The commit, or `None` when every file was already there unchanged.
    pub commit: Option<CommitInfo>,
    /// Files added or replaced.
    pub changed: usize,
    /// Files already identical on the Hub (left out of the commit).
    pub unchanged: usize,
    /// LFS objects transferred.
    pub lfs_uploaded: usize,
    /// LFS objects the Hub already had.
    pub lfs_skipped: usize,
    /// Files deleted (mirror only: present on the target, absent from the source).
    pub deleted: usize,
}

/// What `mirror` did, and from which source commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorReport {
    /// The source commit that was copied.
    pub source_commit: String,
    /// The upload to the target.
    pub upload: FolderUpload,
}

/// A file to send: its path in the repo, and its content in memory or on disk.
struct Candidate {
    path: String,
    size: u64,
    sample: Bytes,
    source: LfsSource,
    /// Known sha256 (mirror gets it from the source tree), else computed when needed.
    sha256: Option<String>,
}

impl HubClient {
    /// Uploads every file under `dir` (skipping `.git/` and `.cache/`) to `revision` of `repo`
    /// in one commit: preupload decides LFS or regular, LFS objects are uploaded from the files
    /// part by part, unchanged files are left out, and no commit is made if nothing changed.
    pub async fn upload_folder(
        &self,
        repo: &Repo,
        revision: &str,
        dir: &Path,
        summary: &str,
    ) -> Result<FolderUpload, HubError> {
        let mut candidates = Vec::new();
        for (path, file) in walk(dir)? {
            let io = |source| HubError::Io {
                path: file.clone(),
                source,
            };
            let size = fs_err::metadata(&file).map_err(io)?.len();
            let sample = read_prefix(&file, 512).map_err(io)?;
            candidates.push(Candidate {
                path,
                size,
                sample,
                source: LfsSource::File(file),
                sha256: None,
            });
        }
        self.push_candidates(repo, revision, candidates, Vec::new(), summary)
            .await
    }

    async fn push_candidates(
        &self,
        repo: &Repo,
        revision: &str,
        candidates: Vec<Candidate>,
        deletions: Vec<String>,
        summary: &str,
    ) -> Result<FolderUpload, HubError> {
        let files: Vec<PreuploadFile> = candidates
            .iter()
            .map(|c| PreuploadFile {
                path: c.path.clone(),
                size: c.size,
                sample: c.sample.clone(),
            })
            .collect();
        let answers = self.preupload(repo, revision, &files).await?;
        let mut report = FolderUpload {
            commit: None,
            changed: 0,
            unchanged: 0,
            lfs_uploaded: 0,
            lfs_skipped: 0,
            deleted: deletions.len(),
        };
        let mut operations = Vec::new();
        let mut objects = Vec::new();
        for (candidate, answer) in candidates.into_iter().zip(answers) {
            if answer.should_ignore {
                continue;
            }
            // An empty file is always regular (the official client does the same).
            if answer.is_lfs() && candidate.size > 0 {
                let sha256 = match candidate.sha256 {
                    Some(sha256) => sha256,
                    None => hash_source(&candidate.source).await?,
                };
                if answer.oid.as_deref() == Some(sha256.as_str()) {
                    report.unchanged += 1;
                    continue;
                }
                operations.push(CommitOperation::AddLfs {
                    path: candidate.path.clone(),
                    sha256: sha256.clone(),
                    size: candidate.size,
                });
                objects.push(LfsObject {
                    path: Some(candidate.path),
                    sha256,
                    size: candidate.size,
                    source: candidate.source,
                    xet_chunks: None,
                });
            } else {
                let content = read_all(&candidate.source).await?;
                if answer.oid.as_deref() == Some(git_blob_id(&content).as_str()) {
                    report.unchanged += 1;
                    continue;
                }
                operations.push(CommitOperation::AddRegular {
                    path: candidate.path,
                    content,
                });
            }
            report.changed += 1;
        }
        for outcome in self.upload_lfs_objects(repo, revision, &objects).await? {
            match outcome {
                UploadOutcome::Uploaded => report.lfs_uploaded += 1,
                UploadOutcome::AlreadyPresent => report.lfs_skipped += 1,
            }
        }
        operations.extend(
            deletions
                .into_iter()
                .map(|path| CommitOperation::Delete { path }),
        );
        if !operations.is_empty() {
            let options = CommitOptions {
                summary: summary.to_owned(),
                ..CommitOptions::default()
            };
            report.commit = Some(self.commit(repo, revision, &operations, &options).await?);
        }
        Ok(report)
    }

    /// Copies the head of `revision` of `repo` from the Hub `source` to this one (created if
    /// missing): the target branch ends up with exactly the source's files. LFS objects are
    /// streamed through temp files in `scratch` (checked against their sha256) and skipped when
    /// the target already has them.
    pub async fn mirror_from(
        &self,
        source: &HubClient,
        repo: &Repo,
        revision: &str,
        scratch: &Path,
    ) -> Result<MirrorReport, HubError> {
        let info = source.repo_info(repo, revision).await?;
        let source_files: BTreeMap<String, super::PathInfo> = source
            .list_tree(repo, &info.sha, "", true)
            .await?
            .into_iter()
            .filter(|e| e.is_file())
            .map(|e| (e.path.clone(), e))
            .collect();
        self.create_repo(repo, info.private, true).await?;
        let target_files = self.list_tree(repo, revision, "", true).await?;
        let deletions: Vec<String> = target_files
            .iter()
            .filter(|e| e.is_file() && !source_files.contains_key(&e.path))
            .map(|e| e.path.clone())
            .collect();
        let mut candidates = Vec::new();
        let mut temp_files = Vec::new();
        for entry in source_files.values() {
            let candidate = match &entry.lfs {
                Some(lfs) => {
                    let temp = scratch.join(format!(
                        "hubsweep-mirror-{}-{:016x}",
                        lfs.oid,
                        rand::random::<u64>()
                    ));
                    temp_files.push(temp.clone());
                    source
                        .download_to_file(repo, &info.sha, &entry.path, &temp, &lfs.oid)
                        .await?;
                    let sample = read_prefix(&temp, 512).map_err(|source| HubError::Io {
                        path: temp.clone(),
                        source,
                    })?;
                    Candidate {
                        path: entry.path.clone(),
                        size: lfs.size,
                        sample,
                        source: LfsSource::File(temp),
                        sha256: Some(lfs.oid.clone()),
                    }
                }
                None => {
                    let content = source.download_bytes(repo, &info.sha, &entry.path).await?;
                    let sample = content.slice(..content.len().min(512));
                    Candidate {
                        path: entry.path.clone(),
                        size: content.len() as u64,
                        sample,
                        source: LfsSource::Bytes(content),
                        sha256: None,
                    }
                }
            };
            candidates.push(candidate);
        }
        let summary = format!("Mirror {}@{} from {}", repo.id, info.sha, source.endpoint());
        let result = self
            .push_candidates(repo, revision, candidates, deletions, &summary)
            .await;
        for temp in temp_files {
            let _ = fs_err::remove_file(temp);
        }
        Ok(MirrorReport {
            source_commit: info.sha,
            upload: result?,
        })
    }

    /// Streams a file to `target`, checking its sha256.
    async fn download_to_file(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
        target: &Path,
        sha256: &str,
    ) -> Result<(), HubError> {
        let metadata = self.file_metadata(repo, revision, path).await?;
        let location = metadata.location;
        let response = self.get_file_at(&location, 0).await?;
        let io = |source| HubError::Io {
            path: target.to_owned(),
            source,
        };
        let mut file =
            tokio::io::BufWriter::new(tokio::fs::File::create(target).await.map_err(io)?);
        let mut hasher = sha2::Sha256::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| HubError::Transport {
                url: redact(&location),
                source: source.without_url(),
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        let digest = hex::encode(hasher.finalize());
        if digest != sha256 {
            return Err(HubError::InvalidResponse {
                url: redact(&location),
                reason: format!("downloaded sha256 `{digest}` is not `{sha256}`"),
            });
        }
        Ok(())
    }
}

/// Every file under `dir` as (repo path with `/`, local path), sorted, skipping `.git/` and
/// `.cache/` (where the Python client keeps upload state).
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, HubError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        let io = |source| HubError::Io {
            path: folder.clone(),
            source,
        };
        for entry in fs_err::read_dir(&folder).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(io)?;
            let name = entry.file_name();
            if file_type.is_dir() {
                if name != ".git" && name != ".cache" {
                    stack.push(path);
                }
            } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
                let relative = path.strip_prefix(dir).expect("walked below dir");
                let parts: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((parts.join("/"), path));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_prefix(path: &Path, length: usize) -> std::io::Result<Bytes> {
    use std::io::Read as _;
    let mut buffer = Vec::with_capacity(length);
    fs_err::File::open(path)?
        .take(length as u64)
        .read_to_end(&mut buffer)?;
    Ok(Bytes::from(buffer))
}

async fn read_all(source: &LfsSource) -> Result<Bytes, HubError> {
    match source {
        LfsSource::Bytes(bytes) => Ok(bytes.clone()),
        LfsSource::File(path) => tokio::fs::read(path)
            .await
            .map(Bytes::from)
            .map_err(|source| HubError::Io {
                path: path.clone(),
                source,
            }),
    }
}

/// sha256 of a source, off the async threads (files can be many GB).
async fn hash_source(source: &LfsSource) -> Result<String, HubError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || match source {
        LfsSource::Bytes(bytes) => Ok(hex::encode(sha2::Sha256::digest(&bytes))),
        LfsSource::File(path) => {
            let mut hasher = sha2::Sha256::new();
            let mut file = fs_err::File::open(&path).map_err(|e| HubError::Io {
                path: path.clone(),
                source: e,
            })?;
            std::io::copy(&mut file, &mut hasher).map_err(|e| HubError::Io {
                path: path.clone(),
                source: e,
            })?;
            Ok(hex::encode(hasher.finalize()))
        }
    })
    .await
    .expect("hashing task does not panic")
}
