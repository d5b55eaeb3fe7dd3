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

# CANDLE_NUM_THREADS=1: element-wise ops on the calling thread, as the hubsweep binary runs them
# (src/main.rs); the matrix products use RAYON_NUM_THREADS threads.
export RAYON_NUM_THREADS="$threads" CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}" OMP_NUM_THREADS="$threads"
cargo bench --locked --bench capture_smollm2 --no-run >&2
# Alternate the two sides for ROUNDS rounds so both see the same background load; the summary
# uses each side's best round (the least disturbed one).
rounds="${ROUNDS:-3}"
results="$HUBSWEEP_CACHE/bench/results.jsonl"
: > "$results"
for _ in $(seq "$rounds"); do
  cargo bench --locked --bench capture_smollm2 -- "$HUBSWEEP_SMOLLM2_GGUF" "$hf_dir" "$ids" "$runs" 2>/dev/null \
    | tail -1 | tee -a "$results"
  "$python" scripts/bench/capture_smollm2_torch.py "$hf_dir" "$ids" "$runs" "$threads" 2>/dev/null \
    | tail -1 | tee -a "$results"
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
for r in rows:
    key = "ours" if r["impl"].startswith("hubsweep") else "torch"
    if key not in best or r["median_s"] < best[key]["median_s"]:
        best[key] = r
a, b = best["ours"], best["torch"]
print(f"best of {len(rows) // 2} rounds, {a['threads']} threads: hubsweep {a['tokens_per_s']:.0f} tokens/s "
      f"(median {a['median_s']:.3f} s), torch {b['tokens_per_s']:.0f} tokens/s (median {b['median_s']:.3f} s); "
      f"ratio {a['tokens_per_s'] / b['tokens_per_s']:.2f}x; CPU seconds per pass {a['cpu_s']:.2f} vs {b['cpu_s']:.2f} "
      f"({b['cpu_s'] / a['cpu_s']:.2f}x, less disturbed by other load); "
      f"peak RSS {a['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB")
PY
