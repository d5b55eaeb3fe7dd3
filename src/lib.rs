//! hubsweep (skeleton)
//!
//! - `model`: checkpoint files, config, GPT-NeoX / Llama forward passes with TransformerLens
//!   hook points, GGUF → HF conversion.
#![deny(missing_docs)]

pub mod model;
