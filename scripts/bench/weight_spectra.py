"""Singular values of SmolLM2-135M-shaped random weights (or, with SOURCE=FILE.safetensors,
every 2-D tensor of that checkpoint): torch.linalg.svdvals beside hubsweep's faer route
(examples/weight_spectra.rs) on the same matrices, same thread count, same run. Called by
scripts/bench/weight-spectra.sh and weight-spectra-smollm2.sh; not a test."""

import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

THREADS = int(os.environ.get("THREADS", os.cpu_count() or 1))
EXAMPLE = sys.argv[1]
LAYERS = int(os.environ.get("LAYERS", 30))
SOURCE = os.environ.get("SOURCE")

# SmolLM2-135M: d=576, 9 heads × 64 (q, o), 3 kv heads × 64 (k, v), MLP 1536, vocab 49152.
SHAPES = {
    "q_proj": (576, 576),
    "k_proj": (192, 576),
    "v_proj": (192, 576),
    "o_proj": (576, 576),
    "gate_proj": (1536, 576),
    "up_proj": (1536, 576),
    "down_proj": (576, 1536),
}


def matrices():
    if SOURCE:
        # The real checkpoint's matrices, as stored (F32 for a converted GGUF).
        return {name: t.float() for name, t in load_file(SOURCE).items() if t.dim() == 2}
    generator = torch.Generator().manual_seed(0)
    out = {"model.embed_tokens.weight": torch.randn(49152, 576, generator=generator)}
    for layer in range(LAYERS):
        for name, (rows, cols) in SHAPES.items():
            out[f"model.layers.{layer}.{name}.weight"] = (
                torch.randn(rows, cols, generator=generator) / cols**0.5
            )
    return out


def time_torch(weights, dtype):
    torch.set_num_threads(THREADS)
    # Warm-up: the first LAPACK call loads and initialises the library.
    torch.linalg.svdvals(torch.randn(64, 64, dtype=dtype))
    per_shape, svals = {}, {}
    start = time.perf_counter()
    for name, weight in weights.items():
        matrix = weight.to(dtype)
        t0 = time.perf_counter()
        svals[name] = torch.linalg.svdvals(matrix)
        shape = "x".join(map(str, weight.shape))
        per_shape[shape] = per_shape.get(shape, 0.0) + time.perf_counter() - t0
    return time.perf_counter() - start, per_shape, svals


def time_torch_batched(weights, dtype):
    """Same-shape matrices stacked into one batched call: torch's best case."""
    torch.set_num_threads(THREADS)
    groups = {}
    for name, weight in weights.items():
        groups.setdefault(tuple(weight.shape), []).append(weight.to(dtype))
    start = time.perf_counter()
    for stack in groups.values():
        torch.linalg.svdvals(torch.stack(stack))
    return time.perf_counter() - start


def main():
    weights = matrices()
    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "weights.safetensors")
        save_file(weights, source)
        torch_runs = {}
        for precision, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            loop, per_shape, svals = time_torch(weights, dtype)
            torch_runs[precision] = (loop, time_torch_batched(weights, dtype), per_shape, svals)
        reference = torch_runs["f64"][3]
        rows = []
        for method, precision in (("svd-f32", "f32"), ("svd-f64", "f64"), ("gram-f64", "f64")):
            for mode in ("matrix", "across"):
                output = os.path.join(scratch, f"faer-{method}-{mode}.safetensors")
                result = subprocess.run(
                    [EXAMPLE, source, output, "--threads", str(THREADS),
                     "--method", method, "--mode", mode],
                    check=True, capture_output=True, text=True,
                )
                rows.append((method, precision, mode, json.loads(result.stdout), output))

        what = SOURCE or f"random, {LAYERS} layers × 7 + embed 49152×576"
        print(f"threads: {THREADS}, matrices: {len(weights)} "
              f"({what}), torch {torch.__version__}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}, "
              f"load average now: {os.getloadavg()[0]:.1f}")
        print(f"{'faer method':11} {'mode':6} {'faer s':>8} {'torch dtype':>11} "
              f"{'torch loop s':>12} {'torch batched s':>15} {'best torch/faer':>15} "
              f"{'max |Δσ|/σ₁ vs torch f64':>26}")
        for method, precision, mode, report, output in rows:
            loop, batched, _, _ = torch_runs[precision]
            ours = load_file(output)
            worst = max(
                (ours[name] - sigma).abs().max().item() / sigma[0].item()
                for name, sigma in reference.items()
            )
            ratio = min(loop, batched) / report["seconds"]
            print(f"{method:11} {mode:6} {report['seconds']:8.3f} {precision:>11} "
                  f"{loop:12.3f} {batched:15.3f} {ratio:14.2f}× {worst:26.2e}")
        run_seconds = os.environ.get("HUBSWEEP_RUN_SECONDS")
        if run_seconds:
            run_seconds = float(run_seconds)
            loop, batched, _, _ = torch_runs["f64"]
            print(f"hubsweep run (weights-only sweep, end to end: load, svd-f64, upload, "
                  f"ledger) {run_seconds:.3f} s; torch f64 loop {loop:.3f} s, batched "
                  f"{batched:.3f} s; best torch/hubsweep run {min(loop, batched) / run_seconds:.2f}×")
        print("per shape, seconds: faer (matrix mode) / torch loop, same dtype")
        for method, precision, mode, report, _ in rows:
            if mode != "matrix":
                continue
            torch_shapes = torch_runs[precision][2]
            parts = [f"{shape} {report['seconds_per_shape'][shape]:.3f}/{seconds:.3f}"
                     for shape, seconds in torch_shapes.items()]
            print(f"  {method}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
