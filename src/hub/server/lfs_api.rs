//! The LFS side of an upload: preupload (which files go to LFS), the batch API, presigned
//! object and part PUTs, multipart completion, and verify (docs/hub.md, "Upload").

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use super::faults::{self, FaultState};
use super::paths;
use super::state::{ApiError, AppState, ConnectionKill, git_repo_name};
use super::store::RepoKey;
use crate::hub::RepoType;

#[derive(Deserialize)]
struct PreuploadRequest {
    files: Vec<PreuploadFile>,
}

#[derive(Deserialize)]
struct PreuploadFile {
    path: String,
    size: u64,
    #[serde(default)]
    sample: String,
}

/// `POST /api/{t}/{ns}/{name}/preupload/{rev}`: decides `lfs` or `regular` per file and reports
/// the id of the file currently at each path.
pub async fn preupload(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision): (String, String, String),
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    state.require_write(&headers)?;
    let key = state.existing_repo(kind, &namespace, &name)?;
    let request: PreuploadRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid preupload body: {e}")))?;
    if request.files.len() > state.limits.max_objects_per_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too many files in one preupload call",
        ));
    }
    let commit_id = state.commit_of(&key, &revision)?;
    let cached = state
        .commit(&key, &commit_id)?
        .ok_or_else(|| ApiError::bad_request("dangling ref"))?;
    let commit = &cached.record;
    let patterns = match commit.files.get(".gitattributes") {
        Some(entry) if !entry.lfs && entry.size < 1 << 20 => paths::lfs_patterns(
            &String::from_utf8_lossy(&state.store.read_object(&entry.sha256)?),
        ),
        _ => Vec::new(),
    };
    let mut answers = Vec::with_capacity(request.files.len());
    for file in request.files {
        paths::check_file_path(&file.path)?;
        let sample = base64::engine::general_purpose::STANDARD
            .decode(file.sample.as_bytes())
            .map_err(|_| {
                ApiError::bad_request(format!("invalid base64 sample for `{}`", file.path))
            })?;
        let lfs = file.size >= state.limits.lfs_threshold
            || sample.contains(&0)
            || patterns
                .iter()
                .any(|p| paths::gitattributes_match(p, &file.path));
        let oid = commit.files.get(&file.path).map(|e| {
            if e.lfs {
                e.sha256.clone()
            } else {
                e.git_oid.clone()
            }
        });
        answers.push(json!({
            "path": file.path,
            "uploadMode": if lfs { "lfs" } else { "regular" },
            "shouldIgnore": false,
            "oid": oid,
        }));
    }
    Ok(Json(json!({ "files": answers, "commitOid": commit_id })))
}

/// Query of every presigned URL.
#[derive(Deserialize)]
pub struct Signed {
    exp: u64,
    sig: String,
}

/// `PUT /_lfs/objects/{oid}/{size}`: a whole object (basic transfer), checked against its oid.
pub async fn put_object(
    State(state): State<Arc<AppState>>,
    Path((oid, size)): Path<(String, u64)>,
    Query(signed): Query<Signed>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_signature(&format!("put|{oid}|{size}"), signed.exp, &signed.sig)?;
    check_declared_length(&headers, size)?;
    state.check_room(size)?;
    let temp = state.store.temp_path();
    let file = tokio::fs::File::create(&temp).await?;
    let received = receive_into(file, body, size, true, None).await;
    let (digest, received) = match received {
        Ok(done) => done,
        Err(error) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(error);
        }
    };
    let digest = digest.expect("whole-object receive hashes");
    if received != size || digest != oid {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(ApiError::bad_request(format!(
            "content does not match: expected sha256 `{oid}` and {size} bytes, got `{digest}` and {received} bytes"
        )));
    }
    let store_state = state.clone();
    tokio::task::spawn_blocking(move || store_state.store.install_object(&temp, &oid))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    FaultState::bump(&state.faults.object_puts);
    Ok((StatusCode::OK, [(header::ETAG, format!("\"{digest}\""))]).into_response())
}

/// `PUT /_lfs/parts/{oid}/{size}/{chunk}/{n}`: one part of a multipart upload. Its length is
/// checked; its content is checked at completion, when the whole object is hashed.
pub async fn put_part(
    State(state): State<Arc<AppState>>,
    Path((oid, size, chunk, n)): Path<(String, u64, u64, u32)>,
    Query(signed): Query<Signed>,
    kill: Option<axum::Extension<ConnectionKill>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_signature(
        &format!("part|{oid}|{size}|{chunk}|{n}"),
        signed.exp,
        &signed.sig,
    )?;
    FaultState::bump(&state.faults.part_puts);
    if state.faults.take(|f| faults::take_fail_part(f, n)) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected part failure",
        ));
    }
    let count = size.div_ceil(chunk).max(1);
    if n == 0 || u64::from(n) > count {
        return Err(ApiError::bad_request(format!(
            "part {n} out of range 1..={count}"
        )));
    }
    let expected = if u64::from(n) == count {
        size - chunk * (count - 1)
    } else {
        chunk
    };
    check_declared_length(&headers, expected)?;
    state.check_room(expected)?;
    let drop_after = if state.faults.take(|f| faults::take_drop_part(f, n)) {
        kill.map(|axum::Extension(kill)| (kill, expected / 2))
    } else {
        None
    };
    // Parts are written in place, at their offset in one data file per object, so completion
    // only has to hash it (no second copy of the whole object).
    let folder = state.store.upload_dir(&oid);
    tokio::fs::create_dir_all(&folder).await?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(folder.join("data"))
        .await?;
    file.seek(std::io::SeekFrom::Start(chunk * (u64::from(n) - 1)))
        .await?;
    state
        .hashes
        .started(folder.join("data"), &oid, size, chunk, u64::from(n));
    let (_, received) = receive_into(file, body, expected, false, drop_after).await?;
    if received != expected {
        return Err(ApiError::bad_request(format!(
            "part {n} has {received} bytes, expected {expected}"
        )));
    }
    // The ETag ties the completion call to this exact upload of the part: its marker is
    // written only after the part's bytes are.
    let etag = format!("{n}-{expected}-{:016x}", rand::random::<u64>());
    tokio::fs::File::create(folder.join(format!("{n}.{etag}"))).await?;
    state.hashes.done(&oid, u64::from(n));
    Ok((StatusCode::OK, [(header::ETAG, format!("\"{etag}\""))]).into_response())
}

/// Refuses a body whose declared length is not the one expected, before reading it.
fn check_declared_length(headers: &HeaderMap, expected: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(declared) if declared != expected => Err(ApiError::bad_request(format!(
            "body of {declared} bytes, expected {expected}"
        ))),
        _ => Ok(()),
    }
}

/// Streams a request body into `file` (already positioned), hashing it when asked (whole
/// objects; parts are checked when the whole object is hashed at completion). Refuses a body
/// longer than `limit` before writing the excess.
async fn receive_into(
    file: tokio::fs::File,
    body: Body,
    limit: u64,
    hash: bool,
    drop_after: Option<(ConnectionKill, u64)>,
) -> Result<(Option<String>, u64), ApiError> {
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let Ok(data) = frame else {
            return Err(ApiError::bad_request("request body ended early"));
        };
        if received + data.len() as u64 > limit {
            return Err(ApiError::bad_request(format!(
                "body is longer than the expected {limit} bytes"
            )));
        }
        received += data.len() as u64;
        if hash {
            hasher.update(&data);
        }
        file.write_all(&data).await?;
        if let Some((kill, after)) = &drop_after
            && received >= *after
        {
            kill.0.cancel();
            // The connection task drops this future; never answer.
            match std::future::pending::<std::convert::Infallible>().await {}
        }
    }
    file.flush().await?;
    Ok((hash.then(|| hex::encode(hasher.finalize())), received))
}

#[derive(Deserialize)]
struct Completion {
    oid: String,
    parts: Vec<CompletedPart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletedPart {
    part_number: u64,
    etag: String,
}

/// `POST /_lfs/complete/{oid}/{size}/{chunk}`: assembles the parts in order, checks sha256 and
/// size, stores the object.
pub async fn complete(
    State(state): State<Arc<AppState>>,
    Path((oid, size, chunk)): Path<(String, u64, u64)>,
    Query(signed): Query<Signed>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.check_signature(
        &format!("complete|{oid}|{size}|{chunk}"),
        signed.exp,
        &signed.sig,
    )?;
    let request: Completion = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid completion body: {e}")))?;
    if request.oid != oid {
        return Err(ApiError::bad_request(
            "completion oid does not match the URL",
        ));
    }
    let count = size.div_ceil(chunk).max(1);
    if request.parts.len() as u64 != count
        || request
            .parts
            .iter()
            .enumerate()
            .any(|(i, p)| p.part_number != i as u64 + 1)
    {
        return Err(ApiError::bad_request(format!(
            "completion must list parts 1..={count} in order"
        )));
    }
    let folder = state.store.upload_dir(&oid);
    let part_files: Vec<PathBuf> = request
        .parts
        .iter()
        .map(|p| folder.join(format!("{}.{}", p.part_number, p.etag.trim_matches('"'))))
        .collect();
    let incremental = state.hashes.finish(&oid).await;
    let worker = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        assemble(&worker, &oid, size, &part_files, &folder, incremental)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    result?;
    FaultState::bump(&state.faults.completions);
    Ok(Json(json!({"success": true})).into_response())
}

fn assemble(
    state: &AppState,
    oid: &str,
    size: u64,
    markers: &[PathBuf],
    folder: &std::path::Path,
    incremental: Option<String>,
) -> Result<(), ApiError> {
    if let Some(missing) = markers.iter().find(|p| !p.is_file()) {
        let name = missing
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(ApiError::bad_request(format!(
            "part `{name}` was not uploaded or its etag is wrong"
        )));
    }
    let data = folder.join("data");
    let total = fs_err::metadata(&data)?.len();
    // Usually the parts were hashed in order as they arrived; otherwise hash the file now.
    let digest = match incremental {
        Some(digest) => digest,
        None => {
            let mut hasher = Sha256::new();
            std::io::copy(&mut fs_err::File::open(&data)?, &mut hasher)?;
            hex::encode(hasher.finalize())
        }
    };
    if digest != oid || total != size {
        // Keep the parts: a client may re-send the wrong ones and complete again.
        return Err(ApiError::bad_request(format!(
            "assembled object does not match: expected sha256 `{oid}` and {size} bytes, got `{digest}` and {total} bytes"
        )));
    }
    state.store.install_object(&data, oid)?;
    let _ = fs_err::remove_dir_all(folder);
    Ok(())
}

#[derive(Deserialize)]
struct VerifyRequest {
    oid: String,
    size: u64,
}

/// `POST /{p}{ns}/{name}.git/info/lfs/objects/verify`: 200 when the object is stored whole.
pub async fn verify(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name_git): (String, String),
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let name = git_repo_name(&name_git)?;
    state.require_write(&headers)?;
    let _key: RepoKey = state.existing_repo(kind, &namespace, name)?;
    let request: VerifyRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid verify body: {e}")))?;
    if !paths::is_sha256_hex(&request.oid) {
        return Err(ApiError::bad_request("oid must be a lowercase hex sha256"));
    }
    match state.store.object_size(&request.oid) {
        Some(size) if size == request.size => Ok(Json(json!({"success": true})).into_response()),
        Some(size) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("object has {size} bytes, not {}", request.size),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "object does not exist",
        )),
    }
}
