"""GPU parity check: every hook of every tiny fixture, hubsweep on each device vs the
transformers reference (tests/fixtures/*/reference.safetensors, computed by transformers on the
CPU in f32) and cuda vs cpu; reduced dtypes on each device; transformers itself on the device.

Not a test (CI has no GPU): scripts/gpu/device.sh runs it on a lent GPU machine, and it runs on
the CPU alone anywhere (`--devices cpu`) so the script itself can be checked without one.

    python parity.py BIN FIXTURES_DIR OUT_DIR [--devices cpu,cuda] [--torch-device cuda]

Writes OUT_DIR/parity.json (every hook's numbers) and prints a per-fixture summary. Exit 1 when
any comparison is over its tolerance.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from safetensors.torch import load_file as _load_torch


def load_file(path):
    # Through torch: numpy has no bfloat16.
    return {k: v.float().numpy() for k, v in _load_torch(path).items()}

FIXTURES = ["gpt_neox_tiny", "gpt_neox_tiny_seq", "llama_tiny", "llama_tiny_llama3"]
# The CPU tests' tolerance (tests/it/model/fixtures.rs): |a - r| <= ATOL + RTOL·|r| elementwise.
ATOL = RTOL = 1e-4
# Reduced dtypes, relative to each tensor's max |r| (tests/it/model/fixtures.rs).
REDUCED = {"bf16": 5e-2, "f16": 1e-2}
REDUCED_HOOKS = ["blocks.2.hook_resid_post", "blocks.1.attn.hook_pattern", "logits"]


def compare(ours, ref):
    """max |a - r|, that over max |r|, and the largest elementwise excess over ATOL + RTOL·|r|
    (<= 0 passes). Equal values (masked -inf scores included) count as equal."""
    a = ours.astype(np.float64)
    r = ref.astype(np.float64)
    assert a.shape == r.shape, (a.shape, r.shape)
    same = a == r
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - r))
    finite_ref = np.where(np.isfinite(r), np.abs(r), 0.0)
    scale = float(finite_ref.max()) if finite_ref.size else 0.0
    excess = np.where(same, -np.inf, diff - (ATOL + RTOL * finite_ref))
    max_abs = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(max_abs):
        max_abs = float("inf")
    return {
        "max_abs": max_abs,
        "max_rel_to_max": max_abs / scale if scale > 0 else max_abs,
        "excess": float(excess.max()) if excess.size else float("-inf"),
    }


def capture(bin_path, fixture_dir, ids_path, hooks, out_path, device, dtype):
    started = time.perf_counter()
    proc = subprocess.run(
        [bin_path, "capture", "--model", fixture_dir, "--ids", ids_path,
         "--hooks", ",".join(hooks), "--out", out_path, "--device", device, "--dtype", dtype],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"capture {fixture_dir} {device} {dtype} exited {proc.returncode}:\n{proc.stderr}")
    return load_file(out_path), time.perf_counter() - started


def torch_side(fixture_dir, ids, device):
    """transformers on `device` (f32, eager; TF32 off, PyTorch's default): hidden states and
    logits as numpy."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(
        fixture_dir, dtype=torch.float32, attn_implementation="eager").to(device).eval()
    with torch.inference_mode():
        out = model(torch.tensor(ids, device=device), output_hidden_states=True)
    result = {f"hf.hidden_states.{i}": h.float().cpu().numpy() for i, h in enumerate(out.hidden_states)}
    result["logits"] = out.logits.float().cpu().numpy()
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bin")
    p.add_argument("fixtures")
    p.add_argument("out")
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--torch-device", default=None, help="also run transformers on this device")
    args = p.parse_args()
    devices = args.devices.split(",")
    os.makedirs(args.out, exist_ok=True)
    results, failures = {}, []
    for name in FIXTURES:
        fixture_dir = os.path.join(args.fixtures, name)
        refs = load_file(os.path.join(fixture_dir, "reference.safetensors"))
        hooks = sorted(k for k in refs if not (k.startswith("hf.") or k.startswith("svals") or k == "input_ids"))
        ids = refs["input_ids"].astype(np.int64).tolist()
        ids_path = os.path.join(args.out, f"{name}.ids.json")
        json.dump(ids, open(ids_path, "w"))
        entry = {"hooks": len(hooks), "f32": {}, "reduced": {}, "seconds": {}}
        captured = {}
        for device in devices:
            acts, secs = capture(args.bin, fixture_dir, ids_path, hooks,
                                 os.path.join(args.out, f"{name}.{device}.safetensors"), device, "f32")
            captured[device] = acts
            entry["seconds"][device] = secs
            per_hook = {h: compare(acts[h], refs[h]) for h in hooks}
            entry["f32"][f"{device}_vs_reference"] = per_hook
            bad = [h for h, c in per_hook.items() if c["excess"] > 0]
            failures += [f"{name} {device} f32 vs reference: {h} over by {per_hook[h]['excess']:.3e}" for h in bad]
        if "cpu" in captured and len(captured) > 1:
            for device in devices:
                if device == "cpu":
                    continue
                per_hook = {h: compare(captured[device][h], captured["cpu"][h]) for h in hooks}
                entry["f32"][f"{device}_vs_cpu"] = per_hook
        for device in devices:
            for dtype, tol in REDUCED.items():
                path = os.path.join(args.out, f"{name}.{device}.{dtype}.safetensors")
                acts, _ = capture(args.bin, fixture_dir, ids_path, REDUCED_HOOKS, path, device, dtype)
                rows = {}
                for h in REDUCED_HOOKS:
                    c = compare(acts[h], refs[h])
                    c["tolerance_rel_to_max"] = tol
                    rows[h] = c
                    if c["max_rel_to_max"] > tol:
                        failures.append(f"{name} {device} {dtype}: {h} rel {c['max_rel_to_max']:.3e} > {tol}")
                entry["reduced"][f"{device}.{dtype}"] = rows
        if args.torch_device:
            theirs = torch_side(fixture_dir, ids, args.torch_device)
            n = sum(1 for k in refs if k.startswith("hf.hidden_states."))
            mapping = {f"hf.hidden_states.{i}": f"blocks.{i}.hook_resid_pre" for i in range(n - 1)}
            mapping[f"hf.hidden_states.{n - 1}"] = "ln_final.hook_out"
            mapping["logits"] = "logits"
            rows = {}
            for key, hook in mapping.items():
                row = {"torch_vs_reference": compare(theirs[key], refs[key])}
                for device in devices:
                    row[f"hubsweep_{device}_vs_torch"] = compare(captured[device][hook], theirs[key])
                rows[key] = row
            entry[f"transformers_{args.torch_device}"] = rows
        results[name] = entry

    json.dump({"atol": ATOL, "rtol": RTOL, "fixtures": results, "failures": failures},
              open(os.path.join(args.out, "parity.json"), "w"), indent=1)
    # Summary: the worst hook per comparison.
    print(f"{'fixture':<20} {'comparison':<22} {'hooks':>5} {'max abs':>10} {'max abs/max|r|':>14} {'worst hook'}")
    for name, entry in results.items():
        for label, per_hook in entry["f32"].items():
            worst = max(per_hook, key=lambda h: per_hook[h]["max_abs"])
            print(f"{name:<20} {label:<22} {len(per_hook):>5} {per_hook[worst]['max_abs']:>10.2e} "
                  f"{max(c['max_rel_to_max'] for c in per_hook.values()):>14.2e} {worst}")
        for label, rows in entry["reduced"].items():
            print(f"{name:<20} {label + ' vs reference':<22} {len(rows):>5} "
                  f"{max(c['max_abs'] for c in rows.values()):>10.2e} "
                  f"{max(c['max_rel_to_max'] for c in rows.values()):>14.2e} (tol {REDUCED[label.split('.')[1]]:g})")
        for key in [k for k in entry if k.startswith("transformers_")]:
            rows = entry[key]
            for comp in next(iter(rows.values())):
                print(f"{name:<20} {(key + ' ' + comp)[:40]:<22} {len(rows):>5} "
                      f"{max(r[comp]['max_abs'] for r in rows.values()):>10.2e} "
                      f"{max(r[comp]['max_rel_to_max'] for r in rows.values()):>14.2e}")
    print(f"capture seconds: " + ", ".join(
        f"{n} " + "/".join(f"{d} {s:.2f}" for d, s in e["seconds"].items()) for n, e in results.items()))
    if failures:
        print("FAILURES:\n" + "\n".join(failures))
        sys.exit(1)
    print("parity: all within tolerance")


if __name__ == "__main__":
    main()
