//! Capture throughput on SmolLM2-135M (dequantized GGUF), driven by
//! scripts/bench/capture-smollm2.sh, which runs the PyTorch peer on the same input.
//!
//! Usage: capture_smollm2 GGUF HF_DIR IDS_JSON RUNS
//! Converts GGUF into HF_DIR when HF_DIR/config.json is absent (GGUF `-`: HF_DIR is any
//! HF-layout model, as scripts/bench/capture-qwen2.sh uses it), then times RUNS forward passes
//! over the ids (after one warm-up) recording `hook_resid_post` at every layer, and prints one
//! JSON line: median seconds, tokens/s, peak RSS.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use hubsweep::model::{Model, ModelFiles, gguf};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system, all threads) this process has used, from /proc/self/stat in
/// USER_HZ ticks (100 per second on Linux). Less disturbed by other load than wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: capture_smollm2 GGUF HF_DIR IDS_JSON RUNS");
        std::process::exit(2);
    }
    let (gguf_path, hf_dir, ids_path) = (
        PathBuf::from(&args[1]),
        PathBuf::from(&args[2]),
        PathBuf::from(&args[3]),
    );
    let runs: usize = args[4].parse().expect("RUNS");
    if args[1] != "-" && !hf_dir.join("config.json").is_file() {
        gguf::convert_to_dir(&gguf_path, &hf_dir).expect("convert GGUF");
    }
    let rows: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(&ids_path).expect("ids")).expect("ids json");
    let (batch, seq) = (rows.len(), rows[0].len());
    let ids = Tensor::from_vec(rows.concat(), (batch, seq), &Device::Cpu).expect("ids tensor");

    let start = Instant::now();
    let model = Model::load(
        &ModelFiles::from_dir(&hf_dir).expect("files"),
        &Device::Cpu,
        DType::F32,
    )
    .expect("load");
    let load_s = start.elapsed().as_secs_f64();
    let names: Vec<String> = (0..model.config().n_layers)
        .map(|l| format!("blocks.{l}.hook_resid_post"))
        .collect();
    let request = model.request(&names).expect("hooks");

    let mut times = Vec::with_capacity(runs);
    let mut cpu = 0.0;
    for run in 0..=runs {
        if run == 1 {
            cpu = cpu_seconds();
        }
        let t = Instant::now();
        let acts = model.forward(&ids, &request).expect("forward");
        assert_eq!(acts.len(), names.len());
        if run > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let cpu_per_pass = (cpu_seconds() - cpu) / runs as f64;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"impl\": \"hubsweep-candle\", \"load_s\": {load_s:.3}, \"median_s\": {median:.4}, \"min_s\": {:.4}, \"tokens_per_s\": {:.1}, \"cpu_s\": {cpu_per_pass:.3}, \"peak_rss_mib\": {:.0}, \"threads\": {}}}",
        times[0],
        (batch * seq) as f64 / median,
        peak_rss_mib(),
        candle_core::utils::get_num_threads()
    );
}
