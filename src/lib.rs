//! hubsweep (skeleton)
//!
//! - `hub`: Hub HTTP client (upload, commit, listing, downloads via `hf-hub`) and the embedded
//!   Hub-compatible server.
#![deny(missing_docs)]

pub mod hub;
