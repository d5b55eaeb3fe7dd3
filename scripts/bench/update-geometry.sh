#!/usr/bin/env bash
# Update-geometry benchmark (issue 17): a Pythia-410M-shaped base (24 layers, fused
# query_key_value 3072×1024, random weights) and three PEFT LoRA adapters (r = 16, 128, 128,
# nonzero B), generated with a fixed seed; then all 24 layers' update geometry at
# k ∈ {5, 10, 20, srank} by hubsweep (benches/update_geometry.rs: the files read with the
# library, the base's SVD once per layer) and by the straightforward torch script (fp32
# torch.linalg.svd of W and of each dense ΔW), each in its own process, in the same run.
# Prints both times, the ratio, each side's peak RSS and the largest differences between
# their p_left / p_right / stable rank. Not a test.
#
# Env: WORK (default: a temporary directory, removed at the end; set it to keep the ~0.5 GB
# of generated files between runs), LAYERS (default 24), OMP_WAIT_POLICY (default PASSIVE),
# HUBSWEEP_CACHE (where the test command's peft/torch venv lives; default
# ~/.cache/hubsweep-ci), THREADS (both sides' thread count; default: every core, rayon's and
# torch's defaults).
set -euo pipefail
cd "$(dirname "$0")/../.."

export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
# The venv the adapter tests install (torch + peft + safetensors): HUBSWEEP_PEFT_PYTHON.
source scripts/test.d/25-python-peft.sh
# Torch's OpenMP threads spin while waiting without this, which on a shared machine is a
# figure about the machine (scripts/bench/weight-spectra.sh).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [ -n "${THREADS:-}" ]; then
  export RAYON_NUM_THREADS="$THREADS"
fi
if [ -z "${WORK:-}" ]; then
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
fi
cargo bench --locked --quiet --bench update_geometry --no-run
binary="$(cargo bench --locked --bench update_geometry --no-run --message-format=json 2>/dev/null \
  | "$HUBSWEEP_PEFT_PYTHON" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "update_geometry" and m.get("executable"):
        print(m["executable"])')"
"$HUBSWEEP_PEFT_PYTHON" scripts/bench/update_geometry_torch.py "$binary" "$WORK"
