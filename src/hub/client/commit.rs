//! NDJSON commits (docs/hub.md, "Commits") without blind retries.
//!
//! A commit POST whose answer is lost (network error, 5xx) may have landed. Re-sending it could
//! create a duplicate commit or pull request, so the client instead re-reads the head and
//! paths-info: if the branch moved and every operation is reflected, the commit landed; if the
//! branch did not move, it is re-sent with `parentCommit` = the head it saw, so a concurrent
//! writer can never be overwritten by the retry. A 429 is an explicit refusal and is retried
//! after the server's wait.

use base64::Engine as _;
use bytes::Bytes;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::error::{HubError, redact};
use super::{HubClient, HubEvent, Repo, encode_segment};

/// One change in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOperation {
    /// Add or replace a regular (non-LFS) file, sent inline as base64.
    AddRegular {
        /// Path in the repo.
        path: String,
        /// The content.
        content: Bytes,
    },
    /// Add or replace a file with an LFS object already uploaded.
    AddLfs {
        /// Path in the repo.
        path: String,
        /// sha256 of the object.
        sha256: String,
        /// Size of the object.
        size: u64,
    },
    /// Delete a file.
    Delete {
        /// Path in the repo.
        path: String,
    },
}

impl CommitOperation {
    fn path(&self) -> &str {
        match self {
            CommitOperation::AddRegular { path, .. }
            | CommitOperation::AddLfs { path, .. }
            | CommitOperation::Delete { path } => path,
        }
    }
}

/// Message and safety options of a commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// Commit title.
    pub summary: String,
    /// Commit description.
    pub description: String,
    /// Refuse the commit unless the branch head is this commit (optimistic concurrency).
    pub parent_commit: Option<String>,
    /// Open a pull request (`refs/pr/N`) instead of moving the branch.
    pub create_pr: bool,
}

/// The result of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The new commit id.
    pub commit_oid: String,
    /// The pull request URL, with `create_pr`.
    pub pull_request_url: Option<String>,
    /// Whether the answer was lost and the outcome read back from the Hub.
    pub recovered: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitAnswer {
    commit_oid: String,
    #[serde(default)]
    pull_request_url: Option<String>,
}

impl HubClient {
    /// Commits `operations` to `revision` (a branch, or `refs/pr/N`). LFS objects must have
    /// been uploaded first ([`Self::upload_lfs_objects`]).
    pub async fn commit(
        &self,
        repo: &Repo,
        revision: &str,
        operations: &[CommitOperation],
        options: &CommitOptions,
    ) -> Result<CommitInfo, HubError> {
        let mut url = self.api_url(repo, &format!("/commit/{}", encode_segment(revision)));
        if options.create_pr {
            url.push_str("?create_pr=1");
        }
        // What the Hub looked like before: the baseline to decide whether a lost commit landed.
        let before = self.head(repo, revision).await?;
        let prs_before = if options.create_pr {
            self.pull_request_numbers(repo).await?
        } else {
            Vec::new()
        };
        self.check_online(&url)?;
        let mut parent = options.parent_commit.clone();
        let policy = self.inner.retry.clone();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let body = ndjson(operations, options, parent.as_deref());
            let sent = self
                .hub_request(Method::POST, &url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await;
            let (error, server_wait) = match sent {
                Ok(response) if response.status().is_success() => {
                    let answer: CommitAnswer = Self::json(&url, response).await?;
                    self.emit(HubEvent::Committed {
                        commit: answer.commit_oid.clone(),
                        recovered: false,
                    });
                    return Ok(CommitInfo {
                        commit_oid: answer.commit_oid,
                        pull_request_url: answer.pull_request_url,
                        recovered: false,
                    });
                }
                Ok(response) if response.status().as_u16() == 429 => {
                    // Refused, not applied: safe to send again after the server's wait.
                    let wait = super::retry::server_wait(response.headers());
                    let error = super::retry::error_from_response(response).await;
                    if wait.is_some_and(|w| w > policy.max_server_wait) {
                        return Err(error);
                    }
                    (error, wait)
                }
                Ok(response) if response.status().is_client_error() => {
                    return Err(super::retry::error_from_response(response).await);
                }
                Ok(response) => (super::retry::error_from_response(response).await, None),
                Err(source) => (
                    HubError::Transport {
                        url: redact(&url),
                        source: source.without_url(),
                    },
                    None,
                ),
            };
            if !matches!(error, HubError::RateLimited { .. }) {
                // The answer was lost: find out whether the commit landed before sending again.
                match self
                    .landed(
                        repo,
                        revision,
                        &before,
                        &prs_before,
                        operations,
                        options.create_pr,
                    )
                    .await
                {
                    Ok(Some(info)) => {
                        self.emit(HubEvent::Committed {
                            commit: info.commit_oid.clone(),
                            recovered: true,
                        });
                        return Ok(info);
                    }
                    Ok(None) => {
                        // Not applied. Pin the retry to the head we saw, so it cannot clobber a
                        // concurrent writer (unless the caller pinned another parent already).
                        parent = parent.or_else(|| Some(before.clone()));
                    }
                    Err(check) if attempt >= policy.max_attempts => {
                        return Err(HubError::CommitOutcomeUnknown {
                            url: redact(&url),
                            source: Box::new(check),
                        });
                    }
                    Err(_) => {}
                }
            }
            if attempt >= policy.max_attempts {
                return Err(HubError::RetriesExhausted {
                    url: redact(&url),
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            let delay = policy.delay(attempt - 1, server_wait);
            self.emit(HubEvent::Retrying {
                url: redact(&url),
                attempt,
                delay,
                reason: super::error_chain(&error),
            });
            tokio::time::sleep(delay).await;
        }
    }

    async fn pull_request_numbers(&self, repo: &Repo) -> Result<Vec<String>, HubError> {
        Ok(self
            .list_refs(repo, true)
            .await?
            .pull_requests
            .into_iter()
            .map(|r| r.reference)
            .collect())
    }

    /// Whether a commit whose answer was lost is visible: the ref moved (or a new pull request
    /// appeared) and every operation is reflected there.
    async fn landed(
        &self,
        repo: &Repo,
        revision: &str,
        before: &str,
        prs_before: &[String],
        operations: &[CommitOperation],
        create_pr: bool,
    ) -> Result<Option<CommitInfo>, HubError> {
        let candidates: Vec<(String, Option<String>)> = if create_pr {
            let refs = self.list_refs(repo, true).await?;
            refs.pull_requests
                .into_iter()
                .filter(|r| !prs_before.contains(&r.reference))
                .map(|r| {
                    let number = r.reference.trim_start_matches("refs/pr/").to_owned();
                    (
                        r.target_commit,
                        Some(self.git_url(repo, &format!("/discussions/{number}"))),
                    )
                })
                .collect()
        } else {
            let head = self.head(repo, revision).await?;
            if head == before {
                Vec::new()
            } else {
                vec![(head, None)]
            }
        };
        for (commit, pull_request_url) in candidates {
            if self.reflects(repo, &commit, operations).await? {
                return Ok(Some(CommitInfo {
                    commit_oid: commit,
                    pull_request_url,
                    recovered: true,
                }));
            }
        }
        Ok(None)
    }

    async fn reflects(
        &self,
        repo: &Repo,
        commit: &str,
        operations: &[CommitOperation],
    ) -> Result<bool, HubError> {
        let paths: Vec<String> = operations.iter().map(|o| o.path().to_owned()).collect();
        let entries = self.paths_info(repo, commit, &paths).await?;
        let find = |path: &str| entries.iter().find(|e| e.path == path && e.is_file());
        Ok(operations.iter().all(|operation| match operation {
            CommitOperation::AddRegular { path, content } => {
                find(path).is_some_and(|e| e.lfs.is_none() && e.oid == git_blob_id(content))
            }
            CommitOperation::AddLfs { path, sha256, .. } => find(path)
                .and_then(|e| e.lfs.as_ref())
                .is_some_and(|l| &l.oid == sha256),
            CommitOperation::Delete { path } => find(path).is_none(),
        }))
    }
}

fn ndjson(operations: &[CommitOperation], options: &CommitOptions, parent: Option<&str>) -> String {
    let mut header = json!({"summary": options.summary, "description": options.description});
    if let Some(parent) = parent {
        header["parentCommit"] = json!(parent);
    }
    let mut lines = vec![json!({"key": "header", "value": header}).to_string()];
    for operation in operations {
        let line = match operation {
            CommitOperation::AddRegular { path, content } => json!({"key": "file", "value": {
                "path": path, "content": base64::engine::general_purpose::STANDARD.encode(content), "encoding": "base64"}}),
            CommitOperation::AddLfs { path, sha256, size } => {
                json!({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": sha256, "size": size}})
            }
            CommitOperation::Delete { path } => {
                json!({"key": "deletedFile", "value": {"path": path}})
            }
        };
        lines.push(line.to_string());
    }
    let mut body = lines.join("\n");
    body.push('\n');
    body
}

/// The git blob id of `content`, to compare with a regular file's `oid`.
pub(crate) fn git_blob_id(content: &[u8]) -> String {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hex::encode(hasher.finalize())
}
