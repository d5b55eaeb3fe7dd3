"""PyTorch + transformers peer for scripts/bench/capture-smollm2.sh: same HF folder, same ids,
same thread count; records every layer's output (hook_resid_post) with forward hooks."""

import json
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

hf_dir, ids_path, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.set_grad_enabled(False)
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
load_s = time.perf_counter() - start
ids = torch.tensor(json.load(open(ids_path)), dtype=torch.int64)
acts = {}
for l, layer in enumerate(model.model.layers):
    layer.register_forward_hook(lambda m, i, o, l=l: acts.__setitem__(l, o if torch.is_tensor(o) else o[0]))
times = []
cpu = 0.0
for run in range(runs + 1):
    if run == 1:
        cpu = time.process_time()
    acts.clear()
    t = time.perf_counter()
    # The hubsweep side stops after the last requested block and skips the unembedding;
    # calling the base model (no lm_head) keeps the comparison like for like.
    model.model(input_ids=ids, use_cache=False)
    if run > 0:
        times.append(time.perf_counter() - t)
    assert len(acts) == len(model.model.layers)
cpu_per_pass = (time.process_time() - cpu) / runs
median = statistics.median(times)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"impl": f"torch-{torch.__version__}", "load_s": round(load_s, 3), "median_s": round(median, 4),
                  "min_s": round(min(times), 4), "tokens_per_s": round(ids.numel() / median, 1), "cpu_s": round(cpu_per_pass, 3),
                  "peak_rss_mib": round(peak), "threads": torch.get_num_threads()}))
