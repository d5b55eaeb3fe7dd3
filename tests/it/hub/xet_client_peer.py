"""The official client with `hf_xet` (Xet not disabled), for tests/it/hub/xet_client.rs.

`upload REPO NAME LOCAL` uploads a local file through Xet (creating the repo);
`download REPO NAME` downloads a file (through Xet when `resolve/` names a Xet hash) and
prints its sha256. Reads HF_ENDPOINT and HF_TOKEN; the last stdout line is JSON.
"""

import hashlib
import json
import sys

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.utils._runtime import is_xet_available

assert is_xet_available(), "hf_xet must be importable and Xet not disabled"
op, repo, name = sys.argv[1], sys.argv[2], sys.argv[3]
api = HfApi()
if op == "upload":
    api.create_repo(repo, exist_ok=True)
    info = api.upload_file(path_or_fileobj=sys.argv[4], path_in_repo=name, repo_id=repo)
    print(json.dumps({"commit": info.oid}))
elif op == "download":
    path = hf_hub_download(repo, name)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    print(json.dumps({"sha256": digest.hexdigest()}))
else:
    raise SystemExit(f"unknown op {op}")
