#!/usr/bin/env bash
# Crash soak: `hubsweep run` killed with SIGKILL at a random moment — right after a randomly
# chosen milestone of its log (a capture starting, the N-th of its ≥ 10 commits) — then rerun,
# TRIALS times (default 200; the test command runs 20). Each trial checks, through the front
# door, that the rerun completes, a third run executes nothing, and the ledger holds every node
# once, with every recorded file in the repo at its recorded size and sha256 and every input
# recorded. It is the test `run::killed_at_random_moments_then_rerun_completes_without_duplicates`,
# run with HUBSWEEP_CRASH_TRIALS; a failing trial is counted, not the end of the soak. Prints
# one summary line: trials, failures, kills that landed mid-run, the slowest resume, and the
# commits of a clean run. Not part of the test command.
#
#   scripts/soak/crash.sh [TRIALS]      (env: CARGO_TARGET_DIR, as for scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
trials="${1:-200}"
export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$(date +%s)
status=0
HUBSWEEP_CRASH_TRIALS="$trials" cargo test --release --locked --test it -- --exact \
  run::killed_at_random_moments_then_rerun_completes_without_duplicates --nocapture 2>&1 |
  tee "$log" || status=$?
summary="$(grep '^crash soak:' "$log" || echo "crash soak: no summary (the test did not get through its trials)")"
echo "$summary in $(( $(date +%s) - started )) s"
exit "$status"
