#!/usr/bin/env bash
# The run benchmark (issue 5) on a GPU: scripts/bench/run-smollm2.sh's workload on DEVICE.
# A SmolLM2-135M-shaped Llama with random weights (make_smollm2_random.py; the GGUF is too large
# to carry), TOKENS tokens in windows of 128, hook_resid_post at all 30 layers, f16 artifacts,
# to one `hubsweep hub serve` on loopback: `hubsweep run` (compute.device DEVICE) and then the
# Python baseline (run_smollm2_py.py, transformers on DEVICE) against the same server. Prints
# walls, peak RSS, the ratios and hubsweep's overlap, and writes WORK/bench.json. Not a test.
#
#   scripts/gpu/bench.sh BIN WORK     env: DEVICE (cuda), TOKENS (196608), THREADS (nproc),
#                                     ID_RANGE (49152: ids drawn from 0..ID_RANGE; a spec holds at
#                                     most 1 MiB and 200,000 values, so TOKENS ≤ 196,608 and, above
#                                     ~150k tokens, a smaller range, which changes no cost: ids
#                                     only index the embedding),
#                                     PYTHON (python3, with torch + transformers + huggingface_hub),
#                                     TOKENIZER (a tokenizer.json for the model folder),
#                                     MEMORY (limits.memory, 1GiB), DTYPE (capture.dtype, f16),
#                                     SKIP_PY=1 (hubsweep alone: for comparing its settings),
#                                     WARMUP_TOKENS (8192; 0: none): each side first runs once,
#                                     untimed, on that many other tokens — a first run on a
#                                     machine compiles candle's PTX kernels for its GPU (the
#                                     driver caches them, here in WORK/cuda-jit-cache) and
#                                     loads both sides' files into the page cache,
#                                     HUB_FALLBACK_SITE (a PYTHONPATH holding another
#                                     huggingface_hub, used if the installed one cannot commit)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "$1")"
work="$(realpath -m "$2")"
device="${DEVICE:-cuda}"
tokens="${TOKENS:-196608}"
threads="${THREADS:-$(nproc)}"
python="${PYTHON:-python3}"
mkdir -p "$work"
# The baseline script sits beside this one when carried to a GPU machine, in scripts/bench here.
baseline="$here/run_smollm2_py.py"
[ -f "$baseline" ] || baseline="$here/../bench/run_smollm2_py.py"
trap 'kill "${server_pid:-0}" 2>/dev/null || true' EXIT
export HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error

"$python" "$here/make_smollm2_random.py" "$work/model" ${TOKENIZER:+"$TOKENIZER"} >/dev/null

port=$((20000 + RANDOM % 20000))
endpoint="http://127.0.0.1:$port"
"$bin" hub serve --dir "$work/store" --addr "127.0.0.1:$port" >/dev/null 2>"$work/server.log" &
server_pid=$!
"$python" - "$endpoint" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(sys.argv[1] + "/api/whoami-v2", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("hub serve did not answer")
PY

# The Python side's Hub client must speak to our server: a one-file commit first; if the
# installed huggingface_hub cannot, use the fallback one.
preflight() {
  HF_HOME="$work/py-home" "$python" - "$endpoint" <<'PY'
import io, sys
import huggingface_hub
from huggingface_hub import CommitOperationAdd, HfApi
api = HfApi(endpoint=sys.argv[1], token=None)
api.create_repo("bench/preflight", repo_type="dataset", exist_ok=True)
api.create_commit("bench/preflight", [CommitOperationAdd("x.bin", io.BytesIO(b"x" * 1024))],
                  commit_message="preflight", repo_type="dataset")
print("huggingface_hub", huggingface_hub.__version__, "commits to hub serve")
PY
}
if ! preflight; then
  if [ -n "${HUB_FALLBACK_SITE:-}" ]; then
    export PYTHONPATH="$HUB_FALLBACK_SITE${PYTHONPATH:+:$PYTHONPATH}"
    preflight
  else
    exit 1
  fi
fi

# spec TOKENS NAME SEED REPO: writes WORK/NAME.yaml (hubsweep) and WORK/NAME-ids.json (the windows
# for the Python side), TOKENS tokens of LCG ids from SEED.
spec() {
  "$python" - "$1" "$work" "$device" "${ID_RANGE:-49152}" "${MEMORY:-1GiB}" "${DTYPE:-f16}" "$2" "$3" "$4" <<'PY'
import json, sys
tokens, work, device, id_range, memory, dtype, name, seed, repo = sys.argv[1:10]
tokens, id_range, x = int(tokens), int(id_range), int(seed)
windows = []
for _ in range(tokens // 128):
    row = [1]
    for _ in range(127):
        x = (1103515245 * x + 12345) % 2**31
        row.append(x % id_range)
    windows.append(row)
json.dump(windows, open(f"{work}/{name}-ids.json", "w"))
# One document of all windows' ids (hubsweep prepends the BOS to each window), a line per window.
ids_yaml = ",\n    ".join(",".join(map(str, w[1:])) for w in windows)
spec = f"""name: {name}
output: hf://datasets/{repo}
models:
  - family: llama
    repo: {work}/model
data:
  token_ids: [[{ids_yaml}]]
  seq_len: 128
  max_tokens: {tokens}
capture:
  hooks: [hook_resid_post]
  layers: all
  dtype: {dtype}
limits:
  memory: {memory}
  artifact_bytes: 256MiB
compute:
  device: {device}
  batch_size: 8
"""
if len(spec) > 1 << 20:
    sys.exit(f"the spec would be {len(spec)} bytes, over the 1 MiB limit: lower TOKENS or ID_RANGE")
open(f"{work}/{name}.yaml", "w").write(spec)
PY
}
spec "$tokens" bench 12345 bench/rust
warmup="${WARMUP_TOKENS:-8192}"
[ "$warmup" -gt 0 ] && spec "$warmup" warmup 777 bench/rust-warmup

export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads"
# Pin once first, so the model folder's hashing is warm in the page cache for both sides.
HF_ENDPOINT="$endpoint" HUBSWEEP_HOME="$work/hs" "$bin" run --dry-run "$work/bench.yaml" >/dev/null 2>"$work/dry.log"
# The driver's JIT cache in WORK, empty at first: the warm-up run (other ids, so no object of
# the measured run is stored before it) shows a first run's one-time costs — compiling candle's
# PTX kernels for this GPU — and leaves the measured run what every later run on the machine sees.
export CUDA_CACHE_PATH="$work/cuda-jit-cache"
if [ "$warmup" -gt 0 ]; then
  echo "hubsweep warm-up run on $device ($warmup tokens, empty JIT cache) ..." >&2
  HF_ENDPOINT="$endpoint" HUBSWEEP_HOME="$work/hs" \
    "$python" "$here/measure.py" "$work/rs-warmup.json" "$work/rs-warmup.log" -- "$bin" run --format json "$work/warmup.yaml" > "$work/rs-warmup.measure"
fi
echo "hubsweep run on $device ..." >&2
HF_ENDPOINT="$endpoint" HUBSWEEP_HOME="$work/hs" \
  "$python" "$here/measure.py" "$work/rs.json" "$work/rs.log" -- "$bin" run --format json "$work/bench.yaml" > "$work/rs.measure"
if [ -n "${SKIP_PY:-}" ]; then
  "$python" - "$work" "$tokens" "${MEMORY:-1GiB}" "${DTYPE:-f16}" <<'PY'
import json, sys
work, tokens, memory, dtype = sys.argv[1:5]
rs, rm = json.load(open(f"{work}/rs.json")), json.load(open(f"{work}/rs.measure"))
print(f"hubsweep alone, {tokens} tokens, dtype {dtype}, memory {memory}: wall {rm['wall']:.1f} s, peak RSS {rm['peak_rss_mib']:.0f} MiB, "
      f"capture busy {rs['capture_seconds']:.1f} s, upload busy {rs['upload_busy_seconds']:.1f} s, {rs['bytes_uploaded']/2**20:.0f} MiB sent")
st = rs.get("capture_stages", {})
if st:
    print("stages:   " + ", ".join(f"{k.removesuffix('_seconds').replace('_', ' ')} {v:.1f} s" for k, v in st.items()) + " (busy time of each; they overlap)")
PY
  exit 0
fi
if [ "$warmup" -gt 0 ]; then
  echo "python warm-up run on $device ($warmup tokens) ..." >&2
  HF_ENDPOINT="$endpoint" HF_HOME="$work/py-home" \
    "$python" "$here/measure.py" "$work/py-warmup.json" "$work/py-warmup.log" -- \
    "$python" "$baseline" "$work/model" "$work/warmup-ids.json" "$endpoint" bench/python-warmup "$threads" "$device" > "$work/py-warmup.measure"
fi
echo "python baseline on $device ..." >&2
HF_ENDPOINT="$endpoint" HF_HOME="$work/py-home" \
  "$python" "$here/measure.py" "$work/py.json" "$work/py.log" -- \
  "$python" "$baseline" "$work/model" "$work/bench-ids.json" "$endpoint" bench/python "$threads" "$device" > "$work/py.measure"

"$python" - "$work" "$tokens" "$threads" "$device" <<'PY'
import json, sys
work, tokens, threads, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rs = json.load(open(f"{work}/rs.json"))
py = json.loads(open(f"{work}/py.json").read().strip().splitlines()[-1])
rm = json.load(open(f"{work}/rs.measure"))
pm = json.load(open(f"{work}/py.measure"))
overlap = rs["wall_seconds"] / max(rs["capture_seconds"], rs["upload_busy_seconds"])
print(f"SmolLM2-135M-shaped (random weights), {tokens} tokens, hook_resid_post × 30 layers, f16, {device}, {threads} thread(s)")
print(f"hubsweep: wall {rm['wall']:.1f} s (run's own {rs['wall_seconds']:.1f} s), peak RSS {rm['peak_rss_mib']:.0f} MiB, "
      f"capture busy {rs['capture_seconds']:.1f} s, upload busy {rs['upload_busy_seconds']:.1f} s, {rs['bytes_uploaded']/2**20:.0f} MiB sent")
print(f"python:   wall {pm['wall']:.1f} s (script's own {py['wall']:.1f} s), peak RSS {pm['peak_rss_mib']:.0f} MiB")
print(f"ratios:   wall {rm['wall']/pm['wall']:.2f}× (target ≤ 0.5), RSS {rm['peak_rss_mib']/pm['peak_rss_mib']:.2f}× (target ≤ 0.5)")
print(f"overlap:  wall / max(capture, upload) = {overlap:.2f} (target ≤ 1.15)")
st = rs.get("capture_stages", {})
if st:
    print("stages:   " + ", ".join(f"{k.removesuffix('_seconds').replace('_', ' ')} {v:.1f} s" for k, v in st.items()) + " (busy time of each; they overlap)")
warmup = {}
for side in ("rs", "py"):
    try:
        warmup[side] = json.load(open(f"{work}/{side}-warmup.measure"))
    except FileNotFoundError:
        pass
if warmup:
    print("warm-up (untimed, first runs: " + ", ".join(
        f"{'hubsweep' if side == 'rs' else 'python'} wall {m['wall']:.1f} s" for side, m in warmup.items()) + ")")
json.dump({"tokens": tokens, "device": device, "threads": threads, "hubsweep": rs, "hubsweep_process": rm,
           "python": py, "python_process": pm, "overlap": overlap, "warmup": warmup},
          open(f"{work}/bench.json", "w"), indent=1)
PY
