#!/usr/bin/env python3
"""The adapters of the worked LoRA study (docs/adapters.md, sweeps/lora-study.yaml): two LoRA
runs fine-tuned with the real `peft` library on the tiny GPT-NeoX that ships with hubsweep
(tests/fixtures/gpt_neox_tiny, `local://hubsweep/tiny-gpt-neox`), each saved at three training
steps the way trainers save them (`checkpoint-N/` folders).

    lora_study.py --base tests/fixtures/gpt_neox_tiny --out DIR [--reference]

DIR/lora-a/   r=4, lora_alpha=8 on `query_key_value` and `dense` (attention)
DIR/lora-b/   r=8, lora_alpha=8, rsLoRA, on `query_key_value`
each with checkpoint-10/, checkpoint-20/, checkpoint-30/ (adapter_config.json +
adapter_model.safetensors). Training: next-token loss on a fixed batch of seeded token ids,
Adam at 1e-2, one thread, so a machine reproduces its own run exactly.

With --reference, each checkpoint folder also gets reference.json beside the adapter (not an
adapter file; hubsweep reads only the two): peft's merged weight minus the base, in float64,
reduced to the figures of docs/analysis.md by NumPy (peft_peer.reference), per changed weight.
"""

import argparse
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peft_peer import merged_deltas, out_in, reference  # noqa: E402

RUNS = [
    ("a", dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense"])),
    ("b", dict(r=8, lora_alpha=8, use_rslora=True, target_modules=["query_key_value"])),
]
STEPS = (10, 20, 30)


def train(base, name, arguments, out, with_reference):
    torch.manual_seed(7 if name == "a" else 11)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    vocab = model.config.vocab_size
    peft_model = get_peft_model(model, LoraConfig(lora_dropout=0.0, **arguments))
    generator = torch.Generator().manual_seed(3)
    batch = torch.randint(0, vocab, (8, 24), generator=generator)
    optimizer = torch.optim.Adam(
        [p for p in peft_model.parameters() if p.requires_grad], lr=1e-2
    )
    peft_model.train()
    for step in range(1, max(STEPS) + 1):
        loss = peft_model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in STEPS:
            folder = os.path.join(out, f"lora-{name}", f"checkpoint-{step}")
            peft_model.save_pretrained(folder)
            if with_reference:
                write_reference(base, folder, arguments["r"])
            print(f"lora-{name} step {step}: loss {loss.item():.4f}")


def write_reference(base, folder, rank):
    before, deltas = merged_deltas(base, folder)
    references = {
        key: reference(out_in(base, key, before[key]), out_in(base, key, delta), rank)
        for key, delta in deltas.items()
    }
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(references, f, indent=1, sort_keys=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the base model's HF folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, arguments in RUNS:
        train(args.base, name, arguments, args.out, args.reference)


if __name__ == "__main__":
    main()
