"""Accuracy per byte: minivit against what a user would do instead, at the same budget (Fashion-MNIST, CPU).

One teacher (a 12-block ViT, trained on all 60k images with augmentation, then in rounds of the students'
schedule until a round no longer improves it) is compressed to about 1/2, 1/4, 1/6 and 1/12 of its block
bytes by

* ``minivit``  the ``compress`` defaults at share k (``minivit.budget.recipe``: the bytes of share k spent on
  relaxed sharing, share number, delta rank and init picked from the teacher's weights, no head mixing),
* ``naive``    plain sharing (no transforms, shared norms) at the same share number,
* ``drop``     keeping every k-th block of the teacher,

and, on request (``--rows``), ``int8plan:k``: what ``compress --budget 1/k --budget-int8`` builds, the
``compress`` recipe sized so that its int8 file fits 1/k of the teacher's fp32 bytes
(``minivit.budget.plan(..., int8=True)``), and ``headmix:k``, the planner's student with head mixing;

all initialised from the teacher and distilled the same way (the ``compress`` recipe's distillation,
``minivit.budget.RECIPE_DISTILL``: logits mixed with the hard labels, attention and hidden-state relations)
for the same number of steps; then every student and the teacher are quantised to int8 with the exporter's
own dynamic int8 (:func:`minivit.export.quantize_dynamic_int8`) and evaluated again. Every model is measured
(top-1 and latency) as ``minivit eval`` runs it: relaxed-sharing deltas folded into per-layer weights
(:func:`minivit.fold_deltas`; in int8, folded and quantised again). Latency is timed at the end, for all
models in turn over several rounds, so that a slow spell of the machine slows every row alike. Bytes are
those of the weights file a user keeps: ``model.safetensors`` for fp32 (:func:`minivit.export.safetensors_bytes`) and
``model.int8.safetensors`` for int8 (``minivit export --format safetensors --int8``,
:func:`minivit.export.int8_bytes`), so every model pays the same small per-tensor header. Rows within 0.5
top-1 points of one another at the same budget get a second seed, and so do the rows of ``--seed-rows``
(by default the 1/4 rows of minivit and naive sharing, whose int8 forms decide the single-block margin).

Outputs (``--out``, default ``benchmarks/results``): ``frontier.json``, ``frontier.md``,
``frontier_bytes.png`` (top-1 vs stored MB) and ``frontier_latency.png`` (top-1 vs CPU latency), each with
its Pareto front marked.

    python benchmarks/frontier.py                      # the committed run (reuses --teacher when present)
    python benchmarks/frontier.py --quick              # a smoke run on a small subset, minutes
    python benchmarks/frontier.py --rows minivit:4 naive:4 drop:4 --student-epochs 2   # some rows only
    python benchmarks/frontier.py --rows minivit:2 minivit:4 minivit:12 --reuse benchmarks/results/frontier.json
                                                       # rerun these rows, keep the others of that run
    python benchmarks/frontier.py --remeasure --reuse benchmarks/results/frontier.json --work runs/frontier/work
                                                       # measure that run's saved students again, no training

The committed run is the default run, then ``--rows minivit:3 naive:3 drop:3 int8plan:8 --seed-rows minivit:3
naive:3 int8plan:8 --reuse`` of it (the budget 1/3 and the student planned for 1/8 of the teacher's bytes after
int8, two seeds each; about 35 more minutes; it was trained in three such steps, and training here is
deterministic), then ``--rows minivit:2 minivit:4 int8plan:8 int8plan:12 --seed-rows`` (the same four)
``--reuse`` of that (the rows whose recipe changed when the planner learned to drop the deltas' bias offsets,
and the student planned for 1/12 after int8; about 37 minutes), then one ``--remeasure`` of every row, so that
all latencies come from one session.

PyTorch's CPU threads slow down many times when another busy process shares the cores: run it alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import minivit
from minivit.analysis import markdown_table, plot_tradeoff
from minivit.budget import RECIPE, RECIPE_DISTILL, plan, recipe
from minivit.data import build_dataset
from minivit.distill import DistillationObjective, DistillConfig
from minivit.distill.cache import cache_teacher_logits
from minivit.export import int8_bytes, is_quantized, quantize_dynamic_int8, safetensors_bytes
from minivit.families import build_vit, describe_vit
from minivit.measure import latency_ms, tensor_bytes
from minivit.train import TrainConfig, evaluate, fit
from minivit.train.data import WithTeacherLogits

KINDS = ("minivit", "naive", "drop")
EXTRA_KINDS = ("headmix", "int8plan")  # on request, e.g. --rows headmix:4 int8plan:8 (see make_student)
MINIVIT_KINDS = ("minivit", "int8plan")  # the rows the targets read as minivit's: compress with its defaults
BUDGETS = (2, 4, 6, 12)  # fraction 1/k of the teacher's block bytes (the default rows; --rows may add others)


def teacher_args(a) -> dict:
    return dict(img_size=28, patch_size=a.patch, in_chans=1, num_classes=10, depth=a.depth, embed_dim=a.width,
                num_heads=a.heads, mlp_ratio=a.mlp_ratio)


def student_schedule(a, epochs: int, seed: int) -> TrainConfig:
    """The students' optimiser and schedule (``--lr``, ``--warmup``), for ``epochs`` epochs."""
    return TrainConfig(epochs=epochs, batch_size=128, lr=a.lr, min_lr=1e-5, warmup_epochs=a.warmup,
                       weight_decay=0.05, seed=seed, progress=False)


def train_teacher(a, train, val, folder: Path, log) -> nn.Module:
    """Train the teacher until more training no longer improves it.

    1. ``--teacher-epochs`` on the augmented training set, from scratch (``folder/augmented``);
    2. rounds of the students' schedule (``--student-epochs`` on their data, ``--lr``, ``--warmup``) on the
       labels alone (``folder/round1``, ``round2``, ...), each from the best teacher so far, until a round
       gains less than ``--teacher-min-gain`` top-1 over it (or ``--teacher-max-rounds`` have run).

    Every student trains ``--student-epochs`` from the teacher it compresses; the rounds make sure that this
    schedule alone would no longer improve the teacher. The best stage is the teacher; stages found in
    ``folder`` are reused."""
    def from_scratch():
        model = minivit.create_model("vit_tiny_patch16_224", **teacher_args(a))
        cfg = TrainConfig(epochs=a.teacher_epochs, batch_size=128, lr=2e-3, warmup_epochs=1.0, seed=0,
                          progress=False)
        return model, build_dataset(a.data, "train", 28, 1, True, limit=a.train_limit), cfg

    best = _teacher_stage(folder / "augmented", val, log, from_scratch)
    best_top1 = teacher_history(folder / "augmented")[-1]
    for r in range(1, a.teacher_max_rounds + 1):
        model = _teacher_stage(folder / f"round{r}", val, log, lambda start=best: (
            copy.deepcopy(start), train, student_schedule(a, a.student_epochs, 0)))
        top1 = teacher_history(folder / f"round{r}")[-1]
        gain = top1 - best_top1
        log(f"teacher round {r}: {top1:.2f} ({gain:+.2f})")
        if gain > 0:
            best, best_top1 = model, top1
        if gain < a.teacher_min_gain:
            break
    minivit.save_pretrained(best, folder)
    return best


def _teacher_stage(sub: Path, val, log, make) -> nn.Module:
    """The teacher after one training stage, saved in ``sub`` (reused when it is there); ``make()`` gives the
    model to start from, the training data and the schedule."""
    if (sub / "model.safetensors").is_file():
        log(f"teacher stage reused from {sub}")
        return minivit.from_pretrained(sub)
    model, data, cfg = make()
    fit(minivit.distill.SupervisedObjective(model), data, val, cfg, sub, log=log)
    minivit.save_pretrained(model, sub)
    return model


def teacher_stages(folder: Path) -> list[Path]:
    """The teacher's training stages in order: ``augmented``, ``round1``, ... (a teacher folder of one stage,
    from earlier versions, is its own stage)."""
    stages = [folder / "augmented"] + sorted(folder.glob("round*"), key=lambda p: int(p.name[5:]))
    return [p for p in stages if (p / "metrics.jsonl").is_file()] or [folder]


def teacher_history(folder: Path) -> list[float]:
    """Validation top-1 after each epoch of ``folder``'s ``metrics.jsonl``."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line).get("val_top1") for line in path.read_text().splitlines() if line.strip()]


def converged(folder: Path, min_gain: float = 0.1) -> dict:
    """The criterion: the teacher's last stage (a round of the students' schedule) gained < ``min_gain`` top-1
    over the best stage before it. A teacher of one stage: its best of the last 2 epochs against the best
    before them (which a decayed learning rate meets without the model having converged)."""
    stages = teacher_stages(folder)
    if len(stages) == 1:
        h = teacher_history(stages[0])
        if len(h) <= 2:
            return {"held": False, "gain": None}
        gain = max(h[-2:]) - max(h[:-2])
        return {"held": gain < min_gain, "gain": round(gain, 3), "criterion": "last 2 epochs", "min_gain": min_gain}
    finals = [teacher_history(p)[-1] for p in stages]
    gain = finals[-1] - max(finals[:-1])
    return {"held": gain < min_gain, "gain": round(gain, 3), "stages": [p.name for p in stages],
            "stage_top1": finals, "criterion": "last round of the students' schedule", "min_gain": min_gain}


def dropped(teacher: nn.Module, k: int) -> nn.Module:
    """The teacher with every k-th block kept (blocks k-1, 2k-1, ...), everything else copied."""
    depth = len(teacher.blocks)
    student = build_vit(dict(describe_vit(teacher), depth=depth // k))
    state = {n: v for n, v in teacher.state_dict().items() if not n.startswith("blocks.")}
    for j, i in enumerate(range(k - 1, depth, k)):
        state.update({f"blocks.{j}.{n}": v for n, v in teacher.blocks[i].state_dict().items()})
    student.load_state_dict(state)
    return student


def budget_fraction(teacher: nn.Module, k: int) -> float:
    """The budget of row 1/k: the bytes of the teacher with every k-th block kept (the layer-dropping student);
    for a single block (k = depth) no minivit student is smaller than one shared block with per-layer parts,
    so the budget is that student's bytes."""
    if k >= len(teacher.blocks):
        return tensor_bytes(minivit.multiplex(teacher, share=k)) / tensor_bytes(teacher)
    return tensor_bytes(dropped(teacher, k)) / tensor_bytes(teacher)


def make_student(kind: str, k: int, teacher: nn.Module) -> tuple[nn.Module, dict]:
    if kind == "minivit":
        spec = recipe(teacher, k).spec  # what `compress --share k` builds
        return minivit.multiplex(teacher, spec), spec.to_dict()
    if kind == "headmix":
        spec = plan(teacher, budget_fraction(teacher, k)).spec  # with MiniViT's head mixing (the earlier default)
        return minivit.multiplex(teacher, spec), spec.to_dict()
    if kind == "int8plan":  # what `compress --budget 1/k --budget-int8` builds: its int8 file fits 1/k of the teacher
        spec = plan(teacher, 1 / k, minivit.MultiplexSpec(**RECIPE), int8=True).spec
        return minivit.multiplex(teacher, spec), spec.to_dict()
    if kind == "naive":
        spec = minivit.MultiplexSpec(share=k, transforms=False, separate_norms=False)
        return minivit.multiplex(teacher, spec), spec.to_dict()
    if kind == "drop":
        return dropped(teacher, k), {"kept_blocks": len(teacher.blocks) // k}
    raise ValueError(kind)


def train_student(kind, k, seed, teacher, train, val, logits, a, work: Path, log) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    student, how = make_student(kind, k, teacher)
    seconds = distil(student, teacher, seed, a.student_epochs, train, val, logits, a, work / f"{kind}_{k}_seed{seed}",
                     log)
    return student, {"how": how, "train_s": round(seconds, 1)}


def distil(student, teacher, seed, epochs, train, val, logits, a, folder: Path, log) -> float:
    """Distil ``student`` from ``teacher`` as every row is (``--distill``, :func:`student_schedule`), leave it in
    eval mode; the seconds it took."""
    distill = DistillConfig(**a.distill)
    train_set = WithTeacherLogits(train, logits) if distill.cache_teacher_logits else train
    objective = DistillationObjective(student, copy.deepcopy(teacher), distill)
    start = time.perf_counter()
    fit(objective, train_set, val, student_schedule(a, epochs, seed), folder, log=log)
    objective.remove_hooks()
    student.eval()
    return time.perf_counter() - start


def measure(model: nn.Module, val, a) -> dict:
    """Top-1 of ``model`` as ``minivit eval`` runs it (deltas folded) and the bytes of its file; ``runner``, the
    model as run, waits for :func:`time_models`."""
    model.eval()
    runner = minivit.fold_deltas(model)
    return {
        "top1": evaluate(runner, val, batch_size=512)["top1"],
        "bytes": int8_bytes(model) if is_quantized(model) else safetensors_bytes(model),
        "runner": runner,
    }


def time_models(measures: list[dict], a) -> None:
    """Fill in each measurement's ``latency_ms``: the batch-1 CPU latency of its model, timed in
    ``--latency-rounds`` rounds that visit every model in turn (the median of ``--latency-runs`` calls each),
    then the median over rounds. A slow spell of a shared machine slows every model alike, instead of the rows
    that happened to be measured during it."""
    todo = [m for m in measures if "runner" in m]
    times: dict[int, list[float]] = {id(m): [] for m in todo}
    for _ in range(a.latency_rounds):
        for m in todo:
            times[id(m)].append(latency_ms(m["runner"], (1, 1, 28, 28), runs=a.latency_runs, warmup=2))
    for m in todo:
        m["latency_ms"] = statistics.median(times[id(m)])
        del m["runner"]


def row_record(name: str, kind: str, k, int8: bool, runs: list[dict], extra: dict) -> dict:
    top1 = [r["top1"] for r in runs]
    return {
        "name": name, "kind": kind, "budget": f"1/{k}" if k else "teacher", "int8": int8,
        "top1": round(statistics.mean(top1), 3), "top1_seeds": [round(t, 3) for t in top1],
        "top1_std": round(statistics.stdev(top1), 3) if len(top1) > 1 else None,
        "bytes": runs[0]["bytes"], "mb": round(runs[0]["bytes"] / 1e6, 4),
        "latency_ms": round(statistics.median(r["latency_ms"] for r in runs), 4), **extra,
    }


def pareto(rows: list[dict], key: str) -> set[str]:
    """Names of the rows no other row beats on both ``key`` (lower is better) and top-1."""
    front = set()
    for r in rows:
        if not any(o[key] <= r[key] and o["top1"] > r["top1"] or o[key] < r[key] and o["top1"] >= r["top1"]
                   for o in rows):
            front.add(r["name"])
    return front


def is_baseline(row: dict) -> bool:
    """A row a user would pick instead of minivit: naive sharing, dropped layers, the int8 teacher."""
    return row["kind"] not in MINIVIT_KINDS + EXTRA_KINDS and row["name"] != "teacher"


def rival_of(row: dict, rows) -> dict | None:
    """The most accurate baseline of no more bytes than ``row``."""
    rivals = [r for r in rows if is_baseline(r) and r["bytes"] <= row["bytes"]]
    return max(rivals, key=lambda r: r["top1"], default=None)


def interpolated_front(rows, nbytes: int) -> float | None:
    """The baselines' Pareto front (top-1 against bytes) at ``nbytes``, linear in log bytes between the two front
    rows around it (None outside the front): what a baseline of exactly those bytes would reach if one existed."""
    baselines = [r for r in rows if is_baseline(r)]
    on_front = pareto(baselines, "bytes")
    front = sorted((r["bytes"], r["top1"]) for r in baselines if r["name"] in on_front)
    for (b0, t0), (b1, t1) in zip(front, front[1:]):
        if b0 <= nbytes <= b1:
            return t0 if b1 == b0 else t0 + (t1 - t0) * math.log(nbytes / b0) / math.log(b1 / b0)
    return None


def leads(rows: dict[str, dict]) -> list[dict]:
    """Every minivit row against the baselines: its lead over the best baseline of no more bytes, and over the
    baselines' front interpolated to its bytes (that lead does not count the baselines' coarser sizes)."""
    out = []
    for r in sorted((r for r in rows.values() if r["kind"] in MINIVIT_KINDS), key=lambda r: -r["bytes"]):
        rival, at = rival_of(r, rows.values()), interpolated_front(rows.values(), r["bytes"])
        out.append({"name": r["name"], "mb": r["mb"], "top1": r["top1"], "rival": rival["name"] if rival else None,
                    "rival_mb": rival["mb"] if rival else None, "lead": round(r["top1"] - rival["top1"], 3) if rival
                    else None, "lead_interpolated": round(r["top1"] - at, 3) if at is not None else None})
    return out


def checks(rows: dict[str, dict], teacher_top1: float) -> list[dict]:
    """The acceptance targets, read off the rows as a frontier. At each budget (the largest bytes of the fp32
    ``1/k`` rows of the default kinds, ``KINDS``; an ``int8plan:k`` row's 1/k is of the teacher's bytes after
    int8, another budget), among the minivit rows of no more bytes (fp32 or int8) that are within the budget's
    distance of the teacher (else all of them), the one that leads the best baseline row of no more bytes than
    itself (naive, drop, the int8 teacher; fp32 or int8) by the most; that one student is held to both targets
    of the budget."""
    out = []
    targets = {2: (0.2, 0.0), 4: (0.5, 0.5), 12: (2.0, 1.0)}
    for k, (drop, margin) in targets.items():
        at_k = [r for r in rows.values() if r["budget"] == f"1/{k}" and not r["int8"] and r["kind"] in KINDS]
        if not at_k:
            continue
        budget = max(r["bytes"] for r in at_k)
        mine = [r for r in rows.values() if r["kind"] in MINIVIT_KINDS and r["bytes"] <= budget]
        if not mine:
            continue
        near = [r for r in mine if r["top1"] >= teacher_top1 - drop] or mine

        def lead(r):
            rival = rival_of(r, rows.values())
            return r["top1"] - rival["top1"] if rival else math.inf

        best = max(near, key=lambda r: (lead(r), r["top1"]))
        out.append({"target": f"<= 1/{k} ({budget / 1e6:.3f} MB): minivit >= teacher - {drop}",
                    "values": f"{best['name']} {best['top1']:.2f} vs {teacher_top1:.2f}",
                    "held": best["top1"] >= teacher_top1 - drop})
        rival = rival_of(best, rows.values())
        if rival is not None:
            out.append({"target": f"<= 1/{k}: minivit >= every baseline of no more bytes + {margin}",
                        "values": f"{best['name']} {best['top1']:.2f} ({best['mb']:.3f} MB) vs {rival['name']} "
                                  f"{rival['top1']:.2f} ({rival['mb']:.3f} MB): {best['top1'] - rival['top1']:+.2f}",
                        "held": best["top1"] >= rival["top1"] + margin})
    small = [r for r in rows.values() if r["kind"] in MINIVIT_KINDS and r["bytes"] <= rows["teacher"]["bytes"] / 8]
    if small:
        best = max(small, key=lambda r: r["top1"])
        out.append({"target": "a student at <= 1/8 of the fp32 teacher's bytes within 0.5 of the teacher",
                    "values": f"{best['name']} {best['top1']:.2f} vs {teacher_top1:.2f}",
                    "held": best["top1"] >= teacher_top1 - 0.5})
    return out


def parse_rows(items: list[str]) -> list[tuple[str, int]]:
    rows = []
    for item in items:
        kind, _, k = item.partition(":")
        if kind not in KINDS + EXTRA_KINDS or not k.isdigit():
            raise SystemExit(f"bad row {item!r}: use KIND:K with KIND in {KINDS}, e.g. minivit:4")
        rows.append((kind, int(k)))
    return rows


def arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3k images, 1 epoch, one seed")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default=None, help="folder for the student runs (default: a temp folder)")
    p.add_argument("--teacher", default="runs/frontier/teacher", help="trained teacher folder (reused, or made)")
    p.add_argument("--teacher-epochs", type=int, default=15, help="teacher stage 1: epochs on augmented images")
    p.add_argument("--teacher-max-rounds", type=int, default=6,
                   help="teacher stage 2: at most this many rounds of the students' schedule, labels only")
    p.add_argument("--teacher-min-gain", type=float, default=0.1,
                   help="teacher stage 2 stops after a round gaining less top-1 than this")
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--patch", type=int, default=7)
    p.add_argument("--student-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--distill", type=json.loads, default=None,
                   help='DistillConfig fields as JSON, for every kind (default: the compress recipe\'s, '
                   f'{json.dumps(RECIPE_DISTILL)}), e.g. \'{{"alpha": 0}}\'')
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds for rows within 0.5 points")
    p.add_argument("--seed-rows", nargs="*", default=["minivit:4", "naive:4"], metavar="KIND:K",
                   help="rows that get every seed even when no other row of their budget is within 0.5 points "
                   "(default: the two rows the single-block margin compares; none: --seed-rows)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--latency-runs", type=int, default=20, help="calls per model and round (median)")
    p.add_argument("--latency-rounds", type=int, default=5, help="rounds over all models (median of the rounds)")
    p.add_argument("--rows", nargs="+", default=[f"{kind}:{k}" for k in BUDGETS for kind in KINDS])
    p.add_argument("--reuse", metavar="FRONTIER.json",
                   help="keep the rows of the kinds not in --rows from this earlier run (same teacher and schedule)")
    p.add_argument("--remeasure", action="store_true",
                   help="train nothing: load the students of the --reuse run from their checkpoints in --work and "
                   "measure every row again (e.g. after a change to how models are evaluated)")
    a = p.parse_args(argv)
    if a.remeasure and not (a.reuse and a.work):
        p.error("--remeasure needs --reuse (the run's FRONTIER.json) and --work (its students' folder)")
    a.seed_rows = sorted({f"{kind}_1/{k}" for kind, k in parse_rows(a.seed_rows)})
    if a.quick:
        a.train_limit, a.student_epochs, a.seeds, a.latency_runs, a.latency_rounds = 3000, 1, a.seeds[:1], 5, 1
    if a.distill is None:
        a.distill = dict(RECIPE_DISTILL)  # what compress distils with by default
    return a


def main(argv=None) -> None:
    a = arguments(argv)
    rows_wanted = parse_rows(a.rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="minivit-frontier-"))
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        print(msg, flush=True)

    t0 = time.perf_counter()
    train = build_dataset(a.data, "train", 28, 1, limit=a.train_limit)
    val = build_dataset(a.data, "val", 28, 1)
    folder = Path(a.teacher)
    if (folder / "model.safetensors").is_file():
        teacher = minivit.from_pretrained(folder)
        log(f"teacher reused from {folder}")
    else:
        teacher = train_teacher(a, train, val, folder, log)
    teacher.eval()
    history = [t for stage in teacher_stages(folder) for t in teacher_history(stage)]
    crit = converged(folder, a.teacher_min_gain)
    log(f"teacher: history {history}; converged {crit}")
    logits = None  # the compress defaults distil attention and hidden relations too: the teacher runs every step
    if DistillConfig(**a.distill).cache_teacher_logits:  # e.g. --distill '{"distill": ["logits"], ...}'
        key = {"teacher": str(folder), "n": len(train)}
        logits = cache_teacher_logits(teacher, train, work / "teacher_logits.pt", key)

    results: dict[str, dict] = {}
    teacher_m, teacher_q = measure(teacher, val, a), measure(quantize_dynamic_int8(teacher), val, a)
    log(f"[{time.perf_counter() - t0:6.0f}s] teacher {teacher_m['top1']:.2f} ({teacher_m['bytes']:,} B)")

    if a.remeasure:
        runs = remeasured(a, teacher, val, work, log)
    else:
        runs = trained(a, rows_wanted, results, teacher, train, val, logits, work, log, t0)
    log(f"[{time.perf_counter() - t0:6.0f}s] timing every model at batch 1 ({a.latency_rounds} rounds)")
    time_models([teacher_m, teacher_q, *(m for rs in runs.values() for r in rs for m in r[:2])], a)
    results["teacher"] = row_record("teacher", "teacher", None, False, [teacher_m], {"history": history})
    results["teacher_int8"] = row_record("teacher_int8", "teacher", None, True, [teacher_q], {})
    for name, rs in runs.items():
        kind, k = name.split("_1/")[0], int(name.split("_1/")[1])
        extra = {"how": rs[0][2]["how"], "train_s": rs[0][2]["train_s"]}
        results[name] = row_record(name, kind, k, False, [r[0] for r in rs], extra)
        results[name + "_int8"] = row_record(name + "_int8", kind, k, True, [r[1] for r in rs], extra)
    name = write_results(results, checks(results, results["teacher"]["top1"]), crit, a, out, t0, argv)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min; wrote {out / name}.json")


def trained(a, rows_wanted, results, teacher, train, val, logits, work: Path, log, t0: float) -> dict[str, list]:
    """Train and measure the students of ``rows_wanted`` (second seeds where rows are close); rows of ``--reuse``
    go into ``results``."""
    if a.reuse:
        results.update(reused_rows(a, {f"{kind}_1/{k}" for kind, k in rows_wanted}, teacher))
        log(f"reused from {a.reuse}: {', '.join(n for n in results if not n.startswith('teacher'))}")
    runs: dict[str, list] = {}
    for kind, k in rows_wanted:
        name = f"{kind}_1/{k}"
        student, info = train_student(kind, k, a.seeds[0], teacher, train, val, logits, a, work, log)
        runs[name] = [(measure(student, val, a), measure(quantize_dynamic_int8(student), val, a), info)]
        _keep(work, name, runs[name][-1])
        log(f"[{time.perf_counter() - t0:6.0f}s] {name}: {runs[name][0][0]['top1']:.2f} "
            f"int8 {runs[name][0][1]['top1']:.2f} ({runs[name][0][0]['bytes']:,} B) {info['how']}")

    # second seeds where two rows of one budget are within 0.5 points
    for s in a.seeds[1:]:
        close = set(a.seed_rows) & set(runs)
        top1 = {n: r["top1"] for n, r in results.items() if not r["int8"]}
        top1.update({n: rs[0][0]["top1"] for n, rs in runs.items()})
        for k in sorted({k for _, k in rows_wanted} | set(BUDGETS)):
            names = [n for n in top1 if n.endswith(f"_1/{k}")]
            for x in names:
                for y in names:
                    if x < y and abs(top1[x] - top1[y]) < 0.5:
                        close |= {x, y} & set(runs)  # (reused rows keep the seeds they had)
        for name in sorted(close):
            kind, k = name.split("_1/")[0], int(name.split("_1/")[1])
            student, info = train_student(kind, k, s, teacher, train, val, logits, a, work, log)
            runs[name].append((measure(student, val, a), measure(quantize_dynamic_int8(student), val, a), info))
            _keep(work, name, runs[name][-1])
            log(f"[{time.perf_counter() - t0:6.0f}s] {name} seed {s}: {runs[name][-1][0]['top1']:.2f}")
    return runs


def remeasured(a, teacher, val, work: Path, log) -> dict[str, list]:
    """The students of the run ``--reuse`` names, loaded from their checkpoints in ``--work`` (the state after
    their last epoch) and measured again with this version's :func:`measure`: no training. Rows and seeds are
    that run's."""
    old = earlier_run(a, "--remeasure")
    a.trained_by = {"command": old["command"], "total_seconds": old.get("total_seconds")}
    runs: dict[str, list] = {}
    for row in old["rows"]:
        if row["kind"] == "teacher" or row["int8"]:
            continue
        kind, k = row["kind"], int(row["budget"].split("/")[1])
        runs[row["name"]] = []
        for seed in a.seeds[: len(row["top1_seeds"])]:
            path = work / f"{kind}_{k}_seed{seed}" / "checkpoints" / "last.pt"
            if not path.is_file():
                raise SystemExit(f"--remeasure: {path} is missing (the students must be in --work)")
            student, _ = make_student(kind, k, teacher)
            state = torch.load(path, map_location="cpu", weights_only=True)["objective"]
            student.load_state_dict({n[len("model."):]: v for n, v in state.items() if n.startswith("model.")})
            student.eval()
            info = {"how": row["how"], "train_s": row["train_s"]}
            runs[row["name"]].append((measure(student, val, a), measure(quantize_dynamic_int8(student), val, a), info))
            log(f"{row['name']} seed {seed}: {runs[row['name']][-1][0]['top1']:.2f} "
                f"int8 {runs[row['name']][-1][1]['top1']:.2f} (was {row['top1_seeds']})")
    return runs


SAME_SCHEDULE = ("teacher", "data", "depth", "width", "heads", "mlp_ratio", "patch", "student_epochs", "lr", "warmup",
                 "distill", "seeds", "train_limit")


def architecture(row: dict, teacher: nn.Module) -> nn.Module:
    """An untrained model of a row's architecture (from the spec it records), to count its bytes."""
    if row["kind"] == "teacher":
        return teacher
    k = int(row["budget"].split("/")[1])
    if row["kind"] == "drop":
        return dropped(teacher, k)
    return minivit.multiplex(teacher, minivit.MultiplexSpec.from_dict(row["how"]))


def recount_bytes(row: dict, teacher: nn.Module) -> dict:
    """``row`` with its bytes counted again by this version's writer (the top-1 is unchanged: the file layout
    holds the same numbers); ``bytes_before`` keeps the earlier count when it differs."""
    model = architecture(row, teacher)
    nbytes = int8_bytes(model) if row["int8"] else safetensors_bytes(model)
    if nbytes == row["bytes"]:
        return row
    return {**row, "bytes": nbytes, "mb": round(nbytes / 1e6, 4), "bytes_before": row.get("bytes_before", row["bytes"])}


def earlier_run(a, flag: str) -> dict:
    """The JSON of the run ``--reuse`` names; it must have had this run's teacher, data and student schedule."""
    try:
        old = json.loads(Path(a.reuse).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{flag} {a.reuse}: cannot read it ({e})") from None
    differ = [k for k in SAME_SCHEDULE if old.get("config", {}).get(k) != getattr(a, k)]
    if differ:
        raise SystemExit(f"{flag} {a.reuse}: that run differs in {', '.join(differ)}; rerun those rows instead")
    return old


def reused_rows(a, rerun: set[str], teacher: nn.Module) -> dict[str, dict]:
    """The student rows of ``a.reuse`` not being run again (``rerun``: names such as ``minivit_1/4``), each marked
    ``reused_from``, their bytes recounted (:func:`recount_bytes`); the earlier run must have had the same
    teacher, data and student schedule."""
    old = earlier_run(a, "--reuse")
    return {r["name"]: recount_bytes({**r, "reused_from": r.get("reused_from", str(a.reuse))}, teacher)
            for r in old["rows"] if r["name"].removesuffix("_int8") not in rerun and r["kind"] != "teacher"}


def _keep(work: Path, name: str, run: tuple) -> None:
    """Append a finished student's measurements to ``work/rows.jsonl``."""
    with open(work / "rows.jsonl", "a") as f:
        record = {"name": name, "fp32": run[0], "int8": run[1], "info": run[2]}
        f.write(json.dumps(record, default=lambda o: None if isinstance(o, nn.Module) else str(o)) + "\n")


COLOURS = {"teacher": "tab:blue", "minivit": "tab:green", "int8plan": "tab:red", "naive": "tab:purple",
           "drop": "tab:orange", "headmix": "tab:olive"}


def plot_frontier(rows: list[dict], key: str, label: str, path: Path) -> None:
    """Top-1 against ``key``: one curve per kind and precision through its budgets (fp32 solid, int8 dashed with
    square markers, one colour per kind), each point labelled with its budget, the Pareto front as a staircase."""
    order = [*COLOURS, *sorted({r["kind"] for r in rows} - set(COLOURS))]  # the legend's order
    series: dict[str, list] = {f"{k}{p}": [] for k in order for p in ("", " int8")}
    styles: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["bytes"]):  # each curve in order of size
        name = r["kind"] + (" int8" if r["int8"] else "")
        series.setdefault(name, []).append((r[key], r["top1"], r["budget"] if r["kind"] != "teacher" else ""))
        styles[name] = {"color": COLOURS.get(r["kind"], "tab:gray"), "linestyle": "--" if r["int8"] else "-",
                        "marker": "s" if r["int8"] else "o"}
    front = [(r[key], r["top1"]) for r in rows if r["name"] in pareto(rows, key)]
    series = {name: pts for name, pts in series.items() if pts}
    plot_tradeoff(series, f"Top-1 vs {label} (Fashion-MNIST)", label, "top-1 (%)", path, logx=True, front=front,
                  styles=styles)


def write_results(results: dict, held: list[dict], crit: dict, a, out: Path, t0: float, argv) -> str:
    rows = list(results.values())
    lead_rows = leads(results)
    plots = []
    for key, label, fname in (("mb", "stored MB", "frontier_bytes.png"), ("latency_ms", "CPU latency, batch 1 (ms)",
                                                                           "frontier_latency.png")):
        plot_frontier(rows, key, label, out / fname)
        plots.append(fname)
    total = time.perf_counter() - t0
    command = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])])
    result = {"rows": rows, "targets": held, "leads": lead_rows, "teacher_converged": crit, "command": command,
              "config": {k: v for k, v in vars(a).items() if k != "trained_by"}, "total_seconds": round(total, 1),
              **({"trained_by": a.trained_by} if getattr(a, "trained_by", None) else {}),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "plots": plots}
    name = "frontier_quick" if a.quick else "frontier"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = ["name", "budget", "int8", "top1", "top1_std", "mb", "latency_ms"]
    md = [f"# Accuracy per byte on Fashion-MNIST ({'quick' if a.quick else 'full'} run)", "",
          f"Command: `{command}`  ", f"Total time: {total / 60:.1f} min on {torch.get_num_threads()} threads  ",
          f"Teacher convergence ({crit.get('criterion')}, gain < {crit.get('min_gain')} point): {crit}",
          *_reused_note(rows),
          *_remeasured_note(a), "",
          markdown_table(sorted(rows, key=lambda r: -r["bytes"]), cols), "", "## Targets", "",
          markdown_table(held) if held else "(no minivit rows to check)", "",
          "Every minivit row's lead over the best baseline of no more bytes, and over the baselines' Pareto front "
          "interpolated to its bytes (linear in log bytes; a baseline of exactly its bytes, had one existed):", "",
          markdown_table(lead_rows) if lead_rows else "(no minivit rows)", ""] + [
              f"![{p}]({p})" for p in plots]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    return name


def _remeasured_note(a) -> list[str]:
    trained = getattr(a, "trained_by", None)
    if not trained:
        return []
    took = f" in {trained['total_seconds'] / 60:.1f} min" if trained.get("total_seconds") else ""
    return ["", f"No student was trained in this run: every row is measured again from the students that "
            f"`{trained['command']}` trained{took} (their checkpoints after the last epoch), so top-1, bytes "
            "and latency are this version's measurement of those models."]


def _reused_note(rows: list[dict]) -> list[str]:
    reused = sorted({r["reused_from"] for r in rows if r.get("reused_from")})
    names = [r["name"] for r in rows if r.get("reused_from") and not r["int8"]]
    if not reused:
        return []
    recounted = [r["name"] for r in rows if r.get("reused_from") and r.get("bytes_before")]
    note = ["", f"Rows {', '.join(names)} (and their int8 rows) are reused from {', '.join(reused)}: same teacher, "
            "data and student schedule; latencies of reused rows were measured in that run."]
    if recounted:
        note += ["", f"Bytes of {', '.join(recounted)} are counted again by this version's file writer (the numbers "
                 "in the file, hence the top-1, are the same; `bytes_before` in the JSON keeps the earlier count)."]
    return note


if __name__ == "__main__":
    main()
