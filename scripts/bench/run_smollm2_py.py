"""The Python baseline of scripts/bench/run-smollm2.sh: what the HFStreamUploader post does.

transformers forward with output_hidden_states over the same token windows, one safetensors per
layer serialized into BytesIO, and one huggingface_hub commit to the same server. Prints one JSON
line: wall seconds (from model load to commit) and the tokens processed.

    run_smollm2_py.py HF_DIR IDS_JSON ENDPOINT REPO THREADS [DEVICE]

DEVICE (default `cpu`) is a torch device, e.g. `cuda` for scripts/gpu/bench.sh; the activations
are brought to the CPU as f16 after each batch, as the post does.
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
device = sys.argv[6] if len(sys.argv) > 6 else "cpu"
torch.set_num_threads(int(threads))
windows = json.load(open(ids_path))
started = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32, attn_implementation="eager")
model.to(device).eval()
layers = model.config.num_hidden_layers
per_layer = [[] for _ in range(layers)]
with torch.inference_mode():
    for i in range(0, len(windows), 8):
        batch = torch.tensor(windows[i : i + 8], device=device)
        out = model(batch, output_hidden_states=True)
        for layer in range(layers):
            hidden = out.hidden_states[layer + 1]
            per_layer[layer].append(hidden.reshape(-1, hidden.shape[-1]).to(torch.float16).cpu())
api = HfApi(endpoint=endpoint, token=None)
api.create_repo(repo, repo_type="dataset", exist_ok=True)
operations = []
for layer in range(layers):
    buffer = io.BytesIO(save({"activations": torch.cat(per_layer[layer])}))
    operations.append(CommitOperationAdd(f"layer{layer:03}.safetensors", buffer))
api.create_commit(repo, operations, commit_message="baseline", repo_type="dataset")
print(json.dumps({"side": "python", "wall": time.perf_counter() - started, "tokens": sum(map(len, windows))}))
