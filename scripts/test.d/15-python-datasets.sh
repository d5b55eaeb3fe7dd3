# Sourced by scripts/test.sh. Installs the real `datasets` library (with the official Hub client
# it depends on, pinned to the version the hub peer tests use) under "$HUBSWEEP_CACHE" and
# exports HUBSWEEP_DATASETS_PYTHON for the dataset-card tests (tests/it/card.rs), which load
# every config of a run's card through the embedded hub. Its own venv: the hub peer's stays as
# it is. Idempotent: a marker file records the pinned versions.
datasets_py_version="5.2.0"
datasets_py_packages="datasets==$datasets_py_version huggingface_hub==2.4.0"
datasets_py_dir="$HUBSWEEP_CACHE/python-datasets-$datasets_py_version"
if [ ! -f "$datasets_py_dir/.installed" ]; then
  rm -rf "$datasets_py_dir"
  datasets_py_base="$(command -v python3.11 || command -v python3)"
  if "$datasets_py_base" -m venv "$datasets_py_dir/venv" 2>/dev/null; then
    "$datasets_py_dir/venv/bin/pip" install --quiet --disable-pip-version-check $datasets_py_packages
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$datasets_py_dir/venv/bin/python" > "$datasets_py_dir/python"
  else
    rm -rf "$datasets_py_dir"
    "$datasets_py_base" -m pip install --quiet --disable-pip-version-check --target "$datasets_py_dir/site" $datasets_py_packages
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' "$datasets_py_dir/site" "$datasets_py_base" > "$datasets_py_dir/python"
  fi
  chmod +x "$datasets_py_dir/python"
  "$datasets_py_dir/python" -c "import datasets as d; assert d.__version__ == '$datasets_py_version', d.__version__"
  touch "$datasets_py_dir/.installed"
fi
export HUBSWEEP_DATASETS_PYTHON="$datasets_py_dir/python"
unset datasets_py_version datasets_py_dir datasets_py_base datasets_py_packages
