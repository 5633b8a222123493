"""Atomic file output and small helpers shared by the exporters.

Every exporter writes into a private staging folder created next to the target (same file system),
verifies what it wrote, and only then renames the finished file(s) into place. A failure at any
step (export error, verification failure, full disk, unwritable folder) leaves the target untouched
and removes the staging folder, so there is never a half-written model on disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, MinivitError

MB = 1024 * 1024
EXPORTERS = ("auto", "dynamo", "torchscript")
"""ONNX exporters: ``auto`` tries dynamo first and falls back to the TorchScript exporter."""


def to_mb(nbytes: int) -> float:
    """Bytes to MiB, rounded to 3 decimals (what summaries print)."""
    return round(nbytes / MB, 3)


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
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder next to ``target`` (created with its parents), always removed on exit."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise MinivitError(
            f"cannot write to {parent}: {e.strerror or e}", "choose an output path in a writable folder"
        ) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(files: list[tuple[Path, Path]]) -> None:
    """fsync each staged file and rename it onto its target (in order: put the main file last)."""
    try:
        for src, _ in files:
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
        for src, dst in files:
            os.replace(src, dst)
    except OSError as e:
        raise MinivitError(
            f"cannot write {files[-1][1]}: {e.strerror or e}", "choose an output path in a writable folder"
        ) from None


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence exporter chatter (progress prints on stdout, deprecation warnings); yields the captured text."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        yield buf


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


def infer_input_size(model: nn.Module, batch: int = 1) -> tuple[int, int, int, int]:
    """``(batch, channels, height, width)`` the model was built for.

    Read from ``patch_embed.img_size`` and the patch projection's input channels (timm ViT, DeiT,
    Swin and the multiplexed models); failing that, from ``pretrained_cfg["input_size"]``.
    """
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    proj = getattr(pe, "proj", None)
    chans = getattr(proj, "in_channels", None) or getattr(pe, "in_chans", None)
    if img_size is not None and chans is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        return (batch, int(chans), int(h), int(w))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(cfg, dict) and len(cfg.get("input_size", ())) == 3:
        c, h, w = cfg["input_size"]
        return (batch, int(c), int(h), int(w))
    raise ConfigError(
        f"cannot infer the input size of a {type(model).__name__}",
        "pass input_size=(batch, channels, height, width) (CLI: --input-size H W)",
    )


def normalize_input_size(input_size: object, model: nn.Module) -> tuple[int, int, int, int]:
    """Accept ``None`` (inferred), ``S``, ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``; return 4 positive ints."""
    if input_size is None:
        return infer_input_size(model)
    size = (input_size,) if isinstance(input_size, int) else tuple(input_size)  # type: ignore[arg-type]
    if not size or len(size) > 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ConfigError(
            f"input_size must be 1 to 4 positive integers, got {input_size!r}", "e.g. (1, 3, 224, 224) or (224, 224)"
        )
    if len(size) == 4:
        return size  # type: ignore[return-value]
    default = _default_size(model)
    if len(size) == 1:
        return (1, default[1], size[0], size[0])
    if len(size) == 2:
        return (1, default[1], size[0], size[1])
    return (1, *size)  # type: ignore[return-value]


def _default_size(model: nn.Module) -> tuple[int, int, int, int]:
    try:
        return infer_input_size(model)
    except ConfigError:
        return (1, 3, 224, 224)
