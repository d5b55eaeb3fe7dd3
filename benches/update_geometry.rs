//! hubsweep's side of the update-geometry benchmark (`scripts/bench/update-geometry.sh`):
//! reads a GPT-NeoX base checkpoint (its `query_key_value` weights, `model::weights::Weights`)
//! and PEFT LoRA adapters (`model::adapter`) from disk, and computes every layer's
//! update geometry at k ∈ {5, 10, 20, srank} — the base's SVD once per layer, reused for every
//! adapter; layers in parallel on the rayon pool, each decomposition on one thread. Writes the
//! figures and the seconds it took (from start to finish, reading included) as JSON. Not a test.
//!
//! Usage: cargo bench --bench update_geometry -- BASE_DIR OUT.json ADAPTER_DIR...
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use hubsweep::analysis::{
    LowRankUpdate, Parallelism, SubspaceChoice, TruncatedSvd, WeightMatrix, update_geometry,
};
use hubsweep::model::ModelConfig;
use hubsweep::model::adapter::LoraAdapter;
use hubsweep::model::weights::Weights;
use rayon::prelude::*;
use serde_json::json;

const CHOICES: [SubspaceChoice; 4] = [
    SubspaceChoice::Fixed(5),
    SubspaceChoice::Fixed(10),
    SubspaceChoice::Fixed(20),
    SubspaceChoice::SRANK,
];

/// One adapter's whole `query_key_value` update of one layer.
struct LayerUpdate {
    adapter: String,
    update: LowRankUpdate,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [base_dir, out, adapters @ ..] = args.as_slice() else {
        panic!("usage: update_geometry BASE_DIR OUT.json ADAPTER_DIR...");
    };
    let start = Instant::now();
    let base_dir = Path::new(base_dir);
    let config = ModelConfig::from_file(&base_dir.join("config.json")).expect("config.json");
    let base_path = base_dir.join("model.safetensors");
    let base_headers = Weights::read(std::slice::from_ref(&base_path), &Device::Cpu, DType::F32)
        .expect("base headers");
    let mut per_layer: Vec<Vec<LayerUpdate>> = (0..config.n_layers).map(|_| Vec::new()).collect();
    for dir in adapters {
        let dir = PathBuf::from(dir);
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let adapter = LoraAdapter::open(&dir).expect("adapter");
        for module in adapter.updates(&config, &base_headers).expect("updates") {
            // The whole fused update (its q/k/v parts follow it in the list).
            if module.part.is_none() && module.module == "attention.query_key_value" {
                let layer = module.layer.expect("layer");
                per_layer[layer].push(LayerUpdate {
                    adapter: name.clone(),
                    update: module.update,
                });
            }
        }
    }
    let adapters_read = start.elapsed().as_secs_f64();
    let seq = Parallelism::Sequential;
    let (d_out, d_in) = (3 * config.n_heads * config.head_dim, config.d_model);
    let rows: Vec<Vec<serde_json::Value>> = per_layer
        .par_iter()
        .enumerate()
        .map(|(layer, updates)| {
            // One layer's weight at a time (the library's checkpoint reader), as stored: F32.
            let key = format!("gpt_neox.layers.{layer}.attention.query_key_value.weight");
            let tensor = base_headers.get(&key, &[d_out, d_in]).expect("qkv weight");
            let values: Vec<f32> = tensor
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("f32 values");
            let weight = WeightMatrix::new(&values, d_out, d_in).expect("shape");
            // Enough vectors for every usable k: k ≤ the update's rank.
            let keep = updates
                .iter()
                .map(|u| u.update.rank())
                .max()
                .unwrap_or(0)
                .max(20);
            let base = TruncatedSvd::of_weight(weight, keep, seq).expect("base svd");
            let mut rows = Vec::new();
            for LayerUpdate { adapter, update } in updates {
                let svd = TruncatedSvd::of_low_rank(update, seq).expect("update svd");
                let geometry = update_geometry(&base, &svd, &CHOICES).expect("geometry");
                for alignment in &geometry.alignments {
                    rows.push(json!({
                        "adapter": adapter,
                        "layer": layer,
                        "choice": alignment.choice.to_string(),
                        "k": alignment.k,
                        "p_left": alignment.p_left,
                        "p_right": alignment.p_right,
                        "stable_rank": geometry.stable_rank_update,
                    }));
                }
            }
            rows
        })
        .collect();
    let seconds = start.elapsed().as_secs_f64();
    let report = json!({
        "seconds": seconds,
        "adapters_read_seconds": adapters_read,
        "threads": rayon::current_num_threads(),
        "rows": rows.into_iter().flatten().collect::<Vec<_>>(),
    });
    std::fs::write(out, report.to_string()).expect("write the figures");
    println!(
        "{{\"what\":\"update geometry\",\"seconds\":{seconds:.3},\"adapters_read_seconds\":{adapters_read:.3}}}"
    );
}
