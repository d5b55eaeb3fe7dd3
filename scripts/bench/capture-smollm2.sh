#!/usr/bin/env bash
# Capture benchmark: SmolLM2-135M (dequantized GGUF, f32), 4 × 128 tokens, hook_resid_post at
# all 30 layers, CPU, release — hubsweep (candle) vs PyTorch + transformers on the same HF
# folder, the same ids and the same thread count, in the same run. Not a test; prints a ratio.
#
#   scripts/bench/capture-smollm2.sh [RUNS]     (env: THREADS, default nproc; PYTHON, a python
#                                                with torch + transformers, default /work/.venv-ref)
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
# Fixed pseudo-random ids (LCG), identical for both sides.
python3 -c "
import json
x, rows = 12345, []
for _ in range(4):
    row = []
    for _ in range(128):
        x = (1103515245 * x + 12345) % 2**31
        row.append(x % 49152)
    rows.append(row)
json.dump(rows, open('$ids', 'w'))"

export RAYON_NUM_THREADS="$threads" CANDLE_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads"
cargo bench --locked --bench capture_smollm2 --no-run >&2
ours=$(cargo bench --locked --bench capture_smollm2 -- "$HUBSWEEP_SMOLLM2_GGUF" "$hf_dir" "$ids" "$runs" 2>/dev/null | tail -1)
peer=$("$python" scripts/bench/capture_smollm2_torch.py "$hf_dir" "$ids" "$runs" "$threads" 2>/dev/null | tail -1)
echo "$ours"
echo "$peer"
python3 -c "
import json, sys
a, b = json.loads('''$ours'''), json.loads('''$peer''')
print(f\"throughput ratio hubsweep/torch: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x by median, \"
      f\"{b['min_s'] / a['min_s']:.2f}x by fastest run \"
      f\"({a['tokens_per_s']:.0f} vs {b['tokens_per_s']:.0f} tokens/s, {a['threads']} threads); \"
      f\"peak RSS {a['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB\")"
