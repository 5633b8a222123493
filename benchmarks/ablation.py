"""Reproduce the paper's ablation at small scale on real data (Fashion-MNIST, 60k/10k, CPU).

Every row below is trained with the same engine (``minivit.train.fit``), the same budget (epochs,
batch, learning-rate schedule) and the same data order (a function of the seed only):

1. ``teacher``                     ViT from scratch
2. ``naive_share2``                share 2, no transforms, shared norms, no distillation (CE)
3. ``share2_transforms``           + separate norms + head transforms, no distillation (CE)
4. ``share2_logits``               + prediction (soft-label) distillation
5. ``minivit_share2``              + attention-relation + hidden-relation distillation (full MiniViT)
6. ``minivit_single_layer``        full MiniViT, share = depth
7. ``depth_halved_kd``             the teacher at half depth (every other block), logit-distilled:
                                   the same parameter count as row 5
8. ``minivit_share2_random_init``  row 5 without any initialisation from the teacher

Rows 2-7 start from the trained teacher (``init="first"``, identity transforms). Rows 1, 2, 5 and 7
run for every seed (mean and spread); students of seed s distil the teacher of seed s.

Outputs (``--out``, default ``benchmarks/results``): ``ablation.json``
(``{"rows": [...], "command": ..., "config": ...}``), ``ablation.md``, ``ablation.png`` (top-1 vs
params), and the gradient-norm and CKA pictures for rows 2 and 5.

    python benchmarks/ablation.py            # the full run: 20k train / 10k val images, 14 min on 2 idle cores
    python benchmarks/ablation.py --train-limit 0 --teacher-epochs 8 --epochs 3   # all 60k, a stronger teacher

PyTorch's CPU threads slow down 10-20x when another busy process shares the cores: run it alone.
    python benchmarks/ablation.py --quick    # a smoke test in under 3 minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import minivit
from minivit.analysis.compare import layer_cka, markdown_table
from minivit.analysis.grad_norms import GradNormLogger, plot_grad_norms
from minivit.analysis.plots import plot_lines, plot_scatter_labelled
from minivit.data import build_dataset
from minivit.distill.objective import DistillationObjective, SupervisedObjective
from minivit.families import MultiplexedVisionTransformer
from minivit.measure import count_parameters, latency_ms, size_mb
from minivit.train.engine import TrainConfig, evaluate, fit

ROWS = [
    "teacher",
    "naive_share2",
    "share2_transforms",
    "share2_logits",
    "minivit_share2",
    "minivit_single_layer",
    "depth_halved_kd",
    "minivit_share2_random_init",
]
MULTI_SEED = {"teacher", "naive_share2", "minivit_share2", "depth_halved_kd"}


def teacher_args(a) -> dict:
    return dict(
        img_size=a.img_size, patch_size=a.patch_size, in_chans=1, num_classes=10, depth=a.depth,
        embed_dim=a.width, num_heads=a.heads, mlp_ratio=4.0,
    )


def half_depth(teacher: nn.Module, a) -> nn.Module:
    """The teacher's architecture at half depth, initialised from its odd blocks (1, 3, 5, ...)."""
    args = dict(teacher_args(a), depth=a.depth // 2)
    student = minivit.create_model("vit_tiny_patch16_224", **args)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.")}
    for j, i in enumerate(range(1, a.depth, 2)):
        for k, v in teacher.blocks[i].state_dict().items():
            state[f"blocks.{j}.{k}"] = v
    student.load_state_dict(state)
    return student


def make_student(row: str, teacher: nn.Module, a) -> tuple[nn.Module, dict | None]:
    """The student of ``row`` and its distillation settings (None: plain CE)."""
    full = dict(beta=1.0, gamma=a.gamma, num_pairs=a.pairs)
    if row == "naive_share2":
        return minivit.multiplex(teacher, share=2, transforms=False, separate_norms=False), None
    if row == "share2_transforms":
        return minivit.multiplex(teacher, share=2), None
    if row == "share2_logits":
        return minivit.multiplex(teacher, share=2), dict(beta=0.0, gamma=0.0)
    if row == "minivit_share2":
        return minivit.multiplex(teacher, share=2), full
    if row == "minivit_single_layer":
        return minivit.multiplex(teacher, share=a.depth), full
    if row == "depth_halved_kd":
        return half_depth(teacher, a), dict(beta=0.0, gamma=0.0)
    if row == "minivit_share2_random_init":
        from minivit.families import describe_vit

        spec = minivit.MultiplexSpec(share=2, transform_init="identity")
        return MultiplexedVisionTransformer(**describe_vit(teacher), spec=spec), full
    raise ValueError(row)


def train_row(row, seed, teacher, train, val, a, work: Path, log) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    cfg = TrainConfig(
        epochs=a.teacher_epochs if row == "teacher" else a.epochs, batch_size=a.batch_size, lr=a.lr,
        weight_decay=0.05, warmup_epochs=a.warmup, seed=seed, progress=False,
    )
    if row == "teacher":
        model = minivit.create_model("vit_tiny_patch16_224", **teacher_args(a))
        objective, distill = SupervisedObjective(model), None
    else:
        model, distill = make_student(row, teacher, a)
        objective = (
            SupervisedObjective(model) if distill is None
            else DistillationObjective(model, copy.deepcopy(teacher), **distill)
        )
    out = work / f"{row}_seed{seed}"
    callbacks = []
    if row in ("naive_share2", "minivit_share2") and seed == a.seeds[0]:
        callbacks.append(GradNormLogger(out / "grad_norms.jsonl", a.grad_norm_every))
    start = time.perf_counter()
    result = fit(objective, train, val, cfg, out, callbacks=callbacks, log=log)
    seconds = time.perf_counter() - start
    if isinstance(objective, DistillationObjective):
        objective.remove_hooks()
    model.eval()
    final = evaluate(model, val, batch_size=512)
    info = {"row": row, "seed": seed, "top1": final["top1"], "top5": final.get("top5"), "train_s": seconds,
            "run_dir": str(out), "epochs": cfg.epochs, "history_top1": [h.get("val_top1") for h in result["history"]]}
    return model, info


def summarise(name: str, models: list[nn.Module], infos: list[dict], teacher_latency: float, a) -> dict:
    m = models[0]
    top1 = [i["top1"] for i in infos]
    shape = (1, 1, a.img_size, a.img_size)
    lat = latency_ms(m, shape, runs=a.latency_runs)
    return {
        "name": name,
        "params": count_parameters(m),
        "block_params": sum(p.numel() for p in {id(p): p for p in m.blocks.parameters()}.values()),
        "state_dict_mb": round(size_mb(m), 4),
        "top1": round(statistics.mean(top1), 3),
        "top1_std": round(statistics.stdev(top1), 3) if len(top1) > 1 else None,
        "top1_seeds": [round(t, 3) for t in top1],
        "train_s": round(statistics.mean(i["train_s"] for i in infos), 1),
        "latency_ms": round(lat, 3),
        "latency_ratio": round(lat / teacher_latency, 3) if teacher_latency else 1.0,
    }


def claims(rows: dict[str, dict]) -> list[dict]:
    t, r2, r5, r6, r7 = (rows[k]["top1"] for k in ("teacher", "naive_share2", "minivit_share2",
                                                   "minivit_single_layer", "depth_halved_kd"))
    half = rows["minivit_share2"]["block_params"] / rows["teacher"]["block_params"]
    return [
        {"claim": "row 5 >= row 2 + 1 point", "values": f"{r5:.2f} vs {r2:.2f} + 1", "held": r5 >= r2 + 1},
        {"claim": "row 5 within 0.5 of the teacher at ~half the block parameters",
         "values": f"{r5:.2f} vs {t:.2f} (blocks x{half:.3f})", "held": r5 >= t - 0.5},
        {"claim": "row 6 within 2 of the teacher", "values": f"{r6:.2f} vs {t:.2f}", "held": r6 >= t - 2},
        {"claim": "row 5 > row 7", "values": f"{r5:.2f} vs {r7:.2f}", "held": r5 > r7},
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="MiniViT ablation on Fashion-MNIST (CPU)")
    p.add_argument("--quick", action="store_true", help="smoke test: small subset, 1 epoch, one seed (< 3 min)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default=None, help="folder for the run folders (default: a temp folder)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--patch-size", type=int, default=7)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2, help="epochs of every student")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.2)
    p.add_argument("--gamma", type=float, default=4.9, help="hidden-relation weight")
    p.add_argument("--pairs", type=int, default=None, help="distilled layer pairs (default depth/4, last layers)")
    p.add_argument("--train-limit", type=int, default=20000, help="training images (stratified; 0: all 60k)")
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--grad-norm-every", type=int, default=20)
    p.add_argument("--cka-batches", type=int, default=8)
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.teacher_epochs, a.epochs = a.seeds[:1], 1, 1
        a.train_limit, a.val_limit = min(a.train_limit or 2000, 2000), a.val_limit or 500
        a.depth, a.width, a.grad_norm_every, a.cka_batches, a.latency_runs = 4, 48, 5, 2, 5
    a.pairs = a.pairs or max(1, a.depth // 4)
    a.train_limit = a.train_limit or None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="minivit-ablation-"))
    log_lines: list[str] = []

    def log(msg: str) -> None:
        log_lines.append(msg)
        print(msg, flush=True)

    train = build_dataset(a.data, "train", a.img_size, 1, limit=a.train_limit)
    val = build_dataset(a.data, "val", a.img_size, 1, limit=a.val_limit)
    log(f"data: {a.data} train {len(train)} val {len(val)}; work dir {work}")
    start = time.perf_counter()
    models: dict[str, list] = {r: [] for r in a.rows}
    infos: dict[str, list] = {r: [] for r in a.rows}
    teachers = {}
    for seed in a.seeds:
        teacher, info = train_row("teacher", seed, None, train, val, a, work, log)
        teachers[seed] = teacher
        models["teacher"].append(teacher)
        infos["teacher"].append(info)
        log(f"[{time.perf_counter() - start:7.0f}s] teacher seed {seed}: top1 {info['top1']:.2f}")
        for row in a.rows[1:]:
            if seed != a.seeds[0] and row not in MULTI_SEED:
                continue
            model, info = train_row(row, seed, teacher, train, val, a, work, log)
            models[row].append(model)
            infos[row].append(info)
            log(f"[{time.perf_counter() - start:7.0f}s] {row} seed {seed}: top1 {info['top1']:.2f}")

    teacher_latency = latency_ms(teachers[a.seeds[0]], (1, 1, a.img_size, a.img_size), runs=a.latency_runs)
    rows = {r: summarise(r, models[r], infos[r], teacher_latency, a) for r in a.rows}
    # analyses of rows 2 and 5 (seed 0): gradient norms and CKA to the teacher
    s0 = a.seeds[0]
    runs = {r: Path(infos[r][0]["run_dir"]) / "grad_norms.jsonl" for r in ("naive_share2", "minivit_share2")}
    plots = [p.name for p in plot_grad_norms({"naive share 2": runs["naive_share2"],
                                              "MiniViT share 2": runs["minivit_share2"]}, out)]
    for r in ("naive_share2", "minivit_share2"):
        (out / f"grad_norms_{r}.jsonl").write_text(runs[r].read_text())
    loader = torch.utils.data.DataLoader(val, batch_size=256)
    cka = {}
    for r in ("naive_share2", "minivit_share2", "minivit_single_layer"):
        if r in models:
            m = layer_cka(teachers[s0], models[r][0], loader, max_batches=a.cka_batches)
            cka[r] = [float(m[i, i]) for i in range(min(m.shape))]
    plots.append(plot_lines({k.replace("_", " "): (list(range(1, len(v) + 1)), v) for k, v in cka.items()},
                            "Linear CKA with the teacher, layer by layer (Fashion-MNIST val)", "layer",
                            "linear CKA", out / "cka_rows2_5.png", ylim=(0.0, 1.05)).name)
    pts = [(rows[r]["params"], rows[r]["top1"], r) for r in a.rows]
    plots.append(plot_scatter_labelled(pts, "Top-1 vs parameters (Fashion-MNIST)", "parameters",
                                       "top-1 (%)", out / "ablation.png", logx=True).name)
    total = time.perf_counter() - start
    result = {
        "rows": [rows[r] for r in a.rows],
        "claims": claims(rows) if set(ROWS) <= set(a.rows) else [],
        "cka_per_layer": cka,
        "command": "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])]),
        "config": {k: v for k, v in vars(a).items()},
        "total_seconds": round(total, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "plots": plots,
        "per_seed": infos,
    }
    name = "ablation_quick" if a.quick else "ablation"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = ["name", "params", "state_dict_mb", "top1", "top1_std", "train_s", "latency_ratio"]
    md = [f"# MiniViT ablation on Fashion-MNIST ({'quick' if a.quick else 'full'} run)", "",
          f"Command: `{result['command']}`  ", f"Total time: {total / 60:.1f} min on {torch.get_num_threads()} threads",
          "", markdown_table([rows[r] for r in a.rows], cols), ""]
    if result["claims"]:
        md += ["## The paper's claims", "", markdown_table(result["claims"]), ""]
    md += [f"![{p}]({p})" for p in plots]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    log(f"done in {total / 60:.1f} min; wrote {out / (name + '.json')}")


if __name__ == "__main__":
    main()
