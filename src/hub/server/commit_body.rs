//! Reading a commit's NDJSON body (docs/hub.md, "Commits") as it streams in, in bounded memory
//! and time linear in its size.
//!
//! Each line is parsed as soon as it is complete and then dropped; a line is never copied
//! more than once, and a partial line is never scanned twice for its end. (The first version
//! split the buffer at every newline: each line kept the capacity of the whole rest of its
//! frame, so a commit of 10,000 small files held 0.9 GB and of 100,000 files 22 GB.) Inline
//! file contents go to the store as objects in batches of [`STAGE_BYTES`] while the body is
//! read, not yet durable and referenced by nothing; the commit makes them durable with one
//! sync before its record is written. A refused commit leaves them unreferenced, like LFS
//! objects uploaded for a commit that never came.

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine as _;
use futures::StreamExt as _;
use serde::Deserialize;

use super::paths;
use super::state::{ApiError, AppState};
use super::store::{FileEntry, sha256_hex};

/// Inline contents held before they are written to the store.
const STAGE_BYTES: usize = 8 << 20;

/// The commit's header line.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// First line of the message.
    #[serde(default)]
    pub summary: String,
    /// The rest of the message.
    #[serde(default)]
    pub description: String,
    /// The head the client expects (412 when the branch moved).
    #[serde(default)]
    pub parent_commit: Option<String>,
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

/// One NDJSON line: `{"key": …, "value": …}`.
#[derive(Deserialize)]
#[serde(tag = "key", content = "value", rename_all = "camelCase")]
enum Line {
    Header(Header),
    File(InlineFile),
    LfsFile(LfsFile),
    DeletedFile(Deletion),
    DeletedFolder(Deletion),
}

/// One operation of a commit, its path checked.
pub enum Operation {
    /// A regular file whose content is already an object in the store.
    Add {
        /// Repo path.
        path: String,
        /// The tree entry.
        entry: FileEntry,
    },
    /// An LFS file (the object must exist with that size).
    AddLfs {
        /// Repo path.
        path: String,
        /// sha256.
        oid: String,
        /// Declared size (`None`: not given).
        size: Option<u64>,
    },
    /// Delete a file.
    Delete {
        /// Repo path.
        path: String,
    },
    /// Delete a folder and everything below it.
    DeleteFolder {
        /// Repo path of the folder.
        path: String,
    },
}

/// A parsed commit body.
pub struct Parsed {
    /// The header line.
    pub header: Header,
    /// The operations in order.
    pub operations: Vec<Operation>,
    /// Objects this body wrote to the store (not yet durable).
    pub new_objects: Vec<String>,
}

/// Reads and parses a commit body: 413 beyond the line, body or operation limits, 400 for a
/// malformed line, 507 when the disk cannot take the inline files.
pub async fn parse(state: &Arc<AppState>, body: Body) -> Result<Parsed, ApiError> {
    let limits = &state.limits;
    let mut parser = Parser {
        state: state.clone(),
        header: None,
        operations: Vec::new(),
        staged: Vec::new(),
        staged_bytes: 0,
        new_objects: Vec::new(),
    };
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    // `pending[..scanned]` holds no newline: a long line is searched once, not per frame.
    let mut scanned = 0;
    let mut total = 0u64;
    while let Some(frame) = stream.next().await {
        let data = frame.map_err(|_| ApiError::bad_request("request body ended early"))?;
        total += data.len() as u64;
        if total > limits.max_commit_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "commit body is larger than {} bytes",
                    limits.max_commit_bytes
                ),
            ));
        }
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(offset) = pending[scanned..].iter().position(|b| *b == b'\n') {
            let end = scanned + offset;
            parser.line(&pending[start..end]).await?;
            start = end + 1;
            scanned = start;
        }
        pending.drain(..start);
        scanned = pending.len();
        if pending.len() > limits.max_ndjson_line {
            return Err(line_too_long(limits.max_ndjson_line));
        }
    }
    parser.line(&pending).await?;
    drop(pending);
    parser.flush().await?;
    let header = parser
        .header
        .ok_or_else(|| ApiError::bad_request("the first NDJSON line must be the header"))?;
    Ok(Parsed {
        header,
        operations: parser.operations,
        new_objects: parser.new_objects,
    })
}

fn line_too_long(max_line: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("an NDJSON line is longer than {max_line} bytes"),
    )
}

struct Parser {
    state: Arc<AppState>,
    header: Option<Header>,
    operations: Vec<Operation>,
    staged: Vec<(String, Vec<u8>)>,
    staged_bytes: usize,
    new_objects: Vec<String>,
}

impl Parser {
    async fn line(&mut self, raw: &[u8]) -> Result<(), ApiError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if raw.len() > self.state.limits.max_ndjson_line {
            return Err(line_too_long(self.state.limits.max_ndjson_line));
        }
        let line: Line = serde_json::from_slice(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid NDJSON line: {e}")))?;
        let first = self.header.is_none() && self.operations.is_empty();
        let operation = match line {
            Line::Header(header) if first => {
                self.header = Some(header);
                return Ok(());
            }
            Line::Header(_) => {
                return Err(ApiError::bad_request(
                    "the header must be the first NDJSON line, and only one",
                ));
            }
            _ if first => {
                return Err(ApiError::bad_request(
                    "the first NDJSON line must be the header",
                ));
            }
            Line::File(file) => self.inline(file).await?,
            Line::LfsFile(file) => {
                if file.algo.as_deref().is_some_and(|a| a != "sha256") {
                    return Err(ApiError::bad_request(
                        "only sha256 LFS objects are supported",
                    ));
                }
                paths::check_file_path(&file.path)?;
                if !paths::is_sha256_hex(&file.oid) {
                    return Err(ApiError::bad_request(format!(
                        "lfs oid `{}` is not a lowercase hex sha256",
                        file.oid.escape_debug()
                    )));
                }
                Operation::AddLfs {
                    path: file.path,
                    oid: file.oid,
                    size: file.size,
                }
            }
            Line::DeletedFile(deletion) => {
                paths::check_file_path(&deletion.path)?;
                Operation::Delete {
                    path: deletion.path,
                }
            }
            Line::DeletedFolder(deletion) => {
                paths::normalize_folder(&deletion.path)?;
                Operation::DeleteFolder {
                    path: deletion.path,
                }
            }
        };
        let most = self.state.limits.max_commit_operations;
        if self.operations.len() >= most {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "too many operations in one commit: at most {most}; split it into several commits"
                ),
            ));
        }
        self.operations.push(operation);
        Ok(())
    }

    async fn inline(&mut self, file: InlineFile) -> Result<Operation, ApiError> {
        paths::check_file_path(&file.path)?;
        let content = match file.encoding.as_deref() {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(file.content.as_bytes())
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid base64 content for `{}`",
                        file.path.escape_debug()
                    ))
                })?,
            None | Some("utf-8") => file.content.into_bytes(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unknown encoding `{}`",
                    other.escape_debug()
                )));
            }
        };
        let sha256 = sha256_hex(&content);
        let entry = FileEntry {
            size: content.len() as u64,
            sha256: sha256.clone(),
            lfs: false,
            git_oid: paths::git_blob_id(&content),
        };
        self.staged_bytes += content.len();
        self.staged.push((sha256, content));
        if self.staged_bytes >= STAGE_BYTES {
            self.flush().await?;
        }
        Ok(Operation::Add {
            path: file.path,
            entry,
        })
    }

    /// Writes the staged contents as objects (off the async workers).
    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        let bytes = std::mem::take(&mut self.staged_bytes);
        self.state.check_room(bytes as u64)?;
        let state = self.state.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut written = Vec::new();
            for (sha256, content) in staged {
                if state.store.put_object_unsynced(&sha256, &content)? {
                    written.push(sha256);
                }
            }
            Ok::<_, ApiError>(written)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        self.new_objects.extend(written);
        Ok(())
    }
}
