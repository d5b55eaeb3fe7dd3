#!/usr/bin/env python3
"""Hostile requests against `hubsweep hub serve`: time to answer and server memory.

Usage: scripts/bench/hub_limits.py BINARY [BINARY ...]
       (e.g. an old build and a new one, to compare; each case gets a fresh server)

Per case it prints the HTTP status (or "no answer" after the timeout), the wall time, and the
server's peak resident memory (VmHWM) before and after. Python standard library only; Linux
(reads /proc). Not a test: figures for docs and reports.
"""

import base64
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

TIMEOUT = float(os.environ.get("TIMEOUT", "8"))


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serve(binary, store):
    process = subprocess.Popen(
        [binary, "hub", "serve", "--dir", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HUBSWEEP_HOME": store + "-home"},
    )
    url = process.stdout.readline().decode().strip()
    host, port = url.removeprefix("http://").split(":")
    return process, host, int(port)


def request(host, port, method, path, body=b"", headers=None):
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    started = time.monotonic()
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = response.read()
        return response.status, answer, time.monotonic() - started
    except (TimeoutError, OSError) as error:
        return f"no answer ({type(error).__name__})", b"", time.monotonic() - started
    finally:
        connection.close()


def batch_body(size, transfers):
    return json.dumps(
        {"operation": "upload", "transfers": transfers,
         "objects": [{"oid": hashlib.sha256(b"x").hexdigest(), "size": size}]}
    ).encode()


def commit_body(files):
    lines = [json.dumps({"key": "header", "value": {"summary": f"{files} files"}})]
    for n in range(files):
        content = base64.b64encode(f"file {n}\n".encode()).decode()
        lines.append(json.dumps({"key": "file", "value": {
            "path": f"many/{n:06}.txt", "content": content, "encoding": "base64"}}))
    return ("\n".join(lines) + "\n").encode()


def describe(status, answer):
    if not isinstance(status, int):
        return status
    try:
        parsed = json.loads(answer)
    except ValueError:
        return f"{status}"
    if isinstance(parsed, dict) and "objects" in parsed:
        objects = parsed["objects"]
        first = objects[0] if objects else {}
        if "error" in first:
            return f"{status}, object refused {first['error']['code']}"
        upload = first.get("actions", {}).get("upload", {})
        parts = len(upload.get("header", {})) - ("chunk_size" in upload.get("header", {}))
        return f"{status}, {parsed.get('transfer')} with {parts} part URLs"
    return f"{status}"


CASES = [
    ("batch 99,999,999,999,999,999 B, basic", "POST", "/org/target.git/info/lfs/objects/batch",
     lambda: batch_body(99_999_999_999_999_999, ["basic"])),
    ("batch 99,999,999,999,999,999 B, multipart", "POST", "/org/target.git/info/lfs/objects/batch",
     lambda: batch_body(99_999_999_999_999_999, ["basic", "multipart"])),
    ("batch 1 KB, only xet offered", "POST", "/org/target.git/info/lfs/objects/batch",
     lambda: batch_body(1000, ["xet"])),
    ("batch body of 300 MB", "POST", "/org/target.git/info/lfs/objects/batch",
     lambda: b" " * 300_000_000),
    ("commit of 10,000 inline files", "POST", "/api/models/org/target/commit/main",
     lambda: commit_body(10_000)),
    ("commit of 30,000 inline files", "POST", "/api/models/org/target/commit/main",
     lambda: commit_body(30_000)),
    ("commit of 100,000 inline files", "POST", "/api/models/org/target/commit/main",
     lambda: commit_body(100_000)),
]


def main():
    binaries = sys.argv[1:]
    if not binaries:
        sys.exit(__doc__)
    only = os.environ.get("ONLY", "")
    print(f"{'case':45} {'binary':10} {'answer':40} {'wall s':>8} {'peak MB before→after':>22}")
    for name, method, path, body in CASES:
        if only and only not in name:
            continue
        payload = body()
        for binary in binaries:
            with tempfile.TemporaryDirectory() as temp:
                process, host, port = serve(binary, os.path.join(temp, "store"))
                try:
                    request(host, port, "POST", "/api/repos/create",
                            json.dumps({"name": "target", "organization": "org"}).encode(),
                            {"content-type": "application/json"})
                    before = peak_rss_mb(process.pid)
                    status, answer, took = request(host, port, method, path, payload)
                    after = peak_rss_mb(process.pid)
                finally:
                    process.kill()
                    process.wait()
            label = os.path.basename(os.path.dirname(os.path.dirname(binary))) or binary
            print(f"{name:45} {label[:10]:10} {describe(status, answer)[:40]:40} {took:8.2f} "
                  f"{before:10.0f} → {after:7.0f}", flush=True)


if __name__ == "__main__":
    main()
