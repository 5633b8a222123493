"""safetensors export: :func:`minivit.save_pretrained` (fp32) or plain int8 tensors (:mod:`minivit.export.int8`),
with the summary dict of the other exporters."""

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


def export_safetensors(model: nn.Module, directory: str | os.PathLike, int8: bool = False,
                       per_channel: bool = False) -> dict[str, Any]:
    """Save ``model`` as ``config.json`` + ``model.safetensors`` in ``directory`` (:func:`minivit.save_pretrained`),
    or with ``int8`` its dynamic-int8 quantisation as ``config.json`` + ``model.int8.safetensors``
    (:mod:`minivit.export.int8`; ``per_channel`` scales optional; load it with
    :func:`~minivit.export.load_int8_safetensors`).

    Returns ``format``, ``int8``, ``path`` (the folder), ``files``, ``bytes`` (both files), ``mb`` and
    ``weights_bytes`` (the weights file alone). Pass an fp32 model: already quantised ones are refused.
    A failed write raises one :class:`~minivit.errors.WriteError` line (cause and what was kept).
    """
    from ..io.pretrained import CONFIG_NAME, WEIGHTS_NAME, save_pretrained
    from .int8 import INT8_WEIGHTS_NAME, save_int8

    model = check_model(model)
    if is_quantized(model):
        raise ConfigError("an int8-quantised model cannot be saved as safetensors",
                          "pass the fp32 model with int8=True (--format safetensors --int8)")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise MinivitError(f"safetensors output {directory} is a file", "pass a folder path")
    weights = directory / (INT8_WEIGHTS_NAME if int8 else WEIGHTS_NAME)
    try:
        if int8:
            save_int8(model, directory, per_channel)
        else:
            save_pretrained(model, directory)
    except (KeyboardInterrupt, SystemExit, MinivitError):
        raise
    except Exception as e:  # noqa: BLE001 - OSError, SafetensorError (Rust), RuntimeError ...
        raise write_failure(e, weights) from None
    files = [weights, directory / CONFIG_NAME]
    nbytes = sum(p.stat().st_size for p in files)
    return {
        "format": "safetensors",
        "path": str(directory),
        "files": [str(p) for p in files],
        "bytes": nbytes,
        "mb": to_mb(nbytes),
        "weights_bytes": weights.stat().st_size,
        "int8": bool(int8),
    }
