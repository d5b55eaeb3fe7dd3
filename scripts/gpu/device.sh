#!/usr/bin/env bash
# Everything one GPU check does, in one call (device time is scarce): the machine's facts, the
# parity of every hook of every tiny fixture (parity.py) and the run benchmark (bench.sh).
# Built for a lent GPU machine with no Rust and no internet, where a plain `python3` holds torch,
# transformers and huggingface_hub: the cuda build of hubsweep is made elsewhere and carried.
# Runs on a CPU-only machine too (DEVICE=cpu), which is how the script itself is checked.
#
#   scripts/gpu/device.sh BIN OUT      env: DEVICE (cuda), TOKENS (196608), PYTHON (python3),
#                                      FIXTURES (tests/fixtures), TOKENIZER, HUB_FALLBACK_WHEELS
#                                      (a folder of pure-Python wheels: another huggingface_hub),
#                                      SKIP_BENCH=1, SKIP_PARITY=1
# BIN may be xz-compressed (`*.xz`; unpacked with Python's lzma, which every python3 has). OUT gets device.log, parity.json, bench.json and the
# logs of both benchmark sides: at most 8 files, none nested.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1"
out="$(realpath -m "$2")"
device="${DEVICE:-cuda}"
python="${PYTHON:-python3}"
fixtures="${FIXTURES:-tests/fixtures}"
work="${WORK:-$(mktemp -d)}"
mkdir -p "$out" "$work"
exec > >(tee -a "$out/device.log") 2>&1

if [[ "$bin" == *.xz ]]; then
  "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$bin" "$work/hubsweep" || { echo "cannot unpack $bin"; exit 2; }
  bin="$work/hubsweep"
fi
chmod +x "$bin"

if [ "$device" != cpu ]; then
  # cudarc and candle's kernels link libcuda (the driver's), libcudart, libcublas(Lt), libcurand
  # and libnvrtc; on the lent machine the last five come with torch's nvidia-* wheels.
  site="$("$python" -c 'import site; print(site.getsitepackages()[0])')"
  libs="$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "== nvidia-smi"; nvidia-smi || true
  echo "== ldd"; ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc|not found' || true
fi
echo "== date $(date -u +%FT%TZ), $(nproc) cores, $("$python" -c 'import torch, transformers, huggingface_hub as h; print("torch", torch.__version__, "transformers", transformers.__version__, "huggingface_hub", h.__version__)')"
"$bin" --version

if [ -n "${HUB_FALLBACK_WHEELS:-}" ]; then
  # Unpacked, not installed: bench.sh puts them on PYTHONPATH only if the machine's own
  # huggingface_hub cannot commit to `hub serve`.
  "$python" -c 'import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[2]) for w in glob.glob(sys.argv[1] + "/*.whl")]' \
    "$HUB_FALLBACK_WHEELS" "$work/hub-site" && export HUB_FALLBACK_SITE="$work/hub-site"
fi

status=0
if [ -z "${SKIP_PARITY:-}" ]; then
  echo "== parity"
  devices=cpu; [ "$device" != cpu ] && devices="cpu,$device"
  TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 \
    timeout 240 "$python" "$here/parity.py" "$bin" "$fixtures" "$work/parity" --devices "$devices" --torch-device "$device"
  rc=$?; [ $rc -ne 0 ] && status=$rc
  cp "$work/parity/parity.json" "$out/" 2>/dev/null
fi
if [ -z "${SKIP_BENCH:-}" ]; then
  echo "== run benchmark"
  DEVICE="$device" PYTHON="$python" timeout "${BENCH_TIMEOUT:-420}" bash "$here/bench.sh" "$bin" "$work/bench"
  rc=$?; [ $rc -ne 0 ] && status=$rc
  for f in bench.json rs.json rs.measure py.measure rs.log py.log; do cp "$work/bench/$f" "$out/" 2>/dev/null; done
fi
echo "== exit $status"
exit $status
