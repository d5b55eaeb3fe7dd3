//! Models: forward passes against transformers references, bad input, GGUF import, tokenizers.

mod cli;
mod data;
mod download;
mod errors;
mod families;
mod fixtures;
mod real;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    crate::common::repo_root().join("tests/fixtures").join(name)
}

/// All tensors of a reference file, on the CPU.
pub fn reference(dir: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(dir).join("reference.safetensors"), &Device::Cpu)
        .expect("read reference.safetensors")
}

/// Largest `|a - b| - (atol + rtol·|b|)` over all elements (≤ 0 means within tolerance);
/// equal infinities (masked attention scores) count as equal.
pub fn excess(ours: &Tensor, reference: &Tensor, atol: f32, rtol: f32) -> f32 {
    let a: Vec<f32> = ours
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = reference
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x == y {
                f32::NEG_INFINITY
            } else {
                (x - y).abs() - (atol + rtol * y.abs())
            }
        })
        .fold(f32::NEG_INFINITY, f32::max)
}
