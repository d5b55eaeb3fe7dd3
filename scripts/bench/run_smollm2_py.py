"""The Python baseline of scripts/bench/run-smollm2.sh: what the HFStreamUploader post does.

transformers forward with output_hidden_states over the same token windows, one safetensors per
layer serialized into BytesIO, and one huggingface_hub commit to the same server. Prints one JSON
line: wall seconds (from model load to commit) and the tokens processed.
"""

import io
import json
import sys
import time

import torch
from huggingface_hub import CommitOperationAdd, HfApi
from safetensors.torch import save
from transformers import AutoModelForCausalLM

hf_dir, ids_path, endpoint, repo, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
windows = json.load(open(ids_path))
started = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32, attn_implementation="eager")
model.eval()
layers = model.config.num_hidden_layers
per_layer = [[] for _ in range(layers)]
with torch.inference_mode():
    for i in range(0, len(windows), 8):
        batch = torch.tensor(windows[i : i + 8])
        out = model(batch, output_hidden_states=True)
        for layer in range(layers):
            hidden = out.hidden_states[layer + 1]
            per_layer[layer].append(hidden.reshape(-1, hidden.shape[-1]).to(torch.float16))
api = HfApi(endpoint=endpoint, token=None)
api.create_repo(repo, repo_type="dataset", exist_ok=True)
operations = []
for layer in range(layers):
    buffer = io.BytesIO(save({"activations": torch.cat(per_layer[layer])}))
    operations.append(CommitOperationAdd(f"layer{layer:03}.safetensors", buffer))
api.create_commit(repo, operations, commit_message="baseline", repo_type="dataset")
print(json.dumps({"side": "python", "wall": time.perf_counter() - started, "tokens": sum(map(len, windows))}))
