#!/usr/bin/env bash
# Weight spectroscopy benchmark: singular values of every 2-D weight of a SmolLM2-135M-shaped
# checkpoint (30 layers × q, k, v, o, gate, up, down, plus the 49152×576 embedding; random
# values), by hubsweep (faer) and by torch.linalg.svdvals on the same matrices, with the same
# thread count, in one run. Prints both times, the ratio (torch / faer: > 1 means faer is
# faster) and the largest deviation from torch's f64 singular values.
#
# Env: THREADS (default: nproc), LAYERS (default 30), OMP_WAIT_POLICY (default PASSIVE), BENCH_VENV (a venv with torch and
# safetensors; default /work/.venv-bench, else /work/.venv-ref, else created at BENCH_VENV).
set -euo pipefail
cd "$(dirname "$0")/../.."

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
# Without this, torch's OpenMP threads spin while waiting; on a machine whose cores are busy
# with other work that made torch's 2-thread svdvals 5-25× slower than its 1-thread one here,
# a figure about the machine, not about torch.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cargo build --release --quiet --example weight_spectra
target="${CARGO_TARGET_DIR:-target}"
"$python" scripts/bench/weight_spectra.py "$target/release/examples/weight_spectra"
