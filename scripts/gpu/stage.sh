#!/usr/bin/env bash
# Assembles what a GPU check carries (a lent machine has no Rust and no internet): the cuda
# build of hubsweep, stripped and xz-compressed, this folder's scripts, the Python baseline and
# the tiny fixtures (so the check reads this checkout's, whatever tree the call sends).
#
#   scripts/gpu/stage.sh BIN DEST [WHEELS_DIR]
#
# BIN is a `--features cuda` release build (scripts/gpu/build-cuda.sh); DEST a folder the
# device call carries (git-ignored); WHEELS_DIR optional pure-Python wheels for
# HUB_FALLBACK_WHEELS. Then, on the GPU machine, from the repository root:
#   FIXTURES=DEST/fixtures HUB_FALLBACK_WHEELS=DEST/whl bash DEST/device.sh DEST/hubsweep.xz "$OUT"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1"
dest="$2"
rm -rf "$dest"
mkdir -p "$dest"
strip -o "$dest/hubsweep" "$bin"
xz -T0 -6 -f "$dest/hubsweep"
cp "$here"/device.sh "$here"/bench.sh "$here"/parity.py "$here"/measure.py "$here"/make_smollm2_random.py \
  "$here/../bench/run_smollm2_py.py" "$dest/"
mkdir -p "$dest/fixtures"
cp -r "$here"/../../tests/fixtures/{gpt_neox_tiny,gpt_neox_tiny_seq,llama_tiny,llama_tiny_llama3} "$dest/fixtures/"
if [ -n "${3:-}" ]; then
  mkdir -p "$dest/whl"
  cp "$3"/*.whl "$dest/whl/"
fi
du -sh "$dest"
