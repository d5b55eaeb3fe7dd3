//! `POST /api/{t}/{ns}/{name}/commit/{rev}`: the NDJSON commit (hub-protocol.md §4.6).
//!
//! The whole body is parsed and every operation checked before the repo changes, so a bad
//! request leaves the repo exactly as it was. Ref updates happen under the repo's lock, which is
//! what makes concurrent commits to one branch safe (each one sees the previous head).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::commit_body::{self, Operation};
use super::faults::FaultState;
use super::paths;
use super::state::{ApiError, AppState};
use super::store::{CommitRecord, FileEntry};
use crate::hub::RepoType;

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
    let parsed = commit_body::parse(&state, body).await?;
    let (header, operations) = (parsed.header, parsed.operations);
    // Inline contents become durable before any commit can refer to them.
    let store_state = state.clone();
    tokio::task::spawn_blocking(move || store_state.store.sync_objects(&parsed.new_objects))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    check_operations(&state, &operations)?;

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

/// Checks that every LFS object referred to was uploaded, with the stated size (paths were
/// checked while parsing).
fn check_operations(state: &AppState, operations: &[Operation]) -> Result<(), ApiError> {
    for operation in operations {
        let Operation::AddLfs { path, oid, size } = operation else {
            continue;
        };
        match state.store.object_size(oid) {
            None => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("lfs object `{oid}` for `{path}` was never uploaded"),
                ));
            }
            Some(stored) if size.is_some_and(|size| size != stored) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "lfs object `{oid}` has {stored} bytes, the commit says {}",
                        size.unwrap_or_default()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Applies checked operations to a tree (regular contents are already objects).
fn apply(
    state: &AppState,
    mut files: BTreeMap<String, FileEntry>,
    operations: Vec<Operation>,
) -> Result<BTreeMap<String, FileEntry>, ApiError> {
    for operation in operations {
        match operation {
            Operation::Add { path, entry } => {
                check_no_conflict(&files, &path)?;
                files.insert(path, entry);
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
