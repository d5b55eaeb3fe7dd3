# Shared by scripts/bench/capture-*.sh (sourced): fixed ids, alternating rounds of hubsweep and
# PyTorch on the same HF folder, and the summary line.

# lcg_ids FILE ROWS LEN VOCAB: fixed pseudo-random ids (an LCG), identical for both sides.
lcg_ids() {
  python3 -c "
import json
x, rows = 12345, []
for _ in range($2):
    row = []
    for _ in range($3):
        x = (1103515245 * x + 12345) % 2**31
        row.append(x % $4)
    rows.append(row)
json.dump(rows, open('$1', 'w'))"
}

# capture_rounds RESULTS ROUNDS GGUF HF_DIR IDS RUNS THREADS PYTHON: alternates the two sides
# for ROUNDS rounds so both see the same background load, one JSON line each into RESULTS.
# GGUF `-`: HF_DIR is the model as it is.
capture_rounds() {
  local results="$1" rounds="$2" gguf="$3" hf_dir="$4" ids="$5" runs="$6" threads="$7" python="$8"
  # CANDLE_NUM_THREADS=1: element-wise ops on the calling thread, as the hubsweep binary runs
  # them (src/main.rs); the matrix products use RAYON_NUM_THREADS threads.
  export RAYON_NUM_THREADS="$threads" CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}" OMP_NUM_THREADS="$threads"
  cargo bench --locked --bench capture_smollm2 --no-run >&2
  : > "$results"
  for _ in $(seq "$rounds"); do
    cargo bench --locked --bench capture_smollm2 -- "$gguf" "$hf_dir" "$ids" "$runs" 2>/dev/null \
      | tail -1 | tee -a "$results"
    "$python" scripts/bench/capture_smollm2_torch.py "$hf_dir" "$ids" "$runs" "$threads" 2>/dev/null \
      | tail -1 | tee -a "$results"
  done
}

# capture_summary RESULTS LABEL: each side's best round (the least disturbed one) and the ratio.
capture_summary() {
  python3 - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
for r in rows:
    key = "ours" if r["impl"].startswith("hubsweep") else "torch"
    if key not in best or r["median_s"] < best[key]["median_s"]:
        best[key] = r
a, b = best["ours"], best["torch"]
print(f"{sys.argv[2]}best of {len(rows) // 2} rounds, {a['threads']} threads: hubsweep {a['tokens_per_s']:.0f} tokens/s "
      f"(median {a['median_s']:.3f} s), torch {b['tokens_per_s']:.0f} tokens/s (median {b['median_s']:.3f} s); "
      f"ratio {a['tokens_per_s'] / b['tokens_per_s']:.2f}x; CPU seconds per pass {a['cpu_s']:.2f} vs {b['cpu_s']:.2f} "
      f"({b['cpu_s'] / a['cpu_s']:.2f}x, less disturbed by other load); "
      f"peak RSS {a['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB")
PY
}
