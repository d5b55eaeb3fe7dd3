//! `POST /api/{t}/{ns}/{name}/commit/{rev}`: the NDJSON commit (docs/hub.md, "Commits").
//!
//! The whole body is parsed and every operation checked before anything is written, so a bad
//! request leaves the repo exactly as it was. Ref updates happen under the repo's lock, which is
//! what makes concurrent commits to one branch safe (each one sees the previous head).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::faults::FaultState;
use super::paths;
use super::state::{ApiError, AppState};
use super::store::{CommitRecord, FileEntry, sha256_hex};
use crate::hub::RepoType;

#[derive(Deserialize)]
struct Line {
    key: String,
    value: Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parent_commit: Option<String>,
}

#[derive(Deserialize)]
struct InlineFile {
    path: String,
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct LfsFile {
    path: String,
    oid: String,
    #[serde(default)]
    algo: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
struct Deletion {
    path: String,
}

enum Operation {
    Add {
        path: String,
        content: Vec<u8>,
    },
    AddLfs {
        path: String,
        oid: String,
        size: u64,
    },
    Delete {
        path: String,
    },
    DeleteFolder {
        path: String,
    },
}

/// Query of the commit endpoint.
#[derive(Deserialize, Default)]
pub struct CommitQuery {
    #[serde(default)]
    create_pr: Option<String>,
}

/// The commit handler.
pub async fn commit(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision): (String, String, String),
    query: CommitQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    state.require_write(&headers)?;
    let key = state.existing_repo(kind, &namespace, &name)?;
    FaultState::bump(&state.faults.commit_posts);
    if state
        .faults
        .take(|f| std::mem::take(&mut f.rate_limit_next_commit))
    {
        FaultState::bump(&state.faults.rate_limited);
        return Err(ApiError::rate_limited(
            "injected rate limit on this commit",
            1,
        ));
    }
    let create_pr = query
        .create_pr
        .as_deref()
        .is_some_and(|v| matches!(v, "1" | "true" | "True"));
    let (header, operations) = parse_body(&state, body).await?;
    let operations = check_operations(&state, operations)?;

    let lock = state.repo_lock(&key);
    let _guard = lock.lock().await;
    let mut refs = state.store.refs(&key)?;
    let head = state.commit_of(&key, &revision)?;
    let is_pr_ref = revision.starts_with("refs/pr/");
    let branch = revision
        .strip_prefix("refs/heads/")
        .unwrap_or(&revision)
        .to_owned();
    if !create_pr && !is_pr_ref && !refs.branches.contains_key(&branch) {
        return Err(ApiError::bad_request(format!(
            "can only commit to a branch or a pull request, not `{revision}`"
        )));
    }
    if let Some(parent) = header.parent_commit.as_deref().filter(|p| !p.is_empty())
        && (parent.len() < 7 || !head.starts_with(parent))
    {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("parent commit `{parent}` is not the head `{head}` of `{revision}`"),
        ));
    }
    let parent = state
        .commit(&key, &head)?
        .ok_or_else(|| ApiError::bad_request("dangling ref"))?;
    let files = apply(&state, parent.record.files.clone(), operations)?;
    state
        .check_commit_rate(&key)
        .inspect_err(|_| FaultState::bump(&state.faults.rate_limited))?;

    let record = CommitRecord::new(vec![head], header.summary, header.description, files);
    state.store.write_commit(&key, &record)?;
    let mut pr_number = None;
    if create_pr {
        let number = refs.pull_requests.keys().max().map_or(1, |n| n + 1);
        refs.pull_requests.insert(number, record.id.clone());
        pr_number = Some(number);
    } else if let Some(number) = revision
        .strip_prefix("refs/pr/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        refs.pull_requests.insert(number, record.id.clone());
    } else {
        refs.branches.insert(branch, record.id.clone());
    }
    // The rename of refs.json is the commit point.
    state.store.write_refs(&key, &refs)?;
    FaultState::bump(&state.faults.commits_applied);
    drop(_guard);

    if state
        .faults
        .take(|f| std::mem::take(&mut f.commit_applied_then_500))
    {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected failure after the commit was applied",
        ));
    }
    let repo_url = format!("{}/{}{}", state.base_url, kind.git_prefix(), key.id());
    let mut answer = json!({
        "success": true,
        "commitOid": record.id,
        "commitUrl": format!("{repo_url}/commit/{}", record.id),
        "hookOutput": "",
    });
    if let Some(number) = pr_number {
        answer["pullRequestUrl"] = json!(format!("{repo_url}/discussions/{number}"));
    }
    Ok(Json(answer))
}

/// Reads the NDJSON body line by line with a per-line and a total limit (413 beyond either).
async fn parse_body(state: &AppState, body: Body) -> Result<(Header, Vec<Operation>), ApiError> {
    let max_line = state.limits.max_ndjson_line;
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while let Some(frame) = stream.next().await {
        let data = frame.map_err(|_| ApiError::bad_request("request body ended early"))?;
        total += data.len() as u64;
        if total > state.limits.max_commit_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "commit body is too large",
            ));
        }
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(end + 1);
            pending.truncate(end);
            lines.push(std::mem::replace(&mut pending, rest));
        }
        if pending.len() > max_line {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an NDJSON line is longer than {max_line} bytes"),
            ));
        }
    }
    lines.push(pending);
    let mut header = None;
    let mut operations = Vec::new();
    for raw in lines
        .iter()
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
    {
        if raw.len() > max_line {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an NDJSON line is longer than {max_line} bytes"),
            ));
        }
        let line: Line = serde_json::from_slice(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid NDJSON line: {e}")))?;
        let bad = |e: serde_json::Error| {
            ApiError::bad_request(format!("invalid `{}` line: {e}", line.key))
        };
        match line.key.as_str() {
            "header" if header.is_none() && operations.is_empty() => {
                header = Some(serde_json::from_value(line.value.clone()).map_err(bad)?)
            }
            "file" => {
                let file: InlineFile = serde_json::from_value(line.value.clone()).map_err(bad)?;
                let content = match file.encoding.as_deref() {
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(file.content.as_bytes())
                        .map_err(|_| {
                            ApiError::bad_request(format!(
                                "invalid base64 content for `{}`",
                                file.path
                            ))
                        })?,
                    None | Some("utf-8") => file.content.into_bytes(),
                    Some(other) => {
                        return Err(ApiError::bad_request(format!("unknown encoding `{other}`")));
                    }
                };
                operations.push(Operation::Add {
                    path: file.path,
                    content,
                });
            }
            "lfsFile" => {
                let file: LfsFile = serde_json::from_value(line.value.clone()).map_err(bad)?;
                if file.algo.as_deref().is_some_and(|a| a != "sha256") {
                    return Err(ApiError::bad_request(
                        "only sha256 LFS objects are supported",
                    ));
                }
                let size = file.size.unwrap_or(u64::MAX);
                operations.push(Operation::AddLfs {
                    path: file.path,
                    oid: file.oid,
                    size,
                });
            }
            "deletedFile" => operations.push(Operation::Delete {
                path: serde_json::from_value::<Deletion>(line.value.clone())
                    .map_err(bad)?
                    .path,
            }),
            "deletedFolder" => operations.push(Operation::DeleteFolder {
                path: serde_json::from_value::<Deletion>(line.value.clone())
                    .map_err(bad)?
                    .path,
            }),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected NDJSON key `{other}`"
                )));
            }
        }
    }
    let header =
        header.ok_or_else(|| ApiError::bad_request("the first NDJSON line must be the header"))?;
    Ok((header, operations))
}

/// Validates paths and LFS references before anything is written.
fn check_operations(
    state: &AppState,
    operations: Vec<Operation>,
) -> Result<Vec<Operation>, ApiError> {
    for operation in &operations {
        match operation {
            Operation::Add { path, .. } | Operation::Delete { path } => {
                paths::check_file_path(path)?
            }
            Operation::DeleteFolder { path } => {
                paths::normalize_folder(path)?;
            }
            Operation::AddLfs { path, oid, size } => {
                paths::check_file_path(path)?;
                if !paths::is_sha256_hex(oid) {
                    return Err(ApiError::bad_request(format!(
                        "lfs oid `{oid}` is not a lowercase hex sha256"
                    )));
                }
                match state.store.object_size(oid) {
                    None => {
                        return Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!("lfs object `{oid}` for `{path}` was never uploaded"),
                        ));
                    }
                    Some(stored) if *size != u64::MAX && stored != *size => {
                        return Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!(
                                "lfs object `{oid}` has {stored} bytes, the commit says {size}"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(operations)
}

/// Applies checked operations to a tree. Regular contents are stored as objects first (orphans
/// after a failure are harmless; nothing refers to them).
fn apply(
    state: &AppState,
    mut files: BTreeMap<String, FileEntry>,
    operations: Vec<Operation>,
) -> Result<BTreeMap<String, FileEntry>, ApiError> {
    let mut to_store = Vec::new();
    for operation in operations {
        match operation {
            Operation::Add { path, content } => {
                let sha256 = sha256_hex(&content);
                let entry = FileEntry {
                    size: content.len() as u64,
                    sha256: sha256.clone(),
                    lfs: false,
                    git_oid: paths::git_blob_id(&content),
                };
                check_no_conflict(&files, &path)?;
                files.insert(path, entry);
                to_store.push((sha256, content));
            }
            Operation::AddLfs { path, oid, .. } => {
                let size = state.store.object_size(&oid).unwrap_or_default();
                let git_oid = paths::git_blob_id(paths::lfs_pointer(&oid, size).as_bytes());
                check_no_conflict(&files, &path)?;
                files.insert(
                    path,
                    FileEntry {
                        size,
                        sha256: oid,
                        lfs: true,
                        git_oid,
                    },
                );
            }
            Operation::Delete { path } => {
                if files.remove(&path).is_none() {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("A file with this name doesn't exist: `{path}`"),
                    )
                    .code("EntryNotFound"));
                }
            }
            Operation::DeleteFolder { path } => {
                let prefix = format!("{}/", paths::normalize_folder(&path)?);
                let before = files.len();
                files.retain(|p, _| !p.starts_with(&prefix));
                if files.len() == before {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("A folder with this name doesn't exist: `{path}`"),
                    )
                    .code("EntryNotFound"));
                }
            }
        }
    }
    for (sha256, content) in to_store {
        state.store.put_object_bytes(&sha256, &content)?;
    }
    Ok(files)
}

/// A file cannot sit where a folder is, nor inside a path that is a file.
fn check_no_conflict(files: &BTreeMap<String, FileEntry>, path: &str) -> Result<(), ApiError> {
    let as_folder = format!("{path}/");
    let folder_clash = files
        .range(as_folder.clone()..)
        .next()
        .is_some_and(|(p, _)| p.starts_with(&as_folder));
    let file_clash = path
        .match_indices('/')
        .any(|(i, _)| files.contains_key(&path[..i]));
    if folder_clash || file_clash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{path}` conflicts with an existing file or folder"),
        ));
    }
    Ok(())
}
