//! The Xet HTTP endpoints: the Hub's token routes and the CAS API (the Xet protocol
//! specification, "API"), served on the Hub's own origin, and the signed xorb range URLs that
//! reconstructions hand out, on the storage origin (like a CDN: no token goes there).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::cas::{self, CasError};
use super::hash::XetHash;
use super::shard;
use super::token::{self, Grant, Scope};
use super::xorb;
use crate::hub::RepoType;
use crate::hub::server::paths;
use crate::hub::server::repo_api::load;
use crate::hub::server::resolve::{header_value, parse_range, serve_file};
use crate::hub::server::state::{ApiError, AppState};

type S = State<Arc<AppState>>;

/// `GET /api/{t}/{ns}/{name}/xet-{read|write}-token/{rev}`: a token for the CAS, as JSON
/// (`accessToken`, `exp`, `casUrl`: what `hf_xet` reads) and as the `X-Xet-*` headers (what
/// `huggingface_hub` reads).
pub async fn issue_token(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision): (String, String, String),
    scope: Scope,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let repo = state.existing_repo(kind, &namespace, &name)?;
    let private = state.store.repo_meta(&repo).is_ok_and(|meta| meta.private);
    if scope == Scope::Write || private {
        state.require_write(&headers)?;
    }
    if scope == Scope::Read {
        // A read token is for a revision that exists (the client sends the commit it resolved).
        state.commit_of(&repo, &revision)?;
    }
    let grant = Grant {
        scope,
        repo,
        revision,
        expires: paths::unix_now() + state.limits.xet_token_ttl_secs,
    };
    let access_token = token::issue(&state, &grant);
    crate::hub::server::faults::FaultState::bump(&state.faults.xet_tokens_issued);
    let cas_url = state.base_url.clone();
    let mut response = Json(json!({
        "accessToken": access_token,
        "exp": grant.expires,
        "casUrl": cas_url,
    }))
    .into_response();
    let out = response.headers_mut();
    out.insert("x-xet-cas-url", header_value(&cas_url)?);
    out.insert("x-xet-access-token", header_value(&access_token)?);
    out.insert("x-xet-token-expiration", HeaderValue::from(grant.expires));
    Ok(response)
}

/// The path's hash, 400 unless it is 64 lowercase hex digits.
fn parse_hash(text: &str) -> Result<XetHash, ApiError> {
    XetHash::from_hex(text)
        .ok_or_else(|| ApiError::bad_request("hash must be 64 lowercase hex digits"))
}

/// Reads a whole upload body, 413 beyond `limit`.
/// Reads a whole body of at most `limit` bytes (else 413) into one buffer sized from its
/// `Content-Length` when it has one (capped at `limit`), so a 64 MiB xorb is not copied through
/// a series of doubling buffers.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<axum::body::Bytes, ApiError> {
    use futures::StreamExt as _;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than the {limit} bytes this endpoint takes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|d| d > limit) {
        return Err(too_large());
    }
    let mut buffer = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|_| ApiError::bad_request("the body was cut off"))?;
        if (buffer.len() + frame.len()) as u64 > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&frame);
    }
    Ok(buffer.freeze())
}

/// Reads a body to its end without keeping it (at most `limit` bytes, else 413).
async fn drain_body(body: Body, limit: u64) -> Result<(), ApiError> {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|_| ApiError::bad_request("the body was cut off"))?;
        total += frame.len() as u64;
        if total > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than the {limit} bytes this endpoint takes"),
            ));
        }
    }
    Ok(())
}

fn refusal(error: CasError) -> ApiError {
    match error {
        CasError::Store(error) => error.into(),
        CasError::Corrupt { .. } => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "validation task failed"))?
}

/// `POST /v1/xorbs/default/{hash}`: stores a xorb once every chunk, the hash and the footer
/// check out.
pub async fn upload_xorb(
    State(state): S,
    Path((prefix, hash)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    token::check(&state, &headers, Scope::Write)?;
    crate::hub::server::faults::FaultState::bump(&state.faults.xorb_posts);
    if prefix != "default" {
        return Err(ApiError::bad_request("the xorb prefix must be `default`"));
    }
    if state
        .faults
        .take(|f| crate::hub::server::faults::take_counted(&mut f.fail_next_xorbs))
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "xorb upload failed (injected fault)",
        ));
    }
    let hash = parse_hash(&hash)?;
    if cas::has_xorb(&state.store, &hash) {
        crate::hub::server::faults::FaultState::bump(&state.faults.xorbs_already_stored);
        if cas::is_indexed(&state.store, &hash) {
            crate::hub::server::faults::FaultState::bump(&state.faults.indexed_xorbs_sent_again);
        }
        // Read the body to its end (dropping it) before answering: an answer sent while the
        // client is still writing makes it see a broken pipe, not the answer.
        drain_body(body, state.limits.max_xorb_bytes).await?;
        return Ok(Json(json!({ "was_inserted": false })));
    }
    let _permit =
        state.xet_uploads.acquire().await.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down")
        })?;
    let bytes = read_body(&headers, body, state.limits.max_xorb_bytes).await?;
    state
        .faults
        .cas_bytes_received
        .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    state.check_room(bytes.len() as u64)?;
    let task_state = state.clone();
    let inserted = blocking(move || {
        let chunks =
            xorb::validate(&bytes, &hash).map_err(|e| ApiError::bad_request(e.to_string()))?;
        cas::install_xorb(&task_state.store, &hash, &bytes, &chunks).map_err(refusal)
    })
    .await?;
    crate::hub::server::faults::FaultState::bump(if inserted {
        &state.faults.xorbs_stored
    } else {
        &state.faults.xorbs_already_stored
    });
    Ok(Json(json!({ "was_inserted": inserted })))
}

/// `POST /v1/shards`: records the files of a shard once every term checks out against stored
/// xorbs and each file's content matches its sha256.
pub async fn upload_shard(
    State(state): S,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    token::check(&state, &headers, Scope::Write)?;
    crate::hub::server::faults::FaultState::bump(&state.faults.shard_posts);
    let _permit =
        state.xet_uploads.acquire().await.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down")
        })?;
    let bytes = read_body(&headers, body, state.limits.max_shard_bytes).await?;
    state
        .faults
        .cas_bytes_received
        .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let parsed = shard::parse(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let task_state = state.clone();
    let new =
        blocking(move || cas::apply_shard(&task_state.store, &parsed).map_err(refusal)).await?;
    // 1: registered ("SyncPerformed"), 0: already there.
    Ok(Json(json!({ "result": u8::from(new) })))
}

/// `GET /v1/chunks/{default,default-merkledb}/{hash}`: the global dedup query. A shard listing the xorb
/// that holds the chunk, or 404.
pub async fn query_chunk(
    State(state): S,
    Path((prefix, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    token::check(&state, &headers, Scope::Read)?;
    // The specification names `default-merkledb`; `hf_xet` 1.8 asks under `default`.
    if prefix != "default-merkledb" && prefix != "default" {
        return Err(ApiError::bad_request(
            "the dedup prefix must be `default` or `default-merkledb`",
        ));
    }
    let chunk = parse_hash(&hash)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "chunk is not known");
    let xorb = cas::xorb_of_chunk(&state.store, &chunk).ok_or_else(not_found)?;
    let index = cas::xorb_index(&state.store, &xorb)
        .map_err(refusal)?
        .ok_or_else(not_found)?;
    let listed = shard::XorbInfo {
        xorb,
        chunks: index.iter().map(|c| (c.hash, c.unpacked)).collect(),
    };
    let now = paths::unix_now();
    let body = shard::dedup_answer(&[listed], now, now + 7 * 24 * 3600);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// `GET /v1/reconstructions/{file}`: the terms of a file (or of a `Range` of it) and a signed
/// URL per xorb byte range. The file must be in the revision the token was issued for.
pub async fn reconstruction(
    State(state): S,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grant = token::check(&state, &headers, Scope::Read)?;
    let file = parse_hash(&file)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "file is not known");
    let record = cas::file_record(&state.store, &file)
        .map_err(refusal)?
        .ok_or_else(not_found)?;
    let commit_id = state.commit_of(&grant.repo, &grant.revision)?;
    let commit = load(&state, &grant.repo, &commit_id)?;
    if !commit
        .record
        .files
        .values()
        .any(|f| f.sha256 == record.sha256)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the file is not in the revision this token was issued for",
        ));
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(text) => Some(parse_range(text, record.size).ok_or_else(|| {
            ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable")
        })?),
    };
    let (skip, pieces) = cas::reconstruct(&state.store, &record, range).map_err(refusal)?;
    let expires = paths::unix_now() + state.limits.presign_ttl_secs;
    let mut terms = Vec::with_capacity(pieces.len());
    let mut fetch_info = serde_json::Map::new();
    for piece in &pieces {
        let xorb = piece.term.xorb.hex();
        terms.push(json!({
            "hash": xorb,
            "unpacked_length": piece.term.bytes,
            "range": { "start": piece.term.start, "end": piece.term.end },
        }));
        let entries = fetch_info
            .entry(xorb.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("fetch info entries are arrays");
        let range = json!({ "start": piece.term.start, "end": piece.term.end });
        if entries.iter().any(|e| e["range"] == range) {
            continue;
        }
        let (first, last) = (piece.first_byte, piece.last_byte);
        let url = state.presign(
            &state.storage_url,
            &format!("/_xet/xorbs/{xorb}/{first}/{last}"),
            &format!("xet-xorb|{xorb}|{first}|{last}"),
            expires,
        );
        entries.push(json!({
            "range": range,
            "url": url,
            "url_range": { "start": first, "end": last },
        }));
    }
    Ok(Json(json!({
        "offset_into_first_range": skip,
        "terms": terms,
        "fetch_info": fetch_info,
    }))
    .into_response())
}

/// The query of a signed xorb range URL.
#[derive(Deserialize)]
pub struct Signed {
    exp: u64,
    sig: String,
}

/// `GET /_xet/xorbs/{xorb}/{first}/{last}?exp=…&sig=…`: the bytes of a xorb range a
/// reconstruction handed out (a `Range` header, if sent, must name exactly that range).
pub async fn xorb_range(
    State(state): S,
    Path((xorb, first, last)): Path<(String, u64, u64)>,
    Query(signed): Query<Signed>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_signature(
        &format!("xet-xorb|{xorb}|{first}|{last}"),
        signed.exp,
        &signed.sig,
    )?;
    let hash = parse_hash(&xorb)?;
    let wanted = format!("bytes={first}-{last}");
    if let Some(range) = headers.get(header::RANGE)
        && range.to_str().ok().map(str::trim) != Some(wanted.as_str())
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the Range header must be the signed range",
        )
        .code("AccessDenied"));
    }
    let path = cas::xorb_path(&state.store, &hash);
    let size = std::fs::metadata(&path)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "xorb does not exist"))?
        .len();
    let mut range_only = HeaderMap::new();
    range_only.insert(header::RANGE, header_value(&wanted)?);
    serve_file(&path, size, &method, &range_only).await
}
