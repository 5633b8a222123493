"""The steps every exporter shares, written once.

:func:`export_job` checks the model and the target path, settles the input size, puts the model in
eval mode and opens a staging folder next to the target (:func:`minivit.io.staging`, same file
system). The exporter writes and verifies there; :meth:`ExportJob.check` raises when the written file
disagrees with the model, and :meth:`ExportJob.write` renames the finished file(s) into place
(:func:`minivit.io.commit`: mode 0644, ``fsync``) and returns ``path`` / ``files`` / ``bytes`` / ``mb``.
A failure at any step (export error, verification failure, full disk, unwritable folder) leaves the
target untouched and removes the staging folder, so there is never a half-written model on disk.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MinivitError
from ..io.atomic import WRITE_HINT, commit, failure_cause, staging, write_failure
from ..measure import normalize_input_size, to_mb

EXPORTERS = ("auto", "dynamo", "torchscript")
"""ONNX exporters: ``auto`` tries dynamo first and falls back to the TorchScript exporter."""


def check_file_target(path: str | os.PathLike, what: str) -> Path:
    """Validate an output *file* path before any work is done; returns it as a ``Path``."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise MinivitError(f"{what} output path {str(path)!r} has no file name", "pass e.g. out/model.onnx")
    if path.is_dir():
        raise MinivitError(
            f"{what} output path {path} is a directory", f"pass a file path inside it, e.g. {path / 'model.onnx'}"
        )
    return path


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence exporter chatter (progress prints on stdout, deprecation warnings, the tracebacks torch logs when
    its dynamo exporter gives up and the next one is tried); yields the captured stdout."""
    buf = io.StringIO()
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        torch_log.setLevel(level)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch nn.Module to export, got {type(model).__name__}")
    return model


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The floating dtype and device of the model's first parameter (float32 / CPU if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def random_input(model: nn.Module, size: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A reproducible standard-normal input of ``size`` on the model's device and dtype."""
    dtype, device = model_dtype_device(model)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, generator=g).to(device=device, dtype=dtype)


def flat_outputs(out: object) -> list[torch.Tensor]:
    """A model's output(s) as a flat list of tensors (a tensor, or a tuple/list/dict of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat_outputs(o)]
    raise ConfigError(f"model output of type {type(out).__name__} cannot be exported", "return tensors")


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters), for one-line error reports."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def raise_if_disk_failure(e: BaseException, target: Path) -> None:
    """Raise :func:`minivit.io.write_failure` when ``e`` is a full disk / permission / read-only problem.

    Exporters call it before treating an exception as the exporter's own failure (a fallback would
    only hit the same disk again).
    """
    if failure_cause(e, target.parent) in WRITE_HINT:
        raise write_failure(e, target) from None


@dataclass
class ExportJob:
    """One export in progress: the model (eval mode), its target, input size and staging folder."""

    model: nn.Module
    target: Path
    size: tuple[int, int, int, int]
    tmp: Path

    def staged(self, *parts: str) -> Path:
        """A path inside the staging folder (its parent folders created); default the target's name."""
        path = self.tmp.joinpath(*(parts or (self.target.name,)))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def batches(self, dynamic: bool = True) -> tuple[int, ...]:
        """Batch sizes to verify with: the export's own and, for a dynamic batch axis, two more."""
        return (self.size[0], self.size[0] + 2) if dynamic else (self.size[0],)

    def check(self, diff: float, ref: float, tolerance: float, what: str, hint: str) -> None:
        """Raise unless ``diff <= tolerance * max(1, ref)`` (``ref``: the largest PyTorch output magnitude)."""
        limit = tolerance * max(1.0, ref)
        if not diff <= limit:
            raise MinivitError(f"{what} differs from PyTorch by {diff:.3g} (limit {limit:.3g})", hint)

    def write(self, staged: list[Path]) -> dict[str, Any]:
        """Rename ``staged`` files next to the target (the main file last); return its size summary."""
        finals = commit([(f, self.target.with_name(f.name)) for f in staged])
        nbytes = sum(f.stat().st_size for f in finals)
        return {"path": str(self.target), "files": [str(f) for f in finals], "bytes": nbytes, "mb": to_mb(nbytes)}


@contextlib.contextmanager
def export_job(model: object, path: str | os.PathLike, what: str, input_size: object) -> Iterator[ExportJob]:
    """Validate ``model`` and ``path``, settle the input size, then stage in eval mode (see the module doc)."""
    model = check_model(model)
    target = check_file_target(path, what)
    size = normalize_input_size(input_size, model)
    with eval_mode(model), staging(target.parent, target.name) as tmp:
        yield ExportJob(model, target, size, tmp)
