//! Downloads: `resolve` (hub-protocol.md §6) and the LFS blob URL it redirects to.
//!
//! Regular files are served directly with `ETag` = git blob id. LFS files answer `302` to the
//! storage origin (a different origin from the Hub's, like a CDN), with `X-Linked-Etag` (the
//! sha256) and `X-Linked-Size`, so clients read the metadata from the redirect and never send
//! their token to storage. Both answers honour `Range` with `206` + `Content-Range`, which the
//! `hf-hub` crate needs (it probes with `Range: bytes=0-0`).

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

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
    let Some(size) = state.store.object_size(&oid) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "object does not exist",
        ));
    };
    let mut response = serve_file(&state.store.object_path(&oid), size, &method, &headers).await?;
    response
        .headers_mut()
        .insert(header::ETAG, header_value(&format!("\"{oid}\""))?);
    Ok(response)
}

/// Serves a stored file whole or as a `Range`, with exact `Content-Length` (also on `HEAD`).
async fn serve_file(
    path: &std::path::Path,
    size: u64,
    method: &Method,
    headers: &HeaderMap,
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
        let mut file = tokio::fs::File::open(path).await?;
        file.seek(SeekFrom::Start(start)).await?;
        Body::from_stream(ReaderStream::with_capacity(file.take(length), 1 << 18))
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

/// Parses a single `bytes=` range against `size`, clamping an end past the last byte (the
/// `hf-hub` crate asks for one byte past the end). `None` means 416.
fn parse_range(text: &str, size: u64) -> Option<(u64, u64)> {
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

fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text)
        .map_err(|_| ApiError::bad_request("value cannot be sent as a header"))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

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
