"""Inference latency of multiplexed students vs their teachers: eager PyTorch, torch.compile and ONNX Runtime.

Pairs (random weights; latency does not depend on their values):

* ``deit_s/2``: ``minivit.multiplex(deit_small_patch16_224, share=2)`` (the paper's layout, head mixing) vs timm's
  DeiT-S (224 px); ``deit_s/2-recipe``: ``compress --share 2``'s default student of it (planned on its random
  weights; not in the default set);
* ``small/2``, ``small/4``: the ``compress`` defaults at share 2 and 4 for the frontier benchmark's teacher
  (12 blocks, width 64, 4 heads, MLP ratio 2, patch 7 on 28 x 28 grey images: 16 tokens + class token):
  relaxed sharing as the recipe picked it there (one shared block, delta rank 17 / 6, no head mixing), run as
  ``minivit eval`` runs it (deltas folded, :func:`minivit.fold_deltas`; in ONNX both ways, see below), vs its
  teacher;
* ``small/2-paper``, ``small/4-paper``: the paper's MiniViT at share 2 and 4 on that teacher (head mixing, no
  deltas; not in the default set);
* ``mini_swin_t``: ``mini_swin_tiny_patch4_window7_224`` vs timm's Swin-T (224 px);
* ``mini_deit_s``: ``mini_deit_small_patch16_224`` (iRPE, no class token) vs DeiT-S (not in the default set).

Both models of a pair run in alternation, in eval mode under ``torch.inference_mode`` (so machine noise hits
both alike); the reported ratio is the median over rounds of student time / teacher time, with each model's
median time. Batches 1 and 32, 1 and 2 threads by default. With ``--onnx`` both models are exported once
(``minivit.export.export_onnx``, dynamic batch) and timed the same way in onnxruntime (a student with deltas
twice: as ``minivit export`` writes it, the merge of the stored factors in the graph, which onnxruntime folds at
load, and ``ort-folded`` as ``export --fold-deltas`` writes it, full weights in the file);
with ``--compile`` both
are compiled by ``torch.compile`` (inductor, one graph per batch size; what ``minivit eval --compile`` runs) and
timed the same way. Target: ratio <= 1.10.
On a machine shared with other work, trust the ratios (paired), not the absolute times, and prefer
``--clock cpu --threads 1`` (the process's CPU time hardly depends on other processes).
``--device cuda`` times the PyTorch rows on the GPU (each call synchronised; ``--amp bf16`` or ``fp16`` runs both
models under autocast); ONNX rows stay on the CPU.

    python benchmarks/latency.py [--quick] [--cases deit_s/2 small/2 small/4 mini_swin_t] [--onnx]
                                 [--compile] [--no-eager] [--batches 1 32] [--threads 1 2] [--reps 20]
                                 [--clock wall|cpu] [--device cpu|cuda] [--amp no|bf16|fp16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import timm
import torch

import minivit
from minivit.budget import RECIPE, recipe

TARGET = 1.10
SMALL = dict(img_size=28, patch_size=7, in_chans=1, depth=12, embed_dim=64, num_heads=4, mlp_ratio=2.0,
             num_classes=10)
RECIPE_PICKS = {2: 17, 4: 6}
"""The delta rank ``compress --share K`` picked for the trained frontier teacher (one shared block, init mean;
``benchmarks/results/frontier.json``). Planning on random weights could pick another layout."""


def _small(share: int, paper: bool = False):
    teacher = minivit.create_model("vit_small_patch16_224", **SMALL)
    if paper:
        return teacher, minivit.multiplex(teacher, share=share), (1, 28, 28)
    spec = minivit.MultiplexSpec(share=12, delta_rank=RECIPE_PICKS[share], init="mean", **RECIPE)
    return teacher, minivit.multiplex(teacher, spec), (1, 28, 28)


def _deit_s(use_recipe: bool = False):
    teacher = timm.create_model("deit_small_patch16_224")
    spec = recipe(teacher, 2).spec if use_recipe else minivit.MultiplexSpec(share=2)
    return teacher, minivit.multiplex(teacher, spec), (3, 224, 224)


CASES = {
    "deit_s/2": _deit_s,
    "deit_s/2-recipe": lambda: _deit_s(use_recipe=True),
    "small/2": lambda: _small(2),
    "small/4": lambda: _small(4),
    "small/2-paper": lambda: _small(2, paper=True),
    "small/4-paper": lambda: _small(4, paper=True),
    "mini_swin_t": lambda: (
        timm.create_model("swin_tiny_patch4_window7_224"),
        timm.create_model("mini_swin_tiny_patch4_window7_224"),
        (3, 224, 224),
    ),
    "mini_deit_s": lambda: (
        timm.create_model("deit_small_patch16_224"),
        timm.create_model("mini_deit_small_patch16_224"),
        (3, 224, 224),
    ),
}
DEFAULT_CASES = ["deit_s/2", "small/2", "small/4", "mini_swin_t"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = {"now": time.perf_counter}
AMP = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _call(model, x, amp=None):
    """One forward pass; on a GPU it waits for the kernels, so the clock sees the work and not only its launch."""
    if x.device.type != "cuda":
        return model(x)
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        out = model(x)
    torch.cuda.synchronize()
    return out


def paired(run_a, run_b, reps: int, warmup: int = 2) -> tuple[float, float, float]:
    """Median seconds of ``run_a`` and ``run_b`` run alternately, and the median of the per-round ratio b / a."""
    clock = CLOCK["now"]
    for _ in range(warmup):
        run_a(), run_b()
    ta, tb = [], []
    for r in range(reps):
        order = ((run_a, ta), (run_b, tb)) if r % 2 == 0 else ((run_b, tb), (run_a, ta))
        for run, times in order:
            t0 = clock()
            run()
            times.append(clock() - t0)
    return statistics.median(ta), statistics.median(tb), statistics.median(b / a for a, b in zip(ta, tb))


def _reps(reps: int, batch: int) -> int:
    return reps if batch <= 4 else max(3, reps // 4)


def torch_rows(teacher, student, shape, batches, threads, reps, engine="eager", device="cpu", amp=None):
    rows = []
    teacher, student = teacher.eval().to(device), minivit.fold_deltas(student.eval()).to(device)  # as `eval` runs it
    if engine == "compiled":
        torch._dynamo.reset()  # fresh caches: compiled code of earlier cases must not count toward the recompile limit
        teacher, student = (torch.compile(m, dynamic=False) for m in (teacher, student))
    for n in threads:
        torch.set_num_threads(n)
        for bs in batches:
            x = torch.randn(bs, *shape, device=device)
            with torch.inference_mode():
                run_a, run_b = partial(_call, teacher, x, amp), partial(_call, student, x, amp)
                ta, tb, ratio = paired(run_a, run_b, _reps(reps, bs))
            rows.append((engine, n, bs, ta, tb, ratio))
    return rows


def onnx_rows(teacher, student, shape, batches, threads, reps):
    import onnxruntime as ort

    from minivit.export import export_onnx

    rows = []
    folded = minivit.fold_deltas(student)
    students = {"onnxruntime": student} | ({"ort-folded": folded} if folded is not student else {})
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, model in (("teacher", teacher), *students.items()):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, path, input_size=(1, *shape), dynamic_batch=True, verify=False)
            files[name] = str(path)
        for n in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = n, 1
            # idle sessions must not spin: with two sessions alternating on a 2-core machine, the waiting one's
            # spinning worker would take a core from the one being timed
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions = {k: ort.InferenceSession(f, opts, providers=["CPUExecutionProvider"]) for k, f in files.items()}
            sa = sessions["teacher"]
            for engine in students:
                sb = sessions[engine]
                for bs in batches:
                    x = torch.randn(bs, *shape).numpy()
                    run_a = partial(sa.run, None, {sa.get_inputs()[0].name: x})
                    run_b = partial(sb.run, None, {sb.get_inputs()[0].name: x})
                    ta, tb, ratio = paired(run_a, run_b, _reps(reps, bs))
                    rows.append((engine, n, bs, ta, tb, ratio))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small/2 only, batches 1 4, 1 thread, 5 reps")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=None)
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, nargs="+", default=None)
    p.add_argument("--reps", type=int, default=None, help="rounds at batch <= 4 (a quarter of them above)")
    p.add_argument("--onnx", action="store_true", help="also time both models exported to ONNX in onnxruntime")
    p.add_argument("--compile", action="store_true", help="also time both models compiled by torch.compile")
    p.add_argument("--no-eager", action="store_true", help="skip the eager rows (with --onnx or --compile)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="cpu: the process's CPU time, far less disturbed by other load with 1 thread")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the PyTorch rows run")
    p.add_argument("--amp", choices=list(AMP), default="no", help="autocast dtype of the PyTorch rows on a GPU")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU is visible to PyTorch (torch.cuda.is_available() is False)")
    if a.amp != "no" and a.device != "cuda":
        p.error("--amp needs --device cuda (autocast on the CPU is not what this benchmark measures)")
    CLOCK["now"] = CLOCKS[a.clock]
    quick = dict(cases=["small/2"], batches=[1, 4], threads=[1], reps=5)
    full = dict(cases=DEFAULT_CASES, batches=[1, 32], threads=[1, 2], reps=20)
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if a.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, timm {timm.__version__}, {where}, amp {a.amp}, {a.clock} clock; "
          "ratio = median over rounds of student / teacher")
    header = ("case", "engine", "thr", "batch", "teacher ms", "student ms", "ratio")
    print("{:15s} {:11s} {:>3s} {:>5s} {:>10s} {:>10s} {:>7s}".format(*header))
    for case in a.cases:
        teacher, student, shape = CASES[case]()
        where = dict(device=a.device, amp=AMP[a.amp])
        rows = [] if a.no_eager else torch_rows(teacher, student, shape, a.batches, a.threads, a.reps, **where)
        if a.compile:
            rows += torch_rows(teacher, student, shape, a.batches, a.threads, a.reps, engine="compiled", **where)
        if a.onnx:
            rows += onnx_rows(teacher, student, shape, a.batches, a.threads, a.reps)
        for engine, n, bs, ta, tb, ratio in rows:
            flag = "" if ratio <= TARGET else f"  (> {TARGET})"
            print(f"{case:15s} {engine:11s} {n:3d} {bs:5d} {ta * 1e3:10.2f} {tb * 1e3:10.2f} {ratio:6.2f}x{flag}",
                  flush=True)


if __name__ == "__main__":
    main()
