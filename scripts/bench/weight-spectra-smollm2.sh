#!/usr/bin/env bash
# Weight spectroscopy of the real SmolLM2-135M: the GGUF of scripts/test.d/20-models.sh imported
# into a scratch embedded hub (`hub import --gguf --local`, dequantized to F32), then
#   1. `hubsweep run` of a weights-only sweep over every matrix (30 layers × 7 projections and
#      the 49152×576 embedding: 211 matrices), end to end: load, f64 SVD, upload, ledger;
#   2. the same checkpoint's matrices through examples/weight_spectra (hubsweep's faer route,
#      no hub) and torch.linalg.svdvals, f32 and f64, same thread count, same run
#      (scripts/bench/weight_spectra.py with SOURCE=the checkpoint).
# Prints the walls and the ratios (torch ÷ hubsweep: above 1, hubsweep is faster). hubsweep's
# sweeps compute in f64 from the stored values; compare with torch's f64 column.
#
# Env: THREADS (default: nproc), OMP_WAIT_POLICY (default PASSIVE), BENCH_VENV (a venv with torch
# and safetensors; default /work/.venv-bench, else /work/.venv-ref, else created at BENCH_VENV),
# HUBSWEEP_CACHE (where 20-models.sh keeps the GGUF).
set -euo pipefail
cd "$(dirname "$0")/../.."

export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
# shellcheck source=../test.d/20-models.sh
source scripts/test.d/20-models.sh

BENCH_VENV="${BENCH_VENV:-/work/.venv-bench}"
python=""
for venv in "$BENCH_VENV" /work/.venv-ref; do
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch, safetensors" 2>/dev/null; then
    python="$venv/bin/python"
    break
  fi
done
if [ -z "$python" ]; then
  echo "== creating $BENCH_VENV with torch (PyPI's torch wheel pulls the CUDA stack, ~3 GB)" >&2
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install --quiet torch safetensors numpy
  python="$BENCH_VENV/bin/python"
fi

export THREADS="${THREADS:-$(nproc)}"
# See weight-spectra.sh: torch's spinning OpenMP waits distort its figures on a busy machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cargo build --release --quiet --bin hubsweep --example weight_spectra
target="${CARGO_TARGET_DIR:-target}"
hubsweep="$target/release/hubsweep"

work="$(mktemp -d)"
serve_pid=""
cleanup() {
  [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export HUBSWEEP_HOME="$work/home" HF_HUB_OFFLINE=1 NO_COLOR=1

echo "== import $HUBSWEEP_SMOLLM2_GGUF" >&2
"$hubsweep" hub import --local --repo HuggingFaceTB/SmolLM2-135M \
  --gguf "$HUBSWEEP_SMOLLM2_GGUF" >/dev/null

cat >"$work/weights.yaml" <<'SPEC'
name: smollm2-weights
output: local://bench/smollm2-weights
models:
  - family: llama
    repo: local://HuggingFaceTB/SmolLM2-135M
data:  # required by the schema; unused without `capture`
  texts: ["Only the weights are swept here: no forward pass, no capture."]
  seq_len: 4
weights:
  modules: ["self_attn.*_proj", "mlp.*_proj", model.embed_tokens]
compute:
  device: cpu
SPEC
echo "== hubsweep run (weights only, RAYON_NUM_THREADS=$THREADS)" >&2
start=$(date +%s%N)
RAYON_NUM_THREADS="$THREADS" "$hubsweep" run --format json "$work/weights.yaml" >"$work/run.json"
end=$(date +%s%N)
export HUBSWEEP_RUN_SECONDS
HUBSWEEP_RUN_SECONDS=$(awk "BEGIN { print ($end - $start) / 1e9 }")

# The checkpoint as the hub serves it, for torch and the example.
"$hubsweep" hub serve --dir "$HUBSWEEP_HOME/hub" >"$work/serve.url" &
serve_pid=$!
for _ in $(seq 100); do [ -s "$work/serve.url" ] && break; sleep 0.1; done
url="$(head -n1 "$work/serve.url")"
curl -sSfL -o "$work/model.safetensors" "$url/HuggingFaceTB/SmolLM2-135M/resolve/main/model.safetensors"
kill "$serve_pid"
serve_pid=""
# The store and the cache hold two more copies of the 540 MB checkpoint: free the disk.
rm -rf "$HUBSWEEP_HOME"

SOURCE="$work/model.safetensors" "$python" scripts/bench/weight_spectra.py \
  "$target/release/examples/weight_spectra"
