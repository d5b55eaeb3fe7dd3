//! hubsweep: declarative activation sweeps over model families, checkpoints and layers,
//! streamed to the Hugging Face Hub with a ledger anyone can check.
//!
//! Data flow, one direction:
//!
//! ```text
//! sweeps/*.yaml ─► spec (parse, validate, expand) ─► plan (DAG, node ids, estimates)
//!    … capture ─► analysis (Gram accumulation, spectra, overlaps, weight spectra)
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`spec`] | YAML types, validation with source locations, grid expansion |
//! | [`plan`] | node kinds, content-addressed node ids, the DAG, size and memory estimates |
//! | [`analysis`] | streaming Gram accumulation, eigen spectra and metrics, overlaps, weight spectra |
#![deny(missing_docs)]

pub mod analysis;
pub mod plan;
pub mod spec;
