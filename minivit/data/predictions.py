"""Write one row per validation image: ``path,label,pred,pred_name,prob``.

``path`` is the image file for folders and ``<split>/<index>`` (the index in the full split) for
the built-in sets; ``label`` and ``pred`` are class indices, ``pred_name`` the predicted class's
name and ``prob`` its softmax probability. The file is written to a temporary file beside it and
renamed into place, so a failure never leaves half a file.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from minivit.errors import DataError

PREDICTION_COLUMNS = ("path", "label", "pred", "pred_name", "prob")


def prediction_rows(dataset, logits: torch.Tensor, indices: Sequence[int] | None = None) -> list[dict]:
    """Rows for :func:`write_predictions` from a dataset and the model's logits ``[N, classes]``.

    ``indices`` are the dataset indices the logits belong to, in order (default: every sample).
    The dataset needs ``classes``, ``targets`` and ``sample_id(index)``
    (every :class:`~minivit.data.base.ImageDataset` has them).
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    if logits.ndim != 2 or len(indices) != len(logits) or any(not 0 <= i < len(dataset) for i in indices):
        raise DataError(
            f"expected one row of logits per sample, got {tuple(logits.shape)} for {len(indices)} samples "
            f"of a dataset of {len(dataset)}"
        )
    probs = torch.softmax(logits.detach().float(), dim=1)
    prob, pred = probs.max(dim=1)
    targets = dataset.targets
    return [
        {
            "path": dataset.sample_id(index),
            "label": int(targets[index]),
            "pred": int(p),
            "pred_name": dataset.classes[int(p)],
            "prob": f"{float(q):.6f}",
        }
        for index, p, q in zip(indices, pred.tolist(), prob.tolist())
    ]


def write_predictions(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write ``rows`` (dicts with :data:`PREDICTION_COLUMNS`) as CSV to ``path``, atomically."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"--predictions {path} is a folder", hint="give a file name, e.g. predictions.csv")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror or err}", hint="choose a writable location") from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=PREDICTION_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
