#!/usr/bin/env bash
# Xet upload benchmark (not a test). SIZE bytes (default 1 GiB) of random data to the embedded
# hub (`hubsweep hub serve`, Xet on), side by side in one run, a fresh server for each:
#   1. hubsweep through Xet, the artifact held in memory as the sink holds it
#      (examples/hub_upload.rs --xet),
#   2. hubsweep through LFS (--lfs),
#   3. the official client (huggingface_hub 2.4.0 with hf_xet) through Xet, from the file,
#   4. the official client through LFS (HF_HUB_DISABLE_XET=1), from the file.
# Each counts hashing, upload and commit. Then the same artifact with 1% of its bytes rewritten
# in one place (a contiguous region in the middle) is uploaded again: by hubsweep in the same
# process (it remembers the chunks it stored), by hubsweep in a fresh process with another 1%
# edit (the global dedup query only), and by the official client (its on-disk Xet cache). Bytes sent are the
# server's count of xorb and shard bytes received (`cas_bytes_received` of /_admin/stats).
# Prints seconds, MiB/s, peak RSS of the uploading process, and the targets' ratios.
# Needs the venv of scripts/test.d/10-python-hub.sh (sourced here).
# Usage: scripts/bench/xet-upload.sh [SIZE_BYTES]
set -euo pipefail
cd "$(dirname "$0")/../.."
size="${1:-1073741824}"
export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
# shellcheck source=/dev/null
source scripts/test.d/10-python-hub.sh
unset HF_HUB_DISABLE_XET
cargo build --release --quiet --bin hubsweep --example hub_upload
work="$(mktemp -d)"
cp "$CARGO_TARGET_DIR/release/hubsweep" "$work/hubsweep"
cp "$CARGO_TARGET_DIR/release/examples/hub_upload" "$work/hub_upload"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work" "${store_root:-}/store"; [ "${store_root:-}" != "$work" ] && rmdir "${store_root:-}" 2>/dev/null; true; }
trap cleanup EXIT
head -c "$size" /dev/urandom > "$work/artifact.bin"
# The hub's store lives in memory (/dev/shm) unless XET_BENCH_STORE names a folder: on this
# machine's disk the kernel's writeback throttling varies a run by 2-4x, more than the clients
# differ. In memory the runs measure the clients and the hub's CPU work.
store_root="${XET_BENCH_STORE:-$(mktemp -d -p /dev/shm 2>/dev/null || echo "$work")}"
# This VM backs its memory lazily: pages the guest freed a while ago are handed back to the host
# (free page reporting), and touching them again costs a host fault each — 1 GiB of such pages
# takes 10-20 s to write, against 0.5 s for pages freed just before. A run that needs more fresh
# memory than the machine happens to have warm then measures the host, not the code (hubsweep
# holds the artifact in memory, the official client streams it from the file: 1 GiB apart).
# So before each run, 4x SIZE of memory is touched and freed, and every run starts warm
# (XET_BENCH_WARM=0 skips it, to see the host's effect).
warm_memory() {
  [ "${XET_BENCH_WARM:-1}" = 0 ] && return 0
  local warm=/dev/shm/hubsweep-bench-warm
  dd if=/dev/zero of="$warm" bs=8M count=$(( 4 * size / 8388608 + 1 )) status=none 2>/dev/null || true
  rm -f "$warm"
}
start_server() {
  rm -rf "$store_root/store"
  sync
  warm_memory
  "$work/hubsweep" hub serve --admin --dir "$store_root/store" > "$work/url" 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.05; done
  url="$(head -n1 "$work/url")"
  [ -n "$url" ] || { echo "server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; : > "$work/url"; }
cas_bytes() { curl -sf "$url/_admin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cas_bytes_received"])'; }
py() { HF_ENDPOINT="$url" HF_HOME="$work/py-home" HF_HUB_DISABLE_PROGRESS_BARS=1 "$@"; }

# Each client runs $reps times on a fresh server, the four interleaved; the fastest run counts
# (the machine is shared, and the server's writes dominate). The edited copies are written
# only afterwards: 2 GiB more in the page cache slow this hub's writes severalfold.
reps="${XET_BENCH_REPS:-2}"
best() { python3 -c "import json,sys; runs=[json.loads(l) for l in sys.argv[1:]]; print(json.dumps(min(runs, key=lambda r: r['total_s'])))" "$@"; }
hx=(); hl=(); px=(); pl=()
for i in $(seq "$reps"); do
  start_server; hx+=("$("$work/hub_upload" "$url" "$work/artifact.bin" bench/hub-xet --xet)"); stop_server
  start_server; rm -rf "$work/py-home"; px+=("$(py "$HUBSWEEP_HUB_PYTHON" scripts/bench/hub_upload_py.py file "$work/artifact.bin" bench/py-xet)"); stop_server
  start_server; hl+=("$("$work/hub_upload" "$url" "$work/artifact.bin" bench/hub-lfs --lfs)"); stop_server
  start_server; pl+=("$(HF_HUB_DISABLE_XET=1 py "$HUBSWEEP_HUB_PYTHON" scripts/bench/hub_upload_py.py file "$work/artifact.bin" bench/py-lfs)"); stop_server
done
printf "%s\n" "${hx[@]}" "${px[@]}" "${hl[@]}" "${pl[@]}" >&2
hub_xet_best="$(best "${hx[@]}")"; hub_lfs="$(best "${hl[@]}")"; py_xet="$(best "${px[@]}")"; py_lfs="$(best "${pl[@]}")"

cp "$work/artifact.bin" "$work/edited.bin"
region=$((size / 100))
head -c "$region" /dev/urandom | dd of="$work/edited.bin" bs=1M seek=$((size / 2)) oflag=seek_bytes conv=notrunc status=none
# Another 1% edit (a quarter in) for the fresh process: the first edit's file is stored already.
cp "$work/artifact.bin" "$work/edited2.bin"
head -c "$region" /dev/urandom | dd of="$work/edited2.bin" bs=1M seek=$((size / 4)) oflag=seek_bytes conv=notrunc status=none
sync

# The 1% edits: hubsweep in one process (the artifact, then the edit), then a fresh process
# with another edit; the official client with its cache (the artifact, then the edit).
start_server
hub_xet="$("$work/hub_upload" "$url" "$work/artifact.bin" bench/hub-xet --xet --then "$work/edited.bin")"
before="$(cas_bytes)"
hub_xet_fresh="$("$work/hub_upload" "$url" "$work/edited2.bin" bench/hub-xet --xet)"
hub_xet_fresh_sent=$(( $(cas_bytes) - before ))
stop_server
start_server
rm -rf "$work/py-home"
py "$HUBSWEEP_HUB_PYTHON" scripts/bench/hub_upload_py.py file "$work/artifact.bin" bench/py-xet > /dev/null
before="$(cas_bytes)"
py_xet_then="$(py "$HUBSWEEP_HUB_PYTHON" scripts/bench/hub_upload_py.py file "$work/edited.bin" bench/py-xet)"
py_xet_then_sent=$(( $(cas_bytes) - before ))
stop_server

STORE_ROOT="$store_root" python3 - "$size" "$hub_xet_best" "$hub_lfs" "$py_xet" "$py_lfs" "$py_xet_then" "$py_xet_then_sent" "$hub_xet_fresh" "$hub_xet_fresh_sent" "$hub_xet" "$reps" <<'PY'
import json, os, sys
size = int(sys.argv[1])
hub_xet, hub_lfs, py_xet, py_lfs, py_then = (json.loads(a) for a in sys.argv[2:7])
py_then_sent = int(sys.argv[7]); fresh = json.loads(sys.argv[8]); fresh_sent = int(sys.argv[9])
edits = json.loads(sys.argv[10]); reps = sys.argv[11]
mib = size / 2**20
print(f"{size} bytes ({mib:.0f} MiB) of random data, one object, fresh embedded hub per run (store: {os.environ.get('STORE_ROOT')}), best of {reps}, {os.cpu_count()} cores")
print(f"{'client':52} {'seconds':>8} {'MiB/s':>7} {'peak RSS MiB':>13}")
rows = [("hubsweep, Xet (in memory: hash, upload, commit)", hub_xet),
        ("hubsweep, LFS (in memory: hash, upload, commit)", hub_lfs),
        ("huggingface_hub 2.4.0 + hf_xet, Xet (from file)", py_xet),
        ("huggingface_hub 2.4.0, LFS (from file)", py_lfs)]
for name, run in rows:
    print(f"{name:52} {run['total_s']:8.2f} {mib / run['total_s']:7.0f} {run['peak_rss_bytes'] / 2**20:13.0f}")
print(f"hubsweep Xet / official Xet throughput: {py_xet['total_s'] / hub_xet['total_s']:.2f}x (target >= 1.2)")
print(f"hubsweep Xet / official LFS throughput: {py_lfs['total_s'] / hub_xet['total_s']:.2f}x")
print(f"hubsweep Xet peak RSS - artifact: {(hub_xet['peak_rss_bytes'] - size) / 2**20:.0f} MiB (target <= 64)")
print(f"hubsweep LFS peak RSS - artifact: {(hub_lfs['peak_rss_bytes'] - size) / 2**20:.0f} MiB")
print(f"re-upload with 1% changed in one place (bytes sent / size; target <= 5%):")
print(f"  hubsweep, same process:  {edits['then_sent_bytes'] / size:6.2%} ({edits['then_total_s']:.2f} s)")
print(f"  hubsweep, fresh process: {fresh_sent / size:6.2%} ({fresh['total_s']:.2f} s; global dedup query only)")
print(f"  official client + cache: {py_then_sent / size:6.2%} ({py_then['total_s']:.2f} s)")
PY
