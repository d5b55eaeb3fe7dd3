#!/usr/bin/env bash
# The `hf-hub` 1.x crate (Rust; it uploads through Xet) against the embedded hub: a benchmark
# script, not a test (docs/hub.md, "hf-hub 1.x against the embedded hub", says why: building
# the crate costs more than the test command can afford). It
#   1. builds the peer (scripts/bench/hf-hub-peer/, a cargo project of its own with its own
#      Cargo.lock) and prints the package count, build wall time and target dir size;
#   2. builds hubsweep and starts `hubsweep hub serve` on a fresh store (with a token, --admin);
#   3. runs the peer: create repo, upload small / 25 MB / 120 MB from memory (Xet for the large
#      ones), a re-upload and a 1%-changed upload (dedup), listing check, downloads both ways
#      with sha256 checks (see the peer's src/main.rs);
#   4. fetches big25.bin with plain curl through `resolve/` and checks its sha256 (what hf-hub
#      uploaded through Xet is served to any client);
#   5. uploads a file of the large size with the official Python client + hf_xet, from bytes,
#      to the same server (the venv of scripts/test.d/10-python-hub.sh; HF_HUB_PEER_COMPARE=0
#      skips it), for a throughput ratio measured in the same run;
#   6. reads the server's counters (no LFS upload happened, xorbs did, no token went to
#      storage), and cleans up.
# Prints the peer's JSON summary and a table. Exit status 1 when any check fails.
# Usage: scripts/bench/hf-hub-peer.sh [SMALL,MEDIUM,LARGE]   (bytes; default 64,25000000,120000000)
# Env: HUBSWEEP_CACHE (default ~/.cache/hubsweep-ci); HF_HUB_PEER_TARGET (the peer's target dir,
# default $HUBSWEEP_CACHE/hf-hub-peer-target: delete it to measure a clean build);
# CARGO_TARGET_DIR (hubsweep's, default $HUBSWEEP_CACHE/target); RUST_LOG (the server's log,
# kept in the work dir and printed on failure); HF_HUB_PEER_LOG (a tracing filter for the
# peer's hf-hub / hf-xet logs, printed on failure); CARGO_BUILD_JOBS as usual.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes="${1:-64,25000000,120000000}"
export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
peer_dir=scripts/bench/hf-hub-peer
peer_target="${HF_HUB_PEER_TARGET:-$HUBSWEEP_CACHE/hf-hub-peer-target}"

packages="$(grep -c '^\[\[package\]\]' "$peer_dir/Cargo.lock")"
clean="warm"
[ -d "$peer_target/release" ] || clean="clean"
start="$(date +%s.%N)"
CARGO_TARGET_DIR="$peer_target" cargo build --release --locked --quiet --manifest-path "$peer_dir/Cargo.toml"
build_s="$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start")"
target_bytes="$(du -sb "$peer_target" | cut -f1)"
echo "hf-hub peer build ($clean target dir, CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-all $(nproc) cores}):" \
  "$packages packages in Cargo.lock, ${build_s} s wall, target dir $((target_bytes >> 20)) MiB" >&2

cargo build --release --quiet --bin hubsweep
work="$(mktemp -d)"
# Private copies: a shared target dir may get another checkout's binary at any moment.
cp "$CARGO_TARGET_DIR/release/hubsweep" "$work/hubsweep"
cp "$peer_target/release/hf-hub-peer" "$work/hf-hub-peer"

server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "hf-hub peer: $*" >&2
  echo "--- server log (last 60 lines; RUST_LOG=${RUST_LOG:-unset}) ---" >&2
  tail -n 60 "$work/server.log" >&2 || true
  exit 1
}

token="hf_peer_$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
"$work/hubsweep" hub serve --dir "$work/store" --token "$token" --admin > "$work/url" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 200); do [ -s "$work/url" ] && break; sleep 0.05; done
url="$(head -n1 "$work/url")"
[ -n "$url" ] || fail "server did not start"

repo="hfpeer/xet-bench"
HF_ENDPOINT="$url" HF_TOKEN="$token" HF_HOME="$work/hf-home" \
  "$work/hf-hub-peer" "$repo" "$sizes" > "$work/summary.json" 2> "$work/peer.log" \
  || { cat "$work/peer.log" >&2; fail "the peer failed"; }

# Any client: plain curl through resolve/ (302 to the storage origin, no token), same sha256.
expected="$(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(next(u['sha256'] for u in s['uploads'] if u['path']=='big25.bin'))" "$work/summary.json")"
start="$(date +%s.%N)"
got="$(curl -sfL "$url/$repo/resolve/main/big25.bin" | sha256sum | cut -d' ' -f1)"
curl_s="$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.3f}')" "$start")"
[ "$got" = "$expected" ] || fail "curl got sha256 $got for big25.bin, expected $expected"
# The same-sized upload by the official Python client with hf_xet (from bytes, like the peer),
# on the same server, for a ratio measured in the same run. HF_HUB_PEER_COMPARE=0 skips it.
echo '{}' > "$work/python.json"
if [ "${HF_HUB_PEER_COMPARE:-1}" != 0 ]; then
  # shellcheck source=/dev/null
  source scripts/test.d/10-python-hub.sh
  head -c "${sizes##*,}" /dev/urandom > "$work/python.bin"
  env -u HF_HUB_DISABLE_XET HF_ENDPOINT="$url" HF_TOKEN="$token" HF_HOME="$work/py-home" \
    HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_TELEMETRY=1 \
    "$HUBSWEEP_HUB_PYTHON" scripts/bench/hub_upload_py.py bytes "$work/python.bin" hfpeer/python-xet \
    > "$work/python.json" 2> "$work/python.log" || { cat "$work/python.log" >&2; fail "the Python client failed"; }
fi
curl -sf "$url/_admin/stats" > "$work/stats.json" || fail "no /_admin/stats"

python3 - "$work/summary.json" "$work/stats.json" "$work/python.json" "$packages" "$build_s" "$clean" "$target_bytes" "$curl_s" <<'PY'
import json, sys
summary, stats, python = (json.load(open(p)) for p in sys.argv[1:4])
packages, build_s, clean, target_bytes, curl_s = sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7]), float(sys.argv[8])
problems = []
if stats["object_puts"] + stats["part_puts"] != 0:
    problems.append(f"LFS uploads happened (object_puts {stats['object_puts']}, part_puts {stats['part_puts']}): not Xet")
if stats["xorb_posts"] == 0:
    problems.append("no xorb was posted: not Xet")
if stats["storage_requests_with_auth"] != 0:
    problems.append(f"{stats['storage_requests_with_auth']} storage requests carried the token")
for name, hash_ in summary["resolve_xet_hash"].items():
    if not hash_:
        problems.append(f"resolve/ of {name} names no X-Xet-Hash")
summary["server_stats"] = stats
summary["build"] = {"packages": int(packages), "seconds": float(build_s), "target_dir": clean, "target_bytes": target_bytes}
summary["curl_resolve_big25"] = {"sha256_equal": True, "seconds": curl_s}
summary["python_hf_xet_upload"] = python
print(json.dumps(summary))
mib = 2 ** 20
print(f"\nhf-hub peer build: {packages} packages, {build_s} s ({clean} target dir), target dir {target_bytes / mib:.0f} MiB", file=sys.stderr)
print(f"{'upload (one commit each, from memory)':40} {'bytes':>11} {'s':>7} {'MiB/s':>7} {'sent by xet':>12}", file=sys.stderr)
for row in summary["uploads"] + summary["dedup_uploads"]:
    sent = row["xet_transfer_bytes"]
    print(f"{row['path']:40} {row['bytes']:11} {row['upload_s']:7.2f} {row['upload_mib_s']:7.1f} {'-' if sent is None else sent:>12}", file=sys.stderr)
print(f"{'download (sha256 checked)':40} {'bytes':>11} {'file s':>7} {'MiB/s':>7} {'bytes s':>8} {'MiB/s':>7}", file=sys.stderr)
for row in summary["downloads"]:
    print(f"{row['path']:40} {row['bytes']:11} {row['download_file_s']:7.2f} {row['download_file_mib_s']:7.1f} {row['download_file_to_bytes_s']:8.2f} {row['download_file_to_bytes_mib_s']:7.1f}", file=sys.stderr)
print(f"curl resolve/ big25.bin: sha256 equal, {curl_s:.2f} s; peer peak RSS {summary['peak_rss_bytes'] / mib:.0f} MiB; server: {stats['xorb_posts']} xorb posts, 0 LFS uploads", file=sys.stderr)
if python:
    large = summary["uploads"][-1]
    print(f"same run, huggingface_hub 2.4.0 + hf_xet from bytes: {python['bytes']} bytes in {python['total_s']:.2f} s = {python['bytes'] / mib / python['total_s']:.1f} MiB/s "
          f"(hf-hub / python upload throughput: {python['total_s'] / large['upload_s'] * large['bytes'] / python['bytes']:.2f}x)", file=sys.stderr)
if problems:
    print("FAILED: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
PY
