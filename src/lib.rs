//! hubsweep: declarative activation sweeps over model families, checkpoints and layers,
//! streamed to the Hugging Face Hub with a ledger anyone can check.
//!
//! Data flow, one direction:
//!
//! ```text
//! sweeps/*.yaml ─► spec (parse, validate, expand) ─► plan (DAG, node ids, estimates)
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`spec`] | YAML types, validation with source locations, grid expansion |
//! | [`ledger`] | manifest, per-node records, segments and the compacted index on the Hub |
//! | [`plan`] | node kinds, content-addressed node ids, the DAG, size and memory estimates |
//! | [`sink`] | in-memory safetensors serialization with sha256, upload pipeline, commit batching |
#![deny(missing_docs)]

pub mod ledger;
pub mod plan;
pub mod sink;
pub mod spec;
