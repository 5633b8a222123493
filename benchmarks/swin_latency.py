"""CPU inference latency: Mini-Swin-T vs timm's Swin-T, and what the MLP transform costs.

    .venv/bin/python benchmarks/swin_latency.py [--threads N] [--reps-b1 20] [--reps-b32 3]

Models (random weights, eval mode, ``torch.inference_mode``, 224 x 224 inputs):

* ``swin_t``: timm ``swin_tiny_patch4_window7_224`` (28.3M parameters);
* ``mini_swin_t``: ``mini_swin_tiny_patch4_window7_224`` (12.0M; head transforms + MLP transform);
* ``mini_swin_t_no_mlpT``: the same without the MLP transform (per-layer LN + depth-wise 7x7 conv).

Runs are interleaved (one run of every model per round), so load that changes over time hits all models
alike; medians are reported (and minima, the least disturbed runs, on a shared machine), for wall-clock
time and for the process's CPU time (with ``--threads 1`` the CPU time hardly depends on other processes
competing for the cores). Ratios are Mini-Swin-T / Swin-T (target <= 1.15) and MLP transform on / off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch

import minivit  # noqa: F401  (registers mini_swin_*)

MODELS = {
    "swin_t": ("swin_tiny_patch4_window7_224", {}),
    "mini_swin_t": ("mini_swin_tiny_patch4_window7_224", {}),
    "mini_swin_t_no_mlpT": ("mini_swin_tiny_patch4_window7_224", {"mlp_transform": False}),
}


def measure(models: dict, batch: int, reps: int, warmup: int) -> tuple[dict, dict]:
    """Wall-clock and process CPU seconds of every run, per model."""
    x = torch.randn(batch, 3, 224, 224)
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(reps):
            for name, model in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                model(x)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return wall, cpu


def report(title: str, times: dict) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"  {title}")
    for name in times:
        print(f"    {name:22s} median {med[name] * 1e3:9.1f} ms   min {best[name] * 1e3:9.1f} ms")
    print(
        f"    Mini-Swin-T / Swin-T          median {med['mini_swin_t'] / med['swin_t']:.3f}x"
        f"   min {best['mini_swin_t'] / best['swin_t']:.3f}x   (target <= 1.15x)"
    )
    print(
        f"    MLP transform cost (on / off) median {med['mini_swin_t'] / med['mini_swin_t_no_mlpT']:.3f}x"
        f"   min {best['mini_swin_t'] / best['mini_swin_t_no_mlpT']:.3f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps-b1", type=int, default=20)
    ap.add_argument("--reps-b32", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: timm.create_model(arch, **kw).eval() for name, (arch, kw) in MODELS.items()}
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads")
    for name, m in models.items():
        print(f"  {name:22s} {sum(p.numel() for p in m.parameters()) / 1e6:6.2f}M params")
    for batch in args.batches:
        reps = args.reps_b1 if batch == 1 else args.reps_b32
        wall, cpu = measure(models, batch, reps, warmup=2 if batch == 1 else 1)
        print(f"\nbatch {batch} ({reps} interleaved runs each)")
        report("wall clock", wall)
        report("process CPU time (robust to other load with --threads 1)", cpu)


if __name__ == "__main__":
    main()
