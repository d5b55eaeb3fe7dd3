# Sourced by scripts/test.sh. Creates a venv with the official Hub Python client, pinned, under
# "$HUBSWEEP_CACHE" and exports HUBSWEEP_HUB_PYTHON for the hub peer tests and the benchmark.
# Idempotent: a marker file records the pinned version, so a second run costs one `test -f`.
hub_venv="$HUBSWEEP_CACHE/venv-hub-2.4.0"
if [ ! -f "$hub_venv/.installed" ]; then
  rm -rf "$hub_venv"
  python3.11 -m venv "$hub_venv" || python3 -m venv "$hub_venv"
  # hf_xet is pulled in by huggingface_hub; it is harmless because the tests set
  # HF_HUB_DISABLE_XET=1 (our server speaks LFS only, see docs/hub.md).
  "$hub_venv/bin/pip" install --quiet --disable-pip-version-check "huggingface_hub==2.4.0"
  touch "$hub_venv/.installed"
fi
export HUBSWEEP_HUB_PYTHON="$hub_venv/bin/python"
export HF_HUB_DISABLE_XET=1
unset hub_venv
