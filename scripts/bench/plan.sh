#!/usr/bin/env bash
# Planning benchmark: a synthetic sweep of ≥ 1,000,000 nodes, release mode, wall time and peak
# RSS. The reference figure for Snakemake is printed beside ours (measured on this machine
# class; installing Snakemake here is optional: pass --snakemake to time it in the same run).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --release --quiet --example plan_bench
