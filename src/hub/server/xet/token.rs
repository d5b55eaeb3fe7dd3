//! Xet access tokens: what `xet-read-token` / `xet-write-token` hand out and every CAS call
//! must carry (`Authorization: Bearer …`).
//!
//! A token names its scope, repo, revision and expiry, signed with the server's key (random per
//! process, so a restarted server answers 401 and clients fetch a new token, as they do when
//! one expires). Only the Hub token can get one: a write token needs the write token, a read
//! token of a private repo too.

use axum::http::{HeaderMap, StatusCode, header};

use crate::hub::RepoType;
use crate::hub::server::faults::{FaultState, take_counted};
use crate::hub::server::paths;
use crate::hub::server::state::{ApiError, AppState};
use crate::hub::server::store::RepoKey;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reconstructions, dedup queries.
    Read,
    /// Also xorb and shard uploads.
    Write,
}

impl Scope {
    /// `read` or `write`, as in the token endpoint's path.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Read or write.
    pub scope: Scope,
    /// The repo it was issued for.
    pub repo: RepoKey,
    /// The revision it was issued for.
    pub revision: String,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

const PREFIX: &str = "xet1";

/// The token string for a grant.
pub fn issue(state: &AppState, grant: &Grant) -> String {
    let body = hex::encode(claims(grant));
    let signature = state.signature(&format!("xet-token|{body}"), grant.expires);
    format!("{PREFIX}.{body}.{}.{signature}", grant.expires)
}

fn claims(grant: &Grant) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}",
        grant.scope.name(),
        grant.repo.kind.api_plural(),
        grant.repo.namespace,
        grant.repo.name,
        grant.revision
    )
}

/// Checks the request's token: 401 when missing, forged or expired (the client then fetches a
/// new one), 403 when its scope is too narrow or its repo is gone.
pub fn check(state: &AppState, headers: &HeaderMap, need: Scope) -> Result<Grant, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message.to_owned());
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("a Xet access token is required"))?;
    if state.token.as_deref() == Some(token) {
        FaultState::bump(&state.faults.cas_requests_with_hub_token);
    }
    if state
        .faults
        .take(|f| take_counted(&mut f.expire_next_xet_tokens))
    {
        return Err(unauthorized("Xet access token has expired"));
    }
    let mut parts = token.split('.');
    let (Some(PREFIX), Some(body), Some(expires), Some(signature), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(unauthorized("not a Xet access token of this hub"));
    };
    let expires: u64 = expires
        .parse()
        .map_err(|_| unauthorized("not a Xet access token of this hub"))?;
    if state.signature(&format!("xet-token|{body}"), expires) != signature {
        return Err(unauthorized("Xet access token is not valid"));
    }
    // `exp` is the second the token stops being valid.
    if expires <= paths::unix_now() {
        return Err(unauthorized("Xet access token has expired"));
    }
    let grant = parse_claims(body).ok_or_else(|| unauthorized("Xet access token is not valid"))?;
    if need == Scope::Write && grant.scope == Scope::Read {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this call needs a Xet write token",
        ));
    }
    if !state.store.repo_exists(&grant.repo) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the token's repository does not exist any more",
        ));
    }
    Ok(Grant { expires, ..grant })
}

fn parse_claims(body: &str) -> Option<Grant> {
    let text = String::from_utf8(hex::decode(body).ok()?).ok()?;
    let mut fields = text.splitn(5, '\n');
    let scope = match fields.next()? {
        "read" => Scope::Read,
        "write" => Scope::Write,
        _ => return None,
    };
    let kind = match fields.next()? {
        "models" => RepoType::Model,
        "datasets" => RepoType::Dataset,
        _ => return None,
    };
    Some(Grant {
        scope,
        repo: RepoKey {
            kind,
            namespace: fields.next()?.to_owned(),
            name: fields.next()?.to_owned(),
        },
        revision: fields.next()?.to_owned(),
        expires: 0,
    })
}
