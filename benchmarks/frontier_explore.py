"""Side studies for the accuracy-per-byte benchmark: chosen students of its teacher, trained several at a time.

``benchmarks/frontier.py`` trains its rows one after another, which suits a 2-core CPU. This script trains
students you name with the same code (its ``student_schedule``, the ``compress`` recipe's distillation
``RECIPE_DISTILL``, and ``measure``: top-1 as ``minivit eval`` runs it, fp32 and int8, bytes of the saved files)
in ``--jobs`` processes at once, which suits a GPU, where such small models leave the card mostly idle. An
earlier form of it (the same training and measuring code, 8 processes) trained the students of the bias-offset
and 8-epoch tables of ``benchmarks/results/frontier.md`` on one H200; their records, in this script's format,
are ``benchmarks/results/frontier_explore_h200.jsonl``.

A student is ``relaxed:R`` (one shared block for all layers, deltas of rank R with bias offsets, init mean, no
head mixing: the recipe's layout), ``relaxed:R:nobias`` (the same without bias offsets) or ``naive:K`` (plain
sharing, K layers per block); ``@E`` trains it E epochs instead of ``--epochs``:

    python benchmarks/frontier_explore.py --teacher runs/frontier_teacher2 \\
        --students relaxed:3 relaxed:3:nobias relaxed:5:nobias@8 naive:6@8 --seeds 0 1 --jobs 8 --out runs/explore.jsonl

Each finished student is appended to ``--out`` as one JSON line (and printed); a table of means follows.
``--quick`` is a smoke run (500 images, 1 epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def parse_student(text: str) -> tuple[str, dict, int | None]:
    """``relaxed:R[:nobias][@E]`` or ``naive:K[@E]`` -> (name, spec fields, epochs or None)."""
    body, _, epochs = text.partition("@")
    parts = body.split(":")
    ok = (parts[0] == "relaxed" and len(parts) in (2, 3) and parts[1].isdigit()
          and (len(parts) == 2 or parts[2] == "nobias")) or (parts[0] == "naive" and len(parts) == 2
                                                              and parts[1].isdigit())
    if not ok or (epochs and not epochs.isdigit()):
        raise SystemExit(f"bad student {text!r}: use relaxed:R, relaxed:R:nobias or naive:K, optionally @EPOCHS")
    if parts[0] == "naive":
        spec = dict(share=int(parts[1]), transforms=False, separate_norms=False)
    else:
        spec = dict(share="all", transforms=False, separate_norms=True, init="mean", delta_rank=int(parts[1]),
                    delta_bias=len(parts) == 2)
    return body, spec, int(epochs) if epochs else None


def train_one(job: tuple) -> dict:
    """Train and measure one student (in its own process)."""
    name, spec, seed, epochs, a = job
    import torch

    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    import frontier as fr

    import minivit
    from minivit.export import quantize_dynamic_int8

    teacher = minivit.from_pretrained(a.teacher).eval()
    limit = 500 if a.quick else None
    train = fr.build_dataset(a.data, "train", 28, 1, limit=limit)
    val = fr.build_dataset(a.data, "val", 28, 1, limit=limit)
    settings = fr.arguments(["--teacher", a.teacher, "--data", a.data])
    torch.manual_seed(seed)
    student = minivit.multiplex(teacher, minivit.MultiplexSpec(**spec))
    seconds = fr.distil(student, teacher, seed, epochs, train, val, None, settings,
                        Path(a.work) / f"{name}_e{epochs}_s{seed}", None)
    student = student.cpu()
    fp32, int8 = fr.measure(student, val, settings), fr.measure(quantize_dynamic_int8(student), val, settings)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    record = dict(name=name, seed=seed, epochs=epochs, top1=fp32["top1"], bytes=fp32["bytes"],
                  top1_int8=int8["top1"], bytes_int8=int8["bytes"], train_s=round(seconds, 1), device=device)
    with open(a.out, "a") as f:  # one short line per process and student: appends do not interleave
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def table(records: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["name"], r["epochs"]), []).append(r)
    lines = ["| student | epochs | MB fp32 | MB int8 | top-1 fp32 (seeds) | int8 (seeds) |",
             "|---|---:|---:|---:|---:|---:|"]
    for (name, epochs), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        f, q = [r["top1"] for r in rs], [r["top1_int8"] for r in rs]
        lines.append(f"| {name} | {epochs} | {rs[0]['bytes'] / 1e6:.3f} | {rs[0]['bytes_int8'] / 1e6:.3f} | "
                     f"{statistics.mean(f):.3f} ({', '.join(map(str, f))}) | "
                     f"{statistics.mean(q):.3f} ({', '.join(map(str, q))}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="the frontier benchmark's trained teacher folder")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--students", nargs="+", required=True, metavar="STUDENT")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--jobs", type=int, default=1, help="students trained at once, one process each")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--work", default="runs/frontier_explore", help="folder for the training runs")
    p.add_argument("--out", default="runs/frontier_explore.jsonl")
    p.add_argument("--quick", action="store_true", help="smoke run: 500 images, 1 epoch")
    a = p.parse_args(argv)
    students = [parse_student(s) for s in a.students]
    if a.quick:
        a.epochs = 1
    jobs = [(name, spec, seed, 1 if a.quick else (epochs or a.epochs), a)
            for seed in a.seeds for name, spec, epochs in students]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    import multiprocessing

    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = list(pool.map(train_one, jobs))
    print(table(records))


if __name__ == "__main__":
    main()
