"""Compare two models layer by layer (CKA) and as deployables (params, MB, FLOPs, latency).

``layer_cka`` reads every layer's output of both models with the distillation hooks
(:class:`~minivit.distill.hooks.FeatureCapture`) and accumulates the minibatch CKA of each pair of
layers; ``model_table`` measures what a deployment cares about; ``analyze`` does both and writes
PNGs and a markdown summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..distill.hooks import FeatureCapture, num_layers
from ..io.atomic import atomic_write
from ..measure import count_parameters, flops, latency_ms, size_mb
from .cka import MinibatchCKA
from .plots import plot_heatmap, plot_lines


@torch.no_grad()
def layer_cka(model_a: nn.Module, model_b: nn.Module, batches, max_batches: int | None = None) -> np.ndarray:
    """``(La, Lb)`` matrix of minibatch linear CKA between the block outputs of two models.

    ``batches`` yields images or ``(images, ...)``; each layer's output (B, N, C) is flattened per
    sample. Batches smaller than 4 samples are skipped (the unbiased estimator needs 4).
    """
    was = model_a.training, model_b.training
    model_a.eval()
    model_b.eval()
    cka = MinibatchCKA()
    ca = FeatureCapture(model_a, list(range(num_layers(model_a))), hidden=True)
    cb = FeatureCapture(model_b, list(range(num_layers(model_b))), hidden=True)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if x.shape[0] < 4:
                continue
            ca.clear()
            cb.clear()
            model_a(x)
            model_b(x)
            cka.update([h.flatten(1) for h in ca.hidden], [h.flatten(1) for h in cb.hidden])
    finally:
        ca.remove()
        cb.remove()
        model_a.train(was[0])
        model_b.train(was[1])
    if cka.num_batches == 0:
        raise ValueError("no batch of at least 4 images to compute CKA on")
    return cka.compute()


def model_row(name: str, model: nn.Module, input_shape: tuple[int, ...], latency_runs: int = 20) -> dict:
    """``name``, ``params``, ``size_mb`` (10^6 bytes), ``gflops`` and ``latency_ms`` (:mod:`minivit.measure`; the
    latency of the inference copy, deltas folded: :func:`minivit.fold_deltas`)."""
    from ..core.delta import fold_deltas

    return {
        "name": name,
        "params": count_parameters(model),
        "size_mb": size_mb(model),
        "gflops": round(flops(model, input_shape) / 1e9, 4),
        "latency_ms": round(latency_ms(fold_deltas(model), input_shape, runs=latency_runs), 3),
    }


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """``rows`` as a markdown table (integers with thousands separators); ``columns``: default the first row's keys."""
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def analyze(
    teacher: nn.Module,
    student: nn.Module,
    batches,
    output_dir: str | os.PathLike,
    input_shape: tuple[int, ...],
    max_batches: int | None = 20,
    names: tuple[str, str] = ("teacher", "student"),
) -> dict:
    """CKA per layer (line plot + heatmap), a size/speed table; PNGs, ``analysis.md``, ``analysis.json``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    matrix = layer_cka(teacher, student, batches, max_batches)
    lt, ls = matrix.shape
    written = [
        plot_heatmap(
            matrix,
            f"Linear CKA between layers: {names[0]} vs {names[1]}",
            f"{names[1]} layer",
            f"{names[0]} layer",
            out / "cka_heatmap.png",
            xticklabels=[str(i + 1) for i in range(ls)],
            yticklabels=[str(i + 1) for i in range(lt)],
            colorbar_label="linear CKA",
            vmin=0.0,
            vmax=1.0,
        )
    ]
    # aligned layers: same index when depths agree, else student layer j vs teacher at the same relative depth
    aligned = [float(matrix[round((j + 1) * lt / ls) - 1, j]) for j in range(ls)]
    written.append(
        plot_lines(
            {f"{names[1]} vs {names[0]}": (list(range(1, ls + 1)), aligned)},
            "Linear CKA per layer (same relative depth)",
            f"{names[1]} layer",
            "linear CKA",
            out / "cka_per_layer.png",
            ylim=(0.0, 1.05),
        )
    )
    rows = [model_row(names[0], teacher, input_shape), model_row(names[1], student, input_shape)]
    for r in rows[1:]:
        r["params_ratio"] = round(r["params"] / rows[0]["params"], 4)
        r["latency_ratio"] = round(r["latency_ms"] / rows[0]["latency_ms"], 3)
    summary = {
        "table": rows,
        "cka_per_layer": aligned,
        "cka_matrix": matrix.tolist(),
        "plots": [p.name for p in written],
    }
    md = [
        f"# {names[1]} vs {names[0]}",
        "",
        markdown_table(rows),
        "",
        "Linear CKA of each student layer with the teacher layer at the same relative depth:",
        "",
        markdown_table([{"layer": i + 1, "CKA": round(v, 4)} for i, v in enumerate(aligned)]),
        "",
        "![CKA per layer](cka_per_layer.png)",
        "",
        "![CKA heatmap](cka_heatmap.png)",
        "",
    ]
    atomic_write(out / "analysis.md", "\n".join(md))
    atomic_write(out / "analysis.json", json.dumps(summary, indent=2) + "\n")
    return summary
