# Sourced by scripts/test.sh. Installs the official Hub Python client, pinned, under
# "$HUBSWEEP_CACHE" and exports HUBSWEEP_HUB_PYTHON (an interpreter that can import it) for the
# hub peer tests and the benchmark. Idempotent: a marker file records the pinned version, so a
# second run costs one `test -f`.
#
# A venv is preferred; on a Debian python without the venv module (no python3.X-venv package)
# it falls back to `pip install --target` plus a small wrapper that sets PYTHONPATH, so nothing
# leaks into other pieces' environments.
hub_py_version="2.4.0"
# safetensors and numpy let the tests run the Python snippet of docs/ledger.md as written.
hub_py_packages="huggingface_hub==$hub_py_version safetensors==0.8.0 numpy==2.4.6"
hub_py_dir="$HUBSWEEP_CACHE/python-hub-$hub_py_version-st"
if [ ! -f "$hub_py_dir/.installed" ]; then
  rm -rf "$hub_py_dir"
  hub_py_base="$(command -v python3.11 || command -v python3)"
  if "$hub_py_base" -m venv "$hub_py_dir/venv" 2>/dev/null; then
    "$hub_py_dir/venv/bin/pip" install --quiet --disable-pip-version-check $hub_py_packages
    # A wrapper, not a symlink: Python finds its venv from the path it was started as.
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$hub_py_dir/venv/bin/python" > "$hub_py_dir/python"
    chmod +x "$hub_py_dir/python"
  else
    rm -rf "$hub_py_dir"
    "$hub_py_base" -m pip install --quiet --disable-pip-version-check --target "$hub_py_dir/site" $hub_py_packages
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' "$hub_py_dir/site" "$hub_py_base" > "$hub_py_dir/python"
    chmod +x "$hub_py_dir/python"
  fi
  # hf_xet comes along with huggingface_hub. The LFS peer tests and the benchmark run with
  # HF_HUB_DISABLE_XET=1 (exported below); tests/it/hub/xet.rs removes it for its own runs.
  "$hub_py_dir/python" -c "import huggingface_hub as h; assert h.__version__ == '$hub_py_version', h.__version__"
  touch "$hub_py_dir/.installed"
fi
export HUBSWEEP_HUB_PYTHON="$hub_py_dir/python"
export HF_HUB_DISABLE_XET=1
unset hub_py_version hub_py_dir hub_py_base hub_py_packages
