//! hubsweep: declarative activation sweeps over model families, checkpoints and layers,
//! streamed to the Hugging Face Hub with a ledger anyone can check.
//!
//! Data flow, one direction:
//!
//! ```text
//! sweeps/*.yaml ─► spec (parse, validate, expand) ─► plan (DAG, node ids, estimates)
//!    ─► exec (scheduler) ─► model (forward pass, hook points) ─► analysis (Gram, spectra)
//!                                   └──────────────► sink (safetensors in memory → LFS upload)
//!    ─► ledger (records, committed through the hub client) ◄── hub (client; embedded server)
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`spec`] | YAML types, validation with source locations, grid expansion |
//! | [`plan`] | node kinds, content-addressed node ids, the DAG, size and memory estimates |
//! | [`exec`] | the [`exec::Session`] every front end opens a sweep with (hubs, pin once, run), the scheduler: resource limits, cancellation, events |
//! | [`model`] | config loading, GPT-NeoX and Llama forward passes with hook points, tokenizer, GGUF import |
//! | [`data`] | prompt sources, tokenization into windows, token shards |
//! | [`analysis`] | streaming Gram accumulation, eigen spectra and metrics, overlaps, weight spectra |
//! | [`sink`] | in-memory safetensors serialization with sha256; [`sink::Sink::start`] / `finish`: upload pipeline, commit batching, the index |
//! | [`hub`] | Hub HTTP client, downloads through hf-hub, the embedded Hub-compatible server, the bundled models |
//! | [`slurm`] | the submitter: work units submitted to a Slurm cluster as a job array, tracked and resubmitted |
//! | [`ledger`] | manifest, per-node records, segments, the compacted index and metrics tables on the Hub; progress; `verify` |
//! | [`reproduce`] | a ledger's plan rebuilt from its manifest at the recorded pins, rerun and compared |
//! | [`fuzzing`] | fuzz target bodies for the hostile-input parsers (run by `fuzz/` and the tests) |
//! | [`report`] | the metrics tables drawn as a self-contained HTML page (inline SVG), CSV, JSON |
//! | [`emit`] | a paper's values (LaTeX macros, JSON), tables and figures from pinned output repos; `--check` |
#![deny(missing_docs)]

pub mod analysis;
pub mod data;
pub mod emit;
pub mod exec;
pub mod fuzzing;
pub mod hub;
pub mod ledger;
pub mod model;
pub mod plan;
pub mod report;
pub mod reproduce;
pub mod sink;
pub mod slurm;
pub mod spec;
