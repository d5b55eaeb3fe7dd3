#!/usr/bin/env bash
# Upload benchmark (not a test): 1 GiB as one multipart LFS object to the embedded server, by
#   1. our Rust client, the artifact held in memory (examples/hub_upload.rs),
#   2. the official Python client from a file, and 3. from in-memory bytes,
#   4. a raw curl PUT of the same bytes to a basic presigned URL (the server's own ceiling).
# Each run gets a fresh server (no dedup between runs). Prints throughput, peak RSS of the
# uploading process, and ratios. Needs the venv of scripts/test.d/10-python-hub.sh.
# Usage: scripts/bench/hub-upload.sh [SIZE_BYTES]   (default 1073741824)
set -euo pipefail
cd "$(dirname "$0")/../.."
size="${1:-1073741824}"
export HUBSWEEP_CACHE="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HUBSWEEP_CACHE/target}"
# shellcheck source=/dev/null
source scripts/test.d/10-python-hub.sh
cargo build --release --quiet --bin hubsweep --example hub_upload
work="$(mktemp -d)"
# Private copies: a shared target dir may get another checkout's binary at any moment.
cp "$CARGO_TARGET_DIR/release/hubsweep" "$work/hubsweep"
cp "$CARGO_TARGET_DIR/release/examples/hub_upload" "$work/hub_upload"
bin="$work/hubsweep"
example="$work/hub_upload"

server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
head -c "$size" /dev/urandom > "$work/artifact.bin"
sha="$(sha256sum "$work/artifact.bin" | cut -d' ' -f1)"

start_server() {
  rm -rf "$work/store"
  # Flush earlier writes (the artifact file, the previous store) so no run pays for another's
  # writeback.
  sync
  "$bin" hub serve --dir "$work/store" --part-size $((16 << 20)) --multipart-threshold $((64 << 20)) > "$work/url" 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.05; done
  url="$(head -n1 "$work/url")"
  [ -n "$url" ] || { echo "server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; : > "$work/url"; }

json_field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Each client runs $reps times on a fresh server; the fastest run counts (the machine is shared).
reps="${HUB_BENCH_REPS:-2}"
best() { python3 -c "import json,sys; runs=[json.loads(l) for l in sys.argv[1:]]; print(json.dumps(min(runs, key=lambda r: r['total_s'])))" "$@"; }
runs=()
for i in $(seq "$reps"); do start_server; runs+=("$("$example" "$url" "$work/artifact.bin" "bench/rust$i" --lfs)"); stop_server; done
rust="$(best "${runs[@]}")"
runs=()
for i in $(seq "$reps"); do
  start_server
  runs+=("$(HF_ENDPOINT="$url" HF_HUB_DISABLE_PROGRESS_BARS=1 "$HUBSWEEP_HUB_PYTHON" scripts/bench/hub_upload_py.py file "$work/artifact.bin" "bench/py-file$i")")
  stop_server
done
py_file="$(best "${runs[@]}")"
runs=()
for i in $(seq "$reps"); do
  start_server
  runs+=("$(HF_ENDPOINT="$url" HF_HUB_DISABLE_PROGRESS_BARS=1 "$HUBSWEEP_HUB_PYTHON" scripts/bench/hub_upload_py.py bytes "$work/artifact.bin" "bench/py-bytes$i")")
  stop_server
done
py_bytes="$(best "${runs[@]}")"
# Server ceiling: one basic PUT with curl (ask for "basic" only, so no multipart).
start_server
curl -sf -X POST "$url/api/repos/create" -H 'content-type: application/json' -d '{"name":"curl","organization":"bench"}' > /dev/null
href="$(curl -sf -X POST "$url/bench/curl.git/info/lfs/objects/batch" -H 'content-type: application/json' \
  -d "{\"operation\":\"upload\",\"transfers\":[\"basic\"],\"objects\":[{\"oid\":\"$sha\",\"size\":$size}]}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["objects"][0]["actions"]["upload"]["href"])')"
curl_s="$(curl -sf -o /dev/null -w '%{time_total}' -T "$work/artifact.bin" "$href")"
stop_server

python3 - "$size" "$rust" "$py_file" "$py_bytes" "$curl_s" <<'PY'
import json, sys
size = int(sys.argv[1]); rust, py_file, py_bytes = (json.loads(a) for a in sys.argv[2:5]); curl_s = float(sys.argv[5])
mib = size / 2**20
rows = [
    ("rust client, in memory (upload only)", rust["upload_s"], rust["peak_rss_bytes"]),
    ("rust client, in memory (hash+upload+commit)", rust["total_s"], rust["peak_rss_bytes"]),
    ("python huggingface_hub 2.4.0, from file", py_file["total_s"], py_file["peak_rss_bytes"]),
    ("python huggingface_hub 2.4.0, from bytes", py_bytes["total_s"], py_bytes["peak_rss_bytes"]),
    ("curl, one basic PUT (server ceiling)", curl_s, None),
]
print(f"{size} bytes ({mib:.0f} MiB), one LFS object, fresh embedded server per run, best of {__import__('os').environ.get('HUB_BENCH_REPS', '2')}")
print(f"{'client':46} {'seconds':>8} {'MiB/s':>8} {'peak RSS MiB':>13}")
for name, seconds, rss in rows:
    rss_text = f"{rss / 2**20:13.0f}" if rss else f"{'-':>13}"
    print(f"{name:46} {seconds:8.2f} {mib / seconds:8.0f} {rss_text}")
print(f"ratio rust(hash+upload+commit) / python-from-file throughput: {py_file['total_s'] / rust['total_s']:.2f}x")
print(f"ratio rust(hash+upload+commit) / python-from-bytes throughput: {py_bytes['total_s'] / rust['total_s']:.2f}x")
print(f"rust peak RSS - artifact: {(rust['peak_rss_bytes'] - size) / 2**20:.0f} MiB (target <= 64)")
PY
