#!/usr/bin/env bash
# Capture benchmark: a Qwen2-shaped model (24 layers, d 896, GQA 14/2 heads, d_mlp 4864,
# q/k/v biases, tied embeddings, vocab 151936 — Qwen2.5-0.5B's shape) with random weights made
# here by transformers, f32 compute, 4 × 128 tokens, hook_resid_post at all 24 layers, CPU,
# release — hubsweep (candle) vs PyTorch + transformers on the same HF folder, the same ids and
# the same thread count, in the same run. Not a test; prints a ratio.
#
#   scripts/bench/capture-qwen2.sh [RUNS]     (env: THREADS, default nproc; ROUNDS, default 3;
#                                              PYTHON, a python with torch + transformers,
#                                              default /work/.venv-ref)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-5}"
threads="${THREADS:-$(nproc)}"
python="${PYTHON:-/work/.venv-ref/bin/python}"
export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
mkdir -p "$HUBSWEEP_CACHE/bench"
hf_dir="$HUBSWEEP_CACHE/bench/qwen2-0.5b-shaped"
ids="$HUBSWEEP_CACHE/bench/ids-qwen2-4x128.json"
if [ ! -f "$hf_dir/config.json" ]; then
  "$python" - "$hf_dir" <<'PY'
import sys, torch
from transformers import Qwen2Config, Qwen2ForCausalLM
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, max_position_embeddings=32768, use_sliding_window=False)
model = Qwen2ForCausalLM(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.ndim == 2:
            p.normal_(0.0, 1.0 / p.shape[1] ** 0.5 if "embed" not in name else 1.0)
        else:
            p.normal_(1.0 if "norm" in name else 0.0, 0.1)
# Stored BF16 (1 GB on disk); both sides compute in f32.
model.to(torch.bfloat16).save_pretrained(sys.argv[1])
PY
fi
# Fixed pseudo-random ids (LCG), identical for both sides.
python3 -c "
import json
x, rows = 12345, []
for _ in range(4):
    row = []
    for _ in range(128):
        x = (1103515245 * x + 12345) % 2**31
        row.append(x % 151936)
    rows.append(row)
json.dump(rows, open('$ids', 'w'))"

# CANDLE_NUM_THREADS=1: element-wise ops on the calling thread, as the hubsweep binary runs them
# (src/main.rs); the matrix products use RAYON_NUM_THREADS threads.
export RAYON_NUM_THREADS="$threads" CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}" OMP_NUM_THREADS="$threads"
cargo bench --locked --bench capture_smollm2 --no-run >&2
# Alternate the two sides for ROUNDS rounds so both see the same background load; the summary
# uses each side's best round (the least disturbed one). `-` : no GGUF, HF_DIR is the model.
rounds="${ROUNDS:-3}"
results="$HUBSWEEP_CACHE/bench/results-qwen2.jsonl"
: > "$results"
for _ in $(seq "$rounds"); do
  cargo bench --locked --bench capture_smollm2 -- - "$hf_dir" "$ids" "$runs" 2>/dev/null \
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
print(f"Qwen2-shaped, best of {len(rows) // 2} rounds, {a['threads']} threads: hubsweep {a['tokens_per_s']:.0f} tokens/s "
      f"(median {a['median_s']:.3f} s), torch {b['tokens_per_s']:.0f} tokens/s (median {b['median_s']:.3f} s); "
      f"ratio {a['tokens_per_s'] / b['tokens_per_s']:.2f}x; CPU seconds per pass {a['cpu_s']:.2f} vs {b['cpu_s']:.2f}; "
      f"peak RSS {a['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB")
PY
