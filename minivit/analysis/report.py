"""Training reports: curves of every loss term and of top-1 from a run folder, plus a markdown summary.

A run folder (from ``minivit train`` / ``compress``) holds ``metrics.jsonl`` (one JSON record per
epoch), optionally ``grad_norms.jsonl`` and ``report.json``. :func:`write_report` turns them into
``curves_loss.png``, ``curves_top1.png``, ``grad_norms_*.png`` and ``report.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import MinivitError
from ..io.atomic import atomic_write
from .compare import markdown_table
from .grad_norms import plot_grad_norms
from .plots import plot_lines


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MinivitError(f"{path} not found", "pass a folder written by `minivit train` or `minivit compress`")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise MinivitError(f"{path}:{i} is not valid JSON", "the file is corrupted") from None
    if not rows:
        raise MinivitError(f"{path} is empty", "the run has not finished an epoch yet")
    return rows


def _numeric_series(rows: list[dict], keys: list[str]) -> dict[str, tuple[list, list]]:
    series = {}
    for key in keys:
        pts = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), (int, float))]
        if pts:
            series[key] = ([p[0] for p in pts], [p[1] for p in pts])
    return series


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write the PNG curves and ``report.md`` into ``run_dir``; return the markdown path."""
    run = Path(run_dir)
    rows = read_metrics(run)
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    loss_keys = [k for k in keys if k.startswith("train_") and not k.endswith(("img_s", "lr", "time", "seconds"))]
    top_keys = [k for k in keys if "top1" in k or "top5" in k]
    plots = []
    loss = _numeric_series(rows, loss_keys)
    if loss:
        plots.append(
            plot_lines(loss, "Training loss terms per epoch", "epoch", "loss (epoch mean)", run / "curves_loss.png")
        )
    top = _numeric_series(rows, top_keys)
    if top:
        plots.append(plot_lines(top, "Validation accuracy per epoch", "epoch", "accuracy (%)", run / "curves_top1.png"))
    if (run / "grad_norms.jsonl").is_file():
        plots += plot_grad_norms({run.name: run / "grad_norms.jsonl"}, run)
    md = [f"# Run report: {run.name}", ""]
    final = None
    if (run / "report.json").is_file():
        try:
            final = json.loads((run / "report.json").read_text())
        except json.JSONDecodeError:
            final = None
    if isinstance(final, dict):
        flat = {k: v for k, v in final.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if flat:
            md += ["## Final", "", markdown_table([flat]), ""]
    last = rows[-1]
    md += ["## Last epoch", "", markdown_table([{k: last[k] for k in keys if k in last}]), ""]
    md += ["## Curves", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    path = run / "report.md"
    atomic_write(path, "\n".join(md))
    return path
