"""Drives the official `huggingface_hub` client, with `hf_xet`, against our embedded server.

Run by tests/it/hub/xet.rs as `xet_peer.py WORK PHASE` with HF_ENDPOINT and HF_TOKEN; the test
sets HF_HUB_DISABLE_XET=1 for the `lfs` phase only. Phases share WORK and the server:

- `xet`: uploads through Xet (small, 25 MB, 120 MB), downloads them (Xet), checks sha256,
  listing oids, snapshot_download and a refused stale parent.
- `lfs`: (Xet disabled) downloads the Xet uploads over plain HTTP, uploads a file via LFS.
- `xet-read`: (Xet enabled) downloads the LFS upload.
- `xet-dedup`: (Xet enabled, a fresh Xet cache) uploads the 25 MB file again under another
  name: the global dedup query finds its chunks, so no xorb is sent.

Every check raises on failure; the last stdout line is a JSON summary.
"""

import hashlib
import json
import os
import random
import sys

from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import HfHubHTTPError

work, phase = sys.argv[1], sys.argv[2]
api = HfApi()
repo = "org/xet-model"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(name, size, seed):
    data = random.Random(seed).randbytes(size)
    path = os.path.join(work, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path, hashlib.sha256(data).hexdigest()


def check_downloads(names, cache):
    for name in names:
        local = os.path.join(work, os.path.basename(name))
        got = hf_hub_download(repo, name, cache_dir=cache)
        assert sha256_file(got) == sha256_file(local), name


xet_files = {"notes/small.txt": ("small.txt", 31, 1), "big25.bin": ("big25.bin", 25_000_000, 2),
             "big120.bin": ("big120.bin", 120_000_000, 3)}

if phase == "xet":
    from huggingface_hub.utils._runtime import is_xet_available

    assert is_xet_available(), "hf_xet must be importable and Xet not disabled"
    api.create_repo(repo, exist_ok=True)
    commits = []
    digests = {}
    for path_in_repo, (name, size, seed) in xet_files.items():
        local, digests[path_in_repo] = write(name, size, seed)
        commits.append(api.upload_file(path_or_fileobj=local, path_in_repo=path_in_repo, repo_id=repo).oid)
    check_downloads(xet_files, os.path.join(work, "cache-xet"))
    listed = {f.path: f for f in api.list_repo_tree(repo, recursive=True) if hasattr(f, "lfs")}
    for path_in_repo, digest in digests.items():
        if path_in_repo.startswith("big"):
            assert listed[path_in_repo].lfs is not None, path_in_repo
            assert listed[path_in_repo].lfs.sha256 == digest, path_in_repo
            # Listed with its Xet hash, the one downloads name (X-Xet-Hash).
            meta = get_hf_file_metadata(hf_hub_url(repo, path_in_repo))
            assert listed[path_in_repo].xet_hash == meta.xet_file_data.file_hash, path_in_repo
            (info,) = api.get_paths_info(repo, [path_in_repo])
            assert info.xet_hash == meta.xet_file_data.file_hash, path_in_repo
    head = api.repo_info(repo).sha
    assert head == commits[-1], (head, commits)
    try:
        api.create_commit(repo, operations=[CommitOperationAdd("stale.bin", os.path.join(work, "big25.bin"))],
                          commit_message="stale", parent_commit=commits[0])
        raise AssertionError("stale parent_commit was accepted")
    except HfHubHTTPError as error:
        assert error.response.status_code == 412, error.response.status_code
    assert api.repo_info(repo).sha == head
    snapshot = snapshot_download(repo, cache_dir=os.path.join(work, "snapshot"))
    for path_in_repo, digest in digests.items():
        assert sha256_file(os.path.join(snapshot, path_in_repo)) == digest, path_in_repo
    print(json.dumps({"head": head, "digests": digests}))
elif phase == "lfs":
    from huggingface_hub.utils._runtime import is_xet_available

    assert not is_xet_available()
    check_downloads(xet_files, os.path.join(work, "cache-lfs"))
    local, digest = write("lfs-up.bin", 12_000_000, 4)
    api.upload_file(path_or_fileobj=local, path_in_repo="lfs-up.bin", repo_id=repo)
    print(json.dumps({"lfs": digest}))
elif phase == "xet-dedup":
    api.upload_file(path_or_fileobj=os.path.join(work, "big25.bin"), path_in_repo="again25.bin", repo_id=repo)
    got = hf_hub_download(repo, "again25.bin", cache_dir=os.path.join(work, "cache-dedup"))
    assert sha256_file(got) == sha256_file(os.path.join(work, "big25.bin"))
    print(json.dumps({"ok": True}))
elif phase == "xet-read":
    check_downloads(["lfs-up.bin"], os.path.join(work, "cache-xet-read"))
    print(json.dumps({"ok": True}))
else:
    raise SystemExit(f"unknown phase {phase}")
