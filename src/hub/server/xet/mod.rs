//! Xet storage in the embedded hub (docs/hub.md, "Xet"): the token routes, the CAS API the
//! official clients use (xorb and shard uploads, the global dedup query, reconstructions), the
//! `xet` transfer of the LFS batch answer, and the `X-Xet-*` headers of `resolve/`.
//!
//! Our own implementation of the public protocol specification; the formats and hashes it
//! shares with hubsweep's client are in [`crate::hub::xet`]. Everything a client sends is checked as hostile
//! input: every chunk is decompressed (bounded) and hashed, xorb and file hashes recomputed, a
//! shard's terms checked against stored xorbs, and each file's content read from its xorbs and
//! checked against its sha256. A Xet file is stored once, as its xorbs; object sizes and
//! downloads fall back to its record, so the rest of the server sees a Xet upload exactly as
//! an LFS one.

mod api;
pub mod cas;
pub mod token;

pub use crate::hub::xet::{hash, shard, xorb};

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::repo_api::encode_segment;
use super::state::AppState;
use super::store::RepoKey;
use crate::hub::RepoType;
use token::{Grant, Scope};

type P3 = Path<(String, String, String)>;

/// Adds the Xet routes: the token routes of both repo kinds, the CAS API, the xorb ranges.
pub(super) fn routes(mut app: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    for kind in [RepoType::Model, RepoType::Dataset] {
        let api = format!("/api/{}/{{ns}}/{{name}}", kind.api_plural());
        for scope in [Scope::Read, Scope::Write] {
            app = app.route(
                &format!("{api}/xet-{}-token/{{rev}}", scope.name()),
                get(move |State(s): State<Arc<AppState>>, p: P3, h: HeaderMap| {
                    api::issue_token(s, kind, p.0, scope, h)
                }),
            );
        }
    }
    let close = || axum::middleware::map_response(close_unless_ok);
    app.route(
        "/v1/xorbs/{prefix}/{hash}",
        post(api::upload_xorb).layer(close()),
    )
    .route("/v1/shards", post(api::upload_shard).layer(close()))
    .route("/v1/chunks/{prefix}/{hash}", get(api::query_chunk))
    .route("/v1/reconstructions/{file}", get(api::reconstruction))
    .route("/_xet/xorbs/{xorb}/{first}/{last}", get(api::xorb_range))
}

/// An upload refused before its body was read ends its connection, and says so: otherwise a
/// client could send its next request down a connection the server is closing.
async fn close_unless_ok(mut response: axum::response::Response) -> axum::response::Response {
    if !response.status().is_success() {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

/// The route that hands out (and refreshes) tokens of `scope` for a repo revision.
pub fn token_route(state: &AppState, key: &RepoKey, scope: Scope, revision: &str) -> String {
    format!(
        "{}/api/{}/{}/xet-{}-token/{}",
        state.base_url,
        key.kind.api_plural(),
        key.id(),
        scope.name(),
        encode_segment(revision)
    )
}

/// The `xet` upload action of a batch answer: where to refresh the token, and the CAS URL,
/// a write token and its expiry as the `X-Xet-*` headers git-xet and the JS client read.
pub fn batch_upload_action(state: &AppState, key: &RepoKey, revision: &str) -> Value {
    let expires = super::paths::unix_now() + state.limits.xet_token_ttl_secs;
    super::faults::FaultState::bump(&state.faults.xet_tokens_issued);
    let grant = Grant {
        scope: Scope::Write,
        repo: key.clone(),
        revision: revision.to_owned(),
        expires,
    };
    json!({
        "href": token_route(state, key, Scope::Write, revision),
        "header": {
            "X-Xet-Cas-Url": state.base_url,
            "X-Xet-Access-Token": token::issue(state, &grant),
            "X-Xet-Token-Expiration": expires.to_string(),
        },
    })
}

/// Adds `X-Xet-Hash` and the read-token refresh route (`X-Xet-Refresh-Route` and the
/// `Link: <…>; rel="xet-auth"` the Python client prefers) to a `resolve/` answer for content
/// that arrived through Xet; other content has none, and Xet clients download it over HTTP.
pub fn add_resolve_headers(
    state: &AppState,
    key: &RepoKey,
    commit_id: &str,
    sha256: &str,
    out: &mut HeaderMap,
) {
    let Some(file) = cas::file_of_sha256(&state.store, sha256) else {
        return;
    };
    let route = token_route(state, key, Scope::Read, commit_id);
    let (Ok(hash), Ok(refresh), Ok(link)) = (
        HeaderValue::from_str(&file.hex()),
        HeaderValue::from_str(&route),
        HeaderValue::from_str(&format!("<{route}>; rel=\"xet-auth\"")),
    ) else {
        return;
    };
    out.insert("x-xet-hash", hash);
    out.insert("x-xet-refresh-route", refresh);
    out.append(axum::http::header::LINK, link);
}
