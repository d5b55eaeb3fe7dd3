//! hubsweep (skeleton)
//!
//! - `model`: checkpoint files, config, GPT-NeoX / Llama forward passes with TransformerLens
//!   hook points, GGUF → HF conversion.
//! - `data`: prompt sources, tokenization into fixed-length windows, token shards.
#![deny(missing_docs)]

pub mod data;
pub mod model;
