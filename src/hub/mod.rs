//! The Hub: a client for the Hugging Face Hub's upload and download protocol, and an embedded
//! Hub-compatible server. The wire protocol, what our server implements, its flags, faults and
//! store layout are in `docs/hub.md`.
//!
//! - [`client`]: [`HubClient`] — create repo, preupload, LFS batch + basic/multipart transfer
//!   from memory ([`LfsSource::Bytes`]) or files, NDJSON commits without blind retries,
//!   listing, resolve metadata, folder upload (`hub import`) and mirroring (`hub mirror`).
//! - [`download`]: file downloads (models, tokenizers, dataset files) through the client into
//!   the HF cache shared with Python.
//! - [`server`]: the embedded server ([`server::Server::start`]) over a crash-safe store.
//! - [`xet`]: the Xet protocol's formats and hashes (content-defined chunks, xorbs, shards),
//!   shared by the client's Xet uploads and the embedded server's CAS.
//! - [`bundled`]: the two tiny models compiled into the binary, imported into the embedded hub
//!   on first use.

pub mod bundled;
pub mod client;
pub mod download;
pub mod server;
mod types;
pub mod xet;

pub use client::{
    CommitInfo, CommitOperation, CommitOptions, EventSink, FileStream, FolderUpload, HubClient,
    HubClientBuilder, HubError, HubEvent, LfsObject, LfsSource, MirrorReport, Repo, RetryPolicy,
    UploadOutcome,
};
pub use types::{InvalidRepoId, RepoId, RepoType, Token};
