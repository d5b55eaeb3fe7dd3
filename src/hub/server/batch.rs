//! `POST /{p}{ns}/{name}.git/info/lfs/objects/batch` (docs/hub.md, "Upload: preupload, LFS
//! batch, transfer, verify"): which transfer each object takes, or why it is refused.
//!
//! Per object, as the Hub does: files above [`Limits::max_object_size`] (500 GB) are refused;
//! above [`Limits::max_basic_object`] (5 GB) only `multipart` will do; a transfer the client
//! did not offer is never answered; an upload that would eat into the disk space the server
//! keeps free is refused with 507. A refusal is an `error` on that object (the official client
//! shows its message to its user), not a failed request. The work of one answer is bounded:
//! at most [`Limits::max_objects_per_batch`] objects and [`Limits::max_parts_per_batch`] part
//! URLs, whatever sizes the client declares (parts grow instead of multiplying).

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Limits;
use super::faults::FaultState;
use super::paths;
use super::state::{ApiError, AppState, git_repo_name};
use super::store::RepoKey;
use crate::hub::RepoType;

#[derive(Deserialize)]
struct BatchRequest {
    operation: String,
    #[serde(default)]
    transfers: Vec<String>,
    objects: Vec<BatchObject>,
    /// The ref the objects are for (git-lfs 2.4+); the branch a `xet` write token is for.
    #[serde(default, rename = "ref")]
    reference: Option<BatchRef>,
}

#[derive(Deserialize)]
struct BatchRef {
    name: String,
}

#[derive(Deserialize)]
struct BatchObject {
    oid: String,
    size: u64,
}

/// The transfers of the request that this server speaks. git-lfs: no list means `basic`.
struct Offered {
    basic: bool,
    multipart: bool,
    xet: bool,
    names: String,
}

impl Offered {
    fn new(transfers: &[String]) -> Self {
        if transfers.is_empty() {
            return Self {
                basic: true,
                multipart: false,
                xet: false,
                names: "`basic`".to_owned(),
            };
        }
        let names: Vec<String> = transfers
            .iter()
            .take(8)
            .map(|t| format!("`{}`", t.escape_debug()))
            .collect();
        Self {
            basic: transfers.iter().any(|t| t == "basic"),
            multipart: transfers.iter().any(|t| t == "multipart"),
            xet: transfers.iter().any(|t| t == "xet"),
            names: names.join(", "),
        }
    }
}

/// What one upload object gets.
#[derive(Debug, PartialEq, Eq)]
enum Transfer {
    /// Already stored with that size: no actions, the client skips it (dedup).
    Present,
    /// One PUT.
    Basic,
    /// Parts, a completion and a verify.
    Multipart,
}

/// Why one object is refused: its `error` in the answer.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    code: u16,
    message: String,
}

impl Refusal {
    fn new(code: u16, message: String) -> Self {
        Self { code, message }
    }
}

/// The batch handler.
pub async fn batch(
    state: Arc<AppState>,
    kind: RepoType,
    (namespace, name_git): (String, String),
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let name = git_repo_name(&name_git)?;
    let key = state.existing_repo(kind, &namespace, name)?;
    let request: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid batch body: {e}")))?;
    let download = match request.operation.as_str() {
        "upload" => {
            state.require_write(&headers)?;
            false
        }
        "download" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown operation `{}`",
                other.escape_debug()
            )));
        }
    };
    let most = state.limits.max_objects_per_batch;
    if request.objects.len() > most {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "too many objects in one batch call: {}, at most {most}",
                request.objects.len()
            ),
        ));
    }
    FaultState::bump(&state.faults.batch_calls);
    let expired = state.faults.take(|f| {
        let armed = f.expire_next_batches > 0;
        f.expire_next_batches = f.expire_next_batches.saturating_sub(1);
        armed
    });
    let expires = if expired {
        paths::unix_now().saturating_sub(60)
    } else {
        paths::unix_now() + state.limits.presign_ttl_secs
    };
    let offered = Offered::new(&request.transfers);
    let unoffered = !download
        && state.xet
        && !offered.xet
        && state
            .faults
            .take(|f| std::mem::take(&mut f.pick_xet_unoffered));
    if !download && state.xet && (offered.xet || unoffered) {
        let revision = request.reference.as_ref().map_or("main", |r| {
            r.name.strip_prefix("refs/heads/").unwrap_or(&r.name)
        });
        let objects = xet_answers(&state, &key, revision, &request.objects);
        let body = json!({ "transfer": "xet", "objects": objects, "hash_algo": "sha256" });
        return Ok((
            [(header::CONTENT_TYPE, "application/vnd.git-lfs+json")],
            body.to_string(),
        )
            .into_response());
    }
    let (objects, used_multipart) = if download {
        (download_answers(&state, &offered, &request.objects), false)
    } else {
        upload_answers(&state, kind, &key, &offered, &request.objects, expires)
    };
    let transfer = if used_multipart || (offered.multipart && !offered.basic) {
        "multipart"
    } else {
        "basic"
    };
    let body =
        json!({ "transfer": transfer, "objects": objects, "hash_algo": "sha256" }).to_string();
    Ok((
        [(header::CONTENT_TYPE, "application/vnd.git-lfs+json")],
        body,
    )
        .into_response())
}

fn download_answers(state: &AppState, offered: &Offered, objects: &[BatchObject]) -> Vec<Value> {
    objects
        .iter()
        .map(|object| {
            if !paths::is_sha256_hex(&object.oid) {
                return refused(object, &bad_oid());
            }
            if !offered.basic {
                return refused(object, &no_spoken_transfer(offered));
            }
            match state.store.object_size(&object.oid) {
                Some(size) => json!({"oid": object.oid, "size": size, "actions": {"download": {
                    "href": format!("{}/_lfs/blobs/{}", state.storage_url, object.oid), "header": {}}}}),
                None => refused(
                    object,
                    &Refusal::new(404, "object does not exist".to_owned()),
                ),
            }
        })
        .collect()
}

/// Upload answers when the client offered `xet` (and the server speaks it): objects already
/// stored need nothing, the others one `xet` action (a write token and the CAS URL).
fn xet_answers(
    state: &AppState,
    key: &RepoKey,
    revision: &str,
    objects: &[BatchObject],
) -> Vec<Value> {
    let action = super::xet::batch_upload_action(state, key, revision);
    let mut room = free_room(state);
    objects
        .iter()
        .map(|object| {
            if !paths::is_sha256_hex(&object.oid) {
                return refused(object, &bad_oid());
            }
            if state.store.object_size(&object.oid) == Some(object.size) {
                return json!({"oid": object.oid, "size": object.size});
            }
            if object.size > state.limits.max_object_size {
                return refused(
                    object,
                    &Refusal::new(422, "file is larger than this hub accepts".to_owned()),
                );
            }
            if let Err(refusal) = reserve(&state.limits, &mut room, object.size) {
                return refused(object, &refusal);
            }
            json!({"oid": object.oid, "size": object.size, "authenticated": true,
                "actions": {"upload": action}})
        })
        .collect()
}

/// Room left for uploads (`None`: no floor set, or unknown), shared by the objects of one
/// answer in order.
fn free_room(state: &AppState) -> Option<u64> {
    state.limits.min_free_bytes.and_then(|keep| {
        let free = state.store.available_bytes()?;
        Some(free.saturating_sub(keep))
    })
}

fn upload_answers(
    state: &AppState,
    kind: RepoType,
    key: &RepoKey,
    offered: &Offered,
    objects: &[BatchObject],
    expires: u64,
) -> (Vec<Value>, bool) {
    let limits = &state.limits;
    let mut room = free_room(state);
    let decisions: Vec<Result<Transfer, Refusal>> = objects
        .iter()
        .map(|object| {
            let stored = paths::is_sha256_hex(&object.oid)
                .then(|| state.store.object_size(&object.oid))
                .flatten();
            decide(limits, offered, object, stored, &mut room)
        })
        .collect();
    let multipart = decisions
        .iter()
        .filter(|d| matches!(d, Ok(Transfer::Multipart)))
        .count() as u64;
    let max_parts = limits.max_parts_per_batch / multipart.max(1);
    let verify = json!({"href": format!("{}/{}{}.git/info/lfs/objects/verify", state.base_url, kind.git_prefix(), key.id()), "header": {}});
    let answers = objects
        .iter()
        .zip(decisions)
        .map(|(object, decision)| {
            let upload = match decision {
                Err(refusal) => return refused(object, &refusal),
                Ok(Transfer::Present) => return json!({"oid": object.oid, "size": object.size}),
                Ok(Transfer::Multipart) => {
                    multipart_action(state, &object.oid, object.size, max_parts, expires)
                }
                Ok(Transfer::Basic) => {
                    let what = format!("put|{}|{}", object.oid, object.size);
                    let route = format!("/_lfs/objects/{}/{}", object.oid, object.size);
                    json!({"href": state.presign(&state.storage_url, &route, &what, expires), "header": {}})
                }
            };
            json!({"oid": object.oid, "size": object.size, "authenticated": true,
                "actions": {"upload": upload, "verify": verify}})
        })
        .collect();
    (answers, multipart > 0)
}

/// The transfer one upload object gets, or why it is refused. `room` is the disk space left
/// for this answer's uploads (`None`: unknown), reduced by every object granted.
fn decide(
    limits: &Limits,
    offered: &Offered,
    object: &BatchObject,
    stored: Option<u64>,
    room: &mut Option<u64>,
) -> Result<Transfer, Refusal> {
    let size = object.size;
    if !paths::is_sha256_hex(&object.oid) {
        return Err(bad_oid());
    }
    if stored == Some(size) {
        return Ok(Transfer::Present);
    }
    if size > limits.max_object_size {
        return Err(Refusal::new(
            422,
            format!(
                "file of {} is larger than the {} this hub accepts per file; split it into smaller files",
                decimal_size(size),
                decimal_size(limits.max_object_size)
            ),
        ));
    }
    let needs_multipart = size > limits.max_basic_object;
    let transfer = if offered.multipart
        && (needs_multipart || size > limits.multipart_threshold || !offered.basic)
    {
        Transfer::Multipart
    } else if offered.basic && !needs_multipart {
        Transfer::Basic
    } else if offered.basic {
        return Err(Refusal::new(
            422,
            format!(
                "file of {} is larger than the {} one `basic` upload may carry; it needs the `multipart` transfer, which the client did not offer",
                decimal_size(size),
                decimal_size(limits.max_basic_object)
            ),
        ));
    } else {
        return Err(no_spoken_transfer(offered));
    };
    reserve(limits, room, size)?;
    Ok(transfer)
}

/// Takes the bytes of a file of `size` from the disk space left for this answer's uploads
/// (`None`: unknown), or refuses it with 507. (A Xet upload's xorbs take about its size too.)
fn reserve(limits: &Limits, room: &mut Option<u64>, size: u64) -> Result<(), Refusal> {
    if let Some(left) = room {
        if size > *left {
            return Err(Refusal::new(
                507,
                format!(
                    "the hub has not enough free disk space for this file of {}: {} can still be used (it keeps {} free)",
                    decimal_size(size),
                    decimal_size(*left),
                    decimal_size(limits.min_free_bytes.unwrap_or_default())
                ),
            ));
        }
        *left -= size;
    }
    Ok(())
}

fn bad_oid() -> Refusal {
    Refusal::new(422, "oid must be a lowercase hex sha256".to_owned())
}

fn no_spoken_transfer(offered: &Offered) -> Refusal {
    Refusal::new(
        422,
        format!(
            "none of the offered transfers ({}) is spoken by this hub; it speaks `basic` and `multipart` (and `xet` unless started with `--no-xet`)",
            offered.names
        ),
    )
}

fn refused(object: &BatchObject, refusal: &Refusal) -> Value {
    json!({"oid": object.oid, "size": object.size,
        "error": {"code": refusal.code, "message": refusal.message}})
}

/// Sizes as the Hub states its limits: decimal units, with the exact byte count.
fn decimal_size(bytes: u64) -> String {
    const STEPS: &[(&str, u64)] = &[
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("kB", 1_000),
    ];
    let Some((unit, step)) = STEPS.iter().find(|(_, step)| bytes >= *step) else {
        return format!("{bytes} bytes");
    };
    if bytes.is_multiple_of(*step) {
        format!("{} {unit}", bytes / step)
    } else {
        format!("{:.1} {unit} ({bytes} bytes)", bytes as f64 / *step as f64)
    }
}

fn multipart_action(state: &AppState, oid: &str, size: u64, max_parts: u64, expires: u64) -> Value {
    let (chunk, parts) = state.limits.parts_for(size, max_parts);
    let mut header = serde_json::Map::new();
    header.insert("chunk_size".to_owned(), Value::String(chunk.to_string()));
    for n in 1..=parts {
        let what = format!("part|{oid}|{size}|{chunk}|{n}");
        let route = format!("/_lfs/parts/{oid}/{size}/{chunk}/{n}");
        header.insert(
            n.to_string(),
            Value::String(state.presign(&state.storage_url, &route, &what, expires)),
        );
    }
    // The completion URL is Hub-hosted and called without auth, so it is signed too.
    let what = format!("complete|{oid}|{size}|{chunk}");
    let href = state.presign(
        &state.base_url,
        &format!("/_lfs/complete/{oid}/{size}/{chunk}"),
        &what,
        expires,
    );
    json!({ "href": href, "header": header })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn object(size: u64) -> BatchObject {
        BatchObject {
            oid: OID.to_owned(),
            size,
        }
    }

    fn offered(names: &[&str]) -> Offered {
        Offered::new(&names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn each_object_gets_an_offered_transfer_within_the_hubs_limits() {
        let limits = Limits::default();
        let both = offered(&["basic", "multipart"]);
        let basic = offered(&["basic"]);
        let decide =
            |offered: &Offered, size: u64| decide(&limits, offered, &object(size), None, &mut None);
        assert_eq!(decide(&both, 1000), Ok(Transfer::Basic));
        assert_eq!(decide(&both, 1 << 30), Ok(Transfer::Multipart));
        assert_eq!(decide(&basic, 1 << 30), Ok(Transfer::Basic));
        assert_eq!(decide(&basic, 5_000_000_001).unwrap_err().code, 422);
        assert!(
            decide(&basic, 6_000_000_000)
                .unwrap_err()
                .message
                .contains("multipart")
        );
        assert_eq!(decide(&both, 500_000_000_000), Ok(Transfer::Multipart));
        let huge = decide(&both, 99_999_999_999_999_999).unwrap_err();
        assert_eq!(huge.code, 422);
        assert!(huge.message.contains("500 GB"), "{}", huge.message);
        assert_eq!(
            decide(&offered(&["multipart"]), 10),
            Ok(Transfer::Multipart)
        );
        let xet = decide(&offered(&["xet"]), 10).unwrap_err();
        assert!(xet.message.contains("`xet`"), "{}", xet.message);
        assert_eq!(decide(&offered(&[]), 10), Ok(Transfer::Basic));
    }

    #[test]
    fn the_disk_room_is_shared_by_the_objects_of_one_answer() {
        let limits = Limits::default();
        let both = offered(&["basic", "multipart"]);
        let mut room = Some(1500);
        assert_eq!(
            decide(&limits, &both, &object(1000), None, &mut room),
            Ok(Transfer::Basic)
        );
        let full = decide(&limits, &both, &object(1000), None, &mut room).unwrap_err();
        assert_eq!(full.code, 507);
        assert_eq!(room, Some(500));
        // Already stored: nothing to write.
        assert_eq!(
            decide(&limits, &both, &object(1000), Some(1000), &mut room),
            Ok(Transfer::Present)
        );
    }

    #[test]
    fn sizes_read_as_the_hub_states_them() {
        assert_eq!(decimal_size(500_000_000_000), "500 GB");
        assert_eq!(decimal_size(5_000_000_000), "5 GB");
        assert_eq!(decimal_size(999), "999 bytes");
        assert!(decimal_size(99_999_999_999_999_999).starts_with("100000.0 TB"));
    }
}
