"""DDP check: `minivit compress` on 2 CPU processes (gloo) vs 1 process at the same global batch.

    python benchmarks/ddp_check.py [--epochs 3] [--workdir /tmp/minivit-ddp]

Trains a tiny teacher on digits, then compresses it (share 2, logits + attention + hidden terms)
once with 1 process and batch 64 and once with `torchrun --nproc_per_node 2` and batch 32 per
process. Both see the same global batches (minivit's sampler shards each global batch across
processes), so the accuracies agree within noise (the drop-path/augmentation streams differ per
process). Shared blocks run k times per step; DDP needs no `find_unused_parameters` for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TINY = ["img_size=8", "patch_size=2", "depth=4", "embed_dim=32", "num_heads=2", "mlp_ratio=2"]


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return time.perf_counter() - start, r.stdout


def final(folder: Path) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/minivit-ddp")
    a = p.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "minivit.cli.main"]
    common = ["--data", "digits", "--no-progress", "--epochs", str(a.epochs)]
    run([*cli, "train", "--model", "vit_small_patch16_224", "--model-args", *TINY, "--lr", "3e-3",
         "--batch-size", "64", *common[:3], "--epochs", "8", "--output", str(work / "teacher")], env)  # fmt: skip
    compress = ["compress", "--teacher", str(work / "teacher"), "--share", "2", *common]
    t1, _ = run([*cli, *compress, "--batch-size", "64", "--output", str(work / "one")], env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "minivit.cli.main"]
    t2, out2 = run([*torchrun, *compress, "--batch-size", "32", "--output", str(work / "two")], env)
    one, two = final(work / "one"), final(work / "two")
    teacher = json.loads((work / "teacher" / "report.json").read_text())["val"]["top1"]
    print(f"teacher val top-1 {teacher:.2f}")
    print(f"1 process  x batch 64: val top-1 {one['val_top1']:.2f}  top-5 {one['val_top5']:.2f}  ({t1:.1f} s)")
    print(f"2 processes x batch 32: val top-1 {two['val_top1']:.2f}  top-5 {two['val_top5']:.2f}  ({t2:.1f} s)")
    print(f"difference: {two['val_top1'] - one['val_top1']:+.2f} points")
    print("find_unused_parameters needed:", "yes" if "get no gradient" in out2 else "no")


if __name__ == "__main__":
    main()
