#!/usr/bin/env bash
# Benchmark (not a test): a sweep of UNITS small work units (default 200) through
# `hubsweep run --executor slurm` on the local Slurm of scripts/slurm-local.sh, against a
# `hubsweep hub serve` with a commit rate limit. Prints the submission time, the Slurm polling
# load (commands per minute of tracking) and the commits per hour the hub saw, against the
# targets: submission < 5 s, <= 12 Slurm commands/min, commits within the limit, no 429 left
# unhandled (the sweep completes).
#   UNITS=200 ARRAY_MAX=8 COMMITS_PER_HOUR=3600 scripts/bench/slurm.sh      (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
UNITS=${UNITS:-200}
ARRAY_MAX=${ARRAY_MAX:-8}
LIMIT=${COMMITS_PER_HOUR:-3600}
BIN=${HUBSWEEP_BIN:-${CARGO_TARGET_DIR:-target}/release/hubsweep}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set HUBSWEEP_BIN)" >&2; exit 2; }
BIN=$(realpath "$BIN")
SLURM_LOCAL_CPUS=${SLURM_LOCAL_CPUS:-8} bash scripts/slurm-local.sh start

work=$(mktemp -d /tmp/hubsweep-bench-slurm.XXXXXX)
hub_pid=
cleanup() { [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
"$BIN" hub serve --dir "$work/store" --commits-per-hour "$LIMIT" --admin > "$work/url" 2> "$work/hub.log" &
hub_pid=$!
for _ in $(seq 50); do [ -s "$work/url" ] && break; sleep 0.1; done
url=$(head -n1 "$work/url")

# UNITS distinct model sources (links to one tiny fixture): one work unit each.
mkdir -p "$work/models"
{
  printf 'name: bench-slurm\noutput: hf://datasets/bench/slurm-%s\nmodels:\n' "$UNITS"
  for i in $(seq -w 1 "$UNITS"); do
    ln -s "$PWD/tests/fixtures/gpt_neox_tiny" "$work/models/m$i"
    printf '  - family: gpt_neox\n    repo: %s\n' "$work/models/m$i"
  done
  printf 'data:\n  texts: ["The quick brown fox jumps over the lazy dog."]\n  seq_len: 16\n'
  printf 'capture:\n  hooks: [hook_resid_post]\n  layers: [0]\n  dtype: f32\n'
  printf 'analyses:\n  - spectrum: {top_k: 4}\ncompute:\n  device: cpu\n  batch_size: 4\n'
} > "$work/spec.yaml"

start=$(date +%s.%N)
HF_ENDPOINT=$url HUBSWEEP_HOME=$work/home "$BIN" run "$work/spec.yaml" --executor slurm \
  --array-max "$ARRAY_MAX" --commits-per-hour "$LIMIT" --format json > "$work/report.json" 2> "$work/run.log" ||
  { tail -n 30 "$work/run.log" >&2; echo "the sweep did not complete" >&2; exit 1; }
end=$(date +%s.%N)
curl -fsS "$url/_admin/stats" > "$work/stats.json"
python3 - "$work/report.json" "$work/stats.json" "$start" "$end" "$LIMIT" "$UNITS" "$ARRAY_MAX" <<'PY'
import json, sys
report, stats = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
start, end, limit, units, width = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
wall = end - start
per_min = report["slurm_commands"] / max(report["tracked_minutes"], 1e-9)
polls = report["polls"]
# The limit is per rolling hour: a run shorter than an hour must make at most `limit` commits.
busiest_hour = stats["commits_applied"] if wall <= 3600 else stats["commits_applied"] / (wall / 3600)
print(f"units {units}, array width {width}, complete {report['complete']}, wall {wall:.1f} s")
print(f"submission (pin + plan + commit plan + sbatch x2): {report['submit_seconds']:.2f} s   target < 5 s")
print(f"slurm commands: {report['slurm_commands']} in {report['tracked_minutes']:.2f} min = {per_min:.1f}/min, of which {polls} squeue polls = {polls / max(report['tracked_minutes'], 1e-9):.1f}/min   target <= 12/min")
print(f"commits applied at the hub: {stats['commits_applied']} ({stats['commit_posts']} posted, {stats['rate_limited']} answered 429)")
print(f"  commits in the busiest hour: {busiest_hour:.0f}; limit {limit} per rolling hour: {'within' if busiest_hour <= limit else 'OVER'}")
PY
