#!/usr/bin/env bash
# Planning benchmark, through the CLI: `hubsweep plan` of a sweep of 1,231,553 nodes (8 sizes ×
# 200 checkpoints × 32 layers × 8 hooks, spectra and overlaps against the first checkpoint),
# as text and as JSON, wall time and peak RSS (GNU time's "Maximum resident set size").
# Not a test: nothing here gates CI.
#
# The sweep writes 819,200 files, more than the Hub's 100,000 per repo, so `plan` refuses it
# (exit 2, and it says which dimension to cut); `--show-refused` prints it all the same, which
# is what is timed. The refusal alone is timed too.
#
# Peer: Snakemake's dry run (`snakemake -n`) of a DAG of the same shape. By default the figure
# measured on this machine class is printed (Snakemake 9.27.1: 60,178 jobs, 131.9 s, 1.06 GB);
# `--snakemake` installs Snakemake from PyPI into its own venv (under $HUBSWEEP_CACHE, default
# ~/.cache/hubsweep-ci) and times it in the same run, on a sweep cut to 8 sizes × 20
# checkpoints × 32 layers × 4 hooks (a full-size dry run takes Snakemake hours).
#
# Usage: scripts/bench/plan.sh [--snakemake] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/../.."

snakemake=false
runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --snakemake) snakemake=true ;;
    --runs) runs="$2"; shift ;;
    *) echo "usage: $0 [--snakemake] [--runs N]" >&2; exit 2 ;;
  esac
  shift
done

command -v /usr/bin/time >/dev/null || { echo "needs GNU time (/usr/bin/time; apt-get install time)" >&2; exit 2; }
cargo build --release --quiet --bin hubsweep
bin="${CARGO_TARGET_DIR:-target}/release/hubsweep"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

revisions="$(seq 0 199 | sed 's/^/step/; s/$/000/' | paste -sd, | sed 's/,/, /g')"
cat > "$work/sweep.yaml" <<EOF
name: plan-bench
output: hf://datasets/bench/plan-bench
models:
  - family: llama
    repo: bench/model-{size}
    size: [a, b, c, d, e, f, g, h]
    revision: [$revisions]
data:
  source: hf://datasets/bench/data/train.txt@main
  max_tokens: 262144
  seq_len: 128
capture:
  hooks: [hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, attn.hook_z, attn.hook_pattern, mlp.hook_post]
  layers: "0..32"
  dtype: f16
analyses:
  - spectrum: {}
  - overlap: {between: revision, base: step0000, k: [8]}
EOF

# Best of N: prints "wall_seconds max_rss_kib exit_status".
measure() {
  local best_wall="" best_rss="" status=""
  for _ in $(seq "$runs"); do
    /usr/bin/time -f '%e %M %x' -o "$work/time" "$@" > "$work/out" 2> "$work/err" || true
    read -r wall rss status < "$work/time"
    if [ -z "$best_wall" ] || awk "BEGIN{exit !($wall < $best_wall)}"; then best_wall="$wall"; fi
    if [ -z "$best_rss" ] || [ "$rss" -lt "$best_rss" ]; then best_rss="$rss"; fi
  done
  echo "$best_wall $best_rss $status"
}

nodes="$("$bin" plan "$work/sweep.yaml" --show-refused 2>/dev/null | awk '/^nodes:/ {print $2}')"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; best of $runs runs"
echo "sweep: $nodes nodes"
printf '%-28s %8s %10s %6s\n' "" "wall s" "peak MiB" "exit"
row() {
  local label="$1"; shift
  read -r wall rss status <<< "$(measure "$@")"
  printf '%-28s %8s %10d %6s\n' "$label" "$wall" "$((rss / 1024))" "$status"
  echo "$wall $rss" > "$work/last"
}
row "plan (refused)" "$bin" plan "$work/sweep.yaml"
row "plan --format text" "$bin" plan "$work/sweep.yaml" --show-refused
read -r text_wall _ < "$work/last"
row "plan --format json" "$bin" plan "$work/sweep.yaml" --show-refused --format json
read -r json_wall json_rss < "$work/last"
echo "json bytes: $(wc -c < "$work/out")"
echo "targets: text < 2 s; json < 3 s and < 400 MiB"

if ! $snakemake; then
  peer_jobs=60178 peer_wall=131.9 peer_rss_mib=1011
  echo "peer (reference, this machine class): snakemake 9.27.1 -n, $peer_jobs jobs: $peer_wall s, $peer_rss_mib MiB"
else
  cache="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
  venv="$cache/bench-snakemake-9.27.1"
  if [ ! -f "$venv/.installed" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check snakemake==9.27.1
    touch "$venv/.installed"
  fi
  # The same shape: resolve → capture per model; artifact per (model, hook, layer); spectrum
  # per artifact; overlap of each checkpoint's spectrum with the first checkpoint's.
  mkdir -p "$work/smk"
  cat > "$work/smk/Snakefile" <<'EOF'
SIZES = list("abcdefgh")
REVS = [f"step{i}000" for i in range(20)]
HOOKS = ["resid_pre", "resid_post", "attn_out", "mlp_out"]
LAYERS = range(32)
rule all:
    input: expand("ovl/{s}/{r}/{h}/{l}", s=SIZES, r=REVS[1:], h=HOOKS, l=LAYERS)
rule resolve:
    output: "res/{s}/{r}"
    shell: "touch {output}"
rule capture:
    input: "res/{s}/{r}"
    output: "cap/{s}/{r}"
    shell: "touch {output}"
rule artifact:
    input: "cap/{s}/{r}"
    output: "act/{s}/{r}/{h}/{l}"
    shell: "touch {output}"
rule spectrum:
    input: "act/{s}/{r}/{h}/{l}"
    output: "spec/{s}/{r}/{h}/{l}"
    shell: "touch {output}"
rule overlap:
    input: base="spec/{s}/step0000/{h}/{l}", other="spec/{s}/{r}/{h}/{l}"
    output: "ovl/{s}/{r}/{h}/{l}"
    shell: "touch {output}"
EOF
  read -r peer_wall peer_rss _ <<< "$(runs=1 measure "$venv/bin/snakemake" -n -c1 -d "$work/smk" -s "$work/smk/Snakefile" --quiet)"
  peer_jobs="$(grep -Eo 'total +[0-9]+' "$work/out" "$work/err" | grep -Eo '[0-9]+' | head -1 || true)"
  peer_rss_mib=$((peer_rss / 1024))
  echo "peer (this run): snakemake 9.27.1 -n, ${peer_jobs:-?} jobs: $peer_wall s, $peer_rss_mib MiB"
fi
awk -v n="$nodes" -v tw="$text_wall" -v jw="$json_wall" -v pj="$peer_jobs" -v pw="$peer_wall" 'BEGIN {
  printf "per 1,000 nodes: hubsweep text %.4f s, json %.4f s; snakemake %.3f s per 1,000 jobs (%.0f× / %.0f× faster per node)\n",
    1000*tw/n, 1000*jw/n, 1000*pw/pj, (pw/pj)/(tw/n), (pw/pj)/(jw/n) }'
