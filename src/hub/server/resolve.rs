//! Downloads: `resolve` (docs/hub.md, "Downloads") and the LFS blob URL it redirects to.
//!
//! Regular files are served directly with `ETag` = git blob id. LFS files answer `302` to the
//! storage origin (a different origin from the Hub's, like a CDN), with `X-Linked-Etag` (the
//! sha256) and `X-Linked-Size`, so clients read the metadata from the redirect and never send
//! their token to storage. Both answers honour `Range` with `206` + `Content-Range`, which the
//! `hf-hub` crate needs (it probes with `Range: bytes=0-0`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

use super::paths;
use super::repo_api::{encode_path, load};
use super::state::{ApiError, AppState};
use crate::hub::RepoType;

/// `GET`/`HEAD /{p}{ns}/{name}/resolve/{rev}/{path}`.
pub async fn resolve(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision, path): (String, String, String, String),
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = state.existing_repo(kind, &namespace, &name)?;
    // A private repo's files are read with the token only, as on the Hub (private and gated).
    if state.store.repo_meta(&key).is_ok_and(|meta| meta.private) {
        state.require_write(&headers)?;
    }
    let commit_id = state.commit_of(&key, &revision)?;
    paths::check_file_path(&path)?;
    let cached = load(&state, &key, &commit_id)?;
    let Some(entry) = cached.record.files.get(&path) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "Entry not found")
            .code("EntryNotFound")
            .with_commit(commit_id));
    };
    if entry.lfs {
        let location = format!(
            "{}/_lfs/blobs/{}?name={}",
            state.storage_url,
            entry.sha256,
            encode_path(&path)
        );
        let mut response = StatusCode::FOUND.into_response();
        let out = response.headers_mut();
        out.insert(header::LOCATION, header_value(&location)?);
        out.insert("x-repo-commit", header_value(&commit_id)?);
        out.insert(
            "x-linked-etag",
            header_value(&format!("\"{}\"", entry.sha256))?,
        );
        out.insert("x-linked-size", HeaderValue::from(entry.size));
        out.insert(
            header::ETAG,
            header_value(&format!("\"{}\"", entry.git_oid))?,
        );
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        if state.xet {
            super::xet::add_resolve_headers(&state, &key, &commit_id, &entry.sha256, out);
        }
        return Ok(response);
    }
    let file = state.store.object_path(&entry.sha256);
    let mut response = serve_file(&file, entry.size, &method, &headers).await?;
    let out = response.headers_mut();
    out.insert("x-repo-commit", header_value(&commit_id)?);
    out.insert(
        header::ETAG,
        header_value(&format!("\"{}\"", entry.git_oid))?,
    );
    Ok(response)
}

/// `GET`/`HEAD /_lfs/blobs/{oid}`: the storage side of an LFS download (reads are open).
pub async fn blob(
    State(state): State<Arc<AppState>>,
    Path(oid): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !paths::is_sha256_hex(&oid) {
        return Err(ApiError::bad_request("oid must be a lowercase hex sha256"));
    }
    let path = state.store.object_path(&oid);
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "object does not exist");
    let mut response = match std::fs::metadata(&path) {
        Ok(meta) => serve_file(&path, meta.len(), &method, &headers).await?,
        // Stored once, as Xet xorbs.
        Err(_) => {
            let record =
                super::xet::cas::record_of_sha256(&state.store, &oid).ok_or_else(not_found)?;
            serve(record.size, &method, &headers, |start, length| {
                Ok(Body::from_stream(stream_xet(
                    state.clone(),
                    record,
                    start,
                    length,
                )))
            })?
        }
    };
    response
        .headers_mut()
        .insert(header::ETAG, header_value(&format!("\"{oid}\""))?);
    Ok(response)
}

/// Serves a stored file whole or as a `Range`, with exact `Content-Length` (also on `HEAD`).
pub(super) async fn serve_file(
    path: &std::path::Path,
    size: u64,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    serve(size, method, headers, |start, length| {
        Ok(Body::from_stream(stream_file(
            std::fs::File::open(path)?,
            start,
            length,
        )))
    })
}

/// Answers a download of `size` bytes whole or as a `Range`, with exact `Content-Length` (also
/// on `HEAD`); `body` gives the bytes from `start`, `length` long.
fn serve(
    size: u64,
    method: &Method,
    headers: &HeaderMap,
    body: impl FnOnce(u64, u64) -> Result<Body, ApiError>,
) -> Result<Response, ApiError> {
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(text) => match parse_range(text, size) {
            Some(range) => Some(range),
            None => {
                let mut error =
                    ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable")
                        .into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    error.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(error);
            }
        },
    };
    let (status, start, length) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end + 1 - start),
        None => (StatusCode::OK, 0, size),
    };
    let body = if method == Method::HEAD || length == 0 {
        Body::empty()
    } else {
        body(start, length)?
    };
    let mut response = (status, body).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        out.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{}/{size}", start + length - 1))?,
        );
    }
    Ok(response)
}

/// Bytes of a stored file mapped at a time by a download.
const WINDOW: u64 = 1 << 22;
/// Bytes per body chunk handed to the socket.
const CHUNK: usize = 1 << 18;
/// Chunks prepared ahead of the socket per download.
const CHUNKS_AHEAD: usize = 16;

/// Streams `length` bytes of `file` from `start`, straight from the page cache: one blocking
/// thread maps [`WINDOW`] bytes at a time (pre-faulted, so disk reads happen there and never on
/// the runtime's threads) and hands out [`CHUNK`]-byte slices of the mapping, so the only copy
/// is the kernel's into the socket. (Reading into buffers cost one more copy per byte, and
/// `tokio::fs` one thread hand-off per read; together ~20% of deep verify's throughput.)
fn stream_file(
    file: std::fs::File,
    start: u64,
    length: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let end = start + length;
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(WINDOW);
            let window = match map(&file, offset, len) {
                Ok(window) => Bytes::from_owner(window),
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            };
            for at in (0..window.len()).step_by(CHUNK) {
                let chunk = window.slice(at..(at + CHUNK).min(window.len()));
                // A closed channel means the client went away: stop.
                if sender.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            offset += len;
        }
    });
    futures::stream::poll_fn(move |context| receiver.poll_recv(context))
}

/// Streams `length` bytes from `start` of a file stored as Xet xorbs: one blocking thread
/// reads them chunk by chunk (slices of the mapped xorbs, see [`cas::read_range`]) ahead of the
/// socket. A stored xorb found broken ends the body early (the client sees a short read).
///
/// [`cas::read_range`]: super::xet::cas::read_range
fn stream_xet(
    state: Arc<AppState>,
    record: super::xet::cas::FileRecord,
    start: u64,
    length: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let read = super::xet::cas::read_range(&state.store, &record, start, length, |bytes| {
            // A closed channel means the client went away: stop.
            sender.blocking_send(Ok(bytes)).is_ok()
        });
        if let Err(error) = read {
            tracing::error!(sha256 = %record.sha256, "cannot serve a Xet file: {error}");
            let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
        }
    });
    futures::stream::poll_fn(move |context| receiver.poll_recv(context))
}

/// Maps `len` bytes of a stored object from `offset`, read-only and pre-faulted.
#[allow(unsafe_code)]
fn map(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<memmap2::Mmap> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a mapping is only unsound if the file changes under it. Stored objects never do:
    // the store writes each object to a temporary file and renames it into place under its
    // content hash, and never writes to or truncates an object file afterwards. Renaming a
    // second upload of the same object over it, or removing it, leaves this mapping intact.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map(file)
    }
}

/// Parses a single `bytes=` range against `size`, clamping an end past the last byte (the
/// `hf-hub` crate asks for one byte past the end). `None` means 416.
pub(super) fn parse_range(text: &str, size: u64) -> Option<(u64, u64)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            (size.saturating_sub(suffix), size - 1)
        }
        (start, "") => (start.parse().ok()?, size - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

pub(super) fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text)
        .map_err(|_| ApiError::bad_request("value cannot be sent as a header"))
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt as _;

    use super::{CHUNK, WINDOW, parse_range, stream_file};

    /// Whole files and ranges that start off page boundaries and cross mapping windows come out
    /// byte for byte, in chunks no larger than [`CHUNK`].
    #[tokio::test]
    async fn stored_files_stream_exactly_across_windows() {
        let window = WINDOW as usize;
        let bytes: Vec<u8> = (0..2 * window + 12_345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        let cases = [
            (0, bytes.len()),
            (1, 1),
            (4095, 3),
            (window - 7, 20),
            (12_345, window + 1),
            (bytes.len() - 1, 1),
        ];
        for (start, length) in cases {
            let chunks: Vec<bytes::Bytes> =
                stream_file(file.reopen().unwrap(), start as u64, length as u64)
                    .try_collect()
                    .await
                    .unwrap();
            assert!(chunks.iter().all(|chunk| chunk.len() <= CHUNK));
            assert_eq!(
                chunks.concat(),
                bytes[start..start + length],
                "{start}+{length}"
            );
        }
    }

    #[test]
    fn ranges_clamp_and_refuse_like_http() {
        assert_eq!(parse_range("bytes=0-0", 10), Some((0, 0)));
        assert_eq!(parse_range("bytes=0-10", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
        assert_eq!(parse_range("lines=1-2", 10), None);
    }
}
