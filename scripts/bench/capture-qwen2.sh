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
# shellcheck source=capture-lib.sh
source scripts/bench/capture-lib.sh
lcg_ids "$ids" 4 128 151936
results="$HUBSWEEP_CACHE/bench/results-qwen2.jsonl"
capture_rounds "$results" "${ROUNDS:-3}" - "$hf_dir" "$ids" "$runs" "$threads" "$python"
capture_summary "$results" "Qwen2-shaped, "
