"""Update-geometry benchmark (issue 17): a Pythia-410M-shaped base and three PEFT LoRA
adapters, made here with a fixed seed, then all 24 layers' `query_key_value` update geometry
at k in {5, 10, 20, srank} by hubsweep (benches/update_geometry.rs, reading the files with the
library) and by the straightforward torch code below (fp32 `torch.linalg.svd` of W and of the
dense ΔW), each in its own process, in the same run. Prints both times, the ratio, each side's
peak RSS and the largest differences between their figures. Called by
scripts/bench/update-geometry.sh; not a test.

    python update_geometry_torch.py HUBSWEEP_BENCH_BINARY WORK_DIR
    python update_geometry_torch.py --torch-side WORK_DIR OUT.json   (the torch side alone)
"""

import json
import math
import os
import resource
import subprocess
import sys
import time

LAYERS = int(os.environ.get("LAYERS", 24))
D_MODEL, HEADS = 1024, 16
ADAPTERS = [("r16", 16, 32.0), ("r128-a", 128, 256.0), ("r128-b", 128, 256.0)]
KS = [5, 10, 20]
SEED = 17


def qkv_key(layer):
    return f"gpt_neox.layers.{layer}.attention.query_key_value.weight"


def generate(work):
    """The base checkpoint (config.json + model.safetensors with the fused QKV weights, stored
    as GPT-NeoX stores them: [3·d, d], rows grouped per head) and three adapters as peft saves
    them. Deterministic: the same seed gives the same bytes."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(SEED)
    base = os.path.join(work, "base")
    os.makedirs(base, exist_ok=True)
    config = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": D_MODEL,
        "intermediate_size": 4 * D_MODEL,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": 50304,
        "max_position_embeddings": 2048,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "layer_norm_eps": 1e-05,
        "hidden_act": "gelu",
        "use_parallel_residual": True,
        "attention_bias": True,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    # Random weights at Pythia's initialisation scale (std 0.02).
    tensors = {
        qkv_key(layer): torch.randn(3 * D_MODEL, D_MODEL, generator=generator) * 0.02
        for layer in range(LAYERS)
    }
    save_file(tensors, os.path.join(base, "model.safetensors"))
    for name, rank, alpha in ADAPTERS:
        folder = os.path.join(work, name)
        os.makedirs(folder, exist_ok=True)
        adapter_config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
            "use_rslora": False,
            "fan_in_fan_out": False,
            "target_modules": ["query_key_value"],
            "rank_pattern": {},
            "alpha_pattern": {},
            "bias": "none",
        }
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(adapter_config, f, indent=2)
        factors = {}
        for layer in range(LAYERS):
            prefix = f"base_model.model.gpt_neox.layers.{layer}.attention.query_key_value"
            # A as peft initialises it (Kaiming-uniform-like scale), B nonzero as after training.
            factors[f"{prefix}.lora_A.weight"] = torch.randn(
                rank, D_MODEL, generator=generator
            ) / math.sqrt(D_MODEL)
            factors[f"{prefix}.lora_B.weight"] = (
                torch.randn(3 * D_MODEL, rank, generator=generator) * 0.01
            )
        save_file(factors, os.path.join(folder, "adapter_model.safetensors"))


def torch_side(work, out):
    """The straightforward script: fp32 full SVDs with torch. The base's SVD is computed once
    per layer (the stronger baseline), each adapter's ΔW formed densely and decomposed."""
    start = time.perf_counter()
    import torch
    from safetensors.torch import load_file

    if os.environ.get("THREADS"):
        torch.set_num_threads(int(os.environ["THREADS"]))

    base = load_file(os.path.join(work, "base", "model.safetensors"))
    adapters = []
    for name, _, _ in ADAPTERS:
        folder = os.path.join(work, name)
        with open(os.path.join(folder, "adapter_config.json")) as f:
            config = json.load(f)
        scale = config["lora_alpha"] / (
            math.sqrt(config["r"]) if config["use_rslora"] else config["r"]
        )
        adapters.append((name, scale, load_file(os.path.join(folder, "adapter_model.safetensors"))))
    rows = []
    for layer in range(LAYERS):
        weight = base[qkv_key(layer)].float()
        u_w, _, vh_w = torch.linalg.svd(weight, full_matrices=False)
        for name, scale, factors in adapters:
            prefix = f"base_model.model.gpt_neox.layers.{layer}.attention.query_key_value"
            delta = scale * (factors[f"{prefix}.lora_B.weight"] @ factors[f"{prefix}.lora_A.weight"])
            u_d, s_d, vh_d = torch.linalg.svd(delta, full_matrices=False)
            stable_rank = float((s_d**2).sum() / s_d[0] ** 2)
            # round half away from zero, as hubsweep (Rust's f64::round) does
            srank = max(1, math.floor(stable_rank + 0.5))
            for choice, k in [*[(str(k), k) for k in KS], ("srank", srank)]:
                p_left = float((u_w[:, :k].T @ u_d[:, :k]).square().sum() / k)
                p_right = float((vh_w[:k] @ vh_d[:k].T).square().sum() / k)
                rows.append(
                    {
                        "adapter": name,
                        "layer": layer,
                        "choice": choice,
                        "k": k,
                        "p_left": p_left,
                        "p_right": p_right,
                        "stable_rank": stable_rank,
                    }
                )
    seconds = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump({"seconds": seconds, "threads": torch.get_num_threads(), "rows": rows}, f)


def timed(command):
    """Runs a child process; returns (wall seconds, peak RSS in MiB) of that child alone."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{command[0]} failed (status {status})")
    return wall, usage.ru_maxrss / 1024


def main():
    binary, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(os.path.join(work, ADAPTERS[-1][0], "adapter_model.safetensors")):
        generate(work)
    ours_json = os.path.join(work, "hubsweep.json")
    torch_json = os.path.join(work, "torch.json")
    adapter_dirs = [os.path.join(work, name) for name, _, _ in ADAPTERS]
    ours_wall, ours_rss = timed([binary, os.path.join(work, "base"), ours_json, *adapter_dirs])
    torch_wall, torch_rss = timed([sys.executable, __file__, "--torch-side", work, torch_json])
    with open(ours_json) as f:
        ours = json.load(f)
    with open(torch_json) as f:
        theirs = json.load(f)
    by_key = {(r["adapter"], r["layer"], r["choice"]): r for r in ours["rows"]}
    worst = {"p_left": 0.0, "p_right": 0.0, "stable_rank": 0.0}
    compared = srank_k_differs = past_rank = 0
    for row in theirs["rows"]:
        mine = by_key.get((row["adapter"], row["layer"], row["choice"]))
        if mine is None:
            # k = 20 of the r = 16 adapter: past ΔW's rank its singular vectors are arbitrary
            # null-space directions; hubsweep skips such sizes, torch computes them anyway.
            rank = next(r for name, r, _ in ADAPTERS if name == row["adapter"])
            if row["k"] <= rank:
                sys.exit(f"hubsweep has no row for {row['adapter']} layer {row['layer']} k={row['choice']}")
            past_rank += 1
            continue
        worst["stable_rank"] = max(worst["stable_rank"], abs(mine["stable_rank"] - row["stable_rank"]))
        if mine["k"] != row["k"]:
            srank_k_differs += 1  # fp32 rounding moved round(srank) across a half
            continue
        compared += 1
        for field in ("p_left", "p_right"):
            worst[field] = max(worst[field], abs(mine[field] - row[field]))
    expected = LAYERS * len(ADAPTERS) * (len(KS) + 1)
    if len(theirs["rows"]) != expected or len(ours["rows"]) != expected - past_rank:
        sys.exit(f"expected {expected} rows, got {len(ours['rows'])} and {len(theirs['rows'])}")
    print(f"layers {LAYERS}, qkv {3 * D_MODEL}x{D_MODEL}, adapters r=16/128/128, k in 5,10,20,srank")
    print(f"hubsweep: {ours_wall:7.2f} s end to end ({ours['seconds']:.2f} s in process, "
          f"{ours['threads']} threads), peak RSS {ours_rss:7.0f} MiB")
    print(f"torch:    {torch_wall:7.2f} s end to end ({theirs['seconds']:.2f} s in process, "
          f"{theirs['threads']} threads), peak RSS {torch_rss:7.0f} MiB")
    print(f"ratio torch/hubsweep: {torch_wall / ours_wall:.1f}x end to end, "
          f"{theirs['seconds'] / ours['seconds']:.1f}x in process")
    print(f"largest |difference| over {compared} (adapter, layer, k) rows: "
          f"p_left {worst['p_left']:.2e}, p_right {worst['p_right']:.2e}, "
          f"stable_rank {worst['stable_rank']:.2e}")
    print(f"  of torch's {expected} rows: {past_rank} with k past the update's rank (hubsweep skips "
          f"them), {srank_k_differs} where fp32 moved round(srank) to another k")


if __name__ == "__main__":
    if sys.argv[1] == "--torch-side":
        torch_side(sys.argv[2], sys.argv[3])
    else:
        main()
