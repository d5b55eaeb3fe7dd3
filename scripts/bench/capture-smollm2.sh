#!/usr/bin/env bash
# Capture benchmark: SmolLM2-135M (dequantized GGUF, f32), 4 × 128 tokens, hook_resid_post at
# all 30 layers, CPU, release — hubsweep (candle) vs PyTorch + transformers on the same HF
# folder, the same ids and the same thread count, in the same run. Not a test; prints a ratio.
#
#   scripts/bench/capture-smollm2.sh [RUNS]     (env: THREADS, default nproc; ROUNDS, default 3;
#                                                PYTHON, a python with torch + transformers,
#                                                default /work/.venv-ref)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-5}"
threads="${THREADS:-$(nproc)}"
python="${PYTHON:-/work/.venv-ref/bin/python}"
export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
mkdir -p "$HUBSWEEP_CACHE/bench"
# shellcheck source=../test.d/20-models.sh
source scripts/test.d/20-models.sh
hf_dir="$HUBSWEEP_CACHE/bench/smollm2-hf"
ids="$HUBSWEEP_CACHE/bench/ids-4x128.json"
# shellcheck source=capture-lib.sh
source scripts/bench/capture-lib.sh
lcg_ids "$ids" 4 128 49152
results="$HUBSWEEP_CACHE/bench/results.jsonl"
capture_rounds "$results" "${ROUNDS:-3}" "$HUBSWEEP_SMOLLM2_GGUF" "$hf_dir" "$ids" "$runs" "$threads" "$python"
capture_summary "$results" ""
