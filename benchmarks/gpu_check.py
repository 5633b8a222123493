"""GPU paths end to end: `train` and `compress` on a GPU in fp32, bf16 and fp16, cached teacher logits, resume,
and `torchrun` with the NCCL backend; one table at the end.

    python benchmarks/gpu_check.py [--epochs 4] [--workdir /tmp/minivit-gpu] [--json FILE] [--allow-cpu]
                                   [--only precision cache resume ddp]

Every run uses the built-in ``digits`` data (it ships with scikit-learn, so nothing is downloaded) and the same
tiny ViT teacher as ``benchmarks/ddp_check.py``. What it checks, each as a row that passes or fails:

* the teacher trains on the GPU (``train``; the run's ``report.json`` names the device);
* ``compress --share 2`` with ``--mixed-precision no``, ``bf16`` and ``fp16``: the loss stays finite, the saved
  weights are float32 (autocast changes the arithmetic, not the stored model), ``minivit eval`` of the saved
  folder on the CPU agrees with the run's last validation top-1, and the mixed-precision runs land within a few
  points of the fp32 run;
* ``minivit eval --device cuda`` of the fp32 run, against the CPU's top-1;
* ``--cache-teacher-logits`` with bf16 (the cache is computed on the GPU);
* resume: a bf16 run killed after its second epoch, then ``--resume``, against the uninterrupted bf16 run;
* ``torchrun --nproc_per_node 1``: the process group is NCCL on ``cuda:0`` and the DDP run's top-1 is that of
  the single-process run (same seed, same global batch). One GPU cannot hold two NCCL ranks (NCCL refuses two
  ranks on one device); ``benchmarks/ddp_check.py`` covers two processes over gloo.

``--allow-cpu`` runs the same steps without a GPU (mixed precision then falls back to fp32 with a warning, and
the NCCL row is skipped): a dry run of this script, not a GPU check.
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

import torch

TINY = ["img_size=8", "patch_size=2", "depth=4", "embed_dim=32", "num_heads=2", "mlp_ratio=2"]
ROWS: list[dict] = []
PARTS = ["precision", "cache", "resume", "ddp"]


def cli(*args: str, torchrun: bool = False, env: dict | None = None) -> tuple[float, str]:
    """Run ``minivit ARGS`` (under torchrun with one process if asked); seconds and stdout, or exit on failure."""
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"] if torchrun else [sys.executable]
    cmd = [*prefix, "-m", "minivit.cli.main", *args]
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}")
    return elapsed, r.stdout + r.stderr


def kill_after(epochs: int, args: list[str], folder: Path) -> bool:
    """Start ``minivit ARGS``, kill it (SIGKILL) once ``epochs`` epochs are recorded; False if it ended first."""
    proc = subprocess.Popen([sys.executable, "-m", "minivit.cli.main", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = folder / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.05)
    return False


def check(name: str, ok: bool, detail: str) -> None:
    ROWS.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def last(folder: Path) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


def stored_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def evaluate(folder: Path, device: str = "cpu") -> float:
    _, out = cli("eval", "--model", str(folder), "--data", "digits", "--json", "--device", device)
    return json.loads(out[out.index("{") :])["top1"]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}

PROBE = """
import torch.distributed as dist
from minivit.train.engine import processes
state = processes()
print("PROBE", state.backend, dist.get_backend() if dist.is_initialized() else "none", state.device,
      state.num_processes)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="compress epochs per run")
    p.add_argument("--workdir", default="/tmp/minivit-gpu")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--allow-cpu", action="store_true", help="dry run without a GPU")
    p.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="run only these parts (default: all)")
    a = p.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not a.allow_cpu:
        p.error("no GPU is visible to PyTorch; --allow-cpu runs the same steps on the CPU as a dry run")
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import accelerate
    import timm

    where = torch.cuda.get_device_name() if gpu else "CPU (dry run)"
    print(f"{where}; torch {torch.__version__}, timm {timm.__version__}, accelerate {accelerate.__version__}")
    common = ["--data", "digits", "--no-progress", "--batch-size", "64"]

    t, _ = cli("train", "--model", "vit_small_patch16_224", "--model-args", *TINY, "--lr", "3e-3", *common,
               "--epochs", "10", "--output", str(work / "teacher"))  # fmt: skip
    report = json.loads((work / "teacher" / "report.json").read_text())
    device = report["hardware"]["device"]
    check("teacher trains on the GPU" if gpu else "teacher trains (CPU dry run)", device.startswith("cuda") == gpu,
          f"on {device}, val top-1 {report['val']['top1']:.2f} in {t:.1f} s")

    compress = ["compress", "--teacher", str(work / "teacher"), "--share", "2", *common, "--epochs", str(a.epochs)]
    top1 = {}
    for mp in ("no", "bf16", "fp16") if "precision" in a.only else ("bf16",):  # bf16: the others' reference
        out = work / f"mp_{mp}"
        t, log = cli(*compress, "--mixed-precision", mp, "--output", str(out))
        m = last(out)
        top1[mp] = m["val_top1"]
        finite = all(
            v == v and abs(v) != float("inf")
            for line in (out / "metrics.jsonl").read_text().splitlines()
            for k, v in json.loads(line).items()
            if k.startswith("train_") and isinstance(v, float)
        )
        dtypes = stored_dtypes(out)
        ev = evaluate(out)
        ran = json.loads((out / "report.json").read_text())["hardware"]["mixed_precision"]
        if gpu and ran != mp:
            check(f"compress --mixed-precision {mp} ran as asked", False, f"the run reports {ran}")
        check(f"compress --mixed-precision {mp}", finite and dtypes == {"F32"} and abs(ev - m["val_top1"]) <= 1.0,
              f"val top-1 {m['val_top1']:.2f} (eval on CPU {ev:.2f}), stored {sorted(dtypes)}, losses finite "
              f"{finite}, {t:.1f} s")  # fmt: skip
    if gpu and "precision" in a.only:
        on_gpu, on_cpu = evaluate(work / "mp_no", "cuda"), evaluate(work / "mp_no")
        check("eval --device cuda", abs(on_gpu - on_cpu) <= 0.5,
              f"top-1 {on_gpu:.2f} on the GPU, {on_cpu:.2f} on the CPU")
    for mp in ("bf16", "fp16") if "precision" in a.only else ():
        gap = top1[mp] - top1["no"]
        check(f"{mp} top-1 near fp32", abs(gap) <= 3.0, f"{top1[mp]:.2f} vs {top1['no']:.2f} ({gap:+.2f})")

    if "cache" in a.only:
        cached(compress, work)
    if "resume" in a.only:
        resume(compress, work, a.epochs, top1["bf16"])
    if "ddp" in a.only:
        ddp(compress, work, gpu, top1["bf16"])
    failed = [r for r in ROWS if not r["ok"]]
    print(f"\n{len(ROWS) - len(failed)} of {len(ROWS)} checks passed on {where}")
    for r in ROWS:
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['check']:36s} {r['detail']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": where, "rows": ROWS}, indent=1))
    sys.exit(1 if failed else 0)


def cached(compress: list[str], work: Path) -> None:
    out = work / "cached_bf16"
    t, _ = cli(*compress, "--mixed-precision", "bf16", "--cache-teacher-logits", "--distill", "logits",
               "--output", str(out))  # fmt: skip
    cache = out / "checkpoints" / "teacher_logits.pt"
    check("cached teacher logits, bf16", cache.exists() and last(out)["val_top1"] > 0,
          f"val top-1 {last(out)['val_top1']:.2f}, cache {'written' if cache.exists() else 'missing'}, {t:.1f} s")


def resume(compress: list[str], work: Path, epochs: int, straight: float) -> None:
    out = work / "resumed_bf16"
    killed = kill_after(2, [*compress, "--mixed-precision", "bf16", "--output", str(out)], out)
    cli(*compress, "--mixed-precision", "bf16", "--output", str(out), "--resume")
    resumed = last(out)["val_top1"]
    check("killed, then --resume, bf16", killed and last(out)["epoch"] == epochs and abs(resumed - straight) <= 1.0,
          f"killed after epoch 2, resumed to {epochs}: {resumed:.2f} vs straight {straight:.2f}")  # fmt: skip


def ddp(compress: list[str], work: Path, gpu: bool, single: float) -> None:
    if gpu:
        probe = work / "probe.py"
        probe.write_text(PROBE)
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", str(probe)],
                           env=ENV, capture_output=True, text=True)  # fmt: skip
        line = next((s for s in r.stdout.splitlines() if s.startswith("PROBE")), r.stderr[-300:])
        check("torchrun: process group", "nccl" in line and "cuda" in line, line)
        out = work / "ddp_bf16"
        t, log = cli(*compress, "--mixed-precision", "bf16", "--output", str(out), torchrun=True)
        gap = last(out)["val_top1"] - single
        check("torchrun NCCL compress, bf16", abs(gap) <= 1.0,
              f"val top-1 {last(out)['val_top1']:.2f} vs single process {single:.2f} ({gap:+.2f}), {t:.1f} s")
    else:
        check("torchrun NCCL", True, "skipped: no GPU (dry run)")


if __name__ == "__main__":
    main()
