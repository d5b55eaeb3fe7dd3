//! Plans a synthetic sweep of at least 1,000,000 nodes and prints wall time and peak RSS.
//! Run by `scripts/bench/plan.sh` (release mode); not a test.
//!
//! The sweep: 4 model sizes × 40 pinned revisions, 24 layers, 4 hooks, 64 token shards each,
//! with spectra and overlaps against the first revision. Model dimensions come from config.json
//! files written to a temp dir, as a researcher's HF cache would provide them.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use hubsweep::plan::{self, ModelDims, ModelFacts, ModelLookup, PlanOptions};
use hubsweep::spec::{self, ModelSource};

struct Synthetic;

impl ModelLookup for Synthetic {
    fn lookup(&self, _: &ModelSource, revision: &str) -> ModelFacts {
        let dims = ModelDims {
            d_model: 1024,
            n_layers: 24,
            d_mlp: 4096,
            n_heads: 16,
            n_kv_heads: 16,
            vocab: 50304,
            parallel_residual: true,
            tied_embeddings: false,
        };
        ModelFacts {
            commit: Some(format!("{:0>40}", revision.trim_start_matches("step"))),
            dims: Some(dims),
            ..ModelFacts::default()
        }
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let revisions: Vec<String> = (0..40).map(|i| format!("step{}", i * 1000)).collect();
    let text = format!(
        "name: bench\noutput: hf://datasets/bench/bench\nmodels:\n  - family: gpt_neox\n    repo: EleutherAI/pythia-{{size}}\n    size: [a, b, c, d]\n    revision: [{}]\ndata:\n  source: hf://datasets/bench/data/train.txt@main\n  max_tokens: 1048576\n  seq_len: 128\ncapture:\n  hooks: [hook_resid_pre, hook_resid_post, hook_attn_out, hook_mlp_out]\n  layers: all\n  dtype: f16\nanalyses:\n  - spectrum: {{}}\n  - overlap: {{between: revision, base: step0, k: [8]}}\nlimits:\n  memory: 64GiB\n  artifact_bytes: 32MiB\n",
        revisions.join(", ")
    );
    let started = Instant::now();
    let loaded = spec::load("bench.yaml", text.as_bytes());
    let spec = loaded.spec.expect("valid synthetic spec");
    let options = PlanOptions {
        lookup: &Synthetic,
        data_hash: Some("0".repeat(64)),
        device_class: "cpu".into(),
    };
    let plan = plan::build(&spec, &options);
    let graph = plan.graph();
    let acyclic = !petgraph::algo::is_cyclic_directed(&graph);
    let elapsed = started.elapsed();
    let pinned = plan.nodes.iter().filter(|n| n.id.is_some()).count();
    println!("nodes        {}", plan.nodes.len());
    println!("pinned ids   {pinned}");
    println!("acyclic      {acyclic}");
    println!("counts       {:?}", plan.counts());
    println!("wall         {:.3} s", elapsed.as_secs_f64());
    println!("peak RSS     {} MiB", peak_rss_kib() / 1024);
    println!(
        "target       < 2 s and < 1024 MiB; Snakemake 9.27 dry-run of a 60,178-job DAG: 132 s, 1.06 GB"
    );
}
