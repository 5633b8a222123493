"""Training throughput of `compress` vs plain training of the same student (same device, same batch).

    python benchmarks/compress_throughput.py [--steps 30] [--batch-size 128] [--threads 2] [--student paper]
                                             [--device cpu|cuda] [--mixed-precision no|bf16|fp16]

One optimizer step (forward, backward, AdamW) of a share-2 student (``compress --share 2``'s default recipe,
``minivit.budget.recipe``; ``--student paper``: the paper's MiniViT at share 2), timed for:

* plain: cross-entropy on labels (what `minivit train` does for the student architecture);
* compress: teacher forward + student + soft CE + attention relation + hidden relation (the default);
* compress, logits only, live teacher;
* compress, cached teacher logits (`--cache-teacher-logits`: the teacher never runs);
* for reference (no optimizer step): the teacher's forward alone, under ``torch.no_grad`` and under
  ``torch.inference_mode``, with the feature hooks of the default objective attached.

The variants run in interleaved rounds so that a busy machine slows them alike; the medians over
steps are compared. Targets: compress <= 1.6x and cached logits <= 1.15x the plain step time.
``--clock cpu`` times the process's CPU time instead of wall-clock time (far less disturbed by other load on
a shared machine, with ``--threads 1``).
``--device cuda`` runs every variant on the GPU (each step synchronised before the clock is read);
``--mixed-precision`` then runs forward and loss under autocast, as ``compress --mixed-precision`` does (fp16 with
a gradient scaler).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import minivit
from minivit.budget import recipe
from minivit.distill.objective import DistillationObjective, SupervisedObjective
from minivit.measure import count_parameters

PRESETS = {  # the demo's Fashion-MNIST model, and a DeiT-Tiny-like model at 32 px
    "demo": dict(img_size=28, patch_size=7, in_chans=1, depth=4, embed_dim=64, num_heads=4, mlp_ratio=2.0),
    "tiny32": dict(img_size=32, patch_size=4, in_chans=3, depth=6, embed_dim=96, num_heads=3),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default="demo")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant (after 3 warm-up steps)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--student", choices=("recipe", "paper"), default="recipe")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="autocast (GPU only)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU is visible to PyTorch (torch.cuda.is_available() is False)")
    if a.mixed_precision != "no" and a.device != "cuda":
        p.error("--mixed-precision needs --device cuda")
    device = torch.device(a.device)
    amp = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.mixed_precision]
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def autocast():
        return torch.autocast("cuda", dtype=amp, enabled=amp is not None) if cuda else contextlib.nullcontext()

    base_clock = time.perf_counter if a.clock == "wall" else time.process_time

    def clock() -> float:
        sync()
        return base_clock()

    if a.threads:
        torch.set_num_threads(a.threads)
    args = PRESETS[a.preset]
    torch.manual_seed(0)
    teacher = minivit.create_model("vit_small_patch16_224", num_classes=10, **args).eval()
    spec = recipe(teacher, 2).spec if a.student == "recipe" else minivit.MultiplexSpec(share=2)
    student = minivit.multiplex(teacher, spec)
    teacher, student = teacher.to(device), student.to(device)
    x = torch.randn(a.batch_size, args["in_chans"], args["img_size"], args["img_size"], device=device)
    y = torch.randint(0, 10, (a.batch_size,), device=device)
    with torch.no_grad(), autocast():
        cached = teacher(x)

    variants = {  # name: (objective factory, batch); objectives are rebuilt per step so only one holds hooks
        "plain": (lambda: SupervisedObjective(student), (x, y)),
        "compress": (lambda: DistillationObjective(student, teacher), (x, y)),
        "compress 2 pairs": (lambda: DistillationObjective(student, teacher, num_pairs=2), (x, y)),
        "logits only": (lambda: DistillationObjective(student, teacher, beta=0, gamma=0), (x, y)),
        "cached logits": (lambda: DistillationObjective(student, teacher, beta=0, gamma=0), (x, y, cached)),
    }
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    probe = DistillationObjective(student, teacher)
    pairs = probe.pairs
    probe.remove_hooks()

    def teacher_forward(mode):
        def run() -> float:
            obj = DistillationObjective(student, teacher)  # its hooks capture the teacher's features
            start = clock()
            with mode(), autocast():
                obj.teacher(x)
            elapsed = clock() - start
            obj.remove_hooks()
            return elapsed

        return run

    forwards = {"teacher no_grad": teacher_forward(torch.no_grad)}
    forwards["teacher inf_mode"] = teacher_forward(torch.inference_mode)
    times = {name: [] for name in [*variants, *forwards]}
    for step in range(a.steps + 3):
        for name, (make, batch) in variants.items():
            obj = make()
            start = clock()
            with autocast():
                loss = obj(batch)["loss"]
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if step >= 3:
                times[name].append(clock() - start)
            if hasattr(obj, "remove_hooks"):
                obj.remove_hooks()
        for name, run in forwards.items():
            elapsed = run()
            if step >= 3:
                times[name].append(elapsed)

    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"preset {a.preset} {args}, batch {a.batch_size}, {where}, mixed precision {a.mixed_precision}, "
          f"{a.steps} steps, {a.clock} clock")
    print(f"student {count_parameters(student):,} params ({a.student} at share 2: {spec}), layer pairs {pairs}")
    base = statistics.median(times["plain"])
    targets = {"compress": 1.6, "cached logits": 1.15}
    for name, ts in times.items():
        med = statistics.median(ts)
        target = f"  (target <= {targets[name]}x)" if name in targets else ""
        print(
            f"{name:16s} {1000 * med:8.1f} ms/step  {a.batch_size / med:7.0f} img/s  {med / base:5.2f}x plain{target}"
        )


if __name__ == "__main__":
    main()
