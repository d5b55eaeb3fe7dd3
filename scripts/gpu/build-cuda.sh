#!/usr/bin/env bash
# Builds hubsweep with `--features cuda` on a machine with no CUDA toolkit and no GPU, from PyPI
# wheels alone: nvcc, the CUDA runtime headers, CCCL, NVRTC, cuBLAS and cuRAND of CUDA 13.0
# (what a 580 driver runs, and the sonames torch's cu130 wheels ship), unpacked into a
# CUDA_HOME-shaped folder. candle links cudarc with `dynamic-linking`, so the link needs
# libcuda.so: the driver is not installed here, so a stub exporting cuda.h's entry points stands
# in (soname libcuda.so.1; the real driver library is loaded at run time).
#
#   scripts/gpu/build-cuda.sh [CUDA_HOME] (default $HUBSWEEP_CACHE/cuda-13.0; env: CUDA_COMPUTE_CAP,
#                                          default 90 = H100/H200; CARGO_TARGET_DIR)
# Prints the path of the built binary. Needs python3 + pip, gcc, ~2 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
home="${1:-${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}/cuda-13.0}"
if [ ! -x "$home/bin/nvcc" ] || [ ! -f "$home/lib/stubs/libcuda.so" ]; then
  wheels="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*' \
    'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
    'nvidia-cublas==13.0.*' 'nvidia-curand==10.4.*'
  unpacked="$(mktemp -d)"
  for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$unpacked"; done
  rm -rf "$home"
  mkdir -p "$(dirname "$home")"
  mv "$unpacked/nvidia/cu13" "$home"
  rm -rf "$wheels" "$unpacked"
  chmod +x "$home"/bin/* "$home"/nvvm/bin/*
  ln -s lib "$home/lib64"
  for lib in cublas cublasLt cudart nvrtc; do ln -sf "lib$lib.so.13" "$home/lib/lib$lib.so"; done
  ln -sf libcurand.so.10 "$home/lib/libcurand.so"
  mkdir -p "$home/lib/stubs"
  gcc -E -I"$home/include" "$home/include/cuda.h" \
    | grep -oE 'CUresult\s+(__attribute__\(\(\w+\)\)\s+)?\w+\s*\(' | grep -oE 'cu\w+\s*\($' | tr -d ' (' \
    | sort -u | awk '{print "void " $1 "(void) {}"}' > "$home/lib/stubs/libcuda.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/stubs/libcuda.so" "$home/lib/stubs/libcuda.c"
fi
export CUDA_HOME="$home" PATH="$home/bin:$PATH" CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" LIBRARY_PATH="$home/lib:$home/lib/stubs"
cargo build --release --locked --features cuda --bin hubsweep >&2
echo "${CARGO_TARGET_DIR:-target}/release/hubsweep"
