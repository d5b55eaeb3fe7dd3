"""Official-client side of scripts/bench/hub-upload.sh: one upload_file of FILE, either from
the path (the client streams it) or from bytes already in memory. Prints one JSON line."""

import json
import resource
import sys
import time

from huggingface_hub import HfApi

mode, path, repo = sys.argv[1], sys.argv[2], sys.argv[3]
api = HfApi()
api.create_repo(repo, exist_ok=True)
source = path
if mode == "bytes":
    with open(path, "rb") as handle:
        source = handle.read()
started = time.perf_counter()
api.upload_file(path_or_fileobj=source, path_in_repo="bench.bin", repo_id=repo)
elapsed = time.perf_counter() - started
size = len(source) if mode == "bytes" else __import__("os").path.getsize(path)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"bytes": size, "total_s": elapsed, "peak_rss_bytes": peak}))
