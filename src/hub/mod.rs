//! The Hub: a client for the Hugging Face Hub's upload and download protocol, and an embedded
//! Hub-compatible server (`server`). The wire protocol is described in
//! `shared/reference/hub-protocol.md`; what our server implements is in `docs/hub.md`.

pub mod server;
mod types;

pub use types::{InvalidRepoId, RepoId, RepoType, Token};
