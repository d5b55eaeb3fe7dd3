# Sourced by scripts/test.sh. Installs the real `peft` library with torch and transformers
# (PyPI, pinned) under "$HUBSWEEP_CACHE" and exports HUBSWEEP_PEFT_PYTHON for the adapter peer
# tests (tests/it/adapters.rs), which save LoRA adapters with peft on the tiny fixtures and
# compare peft's merged-minus-base update with hubsweep's. Its own venv: no other piece has
# torch. The PyPI torch wheel brings the CUDA runtime along (CPU-only wheels are not on PyPI);
# the tests run it on the CPU. Idempotent: a marker file records the pinned versions.
peft_py_version="0.21.2"
peft_py_packages="peft==$peft_py_version torch==2.15.0 transformers==5.24.0 accelerate==1.15.0 safetensors==0.8.0 numpy==2.4.6"
peft_py_dir="$HUBSWEEP_CACHE/python-peft-$peft_py_version"
if [ ! -f "$peft_py_dir/.installed" ]; then
  rm -rf "$peft_py_dir"
  peft_py_base="$(command -v python3.11 || command -v python3)"
  if "$peft_py_base" -m venv "$peft_py_dir/venv" 2>/dev/null; then
    "$peft_py_dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir $peft_py_packages
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$peft_py_dir/venv/bin/python" > "$peft_py_dir/python"
  else
    rm -rf "$peft_py_dir"
    "$peft_py_base" -m pip install --quiet --disable-pip-version-check --no-cache-dir --target "$peft_py_dir/site" $peft_py_packages
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' "$peft_py_dir/site" "$peft_py_base" > "$peft_py_dir/python"
  fi
  chmod +x "$peft_py_dir/python"
  "$peft_py_dir/python" -c "import peft, torch, transformers; assert peft.__version__ == '$peft_py_version', peft.__version__"
  touch "$peft_py_dir/.installed"
fi
export HUBSWEEP_PEFT_PYTHON="$peft_py_dir/python"
unset peft_py_version peft_py_dir peft_py_base peft_py_packages
