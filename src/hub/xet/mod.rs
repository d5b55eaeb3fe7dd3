//! The Xet protocol's formats and hashes (the Xet protocol specification in the Hub's docs,
//! v1.1), shared by hubsweep's client (`hub::client::xet`, Xet uploads) and the embedded
//! server's CAS (`hub::server::xet`):
//!
//! - [`chunking`]: content-defined chunks (gear hash; 8 KiB ≤ chunk ≤ 128 KiB, 64 KiB target),
//!   cut exactly where `xet-core` cuts them, so chunks dedup against every other client's;
//! - [`hash`]: keyed BLAKE3 chunk hashes, the Merkle hashes of xorbs and files, the
//!   verification hashes of a shard's terms, and their string form;
//! - [`xorb`]: parsing and checking uploaded xorbs, and serializing ours (stored chunks and the
//!   footer `xet-core` writes);
//! - [`shard`]: parsing uploaded shards, writing the shards of our uploads (files, their terms,
//!   verification hashes and sha256, the new xorbs) and the global dedup query's answers.

pub mod chunking;
pub mod hash;
pub mod shard;
pub mod xorb;
