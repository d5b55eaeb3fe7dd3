//! The Hub: a client for the Hugging Face Hub's upload and download protocol, and an embedded
//! Hub-compatible server. The wire protocol is described in `shared/reference/hub-protocol.md`;
//! what our server implements, its flags, faults and store layout are in `docs/hub.md`.
//!
//! - [`client`]: [`HubClient`] — create repo, preupload, LFS batch + basic/multipart transfer
//!   from memory ([`LfsSource::Bytes`]) or files, NDJSON commits without blind retries,
//!   listing, resolve metadata, folder upload (`hub import`) and mirroring (`hub mirror`).
//! - [`download`]: file downloads (models, tokenizers, dataset files) through the client into
//!   the HF cache shared with Python.
//! - [`server`]: the embedded server ([`server::Server::start`]) over a crash-safe store.
//! - [`bundled`]: the two tiny models compiled into the binary, imported into the embedded hub
//!   on first use.

pub mod bundled;
pub mod client;
pub mod download;
pub mod server;
mod types;

pub use client::{
    CommitInfo, CommitOperation, CommitOptions, EventSink, FileStream, FolderUpload, HubClient,
    HubClientBuilder, HubError, HubEvent, LfsObject, LfsSource, MirrorReport, Repo, RetryPolicy,
    UploadOutcome,
};
pub use types::{InvalidRepoId, RepoId, RepoType, Token};
