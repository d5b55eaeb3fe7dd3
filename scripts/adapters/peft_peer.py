#!/usr/bin/env python3
"""The peer of hubsweep's LoRA adapter reader (tests/it/adapters.rs): saves LoRA adapters with
the real `peft` library on the tiny fixtures, merges each into its base in float64 with peft,
and writes what the test compares against.

    peft_peer.py --fixtures tests/fixtures --out DIR [--smollm2 HF_DIR]

With `--smollm2`, one more case adapts SmolLM2-135M (an HF folder, the project's GGUF
converted) at three of its 30 layers (`layers_to_transform`).

For each case, DIR/{case}/ holds:
* adapter/             the adapter as `save_pretrained` writes it (F32 factors, random A and B:
                       `init_lora_weights=False`, seeded);
* delta.safetensors    peft's merged weight minus the base (F64, stored orientation, keyed like
                       the base checkpoint), for every weight the merge changed;
* reference.json       float64 NumPy figures from the formulas of docs/analysis.md, per changed
                       weight: singular values of ΔW, stable rank, effective rank, k90/k99, and
                       the update–base geometry at k in {1, 2, srank}.
DIR/neox_ia3/adapter/ is an IA3 adapter (another PEFT method, to be refused). DIR/cases.json
lists the cases with their fixture and kind.
"""

import argparse
import json
import math
import os
import re

import numpy as np
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

CASES = [
    # name, fixture, LoraConfig arguments
    ("neox_default", "gpt_neox_tiny",
     dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense"])),
    ("neox_rslora", "gpt_neox_tiny",
     dict(r=8, lora_alpha=4, use_rslora=True,
          target_modules=["query_key_value", "dense_h_to_4h", "dense_4h_to_h"])),
    ("neox_patterns", "gpt_neox_tiny",
     dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense_h_to_4h"],
          rank_pattern={"layers.1.attention.query_key_value": 2, "dense_h_to_4h": 6},
          alpha_pattern={"query_key_value": 3, "layers\\.2\\..*": 5})),
    ("llama_default", "llama_tiny",
     dict(r=4, lora_alpha=16,
          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                          "down_proj"])),
    ("llama_patterns_rslora", "llama_tiny",
     dict(r=3, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
          rank_pattern={"v_proj": 5})),
    ("gpt2_fan_in_fan_out", "gpt2_tiny",
     dict(r=4, lora_alpha=8, fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "c_fc"])),
]

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def out_in(fixture, key, tensor):
    """The weight as d_out x d_in (GPT-2's Conv1D weights are stored [in, out])."""
    array = tensor.detach().numpy()
    if os.path.basename(fixture).startswith("gpt2") and any(key.endswith(m + ".weight") for m in CONV1D):
        return array.T
    return array


def reference(base, delta, rank):
    """NumPy figures for one update, from the formulas of docs/analysis.md."""
    u_w, _, vt_w = np.linalg.svd(base, full_matrices=False)
    u_d, s_d, vt_d = np.linalg.svd(delta, full_matrices=False)
    energy = s_d ** 2
    total = energy.sum()
    stable_rank = total / energy[0]
    p = s_d / s_d.sum()
    p = p[p > 0]
    cumulative = np.cumsum(energy)
    max_k = min(delta.shape[0], delta.shape[1], rank)
    geometry = []
    for choice in (1, 2, "srank"):
        # round half away from zero, as Rust's f64::round (Python's round is half-even).
        k = min(max(int(math.floor(stable_rank + 0.5)), 1), max_k) if choice == "srank" else choice
        if k > max_k:
            continue
        sides = {}
        for side, base_vectors, update_vectors in (
            ("left", u_w, u_d), ("right", vt_w.T, vt_d.T)
        ):
            cross = base_vectors[:, :k].T @ update_vectors[:, :k]
            sides["p_" + side] = float((cross ** 2).sum() / k)
            sides["cosines_" + side] = np.linalg.svd(cross, compute_uv=False).tolist()
        geometry.append(dict(choice=choice, k=k, **sides))
    return dict(
        singular_values=s_d[:max_k].tolist(),
        stable_rank=float(stable_rank),
        effective_rank=float(np.exp(-(p * np.log(p)).sum())),
        k90=int(np.searchsorted(cumulative, 0.9 * total * (1 - 1e-12)) + 1),
        k99=int(np.searchsorted(cumulative, 0.99 * total * (1 - 1e-12)) + 1),
        geometry=geometry,
    )


def merged_deltas(base_dir, adapter_dir):
    """The base's weights, and peft's merged weight minus the base (float64) for every weight
    the merge changed."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64)
    before = {key: value.clone() for key, value in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    deltas = {}
    for key, value in merged.state_dict().items():
        if not key.endswith(".weight") or key not in before:
            continue
        delta = value - before[key]
        if torch.count_nonzero(delta) != 0:
            deltas[key] = delta
    return before, deltas


def run_case(index, name, fixture, arguments, fixtures, out):
    fixture_dir = os.path.join(fixtures, fixture)
    case_dir = os.path.join(out, name)
    adapter_dir = os.path.join(case_dir, "adapter")
    torch.manual_seed(1000 + index)
    model = AutoModelForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32)
    config = LoraConfig(init_lora_weights=False, lora_dropout=0.0, **arguments)
    get_peft_model(model, config).save_pretrained(adapter_dir)

    before, changed = merged_deltas(fixture_dir, adapter_dir)
    deltas, references = {}, {}
    for key, delta in changed.items():
        deltas[key] = delta.contiguous()
        module = key[: -len(".weight")]
        # peft's get_pattern_key, over the patterns in the order the saved config lists them.
        patterns = sorted((arguments.get("rank_pattern") or {}).items())
        rank = next((r for pattern, r in patterns if re.match(rf"(.*\.)?({pattern})$", module)),
                    arguments["r"])
        references[key] = reference(
            out_in(fixture, key, before[key]), out_in(fixture, key, delta), rank
        )
    save_file(deltas, os.path.join(case_dir, "delta.safetensors"))
    with open(os.path.join(case_dir, "reference.json"), "w") as f:
        json.dump(references, f, indent=1, sort_keys=True)
    return dict(name=name, fixture=fixture, kind="lora", modules=len(deltas))


def save_ia3(fixtures, out):
    """Another PEFT method, which hubsweep must refuse by its `peft_type`."""
    model = AutoModelForCausalLM.from_pretrained(os.path.join(fixtures, "gpt_neox_tiny"))
    config = IA3Config(target_modules=["query_key_value", "dense_4h_to_h"],
                       feedforward_modules=["dense_4h_to_h"])
    get_peft_model(model, config).save_pretrained(os.path.join(out, "neox_ia3", "adapter"))
    return dict(name="neox_ia3", fixture="gpt_neox_tiny", kind="ia3", modules=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--smollm2", help="an HF folder of SmolLM2-135M")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = list(CASES)
    if args.smollm2:
        # An absolute path: os.path.join keeps it as it is.
        cases.append(("smollm2", os.path.abspath(args.smollm2),
                      dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                           layers_to_transform=[0, 15, 29])))
    cases = [run_case(i, *case, args.fixtures, args.out) for i, case in enumerate(cases)]
    cases.append(save_ia3(args.fixtures, args.out))
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print(json.dumps(cases))


if __name__ == "__main__":
    main()
