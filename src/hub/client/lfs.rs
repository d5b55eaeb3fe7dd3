//! The LFS upload path (docs/hub.md, "Upload"): preupload, batch, basic or multipart
//! transfer with bounded parallel parts, completion, verify — or, when the batch answer picks
//! it, the `xet` transfer of [`super::xet`].

use std::path::PathBuf;

use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::error::{HubError, redact};
use super::xet::XetChunks;
use super::{HubClient, HubEvent, Repo, encode_segment};

/// How many files one preupload call and objects one batch call carry (the Hub's limit).
const PER_CALL: usize = 256;
/// How many times presigned URLs are renewed after a 403 before giving up.
const MAX_RENEWALS: u32 = 3;

/// One file to classify: its path, size, and first bytes (≤ 512 are sent).
#[derive(Debug, Clone)]
pub struct PreuploadFile {
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The first bytes of the content (only the first 512 are sent).
    pub sample: Bytes,
}

/// The server's verdict on one file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreuploadAnswer {
    /// Path in the repo.
    pub path: String,
    /// `lfs` or `regular`.
    pub upload_mode: String,
    /// Whether the repo's `.gitignore` excludes it.
    #[serde(default)]
    pub should_ignore: bool,
    /// Id of the file at that path now (git sha1 for regular, sha256 for LFS), if any.
    #[serde(default)]
    pub oid: Option<String>,
}

impl PreuploadAnswer {
    /// Whether the file must go through LFS.
    pub fn is_lfs(&self) -> bool {
        self.upload_mode == "lfs"
    }
}

/// Where an LFS object's bytes come from.
#[derive(Debug, Clone)]
pub enum LfsSource {
    /// Held in memory (the sink's in-memory artifacts); parts are zero-copy slices.
    Bytes(Bytes),
    /// A local file, read one part at a time (memory ≈ parts in flight × part size).
    File(PathBuf),
}

/// An LFS object with its sha256 and size known before the first byte is sent.
#[derive(Debug, Clone)]
pub struct LfsObject {
    /// The path it is for in the repo, when known (named in errors).
    pub path: Option<String>,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The content.
    pub source: LfsSource,
    /// The content cut into Xet chunks, when that is done already ([`Self::from_bytes`] does
    /// it while it hashes); else a Xet upload cuts it.
    pub xet_chunks: Option<XetChunks>,
}

impl LfsObject {
    /// An object held in memory: hashes it and, on another core at the same time, cuts it into
    /// Xet chunks (what a Xet upload needs first; the wall time is the sha256's either way).
    pub fn from_bytes(bytes: Bytes) -> Self {
        use sha2::Digest as _;
        let (sha256, chunks) = rayon::join(
            || hex::encode(sha2::Sha256::digest(&bytes)),
            || XetChunks::new(bytes.clone()),
        );
        Self {
            path: None,
            sha256,
            size: bytes.len() as u64,
            source: LfsSource::Bytes(bytes),
            xet_chunks: Some(chunks),
        }
    }

    /// The same object, named by its path in the repo (errors name it).
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    fn rejected(&self, error: ObjectError) -> HubError {
        HubError::ObjectRejected {
            path: self.path.clone(),
            oid: self.sha256.clone(),
            code: error.code,
            message: error.message,
        }
    }

    async fn read(&self, offset: u64, length: u64) -> Result<Bytes, HubError> {
        match &self.source {
            LfsSource::Bytes(bytes) => Ok(bytes.slice(offset as usize..(offset + length) as usize)),
            LfsSource::File(path) => {
                let io = |source| HubError::Io {
                    path: path.clone(),
                    source,
                };
                let mut file = tokio::fs::File::open(path).await.map_err(io)?;
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(io)?;
                let mut buffer = vec![0u8; length as usize];
                file.read_exact(&mut buffer).await.map_err(io)?;
                Ok(Bytes::from(buffer))
            }
        }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The server already had it (no bytes sent).
    AlreadyPresent,
    /// It was transferred.
    Uploaded,
}

#[derive(Deserialize)]
struct BatchAnswer {
    /// The transfer the server picked; git-lfs: none means `basic`.
    #[serde(default)]
    transfer: Option<String>,
    objects: Vec<BatchObject>,
}

#[derive(Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    actions: Option<Actions>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(Deserialize)]
struct ObjectError {
    code: i64,
    message: String,
}

#[derive(Deserialize, Clone)]
struct Actions {
    upload: Option<Action>,
    verify: Option<Action>,
}

#[derive(Deserialize, Clone)]
struct Action {
    href: String,
    #[serde(default)]
    header: serde_json::Map<String, Value>,
}

/// Why one transfer attempt stopped: expired URLs are renewed, everything else is final.
enum TransferError {
    Expired,
    Failed(HubError),
}

impl From<HubError> for TransferError {
    fn from(error: HubError) -> Self {
        // S3 answers 403 to an expired presigned URL; the batch endpoint hands out fresh ones.
        match error {
            HubError::Unauthorized { .. } => TransferError::Expired,
            other => TransferError::Failed(other),
        }
    }
}

impl HubClient {
    /// Asks which files go to LFS (`POST …/preupload/{rev}`), 256 files per call.
    pub async fn preupload(
        &self,
        repo: &Repo,
        revision: &str,
        files: &[PreuploadFile],
    ) -> Result<Vec<PreuploadAnswer>, HubError> {
        let url = self.api_url(repo, &format!("/preupload/{}", encode_segment(revision)));
        let mut answers = Vec::with_capacity(files.len());
        for chunk in files.chunks(PER_CALL) {
            let body = json!({"files": chunk.iter().map(|f| json!({
                "path": f.path,
                "size": f.size,
                "sample": base64::engine::general_purpose::STANDARD.encode(&f.sample[..f.sample.len().min(512)]),
            })).collect::<Vec<_>>()});
            let response = self
                .send_with_retry(&url, || self.hub_request(Method::POST, &url).json(&body))
                .await?;
            #[derive(Deserialize)]
            struct Answer {
                files: Vec<PreuploadAnswer>,
            }
            let answer: Answer = Self::json(&url, response).await?;
            answers.extend(answer.files);
        }
        Ok(answers)
    }

    /// Uploads LFS objects (batch calls of 256; objects one after another, parts in parallel).
    /// Objects the server already has are skipped. Nothing is committed.
    pub async fn upload_lfs_objects(
        &self,
        repo: &Repo,
        revision: &str,
        objects: &[LfsObject],
    ) -> Result<Vec<UploadOutcome>, HubError> {
        let mut outcomes = Vec::with_capacity(objects.len());
        for chunk in objects.chunks(PER_CALL) {
            let (transfer, answers) = self.batch(repo, revision, chunk).await?;
            for (object, answer) in chunk.iter().zip(answers) {
                let outcome = if transfer == "xet" {
                    self.xet_upload(object, answer).await?
                } else {
                    self.transfer_with_renewal(repo, revision, object, answer)
                        .await?
                };
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }

    /// Uploads one LFS object whose sha256 and size are known (see [`Self::upload_lfs_objects`]).
    pub async fn upload_lfs_object(
        &self,
        repo: &Repo,
        revision: &str,
        object: &LfsObject,
    ) -> Result<UploadOutcome, HubError> {
        Ok(self
            .upload_lfs_objects(repo, revision, std::slice::from_ref(object))
            .await?[0])
    }

    /// The transfers to offer for `objects`: `xet` too when the client speaks it and every
    /// object is in memory (files go through LFS, read one part at a time).
    fn offered_transfers(&self, objects: &[LfsObject]) -> &'static [&'static str] {
        let in_memory = objects
            .iter()
            .all(|o| matches!(o.source, LfsSource::Bytes(_)));
        if self.inner.xet && in_memory {
            &["basic", "multipart", "xet"]
        } else {
            &["basic", "multipart"]
        }
    }

    /// One batch call: the transfer the server picked (one it was offered) and its answer for
    /// each object, in order.
    async fn batch(
        &self,
        repo: &Repo,
        revision: &str,
        objects: &[LfsObject],
    ) -> Result<(String, Vec<BatchObject>), HubError> {
        let url = self.git_url(repo, ".git/info/lfs/objects/batch");
        let offered = self.offered_transfers(objects);
        let mut body = json!({
            "operation": "upload",
            "transfers": offered,
            "objects": objects.iter().map(|o| json!({"oid": o.sha256, "size": o.size})).collect::<Vec<_>>(),
            "hash_algo": "sha256",
        });
        if !revision.starts_with("refs/pr/") {
            body["ref"] = json!({"name": revision});
        }
        let response = self
            .send_with_retry(&url, || {
                self.hub_request(Method::POST, &url)
                    .header("accept", "application/vnd.git-lfs+json")
                    .header("content-type", "application/vnd.git-lfs+json")
                    .body(body.to_string())
            })
            .await?;
        let answer: BatchAnswer = Self::json(&url, response).await?;
        let transfer = answer.transfer.unwrap_or_else(|| "basic".to_owned());
        if !offered.contains(&transfer.as_str()) {
            return Err(HubError::InvalidResponse {
                url: redact(&url),
                reason: format!(
                    "the server picked the `{transfer}` transfer, which was not offered (offered: {}); upgrade hubsweep or ask the server's operator",
                    offered.join(", ")
                ),
            });
        }
        if answer.objects.len() != objects.len()
            || answer
                .objects
                .iter()
                .zip(objects)
                .any(|(a, o)| a.oid != o.sha256)
        {
            return Err(HubError::InvalidResponse {
                url: redact(&url),
                reason: "batch answer does not list the objects asked for".into(),
            });
        }
        Ok((transfer, answer.objects))
    }

    /// One object whose batch answer picked `xet`: nothing to do if the server has it, else
    /// the Xet upload of [`super::xet`].
    async fn xet_upload(
        &self,
        object: &LfsObject,
        answer: BatchObject,
    ) -> Result<UploadOutcome, HubError> {
        if let Some(error) = answer.error {
            return Err(object.rejected(error));
        }
        let Some(upload) = answer.actions.and_then(|a| a.upload) else {
            self.emit(HubEvent::ObjectSkipped {
                oid: object.sha256.clone(),
                size: object.size,
            });
            return Ok(UploadOutcome::AlreadyPresent);
        };
        let LfsSource::Bytes(data) = &object.source else {
            return Err(HubError::InvalidResponse {
                url: redact(&upload.href),
                reason: "the server picked `xet` for a file, which was offered only LFS".into(),
            });
        };
        let action = super::xet::XetAction::new(&upload.href, &upload.header);
        let chunks = object.xet_chunks.clone().filter(|c| c.is_of(data));
        let sent = self
            .xet_transfer(object, data.clone(), chunks, action)
            .await?;
        self.emit(HubEvent::XetStored {
            oid: object.sha256.clone(),
            size: object.size,
            sent: sent.bytes,
            deduplicated: sent.deduplicated,
        });
        self.emit(HubEvent::ObjectUploaded {
            oid: object.sha256.clone(),
            size: object.size,
        });
        Ok(UploadOutcome::Uploaded)
    }

    async fn transfer_with_renewal(
        &self,
        repo: &Repo,
        revision: &str,
        object: &LfsObject,
        mut answer: BatchObject,
    ) -> Result<UploadOutcome, HubError> {
        let mut renewals = 0;
        loop {
            if let Some(error) = answer.error {
                return Err(object.rejected(error));
            }
            let Some(actions) = answer.actions.clone().filter(|a| a.upload.is_some()) else {
                self.emit(HubEvent::ObjectSkipped {
                    oid: object.sha256.clone(),
                    size: object.size,
                });
                return Ok(UploadOutcome::AlreadyPresent);
            };
            match self.transfer(object, &actions).await {
                Ok(()) => {
                    self.emit(HubEvent::ObjectUploaded {
                        oid: object.sha256.clone(),
                        size: object.size,
                    });
                    return Ok(UploadOutcome::Uploaded);
                }
                Err(TransferError::Failed(error)) => return Err(error),
                Err(TransferError::Expired) if renewals < MAX_RENEWALS => {
                    renewals += 1;
                    self.emit(HubEvent::BatchRenewed {
                        oid: object.sha256.clone(),
                    });
                    let (transfer, mut answers) = self
                        .batch(repo, revision, std::slice::from_ref(object))
                        .await?;
                    if transfer == "xet" {
                        return self.xet_upload(object, answers.remove(0)).await;
                    }
                    answer = answers.remove(0);
                }
                Err(TransferError::Expired) => {
                    return Err(HubError::Unauthorized {
                        url: redact(&actions.upload.map(|u| u.href).unwrap_or_default()),
                        message: format!(
                            "presigned URLs kept failing with 403 after {MAX_RENEWALS} renewals"
                        ),
                    });
                }
            }
        }
    }

    async fn transfer(&self, object: &LfsObject, actions: &Actions) -> Result<(), TransferError> {
        let upload = actions.upload.as_ref().expect("checked by the caller");
        let chunk_size = upload.header.get("chunk_size").and_then(|v| match v {
            Value::String(s) => s.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        });
        match chunk_size {
            Some(chunk_size) => self.multipart(object, upload, chunk_size).await?,
            None => self.basic(object, upload).await?,
        }
        if let Some(verify) = &actions.verify {
            let body = json!({"oid": object.sha256, "size": object.size});
            // Verify is Hub-hosted: the token goes along only if it is on the endpoint's origin.
            self.send_with_retry(&verify.href, || {
                self.hub_request(Method::POST, &verify.href)
                    .header("accept", "application/vnd.git-lfs+json")
                    .header("content-type", "application/vnd.git-lfs+json")
                    .body(body.to_string())
            })
            .await
            .map_err(TransferError::Failed)?;
        }
        Ok(())
    }

    async fn basic(&self, object: &LfsObject, upload: &Action) -> Result<(), TransferError> {
        self.emit(HubEvent::ObjectStarted {
            oid: object.sha256.clone(),
            size: object.size,
            parts: 1,
        });
        let body = object.read(0, object.size).await?;
        let headers = string_headers(&upload.header);
        self.send_with_retry(&upload.href, || {
            let mut request = self
                .storage_request(Method::PUT, &upload.href)
                .body(body.clone());
            for (name, value) in &headers {
                request = request.header(name.as_str(), value.as_str());
            }
            request
        })
        .await?;
        self.emit(HubEvent::PartUploaded {
            oid: object.sha256.clone(),
            part: 1,
            bytes: object.size,
        });
        Ok(())
    }

    async fn multipart(
        &self,
        object: &LfsObject,
        upload: &Action,
        chunk_size: u64,
    ) -> Result<(), TransferError> {
        let invalid = |reason: &str| {
            TransferError::Failed(HubError::InvalidResponse {
                url: redact(&upload.href),
                reason: reason.to_owned(),
            })
        };
        let mut urls: Vec<(usize, String)> = upload
            .header
            .iter()
            .filter_map(|(key, value)| {
                Some((key.parse::<usize>().ok()?, value.as_str()?.to_owned()))
            })
            .collect();
        urls.sort_by_key(|(n, _)| *n);
        let expected = object.size.div_ceil(chunk_size.max(1)) as usize;
        if chunk_size == 0
            || urls.len() != expected
            || urls.iter().enumerate().any(|(i, (n, _))| *n != i + 1)
        {
            return Err(invalid("multipart answer does not have one URL per part"));
        }
        self.emit(HubEvent::ObjectStarted {
            oid: object.sha256.clone(),
            size: object.size,
            parts: expected,
        });
        let etags: Vec<(usize, String)> = futures::stream::iter(urls)
            .map(|(part, url)| async move {
                let offset = (part as u64 - 1) * chunk_size;
                let length = chunk_size.min(object.size - offset);
                let body = object.read(offset, length).await?;
                let response = self
                    .send_with_retry(&url, || {
                        self.storage_request(Method::PUT, &url).body(body.clone())
                    })
                    .await?;
                let etag = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned);
                let etag = etag.ok_or_else(|| HubError::InvalidResponse {
                    url: redact(&url),
                    reason: format!("part {part} answered without an ETag"),
                })?;
                self.emit(HubEvent::PartUploaded {
                    oid: object.sha256.clone(),
                    part,
                    bytes: length,
                });
                Ok::<_, HubError>((part, etag))
            })
            .buffer_unordered(self.inner.parts_in_flight)
            .try_collect()
            .await?;
        let mut etags = etags;
        etags.sort_by_key(|(n, _)| *n);
        let body = json!({
            "oid": object.sha256,
            "parts": etags.iter().map(|(n, etag)| json!({"partNumber": n, "etag": etag})).collect::<Vec<_>>(),
        });
        // The completion URL is self-authorising; like the official client, no token.
        self.send_with_retry(&upload.href, || {
            self.storage_request(Method::POST, &upload.href)
                .header("accept", "application/vnd.git-lfs+json")
                .header("content-type", "application/vnd.git-lfs+json")
                .body(body.to_string())
        })
        .await?;
        Ok(())
    }
}

fn string_headers(header: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    header
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}
