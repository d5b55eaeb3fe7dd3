"""Drives the official `huggingface_hub` client against our embedded server.

Run by tests/it/hub/python.rs with HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET=1 and a work dir
as argv[1]. Every check raises on failure; the last stdout line is a JSON summary the Rust test
cross-checks against the server.
"""

import hashlib
import json
import os
import sys

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

work = sys.argv[1]
api = HfApi()
repo = "org/py-model"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(name, data):
    path = os.path.join(work, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path, hashlib.sha256(data).hexdigest()


url = api.create_repo(repo, exist_ok=True)
assert str(url).endswith("/org/py-model"), url
api.create_repo(repo, exist_ok=True)  # 409 swallowed

sources = {
    "notes/small.txt": write("small.txt", b"hello from the official client\n"),
    "big20.bin": write("big20.bin", os.urandom(20_000_000)),
    "big100.bin": write("big100.bin", os.urandom(100_000_000)),
}
commits = []
for path_in_repo, (local, _) in sources.items():
    info = api.upload_file(path_or_fileobj=local, path_in_repo=path_in_repo, repo_id=repo)
    commits.append(info.oid)

cache = os.path.join(work, "cache")
for path_in_repo, (_, digest) in sources.items():
    downloaded = hf_hub_download(repo, path_in_repo, cache_dir=cache)
    assert sha256_file(downloaded) == digest, path_in_repo

files = set(api.list_repo_files(repo))
assert files == {".gitattributes", *sources}, files
head = api.repo_info(repo).sha
assert head == commits[-1], (head, commits)

# A stale parent commit must be refused and change nothing.
stale = commits[0]
try:
    api.create_commit(
        repo,
        operations=[CommitOperationAdd("stale.txt", b"must not land")],
        commit_message="stale",
        parent_commit=stale,
    )
    raise AssertionError("stale parent_commit was accepted")
except HfHubHTTPError as error:
    assert error.response.status_code == 412, error.response.status_code
assert api.repo_info(repo).sha == head

pr = api.create_commit(
    repo,
    operations=[CommitOperationAdd("pr.txt", b"proposed change\n")],
    commit_message="a pull request",
    create_pr=True,
)
assert pr.pr_url and pr.pr_url.endswith("/discussions/1"), pr.pr_url
assert pr.pr_revision == "refs/pr/1", pr.pr_revision
pr_file = hf_hub_download(repo, "pr.txt", revision=pr.pr_revision, cache_dir=cache)
assert open(pr_file, "rb").read() == b"proposed change\n"
assert api.repo_info(repo).sha == head, "create_pr must not move main"
assert "pr.txt" not in api.list_repo_files(repo)

snapshot = snapshot_download(repo, cache_dir=os.path.join(work, "snapshot"))
for path_in_repo, (_, digest) in sources.items():
    assert sha256_file(os.path.join(snapshot, path_in_repo)) == digest, path_in_repo

refs = api.list_repo_refs(repo, include_pull_requests=True)
assert [b.target_commit for b in refs.branches if b.name == "main"] == [head]
history = [c.commit_id for c in api.list_repo_commits(repo)]
assert history[: len(commits)] == commits[::-1], history

dataset = "org/py-data"
api.create_repo(dataset, repo_type="dataset", exist_ok=True)
api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv", repo_id=dataset, repo_type="dataset")
got = hf_hub_download(dataset, "data/train.csv", repo_type="dataset", cache_dir=cache)
assert open(got, "rb").read() == b"a,b\n1,2\n"

print(json.dumps({"head": head, "commits": commits, "pr_head": pr.oid}))
