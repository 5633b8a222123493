"""CPU inference latency and size: Mini-DeiT (share 2, transforms + iRPE) vs timm DeiT.

Measures both models of a pair in alternation (so machine noise hits both alike) and prints the
median latency of each and their ratio, at batch 1 and 32, 224 px, under ``torch.inference_mode``.
Also prints the state-dict size ratio. Random weights: latency does not depend on their values.

    python benchmarks/latency.py [--reps 15] [--batches 1 32] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import timm
import torch

import minivit  # noqa: F401  (registers mini_deit_*)

PAIRS = [
    ("deit_tiny_patch16_224", "mini_deit_tiny_patch16_224"),
    ("deit_small_patch16_224", "mini_deit_small_patch16_224"),
]


def state_dict_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def paired_medians(a, b, x, reps: int) -> tuple[float, float]:
    with torch.inference_mode():
        for _ in range(2):
            a(x), b(x)
        ta, tb = [], []
        for _ in range(reps):
            for model, times in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}")
    print(f"{'pair':44s} {'batch':>5s} {'timm ms':>9s} {'mini ms':>9s} {'ratio':>6s}")
    for base, mini in PAIRS:
        a = timm.create_model(base).eval()
        b = timm.create_model(mini).eval()
        for bs in args.batches:
            reps = args.reps if bs == 1 else max(3, args.reps // 3)
            x = torch.randn(bs, 3, 224, 224)
            ta, tb = paired_medians(a, b, x, reps)
            print(f"{base + ' vs ' + mini:44s} {bs:5d} {ta * 1e3:9.1f} {tb * 1e3:9.1f} {tb / ta:6.2f}x")
        sa, sb = state_dict_bytes(a), state_dict_bytes(b)
        print(f"{'  state dict MB':44s} {'':5s} {sa / 2**20:9.1f} {sb / 2**20:9.1f} {sb / sa:6.2f}x")


if __name__ == "__main__":
    main()
