//! The Hub HTTP client: repo management, the upload path (preupload → batch → basic or
//! multipart PUTs → completion → verify, or the `xet` transfer: chunks, xorbs and a shard to
//! the CAS), NDJSON commits, listing and resolve metadata.
//!
//! Secrets: the token goes only to the configured endpoint's origin (scheme, host, port), never
//! to presigned storage URLs, completion URLs or redirects elsewhere. Progress is reported as
//! [`HubEvent`]s through an optional callback; the client never prints.

mod commit;
mod error;
mod folder;
mod lfs;
mod listing;
mod retry;
mod xet;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use url::Url;

pub use commit::{CommitInfo, CommitOperation, CommitOptions};
pub use error::HubError;
pub use folder::{FolderUpload, MirrorReport};
pub use lfs::{LfsObject, LfsSource, PreuploadAnswer, PreuploadFile, UploadOutcome};
pub use listing::{FileMetadata, FileStream, GitRef, HubCommit, PathInfo, Refs, RepoInfo};
pub use retry::RetryPolicy;
pub use xet::{XetChunks, file_hash as xet_file_hash};

use crate::hub::{RepoId, RepoType, Token};

/// A repo on a Hub: its kind and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repo {
    /// Model or dataset.
    pub kind: RepoType,
    /// `namespace/name`.
    pub id: RepoId,
}

impl Repo {
    /// A model repo.
    pub fn model(id: RepoId) -> Self {
        Self {
            kind: RepoType::Model,
            id,
        }
    }

    /// A dataset repo.
    pub fn dataset(id: RepoId) -> Self {
        Self {
            kind: RepoType::Dataset,
            id,
        }
    }
}

/// Progress and recovery events, for a progress bar or a log owned by the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// The server already had this LFS object; nothing was sent.
    ObjectSkipped {
        /// sha256.
        oid: String,
        /// Bytes.
        size: u64,
    },
    /// Transfer of an LFS object began (`parts` = 1 for a basic PUT).
    ObjectStarted {
        /// sha256.
        oid: String,
        /// Bytes.
        size: u64,
        /// Number of parts.
        parts: usize,
    },
    /// One part (or the whole basic PUT) was accepted.
    PartUploaded {
        /// sha256 of the object.
        oid: String,
        /// 1-based part number.
        part: usize,
        /// Bytes of this part.
        bytes: u64,
    },
    /// An LFS object is stored and verified.
    ObjectUploaded {
        /// sha256.
        oid: String,
        /// Bytes.
        size: u64,
    },
    /// A request failed transiently and will be retried after `delay`.
    Retrying {
        /// The request URL (redacted).
        url: String,
        /// The retry number (1 = first retry).
        attempt: u32,
        /// Wait before it.
        delay: Duration,
        /// What failed.
        reason: String,
    },
    /// Presigned URLs expired; the batch endpoint was asked again.
    BatchRenewed {
        /// sha256 of the object.
        oid: String,
    },
    /// An object went through Xet: `sent` bytes of new xorbs and shard left this machine,
    /// `deduplicated` bytes of its content were found in xorbs the CAS already stores.
    XetStored {
        /// sha256.
        oid: String,
        /// Bytes.
        size: u64,
        /// Bytes sent (new xorbs and the shard).
        sent: u64,
        /// Content bytes found stored already.
        deduplicated: u64,
    },
    /// The Xet token was about to expire or was refused; the Hub handed out a fresh one.
    XetTokenRefreshed {
        /// Unix seconds at which the new token expires.
        expires: u64,
    },
    /// A commit landed. `recovered` = its answer was lost and the client established from the
    /// Hub's state that it had been applied.
    Committed {
        /// The commit id.
        commit: String,
        /// Whether the outcome was recovered after a lost answer.
        recovered: bool,
    },
}

/// A callback receiving [`HubEvent`]s. Called from tokio tasks: keep it quick.
pub type EventSink = Arc<dyn Fn(&HubEvent) + Send + Sync>;

/// Builds a [`HubClient`].
pub struct HubClientBuilder {
    endpoint: Url,
    token: Option<Token>,
    retry: RetryPolicy,
    parts_in_flight: usize,
    timeout: Duration,
    read_timeout: Option<Duration>,
    events: Option<EventSink>,
    offline: bool,
    xet: bool,
}

impl HubClientBuilder {
    /// Whether uploads offer the `xet` transfer (default: yes; the CLI turns it off for
    /// `HF_HUB_DISABLE_XET`, as the official client does). Without it every object goes
    /// through LFS (`basic` or `multipart`), which the Hub still accepts.
    pub fn xet(mut self, xet: bool) -> Self {
        self.xet = xet;
        self
    }

    /// The token, sent only to the endpoint's origin.
    pub fn token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// The retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How many multipart parts are in flight at once per object (default 8). Peak memory of an
    /// upload from a file is about this many parts.
    pub fn parts_in_flight(mut self, parts: usize) -> Self {
        self.parts_in_flight = parts.max(1);
        self
    }

    /// Timeout of one request (default 10 minutes; a part or a commit is one request).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Instead of a limit on a whole request, a limit on each wait for the server (to
    /// connect, and between two reads of the answer): for downloads of files of any size,
    /// which take as long as they take while bytes keep coming.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Where progress events go.
    pub fn events(mut self, events: EventSink) -> Self {
        self.events = Some(events);
        self
    }

    /// Offline mode (`HF_HUB_OFFLINE`, as the Python client has it): every request fails at
    /// once with [`HubError::Offline`], never retried, unless the endpoint is on this machine's
    /// loopback (the embedded hub needs no network).
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<HubClient, HubError> {
        let http = reqwest::Client::builder()
            // Redirects are read, not followed: resolve metadata lives on the redirect itself,
            // and following one would be the easiest way to leak the token to another origin.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .user_agent(concat!("hubsweep/", env!("CARGO_PKG_VERSION")));
        let http = match self.read_timeout {
            Some(wait) => http.connect_timeout(wait).read_timeout(wait),
            None => http.timeout(self.timeout),
        };
        let http = http.build().map_err(|source| HubError::Transport {
            url: self.endpoint.to_string(),
            source: source.without_url(),
        })?;
        let offline = self.offline && !is_loopback(&self.endpoint);
        Ok(HubClient {
            inner: Arc::new(Inner {
                http,
                offline,
                endpoint: self.endpoint,
                token: self.token,
                retry: self.retry,
                parts_in_flight: self.parts_in_flight,
                events: self.events,
                xet: self.xet,
                xet_known: Arc::new(std::sync::Mutex::new(xet::KnownChunks::new(
                    xet::KNOWN_CHUNKS,
                ))),
                xet_in_flight: XorbGates::default(),
                xet_register: std::sync::atomic::AtomicBool::new(true),
            }),
        })
    }
}

/// Whether `url` names this machine (`localhost` or a loopback address).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A client for one Hub endpoint. Cheap to clone.
#[derive(Clone)]
pub struct HubClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Offline mode on a non-loopback endpoint: no request is sent.
    offline: bool,
    endpoint: Url,
    token: Option<Token>,
    retry: RetryPolicy,
    parts_in_flight: usize,
    events: Option<EventSink>,
    /// Whether uploads offer `xet`.
    xet: bool,
    /// Chunks the CAS is known to store (earlier uploads, dedup answers), shared by clones.
    xet_known: Arc<std::sync::Mutex<xet::KnownChunks>>,
    /// Xorbs this client is uploading now, each with the lock its uploader holds.
    xet_in_flight: XorbGates,
    /// Whether each stored xorb is registered with a shard of its own (off once a CAS refused
    /// one).
    xet_register: std::sync::atomic::AtomicBool,
}

/// Per-xorb upload locks, so a client never sends one xorb twice at once.
type XorbGates = Arc<
    std::sync::Mutex<
        std::collections::HashMap<crate::hub::xet::hash::XetHash, Arc<tokio::sync::Mutex<()>>>,
    >,
>;

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint())
            .field("token", &self.inner.token)
            .finish()
    }
}

impl HubClient {
    /// Starts building a client for `endpoint` (e.g. `https://huggingface.co` or the embedded
    /// server's base URL); a trailing `/` is ignored.
    pub fn builder(endpoint: &str) -> Result<HubClientBuilder, HubError> {
        let trimmed = endpoint.trim_end_matches('/');
        let url =
            Url::parse(trimmed).map_err(|_| HubError::InvalidEndpoint(endpoint.to_owned()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(HubError::InvalidEndpoint(endpoint.to_owned()));
        }
        Ok(HubClientBuilder {
            endpoint: url,
            token: None,
            retry: RetryPolicy::default(),
            parts_in_flight: 8,
            timeout: Duration::from_secs(600),
            read_timeout: None,
            events: None,
            offline: false,
            xet: true,
        })
    }

    /// The endpoint, without a trailing `/`.
    pub fn endpoint(&self) -> &str {
        self.inner.endpoint.as_str().trim_end_matches('/')
    }

    /// `{endpoint}/api/{models|datasets}/{ns}/{name}{suffix}`.
    fn api_url(&self, repo: &Repo, suffix: &str) -> String {
        format!(
            "{}/api/{}/{}{suffix}",
            self.endpoint(),
            repo.kind.api_plural(),
            repo.id
        )
    }

    /// `{endpoint}/{prefix}{ns}/{name}{suffix}` (git-side paths).
    fn git_url(&self, repo: &Repo, suffix: &str) -> String {
        format!(
            "{}/{}{}{suffix}",
            self.endpoint(),
            repo.kind.git_prefix(),
            repo.id
        )
    }

    fn emit(&self, event: HubEvent) {
        if let Some(events) = &self.inner.events {
            events(&event);
        }
    }

    /// A request to the Hub itself: carries the token if, and only if, `url` has the
    /// endpoint's origin.
    fn hub_request(&self, method: Method, url: &str) -> RequestBuilder {
        let request = self.inner.http.request(method, url);
        match &self.inner.token {
            Some(token) if self.same_origin(url) => request.bearer_auth(token.expose()),
            _ => request,
        }
    }

    /// A request to storage (presigned URLs, completion): never carries the token.
    fn storage_request(&self, method: Method, url: &str) -> RequestBuilder {
        self.inner.http.request(method, url)
    }

    /// `GET` of a file's resolved location, with retries, following up to
    /// [`MAX_REDIRECTS`] further redirects (a CDN may send the client on). The token goes along
    /// only while every hop so far stayed on the endpoint's origin: once a redirect leaves it,
    /// no later hop carries it, not even one that leads back (as the Python client does).
    ///
    /// From byte `from` on (a `Range` request) when it is not 0; a server may answer the whole
    /// file anyway (200 rather than 206), which the caller must check.
    async fn get_file_at(&self, location: &str, from: u64) -> Result<Response, HubError> {
        let mut url = location.to_owned();
        let mut credentials = true;
        for _ in 0..=MAX_REDIRECTS {
            credentials &= self.same_origin(&url);
            let response = self
                .send_with_retry(&url, || {
                    let request = if credentials {
                        self.hub_request(Method::GET, &url)
                    } else {
                        self.storage_request(Method::GET, &url)
                    };
                    if from > 0 {
                        request.header(reqwest::header::RANGE, format!("bytes={from}-"))
                    } else {
                        request
                    }
                })
                .await?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            url = redirect_target(&url, &response)?;
        }
        Err(HubError::InvalidResponse {
            url: error::redact(location),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// The endpoint's origin (`scheme://host[:port]`), for joining absolute paths.
    fn origin(&self) -> String {
        self.inner.endpoint.origin().ascii_serialization()
    }

    fn same_origin(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|url| url.origin() == self.inner.endpoint.origin())
    }

    /// Refuses a request in offline mode ([`HubClientBuilder::offline`]).
    fn check_online(&self, url: &str) -> Result<(), HubError> {
        if self.inner.offline {
            return Err(HubError::Offline {
                url: error::redact(url),
            });
        }
        Ok(())
    }

    /// Sends a request built by `build` until it succeeds, fails permanently, or the policy
    /// runs out; 429/5xx/network errors are retried with backoff and server waits honoured.
    async fn send_with_retry(
        &self,
        url: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, HubError> {
        self.check_online(url)?;
        let policy = &self.inner.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (error, wait) = match build().send().await {
                // Redirects are answers too: this client reads them rather than following them.
                Ok(response)
                    if response.status().is_success() || response.status().is_redirection() =>
                {
                    return Ok(response);
                }
                Ok(response) => {
                    let wait = retry::server_wait(response.headers());
                    (retry::error_from_response(response).await, wait)
                }
                Err(source) => (
                    HubError::Transport {
                        url: error::redact(url),
                        source: source.without_url(),
                    },
                    None,
                ),
            };
            if !error.is_transient() {
                return Err(error);
            }
            if wait.is_some_and(|w| w > policy.max_server_wait) {
                return Err(error);
            }
            if attempt >= policy.max_attempts {
                return Err(HubError::RetriesExhausted {
                    url: error::redact(url),
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            let delay = policy.delay(attempt - 1, wait);
            self.emit(HubEvent::Retrying {
                url: error::redact(url),
                attempt,
                delay,
                reason: error_chain(&error),
            });
            tokio::time::sleep(delay).await;
        }
    }

    /// Reads a JSON answer.
    async fn json<T: serde::de::DeserializeOwned>(
        url: &str,
        response: Response,
    ) -> Result<T, HubError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|source| HubError::Transport {
                url: error::redact(url),
                source: source.without_url(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| HubError::InvalidResponse {
            url: error::redact(url),
            reason: e.to_string(),
        })
    }
}

/// How many redirects a download follows after the resolve answer.
const MAX_REDIRECTS: usize = 5;

/// Where a redirect answer to a request for `from` points (its `Location`, relative ones joined
/// to `from`).
fn redirect_target(from: &str, response: &Response) -> Result<String, HubError> {
    let invalid = |reason: &str| HubError::InvalidResponse {
        url: error::redact(from),
        reason: reason.to_owned(),
    };
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("a redirect without a usable Location"))?;
    Url::parse(from)
        .and_then(|base| base.join(location))
        .map(String::from)
        .map_err(|_| invalid("a redirect to an invalid Location"))
}

/// An error and its causes on one line: `outer: inner: root` (for messages and logs).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes one URL segment (`/` included), as revisions are sent.
fn encode_segment(value: &str) -> String {
    // Unreserved characters (RFC 3986) stay as they are; everything else, `/` included, is encoded.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, SEGMENT).to_string()
}

/// Percent-encodes a repo file path, keeping `/`.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}
