//! Repo management and reads: create, info, paths-info, tree (Link pagination), refs, commits,
//! branch, and resolve metadata (hub-protocol.md §3, §6.1, §7).

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::error::{HubError, redact};
use super::{HubClient, Repo, encode_path, encode_segment};

/// What `repo_info` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoInfo {
    /// `namespace/name`.
    pub id: String,
    /// The commit of the asked revision.
    pub sha: String,
    /// Visibility.
    #[serde(default)]
    pub private: bool,
    /// The files of that commit.
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// One file in [`RepoInfo::siblings`].
#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    /// Path in the repo.
    pub rfilename: String,
}

/// A tree or paths-info entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PathInfo {
    /// `file` or `directory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path in the repo.
    pub path: String,
    /// Git blob id (of the pointer, for LFS files).
    #[serde(default)]
    pub oid: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// LFS details, for LFS files.
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

/// The `lfs` sub-object of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LfsInfo {
    /// sha256 of the content.
    pub oid: String,
    /// Size of the content.
    pub size: u64,
}

impl PathInfo {
    /// Whether this is a file.
    pub fn is_file(&self) -> bool {
        self.kind == "file"
    }
}

/// One branch, tag or pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    /// Short name.
    pub name: String,
    /// Full ref (`refs/heads/main`, `refs/pr/1`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Commit it points at.
    pub target_commit: String,
}

/// A repo's refs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refs {
    /// Branches.
    #[serde(default)]
    pub branches: Vec<GitRef>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<GitRef>,
    /// Pull requests (when asked for).
    #[serde(default)]
    pub pull_requests: Vec<GitRef>,
}

/// One commit of a history listing.
#[derive(Debug, Clone, Deserialize)]
pub struct HubCommit {
    /// Commit id.
    pub id: String,
    /// First line of the message.
    pub title: String,
}

/// What resolve tells about a file without downloading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetadata {
    /// `X-Repo-Commit`.
    pub commit: String,
    /// `X-Linked-Etag` (sha256 for LFS files) else `ETag` (git blob id), unquoted.
    pub etag: String,
    /// `X-Linked-Size` else `Content-Length`.
    pub size: u64,
    /// Where the bytes are (a redirect target for LFS files, else the resolve URL).
    pub location: String,
}

impl HubClient {
    /// Creates a repo; with `exist_ok`, an existing one is fine. Returns the repo's URL.
    pub async fn create_repo(
        &self,
        repo: &Repo,
        private: bool,
        exist_ok: bool,
    ) -> Result<String, HubError> {
        let url = format!("{}/api/repos/create", self.endpoint());
        let body = json!({
            "name": repo.id.name(),
            "organization": repo.id.namespace(),
            "type": repo.kind.singular(),
            "private": private,
        });
        match self
            .send_with_retry(&url, || self.hub_request(Method::POST, &url).json(&body))
            .await
        {
            Ok(response) => {
                #[derive(Deserialize)]
                struct Created {
                    url: String,
                }
                Ok(Self::json::<Created>(&url, response).await?.url)
            }
            Err(HubError::Status { status: 409, .. }) if exist_ok => Ok(self.git_url(repo, "")),
            Err(error) => Err(error),
        }
    }

    /// Deletes a repo (`DELETE /api/repos/delete`, as the Hub answers it). Returns the bytes
    /// the server reports freeing: the embedded hub removes the objects no other repo
    /// references and says how many bytes that was; the Hub reports nothing (`None`).
    pub async fn delete_repo(&self, repo: &Repo) -> Result<Option<u64>, HubError> {
        let url = format!("{}/api/repos/delete", self.endpoint());
        let body = json!({
            "name": repo.id.name(),
            "organization": repo.id.namespace(),
            "type": repo.kind.singular(),
        });
        let response = self
            .send_with_retry(&url, || self.hub_request(Method::DELETE, &url).json(&body))
            .await?;
        #[derive(Deserialize)]
        struct Deleted {
            freed_bytes: Option<u64>,
        }
        // The Hub answers with an empty body: nothing freed to report.
        let bytes = response.bytes().await.unwrap_or_default();
        Ok(serde_json::from_slice::<Deleted>(&bytes)
            .ok()
            .and_then(|d| d.freed_bytes))
    }

    /// Repo info at a revision (`sha` is that revision's commit).
    pub async fn repo_info(&self, repo: &Repo, revision: &str) -> Result<RepoInfo, HubError> {
        let url = self.api_url(repo, &format!("/revision/{}", encode_segment(revision)));
        let response = self
            .send_with_retry(&url, || self.hub_request(Method::GET, &url))
            .await?;
        Self::json(&url, response).await
    }

    /// The commit a revision points at.
    pub async fn head(&self, repo: &Repo, revision: &str) -> Result<String, HubError> {
        Ok(self.repo_info(repo, revision).await?.sha)
    }

    /// Entries for the given paths at a revision (missing ones are omitted), 500 per call.
    pub async fn paths_info(
        &self,
        repo: &Repo,
        revision: &str,
        paths: &[String],
    ) -> Result<Vec<PathInfo>, HubError> {
        let url = self.api_url(repo, &format!("/paths-info/{}", encode_segment(revision)));
        let mut entries = Vec::new();
        for chunk in paths.chunks(500) {
            // Built in a block: the serializer is not `Send` and must not live across an await.
            let body = {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for path in chunk {
                    form.append_pair("paths", path);
                }
                form.append_pair("expand", "false");
                form.finish()
            };
            let response = self
                .send_with_retry(&url, || {
                    self.hub_request(Method::POST, &url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body.clone())
                })
                .await?;
            entries.extend(Self::json::<Vec<PathInfo>>(&url, response).await?);
        }
        Ok(entries)
    }

    /// Every entry under `folder` (the root when empty) at a revision, following `Link`
    /// pagination.
    pub async fn list_tree(
        &self,
        repo: &Repo,
        revision: &str,
        folder: &str,
        recursive: bool,
    ) -> Result<Vec<PathInfo>, HubError> {
        let folder = folder.trim_matches('/');
        let suffix = if folder.is_empty() {
            String::new()
        } else {
            format!("/{}", encode_path(folder))
        };
        let mut next = Some(self.api_url(
            repo,
            &format!(
                "/tree/{}{suffix}?recursive={recursive}&expand=false",
                encode_segment(revision)
            ),
        ));
        let mut entries = Vec::new();
        while let Some(url) = next.take() {
            if !self.same_origin(&url) {
                return Err(HubError::InvalidResponse {
                    url: redact(&url),
                    reason: "pagination left the endpoint's origin".into(),
                });
            }
            let response = self
                .send_with_retry(&url, || self.hub_request(Method::GET, &url))
                .await?;
            next = response
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            entries.extend(Self::json::<Vec<PathInfo>>(&url, response).await?);
        }
        Ok(entries)
    }

    /// Branches, tags and (with `include_prs`) pull requests.
    pub async fn list_refs(&self, repo: &Repo, include_prs: bool) -> Result<Refs, HubError> {
        let url = self.api_url(
            repo,
            if include_prs {
                "/refs?include_prs=1"
            } else {
                "/refs"
            },
        );
        let response = self
            .send_with_retry(&url, || self.hub_request(Method::GET, &url))
            .await?;
        Self::json(&url, response).await
    }

    /// History from a revision, newest first.
    pub async fn list_commits(
        &self,
        repo: &Repo,
        revision: &str,
    ) -> Result<Vec<HubCommit>, HubError> {
        let url = self.api_url(repo, &format!("/commits/{}", encode_segment(revision)));
        let response = self
            .send_with_retry(&url, || self.hub_request(Method::GET, &url))
            .await?;
        Self::json(&url, response).await
    }

    /// Creates a branch from a revision (409 → [`HubError::Status`] if it exists).
    pub async fn create_branch(
        &self,
        repo: &Repo,
        branch: &str,
        starting_point: &str,
    ) -> Result<(), HubError> {
        let url = self.api_url(repo, &format!("/branch/{}", encode_segment(branch)));
        let body = json!({"startingPoint": starting_point});
        self.send_with_retry(&url, || self.hub_request(Method::POST, &url).json(&body))
            .await?;
        Ok(())
    }

    /// Resolve metadata of a file: `HEAD`, following only relative redirects (a renamed repo
    /// on the same Hub), as the Python client does; an absolute one (LFS storage) is where the
    /// bytes are, and is read rather than followed, so the token never goes there.
    pub async fn file_metadata(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
    ) -> Result<FileMetadata, HubError> {
        let mut url = self.resolve_url(repo, revision, path);
        let mut hops = 0;
        let response = loop {
            let response = self
                .send_with_retry(&url, || {
                    self.hub_request(Method::HEAD, &url)
                        .header("accept-encoding", "identity")
                })
                .await;
            let response = match response {
                Err(HubError::Status { status: 404, .. }) => {
                    return Err(HubError::EntryNotFound { url: redact(&url) });
                }
                other => other?,
            };
            let relative = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|l| l.starts_with('/') && !l.starts_with("//"))
                .map(str::to_owned);
            match relative {
                Some(location) if response.status().is_redirection() && hops < 5 => {
                    hops += 1;
                    url = format!("{}{location}", self.origin());
                }
                _ => break response,
            }
        };
        let headers = response.headers();
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let invalid = |reason: &str| HubError::InvalidResponse {
            url: redact(&url),
            reason: reason.to_owned(),
        };
        let commit = text("x-repo-commit").ok_or_else(|| invalid("no X-Repo-Commit"))?;
        let etag = text("x-linked-etag")
            .or_else(|| text("etag"))
            .ok_or_else(|| invalid("no ETag"))?;
        let etag = etag.trim_start_matches("W/").trim_matches('"').to_owned();
        let size = text("x-linked-size")
            .or_else(|| text("content-length"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("no size"))?;
        let location = text("location").unwrap_or(url);
        Ok(FileMetadata {
            commit,
            etag,
            size,
            location,
        })
    }

    /// Downloads a whole file into memory (small files: mirror, tests). Follows one
    /// cross-origin redirect without the token.
    pub async fn download_bytes(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
    ) -> Result<bytes::Bytes, HubError> {
        let metadata = self.file_metadata(repo, revision, path).await?;
        let location = metadata.location;
        let response = self.get_file_at(&location, 0).await?;
        response
            .bytes()
            .await
            .map_err(|source| HubError::Transport {
                url: redact(&location),
                source: source.without_url(),
            })
    }

    /// Opens a file for reading as it arrives, chunk by chunk, never holding it whole (deep
    /// verify hashes while the bytes stream in). Follows one cross-origin redirect without the
    /// token. A failure after the first chunk is not retried: the caller restarts the file.
    pub async fn download_stream(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
    ) -> Result<FileStream, HubError> {
        self.download_stream_from(repo, revision, path, 0).await
    }

    /// [`download_stream`](HubClient::download_stream) from byte `from` on (to resume a
    /// partial download). The stream's [`offset`](FileStream::offset) says where it really
    /// starts: `from`, or 0 when the server sent the whole file instead.
    pub async fn download_stream_from(
        &self,
        repo: &Repo,
        revision: &str,
        path: &str,
        from: u64,
    ) -> Result<FileStream, HubError> {
        let metadata = self.file_metadata(repo, revision, path).await?;
        let location = metadata.location.clone();
        let from = if from >= metadata.size { 0 } else { from };
        let response = self.get_file_at(&location, from).await?;
        // Only a 206 whose `Content-Range` starts where asked continues the file.
        let ranged = response.status() == reqwest::StatusCode::PARTIAL_CONTENT
            && response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {from}-")));
        let offset = if ranged { from } else { 0 };
        Ok(FileStream {
            metadata,
            offset,
            response,
            url: redact(&location),
        })
    }

    pub(super) fn resolve_url(&self, repo: &Repo, revision: &str, path: &str) -> String {
        self.git_url(
            repo,
            &format!(
                "/resolve/{}/{}",
                encode_segment(revision),
                encode_path(path)
            ),
        )
    }
}

/// A file being downloaded ([`HubClient::download_stream`]).
#[derive(Debug)]
pub struct FileStream {
    /// What resolve said about the file (size and etag as the Hub reports them).
    pub metadata: FileMetadata,
    /// The byte of the file the stream starts at.
    pub offset: u64,
    response: reqwest::Response,
    url: String,
}

impl FileStream {
    /// The next chunk of the body; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, HubError> {
        self.response
            .chunk()
            .await
            .map_err(|source| HubError::Transport {
                url: self.url.clone(),
                source: source.without_url(),
            })
    }
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_link_is_found_among_others() {
        let header = "<https://h/a?cursor=1>; rel=\"prev\", <https://h/a?cursor=3>; rel=\"next\"";
        assert_eq!(
            super::next_link(header).as_deref(),
            Some("https://h/a?cursor=3")
        );
        assert_eq!(super::next_link("<https://h/a>; rel=\"prev\""), None);
    }
}
