//! Shared server state, the error answer every handler returns, auth, and URL signing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::Limits;
use super::faults::FaultState;
use super::paths::{self, InvalidInput};
use super::store::{RepoKey, Store, StoreError};
use crate::hub::RepoType;

/// Everything the handlers share.
pub struct AppState {
    /// The on-disk store.
    pub store: Store,
    /// Limits and thresholds.
    pub limits: Limits,
    /// Token required for writes, if any.
    pub token: Option<String>,
    /// The Hub origin clients were given (`http://127.0.0.1:PORT`).
    pub base_url: String,
    /// A different origin for presigned storage URLs and LFS downloads, so clients treat it
    /// like a CDN (`http://localhost:PORT` when bound to 127.0.0.1).
    pub storage_url: String,
    /// Key for presigned URLs (random per process).
    pub signing_key: [u8; 32],
    /// Fault switches and counters.
    pub faults: FaultState,
    /// Incremental sha256 of multipart uploads in progress.
    pub hashes: super::hashing::IncrementalHashes,
    /// Parsed commits and their listings (commits are immutable, so never stale).
    pub commits: super::tree::CommitCache,
    /// Whether the server speaks Xet.
    pub xet: bool,
    /// Xorb and shard uploads being validated ([`Limits::xet_uploads_in_flight`]).
    pub xet_uploads: tokio::sync::Semaphore,
    repo_locks: Mutex<HashMap<RepoKey, Arc<tokio::sync::Mutex<()>>>>,
    commit_times: Mutex<HashMap<RepoKey, VecDeque<Instant>>>,
}

impl AppState {
    /// Builds the state.
    pub fn new(
        store: Store,
        limits: Limits,
        token: Option<String>,
        base_url: String,
        storage_url: String,
        faults: FaultState,
        xet: bool,
    ) -> Self {
        Self {
            xet,
            xet_uploads: tokio::sync::Semaphore::new(limits.xet_uploads_in_flight),
            store,
            limits,
            token,
            base_url,
            storage_url,
            signing_key: rand::random(),
            faults,
            hashes: super::hashing::IncrementalHashes::default(),
            commits: super::tree::CommitCache::default(),
            repo_locks: Mutex::default(),
            commit_times: Mutex::default(),
        }
    }

    /// The lock serializing writes to one repo (ref updates are read-modify-write).
    pub fn repo_lock(&self, key: &RepoKey) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .expect("repo locks")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Refuses a write without the configured token.
    pub fn require_write(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Constant-time comparison is not needed for a loopback test server, but cheap.
        let matches = given.is_some_and(|given| {
            given.len() == expected.len()
                && given
                    .bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if matches {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Invalid credentials in Authorization header",
            ))
        }
    }

    /// Checks that the repo exists and answers 404 `RepoNotFound` otherwise.
    pub fn existing_repo(
        &self,
        kind: RepoType,
        namespace: &str,
        name: &str,
    ) -> Result<RepoKey, ApiError> {
        let key = repo_key(kind, namespace, name)?;
        if !self.store.repo_exists(&key) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Repository {} not found", key.id()),
            )
            .code("RepoNotFound"));
        }
        Ok(key)
    }

    /// Resolves a revision of an existing repo to its commit, 404 `RevisionNotFound` otherwise.
    pub fn commit_of(&self, key: &RepoKey, revision: &str) -> Result<String, ApiError> {
        // A commit id is checked through the cache: reading it from the store parses the
        // whole commit, and clients that pinned a revision send its id with every request.
        let commit = match self.store.resolve_named(key, revision)? {
            Some(commit) => Some(commit),
            None => self.commit(key, revision)?.map(|c| c.record.id.clone()),
        };
        match commit {
            Some(commit) => Ok(commit),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Invalid rev id: {revision}"),
            )
            .code("RevisionNotFound")),
        }
    }

    /// A commit of the repo, from the cache or the store; `None` if there is none with that id.
    pub fn commit(
        &self,
        key: &RepoKey,
        id: &str,
    ) -> Result<Option<Arc<super::tree::CachedCommit>>, StoreError> {
        if let Some(commit) = self.commits.get(key, id) {
            return Ok(Some(commit));
        }
        let Some(record) = self.store.commit(key, id)? else {
            return Ok(None);
        };
        let commit = Arc::new(super::tree::CachedCommit::new(record));
        self.commits.insert(key, commit.clone());
        Ok(Some(commit))
    }

    /// Refuses (507) an upload of `bytes` that would eat into the disk space the server keeps
    /// free ([`Limits::min_free_bytes`]).
    pub fn check_room(&self, bytes: u64) -> Result<(), ApiError> {
        let Some(keep) = self.limits.min_free_bytes else {
            return Ok(());
        };
        let Some(free) = self.store.available_bytes() else {
            return Ok(());
        };
        let room = free.saturating_sub(keep);
        if bytes > room {
            return Err(ApiError::insufficient_storage(format!(
                "the hub has not enough free disk space for {bytes} more bytes: {room} can still be used (it keeps {keep} free)"
            )));
        }
        Ok(())
    }

    /// Records a commit for the per-repo rate limit, or answers 429 with `Retry-After` if the
    /// last hour is full.
    pub fn check_commit_rate(&self, key: &RepoKey) -> Result<(), ApiError> {
        let Some(per_hour) = self.limits.commits_per_hour else {
            return Ok(());
        };
        let hour = Duration::from_secs(3600);
        let now = Instant::now();
        let mut times = self.commit_times.lock().expect("commit times");
        let window = times.entry(key.clone()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= hour)
        {
            window.pop_front();
        }
        if window.len() >= per_hour as usize {
            let oldest = *window.front().expect("full window has a first entry");
            let wait = hour
                .saturating_sub(now.duration_since(oldest))
                .as_secs()
                .max(1);
            return Err(ApiError::rate_limited(
                format!(
                    "You have exceeded the rate limit for repository commits ({per_hour} per hour). Retry after {wait} seconds."
                ),
                wait,
            ));
        }
        window.push_back(now);
        Ok(())
    }

    /// A signed URL for a storage action; `what` names the action and its parameters.
    pub fn presign(&self, origin: &str, route: &str, what: &str, expires: u64) -> String {
        let signature = self.sign(&format!("{what}|{expires}"));
        format!("{origin}{route}?exp={expires}&sig={signature}")
    }

    /// Checks a presigned URL's signature and expiry: 403 like S3 when either is wrong.
    pub fn check_signature(
        &self,
        what: &str,
        expires: u64,
        signature: &str,
    ) -> Result<(), ApiError> {
        if self.sign(&format!("{what}|{expires}")) != signature {
            return Err(
                ApiError::new(StatusCode::FORBIDDEN, "signature does not match")
                    .code("AccessDenied"),
            );
        }
        if expires < paths::unix_now() {
            return Err(
                ApiError::new(StatusCode::FORBIDDEN, "Request has expired").code("AccessDenied")
            );
        }
        Ok(())
    }

    /// The server's signature of `what` valid until `expires` (the same MAC as presigned URLs;
    /// Xet access tokens carry one).
    pub fn signature(&self, what: &str, expires: u64) -> String {
        self.sign(&format!("{what}|{expires}"))
    }

    /// HMAC-SHA256 (RFC 2104) of `message` with the server's key, in hex.
    fn sign(&self, message: &str) -> String {
        let mut inner_key = [0x36u8; 64];
        let mut outer_key = [0x5cu8; 64];
        for (i, byte) in self.signing_key.iter().enumerate() {
            inner_key[i] ^= byte;
            outer_key[i] ^= byte;
        }
        let inner = Sha256::new()
            .chain_update(inner_key)
            .chain_update(message.as_bytes())
            .finalize();
        hex::encode(
            Sha256::new()
                .chain_update(outer_key)
                .chain_update(inner)
                .finalize(),
        )
    }
}

/// Validates a repo id from a URL or body into a store key (400 on hostile input).
pub fn repo_key(kind: RepoType, namespace: &str, name: &str) -> Result<RepoKey, ApiError> {
    paths::check_repo_segment(namespace)?;
    paths::check_repo_segment(name)?;
    Ok(RepoKey {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Set on each request by the connection loop: cancelling it drops the TCP connection without
/// an answer (the `drop_connection_part_once` fault).
#[derive(Clone)]
pub struct ConnectionKill(pub CancellationToken);

/// An error answer: status, JSON body `{"error": …}`, `X-Error-Code`/`X-Error-Message` headers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    code: Option<&'static str>,
    repo_commit: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
            repo_commit: None,
            retry_after: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 507 Insufficient Storage: the store's disk cannot take the upload.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INSUFFICIENT_STORAGE, message)
    }

    /// 429 with `Retry-After` and the IETF `RateLimit` header.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }

    /// Adds `X-Error-Code`.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Adds `X-Repo-Commit` (404s on resolve carry it so clients can cache the absence).
    pub fn with_commit(mut self, commit: String) -> Self {
        self.repo_commit = Some(commit);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(code) = self.code {
            headers.insert("x-error-code", HeaderValue::from_static(code));
        }
        // Header values must be visible ASCII; the message is ours and ASCII, but escape to be sure.
        let message: String = self
            .message
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect();
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("x-error-message", value);
        }
        if let Some(commit) = self
            .repo_commit
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert("x-repo-commit", commit);
        }
        if let Some(wait) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
            if let Ok(value) = HeaderValue::from_str(&format!("\"commits\";r=0;t={wait}")) {
                headers.insert("ratelimit", value);
            }
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if let StoreError::Io(io) = &error
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            tracing::warn!(error = %io, "the hub's disk is full");
            return ApiError::insufficient_storage(
                "the hub's disk is full; free some space on it and retry",
            );
        }
        tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "store failure");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal storage error")
    }
}

impl From<InvalidInput> for ApiError {
    fn from(error: InvalidInput) -> Self {
        ApiError::bad_request(error.to_string())
    }
}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> Self {
        ApiError::from(StoreError::Io(error))
    }
}

/// The repo name of a git-style path segment `NAME.git` (the LFS endpoints); 404 otherwise.
pub fn git_repo_name(name_git: &str) -> Result<&str, ApiError> {
    name_git
        .strip_suffix(".git")
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not a git path"))
}
