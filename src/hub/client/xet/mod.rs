//! The `xet` transfer (docs/hub.md, "Xet"): when the batch answer picks `xet`, an in-memory
//! object is cut into content-defined chunks, the chunks the CAS already stores are found
//! (this client's earlier uploads, then the global dedup query), the rest are packed into
//! xorbs that borrow the object's bytes (nothing is copied, nothing touches the disk), the
//! xorbs are uploaded — each registered with a shard of its own as soon as it is stored, so an
//! interrupted upload's rerun finds it through the dedup query — then the shard that describes
//! the file. The commit that follows is the same `lfsFile` commit as after an LFS upload.
//!
//! Tokens: the CAS gets only the short-lived Xet token (refreshed through the Hub before it
//! expires, and once more whenever the CAS refuses it); the Hub token goes only to the Hub
//! (the refresh route), never to the CAS.

mod plan;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::{Method, Response};
use serde::Deserialize;
use serde_json::Value;

pub use plan::KnownChunks;
use plan::{Chunked, NewXorbUpload, UploadPlan};

use super::error::{HubError, redact};
use super::{HubClient, HubEvent, LfsObject};
use crate::hub::xet::hash::XetHash;
use crate::hub::xet::shard;

/// How many chunks of earlier uploads a client remembers for dedup (≈ 16 GiB of content,
/// ≈ 20 MB of memory).
pub const KNOWN_CHUNKS: usize = 1 << 18;
/// A token this close to its expiry is refreshed before it is used.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// How many times one CAS call refreshes a refused token before giving up.
const MAX_REFRESHES: u32 = 3;
/// Xorbs in flight at once.
const XORBS_IN_FLIGHT: usize = 4;
/// Global dedup queries in flight at once.
const DEDUP_QUERIES_IN_FLIGHT: usize = 4;

/// The `xet` action of a batch answer: the token refresh route and the first token.
#[derive(Debug, Clone)]
pub(super) struct XetAction {
    /// The Hub route that hands out fresh write tokens.
    pub refresh: String,
    /// The first token, if the answer carried one.
    pub token: Option<CasToken>,
}

impl XetAction {
    /// Reads the action's `href` and its `X-Xet-*` headers (any case).
    pub fn new(href: &str, header: &serde_json::Map<String, Value>) -> Self {
        let get = |name: &str| {
            header
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
        };
        let token = match (
            get("X-Xet-Access-Token"),
            get("X-Xet-Cas-Url"),
            get("X-Xet-Token-Expiration").and_then(|e| e.parse().ok()),
        ) {
            (Some(access), Some(cas_url), Some(expires)) => Some(CasToken {
                access: access.to_owned(),
                cas_url: cas_url.trim_end_matches('/').to_owned(),
                expires,
            }),
            _ => None,
        };
        Self {
            refresh: href.to_owned(),
            token,
        }
    }
}

/// A CAS write token and the CAS it is for.
#[derive(Clone)]
pub(super) struct CasToken {
    access: String,
    cas_url: String,
    /// Unix seconds.
    expires: u64,
}

impl std::fmt::Debug for CasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CasToken")
            .field("cas_url", &self.cas_url)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenAnswer {
    access_token: String,
    exp: u64,
    cas_url: String,
}

/// One upload's view of the CAS: the current token, refreshed as needed.
struct Cas<'a> {
    client: &'a HubClient,
    refresh: String,
    token: tokio::sync::Mutex<Option<CasToken>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cas<'_> {
    /// A token valid for at least [`REFRESH_MARGIN`] more, fetching one when `stale` is the
    /// current one (the CAS refused it) or it is about to expire.
    async fn token(&self, stale: Option<&str>) -> Result<CasToken, HubError> {
        let mut current = self.token.lock().await;
        let fresh_enough = |t: &CasToken| {
            stale != Some(t.access.as_str()) && t.expires > unix_now() + REFRESH_MARGIN.as_secs()
        };
        if let Some(token) = current.as_ref().filter(|t| fresh_enough(t)) {
            return Ok(token.clone());
        }
        let url = &self.refresh;
        let response = self
            .client
            .send_with_retry(url, || self.client.hub_request(Method::GET, url))
            .await?;
        let answer: TokenAnswer = HubClient::json(url, response).await?;
        let token = CasToken {
            access: answer.access_token,
            cas_url: answer.cas_url.trim_end_matches('/').to_owned(),
            expires: answer.exp,
        };
        if current.is_some() {
            self.client.emit(HubEvent::XetTokenRefreshed {
                expires: token.expires,
            });
        }
        *current = Some(token.clone());
        Ok(token)
    }

    /// Sends a CAS request (`path` under the CAS URL) with the Xet token: transient failures
    /// are retried by the client's policy, a refused token is refreshed and the call repeated.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Fn() -> Option<reqwest::Body>,
        length: Option<u64>,
    ) -> Result<Response, HubError> {
        let mut stale: Option<String> = None;
        let mut refreshes = 0;
        loop {
            let token = self.token(stale.as_deref()).await?;
            let url = format!("{}{path}", token.cas_url);
            let result = self
                .client
                .send_with_retry(&url, || {
                    let mut request = self
                        .client
                        .storage_request(method.clone(), &url)
                        .bearer_auth(&token.access);
                    if let Some(length) = length {
                        request = request.header(reqwest::header::CONTENT_LENGTH, length);
                    }
                    match body() {
                        Some(body) => request.body(body),
                        None => request,
                    }
                })
                .await;
            match result {
                Err(HubError::Unauthorized { .. }) if refreshes < MAX_REFRESHES => {
                    refreshes += 1;
                    stale = Some(token.access);
                }
                other => return other,
            }
        }
    }

    /// Uploads a shard (`POST /v1/shards`).
    async fn post_shard(&self, shard: Bytes) -> Result<(), HubError> {
        self.send(
            Method::POST,
            "/v1/shards",
            || Some(reqwest::Body::from(shard.clone())),
            None,
        )
        .await
        .map(drop)
    }
}

/// An in-memory object's bytes cut into Xet chunks and hashed (see
/// [`LfsObject::from_bytes`](super::LfsObject::from_bytes)). Cheap to clone.
#[derive(Clone)]
pub struct XetChunks(Arc<Chunked>);

impl XetChunks {
    /// Cuts and hashes `data` (on the rayon pool).
    pub fn new(data: Bytes) -> Self {
        Self(Arc::new(Chunked::new(data)))
    }

    /// Whether these are the chunks of `data` (the same buffer).
    pub(super) fn is_of(&self, data: &Bytes) -> bool {
        self.0.data.as_ptr() == data.as_ptr() && self.0.data.len() == data.len()
    }
}

impl std::fmt::Debug for XetChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XetChunks")
            .field("chunks", &self.0.chunks.len())
            .finish()
    }
}

/// What one Xet upload sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct XetSent {
    /// Bytes of new xorbs and the shard.
    pub bytes: u64,
    /// Content bytes found in stored xorbs.
    pub deduplicated: u64,
}

impl HubClient {
    /// Uploads `object` (held in `data`, cut into `chunks` unless they are still to cut)
    /// through Xet: chunks, dedup, xorbs, shard.
    pub(super) async fn xet_transfer(
        &self,
        object: &LfsObject,
        data: Bytes,
        chunks: Option<XetChunks>,
        action: XetAction,
    ) -> Result<XetSent, HubError> {
        let cas = Cas {
            client: self,
            refresh: action.refresh,
            token: tokio::sync::Mutex::new(action.token),
        };
        let file = match chunks {
            Some(chunks) => chunks.0,
            None => tokio::task::spawn_blocking(move || Arc::new(Chunked::new(data)))
                .await
                .map_err(|e| HubError::Xet {
                    oid: object.sha256.clone(),
                    reason: format!("chunking stopped: {e}"),
                })?,
        };
        let queried = self.query_global_dedup(&cas, &file).await?;
        let (sha256, known) = (object.sha256.clone(), self.inner.xet_known.clone());
        let plan = tokio::task::spawn_blocking(move || {
            let known = known.lock().unwrap_or_else(|p| p.into_inner());
            plan::plan(&file, &sha256, &known)
        })
        .await
        .map_err(|e| HubError::Xet {
            oid: object.sha256.clone(),
            reason: format!("planning stopped: {e}"),
        })?;
        let UploadPlan {
            xorbs,
            shard,
            file_hash,
            deduplicated,
        } = plan;
        self.emit(HubEvent::ObjectStarted {
            oid: object.sha256.clone(),
            size: object.size,
            parts: xorbs.len() + 1,
        });
        let resumed = std::sync::atomic::AtomicU64::new(0);
        let upload = |(n, xorb): (usize, NewXorbUpload)| {
            let (cas, queried, resumed) = (&cas, queried.as_ref(), &resumed);
            async move {
                // One upload of a xorb at a time per client: identical artifacts uploaded at
                // once make identical xorbs, and the second waits for the first.
                let gate = self.xorb_gate(xorb.body.hash);
                let turn = gate.lock().await;
                let result = self.send_xorb(cas, &xorb, queried).await;
                drop(turn);
                self.release_gate(xorb.body.hash, gate);
                let bytes = result?;
                if bytes == 0 {
                    resumed.fetch_add(xorb.content, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.emit(HubEvent::PartUploaded {
                        oid: object.sha256.clone(),
                        part: n + 1,
                        bytes: xorb.body.len,
                    });
                }
                Ok::<u64, HubError>(bytes)
            }
        };
        // The first xorb goes alone: once any other is stored it is stored and registered
        // too, so the first query of a rerun (the file's first chunk) finds the file begun and
        // opens the queries that find the rest.
        let mut queue = xorbs.into_iter().enumerate();
        let first = match queue.next() {
            Some(xorb) => upload(xorb).await?,
            None => 0,
        };
        let sent: u64 = futures::stream::iter(queue)
            .map(upload)
            .buffer_unordered(XORBS_IN_FLIGHT)
            .try_fold(first, |total, bytes| async move { Ok(total + bytes) })
            .await?;
        let deduplicated = deduplicated + resumed.into_inner();
        let shard_len = shard.len() as u64;
        cas.post_shard(Bytes::from(shard)).await?;
        tracing::debug!(
            oid = %object.sha256,
            xet_hash = %file_hash.hex(),
            sent = sent + shard_len,
            deduplicated,
            "stored through Xet"
        );
        Ok(XetSent {
            bytes: sent + shard_len,
            deduplicated,
        })
    }

    /// Where this client knows `chunk` to be stored.
    fn known_at(&self, chunk: &XetHash) -> Option<(XetHash, u32)> {
        self.inner
            .xet_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(chunk)
    }

    /// The lock held while `xorb` is uploaded by this client.
    fn xorb_gate(&self, xorb: XetHash) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .xet_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(xorb)
            .or_default()
            .clone()
    }

    /// Forgets the lock of `xorb` once no other upload waits on it.
    fn release_gate(&self, xorb: XetHash, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut gates = self
            .inner
            .xet_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else holds or waits on it.
        if Arc::strong_count(&gate) <= 2 {
            gates.remove(&xorb);
        }
    }

    /// Remembers that the CAS stores `xorb` with `chunks`.
    fn remember(&self, xorb: XetHash, chunks: Vec<XetHash>) {
        self.inner
            .xet_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_xorb(xorb, chunks);
    }

    /// The dedup query's answer for `chunk`: the xorbs that hold it (none: 404).
    async fn dedup_query(
        &self,
        cas: &Cas<'_>,
        chunk: &XetHash,
    ) -> Result<Vec<shard::XorbInfo>, HubError> {
        let path = format!("/v1/chunks/default-merkledb/{}", chunk.hex());
        let response = match cas.send(Method::GET, &path, || None, None).await {
            Ok(response) => response,
            Err(HubError::Status { status: 404, .. }) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let url = redact(response.url().as_str());
        let body = response
            .bytes()
            .await
            .map_err(|source| HubError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })?;
        let answer = shard::parse(&body).map_err(|error| HubError::InvalidResponse {
            url,
            reason: format!("the global dedup answer is not a shard: {error}"),
        })?;
        Ok(answer.xorbs)
    }

    /// Asks the CAS about the file's first chunk and its indexed chunks, then — only if one of
    /// them is stored, so new content costs no more round trips — about the chunks that start
    /// a xorb by content; chunks a known xorb holds are not asked about (a few queries at
    /// once). Every xorb an answer lists becomes known (it may hold later chunks too). Returns
    /// the chunks asked about, or `None` when the CAS knows none of the file's indexed chunks.
    async fn query_global_dedup(
        &self,
        cas: &Cas<'_>,
        file: &Chunked,
    ) -> Result<Option<HashSet<XetHash>>, HubError> {
        let indexed: Vec<XetHash> = file.indexed_chunks().copied().collect();
        let mut asked = self.ask_dedup(cas, &indexed).await?;
        if !indexed.iter().any(|chunk| self.known_at(chunk).is_some()) {
            return Ok(None);
        }
        let starts: Vec<XetHash> = file.xorb_starts().copied().collect();
        asked.extend(self.ask_dedup(cas, &starts).await?);
        Ok(Some(asked))
    }

    /// Asks the dedup query about the chunks no known xorb holds (a few at once), and learns
    /// what the answers list. Returns the chunks asked about.
    async fn ask_dedup(
        &self,
        cas: &Cas<'_>,
        chunks: &[XetHash],
    ) -> Result<HashSet<XetHash>, HubError> {
        let unknown: Vec<XetHash> = chunks
            .iter()
            .filter(|chunk| self.known_at(chunk).is_none())
            .copied()
            .collect();
        let mut answers = futures::stream::iter(unknown.clone())
            .map(|chunk| async move { self.dedup_query(cas, &chunk).await })
            .buffered(DEDUP_QUERIES_IN_FLIGHT);
        while let Some(xorbs) = answers.next().await {
            self.learn(xorbs?);
        }
        Ok(unknown.into_iter().collect())
    }

    /// Records the xorbs a dedup answer listed.
    fn learn(&self, xorbs: Vec<shard::XorbInfo>) {
        let mut known = self
            .inner
            .xet_known
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for xorb in xorbs {
            known.add_xorb(xorb.xorb, xorb.chunks.into_iter().map(|(h, _)| h));
        }
    }

    /// Sends one new xorb unless the CAS is known to store it — from this client's memory, or
    /// (when the CAS knows part of the file and the xorb's first chunk was not asked about
    /// yet) the dedup query, which answers for xorbs an earlier, interrupted upload registered
    /// — then registers it. Returns the bytes sent.
    async fn send_xorb(
        &self,
        cas: &Cas<'_>,
        xorb: &NewXorbUpload,
        queried: Option<&HashSet<XetHash>>,
    ) -> Result<u64, HubError> {
        let (hash, first) = (xorb.body.hash, xorb.chunks[0]);
        if self.known_at(&first) == Some((hash, 0)) {
            return Ok(0);
        }
        if queried.is_some_and(|asked| !asked.contains(&first)) {
            let listed = self.dedup_query(cas, &first).await?;
            let stored = listed.iter().any(|x| x.xorb == hash);
            self.learn(listed);
            if stored {
                return Ok(0);
            }
        }
        let path = format!("/v1/xorbs/default/{}", hash.hex());
        let pieces = xorb.body.pieces.clone();
        cas.send(
            Method::POST,
            &path,
            || {
                let stream =
                    futures::stream::iter(pieces.clone().into_iter().map(Ok::<_, std::io::Error>));
                Some(reqwest::Body::wrap_stream(stream))
            },
            Some(xorb.body.len),
        )
        .await?;
        let registered = self.register_xorb(cas, xorb).await;
        self.remember(hash, xorb.chunks.clone());
        Ok(xorb.body.len + registered)
    }

    /// Posts the xorb's registration shard, so that the dedup query names the xorb before its
    /// file's shard exists (a killed upload's rerun finds it). Best effort: a CAS that refuses
    /// such shards gets none from this client again, and the upload goes on. Returns the bytes
    /// sent.
    async fn register_xorb(&self, cas: &Cas<'_>, xorb: &NewXorbUpload) -> u64 {
        use std::sync::atomic::Ordering;
        if !self.inner.xet_register.load(Ordering::Relaxed) {
            return 0;
        }
        match cas.post_shard(xorb.registration.clone()).await {
            Ok(()) => xorb.registration.len() as u64,
            Err(error) => {
                if let HubError::Status { status, .. } = &error
                    && (400..500).contains(status)
                {
                    self.inner.xet_register.store(false, Ordering::Relaxed);
                }
                tracing::warn!(
                    xorb = %xorb.body.hash.hex(),
                    "the CAS did not take the xorb's registration shard ({error}); uploads go on \
                     without it, and an interrupted upload will send such xorbs again"
                );
                0
            }
        }
    }
}

/// The Xet hash of `data` as every Xet client computes it (what `resolve/` answers carry as
/// `X-Xet-Hash`).
pub fn file_hash(data: Bytes) -> XetHash {
    Chunked::new(data).file_hash()
}
