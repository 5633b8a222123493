"""safetensors export: :func:`minivit.save_pretrained` with the summary dict of the other exporters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, MinivitError
from ..io.atomic import write_failure
from ..measure import to_mb
from ._io import check_model
from .torchscript import is_quantized

FILES = ("config.json", "model.safetensors")


def export_safetensors(model: nn.Module, directory: str | os.PathLike) -> dict[str, Any]:
    """Save ``model`` as ``config.json`` + ``model.safetensors`` in ``directory`` (:func:`minivit.save_pretrained`).

    Returns ``format``, ``path`` (the folder), ``files``, ``bytes`` (both files) and ``mb``. int8
    models cannot be saved this way (their packed weights are not plain tensors): use TorchScript.
    A failed write raises one :class:`~minivit.errors.WriteError` line (cause and what was kept).
    """
    from ..io.pretrained import save_pretrained

    model = check_model(model)
    if is_quantized(model):
        raise ConfigError("an int8-quantised model cannot be saved as safetensors", "use --format torchscript --int8")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise MinivitError(f"safetensors output {directory} is a file", "pass a folder path")
    try:
        save_pretrained(model, directory)
    except (KeyboardInterrupt, SystemExit, MinivitError):
        raise
    except Exception as e:  # noqa: BLE001 - OSError, SafetensorError (Rust), RuntimeError ...
        raise write_failure(e, directory / "model.safetensors") from None
    files = sorted(p for p in directory.iterdir() if p.name in FILES)
    nbytes = sum(p.stat().st_size for p in files)
    return {
        "format": "safetensors",
        "path": str(directory),
        "files": [str(p) for p in files],
        "bytes": nbytes,
        "mb": to_mb(nbytes),
        "int8": False,
    }
