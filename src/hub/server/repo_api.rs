//! Repo management and listing: create, delete, info, tree, paths-info, refs, commits, branch, whoami
//! (docs/hub.md, "Repositories" and "Listing").

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::paths;
use super::state::{ApiError, AppState, repo_key};
use super::store::RepoKey;
use super::tree::{CachedCommit, PageError, directory_json, file_json, pointer_size};
use crate::hub::RepoType;

/// The user every request is attributed to (the server has one user).
pub const USER: &str = "hubsweep";

#[derive(Deserialize)]
struct CreateRequest {
    name: String,
    #[serde(default)]
    organization: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    private: Option<bool>,
    #[serde(default)]
    visibility: Option<String>,
}

/// The repo a create or delete body names: `type` (default model), and `name` as `ns/name`, or
/// `name` with `organization`, or a bare `name` in the user's namespace.
fn named_repo(
    kind: Option<&str>,
    organization: Option<&str>,
    name: &str,
) -> Result<(RepoType, String, String), ApiError> {
    let kind = match kind {
        None | Some("model") => RepoType::Model,
        Some("dataset") => RepoType::Dataset,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "repo type `{other}` is not supported by this server"
            )));
        }
    };
    let (namespace, name) = match (organization, name.split_once('/')) {
        (Some(org), None) => (org.to_owned(), name.to_owned()),
        (None, Some((ns, name))) => (ns.to_owned(), name.to_owned()),
        (None, None) => (USER.to_owned(), name.to_owned()),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "`name` must not contain `/` when `organization` is set",
            ));
        }
    };
    Ok((kind, namespace, name))
}

/// `POST /api/repos/create`: 200 with the repo URL, 409 if it exists.
pub async fn create(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.require_write(&headers)?;
    let request: CreateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid create body: {e}")))?;
    let (kind, namespace, name) = named_repo(
        request.kind.as_deref(),
        request.organization.as_deref(),
        &request.name,
    )?;
    let key = repo_key(kind, &namespace, &name)?;
    let private =
        request.private.unwrap_or(false) || request.visibility.as_deref() == Some("private");
    let url = format!("{}/{}{}", state.base_url, kind.git_prefix(), key.id());
    let lock = state.repo_lock(&key);
    let _guard = lock.lock().await;
    match state.store.create_repo(&key, private)? {
        Some(_) => Ok(Json(json!({"url": url, "name": key.id(), "id": key.id()})).into_response()),
        None => Ok((
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"error": format!("You already created this {} repo", kind.singular()), "url": url}).to_string(),
        )
            .into_response()),
    }
}

#[derive(Deserialize)]
struct DeleteRequest {
    name: String,
    #[serde(default)]
    organization: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// `DELETE /api/repos/delete`: 200 when deleted (with what the store freed), 404 if there is
/// no such repo. The objects only this repo referenced are removed with it.
pub async fn delete(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.require_write(&headers)?;
    let request: DeleteRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid delete body: {e}")))?;
    let (kind, namespace, name) = named_repo(
        request.kind.as_deref(),
        request.organization.as_deref(),
        &request.name,
    )?;
    let key = state.existing_repo(kind, &namespace, &name)?;
    let lock = state.repo_lock(&key);
    let _guard = lock.lock().await;
    let store = state.clone();
    let deleting = key.clone();
    let freed = tokio::task::spawn_blocking(move || store.store.delete_repo(&deleting))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    state.commits.forget_repo(&key);
    Ok(Json(json!({"freed_objects": freed.objects, "freed_bytes": freed.bytes})).into_response())
}

/// Query of the info endpoint.
#[derive(Deserialize, Default)]
pub struct InfoQuery {
    #[serde(default)]
    blobs: Option<String>,
}

/// `GET /api/{t}/{ns}/{name}[/revision/{rev}]`.
pub async fn info(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision): (String, String, Option<String>),
    query: InfoQuery,
) -> Result<Json<Value>, ApiError> {
    let key = state.existing_repo(kind, &namespace, &name)?;
    let revision = revision.unwrap_or_else(|| "main".to_owned());
    let commit_id = state.commit_of(&key, &revision)?;
    let cached = load(&state, &key, &commit_id)?;
    let commit = &cached.record;
    let meta = state.store.repo_meta(&key)?;
    let blobs = query.blobs.as_deref().is_some_and(truthy);
    let siblings: Vec<Value> = commit
        .files
        .iter()
        .map(|(path, entry)| {
            if blobs {
                let mut sibling = json!({"rfilename": path, "size": entry.size, "blobId": entry.git_oid});
                if entry.lfs {
                    sibling["lfs"] = json!({"sha256": entry.sha256, "size": entry.size, "pointerSize": pointer_size(entry)});
                }
                sibling
            } else {
                json!({"rfilename": path})
            }
        })
        .collect();
    let id = key.id();
    let mut answer = json!({
        "_id": id, "id": id, "author": key.namespace, "sha": commit.id, "private": meta.private,
        "gated": false, "disabled": false, "tags": [], "downloads": 0, "likes": 0,
        "lastModified": paths::iso8601(commit.time), "createdAt": paths::iso8601(meta.created),
        "siblings": siblings,
    });
    if kind == RepoType::Model {
        answer["modelId"] = json!(id);
    }
    Ok(Json(answer))
}

/// Query of the tree endpoint.
#[derive(Deserialize, Default)]
pub struct TreeQuery {
    #[serde(default)]
    recursive: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/{t}/{ns}/{name}/tree/{rev}[/{path}]`, paginated with a `Link: <…>; rel="next"`
/// whose cursor names the last path served, so each page seeks in the commit's sorted listing.
pub async fn tree(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision, folder): (String, String, String, Option<String>),
    query: TreeQuery,
) -> Result<Response, ApiError> {
    let key = state.existing_repo(kind, &namespace, &name)?;
    let commit_id = state.commit_of(&key, &revision)?;
    let commit = load(&state, &key, &commit_id)?;
    let folder = match folder
        .as_deref()
        .map(|f| f.trim_end_matches('/'))
        .filter(|f| !f.is_empty())
    {
        Some(f) => Some(paths::normalize_folder(f)?),
        None => None,
    };
    let recursive = query.recursive.as_deref().is_some_and(truthy);
    let limit = query
        .limit
        .unwrap_or(state.limits.tree_page_size)
        .clamp(1, state.limits.tree_page_size);
    let page = match commit.listing(|sha256| xet_hash(&state, sha256)).page(
        folder.as_deref().unwrap_or(""),
        recursive,
        query.cursor.as_deref(),
        limit,
    ) {
        Ok(page) => page,
        Err(PageError::NoSuchFolder) => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "Entry not found")
                .code("EntryNotFound")
                .with_commit(commit_id));
        }
        Err(PageError::BadCursor) => return Err(ApiError::bad_request("invalid cursor")),
    };
    let mut body =
        String::with_capacity(page.entries.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, entry) in page.entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(entry);
    }
    body.push(']');
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(cursor) = page.next {
        let folder_part = folder
            .map(|f| format!("/{}", encode_path(&f)))
            .unwrap_or_default();
        let next = format!(
            "<{}/api/{}/{}/tree/{}{folder_part}?recursive={recursive}&cursor={cursor}&limit={limit}>; rel=\"next\"",
            state.base_url,
            kind.api_plural(),
            key.id(),
            encode_segment(&revision),
        );
        if let Ok(value) = HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// `POST /api/{t}/{ns}/{name}/paths-info/{rev}`, form-encoded `paths=…&paths=…&expand=…`.
pub async fn paths_info(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision): (String, String, String),
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = state.existing_repo(kind, &namespace, &name)?;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    if pairs.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too many parameters",
        ));
    }
    let commit_id = state.commit_of(&key, &revision)?;
    let cached = load(&state, &key, &commit_id)?;
    let commit = &cached.record;
    let mut answer = Vec::new();
    for (_, path) in pairs.iter().filter(|(k, _)| k == "paths" || k == "paths[]") {
        let path = path.trim_end_matches('/');
        if let Some(entry) = commit.files.get(path) {
            answer.push(file_json(path, entry, |sha256| xet_hash(&state, sha256)));
        } else {
            let prefix = format!("{path}/");
            if commit
                .files
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(p, _)| p.starts_with(&prefix))
            {
                answer.push(directory_json(&commit_id, path));
            }
        }
    }
    Ok(Json(Value::Array(answer)))
}

/// Query of the refs endpoint.
#[derive(Deserialize, Default)]
pub struct RefsQuery {
    #[serde(default)]
    include_prs: Option<String>,
}

/// `GET /api/{t}/{ns}/{name}/refs[?include_prs=1]`.
pub async fn refs(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name): (String, String),
    query: RefsQuery,
) -> Result<Json<Value>, ApiError> {
    let key = state.existing_repo(kind, &namespace, &name)?;
    let refs = state.store.refs(&key)?;
    let branches: Vec<Value> = refs
        .branches
        .iter()
        .map(|(n, c)| json!({"name": n, "ref": format!("refs/heads/{n}"), "targetCommit": c}))
        .collect();
    let tags: Vec<Value> = refs
        .tags
        .iter()
        .map(|(n, c)| json!({"name": n, "ref": format!("refs/tags/{n}"), "targetCommit": c}))
        .collect();
    let mut answer = json!({"branches": branches, "tags": tags, "converts": []});
    if query.include_prs.as_deref().is_some_and(truthy) {
        answer["pullRequests"] = refs
            .pull_requests
            .iter()
            .map(|(n, c)| json!({"name": n.to_string(), "ref": format!("refs/pr/{n}"), "targetCommit": c}))
            .collect();
    }
    Ok(Json(answer))
}

/// `GET /api/{t}/{ns}/{name}/commits/{rev}`: first-parent history, newest first.
pub async fn commits(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, revision): (String, String, String),
) -> Result<Json<Value>, ApiError> {
    let key = state.existing_repo(kind, &namespace, &name)?;
    let head = state.commit_of(&key, &revision)?;
    let history = state.store.history(&key, &head)?;
    Ok(Json(
        history
            .iter()
            .map(|c| {
                let message = if c.message.is_empty() { c.title.clone() } else { format!("{}\n\n{}", c.title, c.message) };
                json!({"id": c.id, "title": c.title, "message": message, "date": paths::iso8601(c.time),
                    "authors": [{"user": c.author}], "parents": c.parents})
            })
            .collect(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BranchRequest {
    #[serde(default)]
    starting_point: Option<String>,
}

/// `POST /api/{t}/{ns}/{name}/branch/{branch}` (409 if it exists) and `DELETE` of the same path.
pub async fn branch(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name, branch): (String, String, String),
    delete: bool,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.require_write(&headers)?;
    let key = state.existing_repo(kind, &namespace, &name)?;
    paths::check_file_path(&branch)?;
    if branch.starts_with("refs/") || paths::is_commit_id(&branch) {
        return Err(ApiError::bad_request(format!(
            "invalid branch name `{branch}`"
        )));
    }
    let lock = state.repo_lock(&key);
    let _guard = lock.lock().await;
    let mut refs = state.store.refs(&key)?;
    if delete {
        if branch == "main" || refs.branches.remove(&branch).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("cannot delete branch `{branch}`"),
            )
            .code("RevisionNotFound"));
        }
    } else {
        if refs.branches.contains_key(&branch) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("Reference already exists: refs/heads/{branch}"),
            ));
        }
        let request: BranchRequest = if body.is_empty() {
            BranchRequest::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid branch body: {e}")))?
        };
        let start = state.commit_of(&key, request.starting_point.as_deref().unwrap_or("main"))?;
        refs.branches.insert(branch, start);
    }
    state.store.write_refs(&key, &refs)?;
    Ok(Json(json!({"success": true})).into_response())
}

/// `GET /api/whoami-v2`.
pub async fn whoami(state: Arc<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    if state.token.is_some() {
        state.require_write(&headers)?;
    }
    Ok(Json(json!({
        "type": "user", "id": USER, "name": USER, "fullname": USER, "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "hubsweep", "role": "write"}},
    })))
}

/// `GET /api/{t}/{ns}/{name}/xet-{read|write}-token/{rev}` when Xet is off: the server speaks
/// LFS only, and says so, so a Xet-enabled client fails loudly instead of hanging.
pub async fn xet_token() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "this server does not speak Xet (it runs with `--no-xet`); set HF_HUB_DISABLE_XET=1",
    )
}

pub(super) fn load(
    state: &AppState,
    key: &RepoKey,
    commit_id: &str,
) -> Result<Arc<CachedCommit>, ApiError> {
    state
        .commit(key, commit_id)?
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "dangling ref"))
}

/// The Xet file hash of the content with this sha256, when it is stored through Xet.
fn xet_hash(state: &AppState, sha256: &str) -> Option<String> {
    super::xet::cas::file_of_sha256(&state.store, sha256).map(|hash| hash.hex())
}

fn truthy(value: &str) -> bool {
    matches!(value, "1" | "true" | "True")
}

/// Percent-encodes a value as one URL segment (`/` included), as revisions are sent.
pub fn encode_segment(value: &str) -> String {
    // Unreserved characters (RFC 3986) stay as they are; everything else, `/` included, is encoded.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, SEGMENT).to_string()
}

/// Percent-encodes a file path, keeping `/`.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}
