#!/usr/bin/env bash
# Run benchmark (issue 5): SmolLM2-135M (dequantized GGUF), TOKENS tokens (default 65,536),
# hook_resid_post at all 30 layers, f16 activations, to a hub on loopback — `hubsweep run` side
# by side, in the same run and against the same server, with the Python baseline of the
# HFStreamUploader post (transformers + BytesIO + huggingface_hub; run_smollm2_py.py).
# Prints wall time and peak RSS of both and their ratios, and hubsweep's overlap:
# wall / max(capture busy, upload busy). Not a test.
#
#   scripts/bench/run-smollm2.sh        (env: TOKENS, THREADS (default nproc),
#                                        PYTHON with torch + transformers (default /work/.venv-ref),
#                                        HUBSWEEP_BIN: time this binary instead of the checkout's,
#                                        SKIP_PY=1: the hubsweep side only, e.g. to compare builds)
set -euo pipefail
cd "$(dirname "$0")/../.."
tokens="${TOKENS:-65536}"
threads="${THREADS:-$(nproc)}"
python="${PYTHON:-/work/.venv-ref/bin/python}"
export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
# shellcheck source=../test.d/20-models.sh
source scripts/test.d/20-models.sh
bin="$(mktemp -d)/hubsweep"
if [ -n "${HUBSWEEP_BIN:-}" ]; then
  cp "$HUBSWEEP_BIN" "$bin"
else
  cargo build --release --locked --quiet
  cp "$CARGO_TARGET_DIR/release/hubsweep" "$bin"
fi
work="$(mktemp -d)"
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work" "$(dirname "$bin")"' EXIT
port=$((20000 + RANDOM % 20000))
endpoint="http://127.0.0.1:$port"
"$bin" hub serve --dir "$work/store" --addr "127.0.0.1:$port" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 50); do curl -sf "$endpoint/api/whoami-v2" >/dev/null 2>&1 && break; sleep 0.1; done

# The model, on that hub (as a researcher would have it), and as a folder for transformers.
HF_ENDPOINT="$endpoint" "$bin" hub import --gguf "$HUBSWEEP_SMOLLM2_GGUF" --repo bench/smollm2-135m >/dev/null 2>&1
HF_ENDPOINT="$endpoint" HF_HUB_DISABLE_XET=1 HF_HOME="$work/py-home" "$python" -c \
  "from huggingface_hub import snapshot_download; print(snapshot_download('bench/smollm2-135m'))" > "$work/hf_dir"
hf_dir="$(tail -1 "$work/hf_dir")"

# The same token windows for both sides (fixed LCG ids; seq_len 128, first token the BOS).
python3 - "$tokens" "$work" <<'PY'
import json, sys
tokens, work = int(sys.argv[1]), sys.argv[2]
x, windows = 12345, []
for _ in range(tokens // 128):
    row = [1]
    for _ in range(127):
        x = (1103515245 * x + 12345) % 2**31
        row.append(x % 49152)
    windows.append(row)
json.dump(windows, open(f"{work}/ids.json", "w"))
flat = [t for w in windows for t in w[1:]]
spec = f"""name: bench
output: hf://datasets/bench/rust
models:
  - family: llama
    repo: bench/smollm2-135m
data:
  token_ids: [{flat}]
  seq_len: 128
  max_tokens: {tokens}
capture:
  hooks: [hook_resid_post]
  layers: all
  dtype: f16
limits:
  memory: 1GiB
  artifact_bytes: 256MiB
compute:
  device: cpu
  batch_size: 8
"""
open(f"{work}/bench.yaml", "w").write(spec)
PY

export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads"
# Warm the model cache of the Rust side (download is not what is measured).
HF_ENDPOINT="$endpoint" HF_HOME="$work/rs-home" HUBSWEEP_HOME="$work/hs" "$bin" run --dry-run "$work/bench.yaml" >/dev/null 2>&1
/usr/bin/time -f '%M' -o "$work/rs.rss" env HF_ENDPOINT="$endpoint" HF_HOME="$work/rs-home" HUBSWEEP_HOME="$work/hs" \
  "$bin" run --format json "$work/bench.yaml" > "$work/rs.json" 2>"$work/rs.log"
if [ -z "${SKIP_PY:-}" ]; then
  /usr/bin/time -f '%M' -o "$work/py.rss" env HF_ENDPOINT="$endpoint" HF_HUB_DISABLE_XET=1 HF_HOME="$work/py-home" \
    "$python" scripts/bench/run_smollm2_py.py "$hf_dir" "$work/ids.json" "$endpoint" bench/python "$threads" > "$work/py.json" 2>"$work/py.log"
fi
python3 - "$work" "$tokens" "$threads" <<'PY'
import json, os, sys
work, tokens, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rs = json.load(open(f"{work}/rs.json"))
rss = lambda side: int(open(f"{work}/{side}.rss").read().split()[-1]) / 1024
print(f"SmolLM2-135M, {tokens} tokens, hook_resid_post × 30 layers, f16, {threads} thread(s)")
print(f"hubsweep: wall {rs['wall_seconds']:.1f} s, peak RSS {rss('rs'):.0f} MiB, capture busy {rs['capture_seconds']:.1f} s, upload busy {rs['upload_busy_seconds']:.1f} s, {rs['bytes_uploaded']/2**20:.0f} MiB sent")
if os.path.exists(f"{work}/py.json"):
    py = json.loads(open(f"{work}/py.json").read().strip().splitlines()[-1])
    print(f"python:   wall {py['wall']:.1f} s, peak RSS {rss('py'):.0f} MiB")
    print(f"ratios:   wall {rs['wall_seconds']/py['wall']:.2f}× (target ≤ 0.5), RSS {rss('rs')/rss('py'):.2f}× (target ≤ 0.5)")
print(f"overlap:  wall / max(capture, upload) = {rs['wall_seconds']/max(rs['capture_seconds'], rs['upload_busy_seconds']):.2f} (target ≤ 1.15)")
st = rs.get("capture_stages", {})
if st:
    print("stages:   " + ", ".join(f"{k.removesuffix('_seconds').replace('_', ' ')} {v:.1f} s" for k, v in st.items()) + " (busy time of each; they overlap)")
PY
