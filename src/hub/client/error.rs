//! The client's error type: one variant per thing a caller can act on.

use std::time::Duration;

/// What went wrong talking to a Hub. URLs in errors are redacted (no query string, so no
/// presigned signature) and tokens never appear.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repo does not exist, or is private to someone else (`X-Error-Code: RepoNotFound`,
    /// or a bare 401 on a repo URL, which is how the Hub hides private repos).
    #[error("repository not found at `{url}`")]
    RepoNotFound {
        /// The request URL (redacted).
        url: String,
    },
    /// The revision does not exist (`RevisionNotFound`).
    #[error("revision not found at `{url}`")]
    RevisionNotFound {
        /// The request URL (redacted).
        url: String,
    },
    /// The file does not exist at that revision (`EntryNotFound`).
    #[error("entry not found at `{url}`")]
    EntryNotFound {
        /// The request URL (redacted).
        url: String,
    },
    /// The token is missing or wrong for this write.
    #[error("not authorized at `{url}`: {message}")]
    Unauthorized {
        /// The request URL (redacted).
        url: String,
        /// The server's message.
        message: String,
    },
    /// The server refused with 429 and asked for a wait longer than the policy allows.
    #[error("rate limited at `{url}`{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The request URL (redacted).
        url: String,
        /// The wait the server asked for.
        retry_after: Option<Duration>,
    },
    /// A `parentCommit` precondition failed: the branch moved; re-read the head and retry.
    #[error("the branch moved: commit refused at `{url}`: {message}")]
    ParentMismatch {
        /// The request URL (redacted).
        url: String,
        /// The server's message.
        message: String,
    },
    /// Any other error status.
    #[error("`{url}` answered {status}{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        /// The request URL (redacted).
        url: String,
        /// HTTP status.
        status: u16,
        /// `X-Error-Code`, if any.
        code: Option<String>,
        /// `X-Error-Message` or the body's `error`.
        message: String,
    },
    /// The request could not be sent or the answer not read. The source carries no URL (a
    /// presigned URL's signature must not reach logs); `url` is the redacted one.
    #[error("request to `{url}` failed")]
    Transport {
        /// The request URL (redacted).
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered something this client cannot use.
    #[error("invalid answer from `{url}`: {reason}")]
    InvalidResponse {
        /// The request URL (redacted).
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The LFS batch answer rejected an object.
    #[error("the server rejected {} ({code}): {message}", path.as_ref().map(|p| format!("`{p}` (object {oid})")).unwrap_or_else(|| format!("object `{oid}`")))]
    ObjectRejected {
        /// The file's path in the repo, when the caller named it.
        path: Option<String>,
        /// The object's sha256.
        oid: String,
        /// The per-object error code.
        code: i64,
        /// The per-object message.
        message: String,
    },
    /// A Xet upload could not be prepared (its chunking or planning task failed).
    #[error("the Xet upload of object `{oid}` failed: {reason}")]
    Xet {
        /// The object's sha256.
        oid: String,
        /// What failed.
        reason: String,
    },
    /// Retries ran out; the last failure is the source.
    #[error("gave up on `{url}` after {attempts} attempts")]
    RetriesExhausted {
        /// The request URL (redacted).
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<HubError>,
    },
    /// A commit's answer was lost and its outcome could not be established (the Hub could not be
    /// re-read); it may or may not have landed.
    #[error("the outcome of the commit to `{url}` is unknown")]
    CommitOutcomeUnknown {
        /// The commit URL (redacted).
        url: String,
        /// Why the outcome could not be checked.
        #[source]
        source: Box<HubError>,
    },
    /// An upload source (a local file) could not be read.
    #[error("cannot read `{}`", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Offline mode is on (`HF_HUB_OFFLINE`) and this request needs the network.
    #[error("`{url}` needs the network, and offline mode is on (HF_HUB_OFFLINE)")]
    Offline {
        /// The request URL (redacted).
        url: String,
    },
    /// The endpoint is not a usable http(s) URL.
    #[error("invalid hub endpoint `{0}`")]
    InvalidEndpoint(String),
}

impl HubError {
    /// Whether retrying the same request may succeed (429, 5xx, network errors).
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::RateLimited { .. } | HubError::Transport { .. } => true,
            HubError::Status { status, .. } => matches!(status, 408 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// A URL without its query string and fragment: presigned URLs carry their signature there.
pub fn redact(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    url[..cut].to_owned()
}
