"""TorchScript and safetensors export.

:func:`export_torchscript` traces the model (``torch.jit.trace``) on a random batch, saves it
atomically, loads the saved file back and compares it with the eager model on fresh inputs of two
batch sizes. Dynamically quantised int8 models (:func:`~minivit.export.quantize.quantize_dynamic_int8`)
trace too, which makes TorchScript the PyTorch-native way to ship them.

:func:`export_safetensors` is :func:`minivit.save_pretrained` (``config.json`` + ``model.safetensors``,
itself atomic) with the same summary dict as the other exporters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MinivitError
from ._io import (
    check_file_target,
    check_model,
    commit,
    eval_mode,
    flat_outputs,
    normalize_input_size,
    quiet,
    random_input,
    staging_dir,
    to_mb,
)


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds dynamically quantised modules (from ``quantize_dynamic_int8``)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


@torch.no_grad()
def _max_diff(a: object, b: object) -> tuple[float, float]:
    diff, ref = 0.0, 0.0
    for x, y in zip(flat_outputs(a), flat_outputs(b), strict=True):
        diff = max(diff, float((x.float() - y.float()).abs().max()))
        ref = max(ref, float(y.float().abs().max()))
    return diff, ref


@torch.no_grad()
def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, ...] | int | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Trace ``model`` with ``torch.jit.trace`` and save it to ``path`` (atomically).

    ``input_size`` as in :func:`~minivit.export.export_onnx` (default: inferred). With ``verify`` the
    saved file is loaded back and run on random inputs of batch ``B`` and ``B + 2``; a difference above
    ``tolerance * max(1, max |logit|)`` from the eager model raises :class:`MinivitError` and nothing
    is written. Returns ``format``, ``path``, ``bytes``, ``mb``, ``input_size``, ``int8``,
    ``max_abs_diff``, ``max_abs_ref`` and ``batches``.
    """
    model = check_model(model)
    target = check_file_target(path, "TorchScript")
    size = normalize_input_size(input_size, model)
    result: dict[str, Any] = {"format": "torchscript", "input_size": list(size), "int8": is_quantized(model)}
    with eval_mode(model), staging_dir(target) as tmp:
        staged = tmp / target.name
        x = random_input(model, size)
        try:
            with quiet():
                traced = torch.jit.trace(model, x, check_trace=False)
                torch.jit.save(traced, str(staged))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - tracing raises anything the model's code raises
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise MinivitError(f"TorchScript tracing failed: {msg}", "try --format onnx") from None
        if verify:
            with quiet():
                loaded = torch.jit.load(str(staged), map_location=x.device)
            diff, ref = 0.0, 0.0
            batches = [size[0], size[0] + 2]
            for i, b in enumerate(batches):
                xi = random_input(model, (b, *size[1:]), seed=1 + i)
                d, r = _max_diff(loaded(xi), model(xi))
                diff, ref = max(diff, d), max(ref, r)
            limit = tolerance * max(1.0, ref)
            if not diff <= limit:
                raise MinivitError(
                    f"the traced model differs from the eager one by {diff:.3g} (limit {limit:.3g})",
                    "the model has data-dependent control flow; use --format onnx or safetensors",
                )
            result.update(max_abs_diff=diff, max_abs_ref=ref, batches=batches)
        commit([(staged, target)])
    nbytes = target.stat().st_size
    return {"format": "torchscript", "path": str(target), "bytes": nbytes, "mb": to_mb(nbytes), **result}


def export_safetensors(model: nn.Module, directory: str | os.PathLike) -> dict[str, Any]:
    """Save ``model`` as ``config.json`` + ``model.safetensors`` in ``directory`` (:func:`minivit.save_pretrained`).

    Returns ``format``, ``path`` (the folder), ``files``, ``bytes`` (both files) and ``mb``. int8
    models cannot be saved this way (their packed weights are not plain tensors): use TorchScript.
    """
    from ..io import save_pretrained

    model = check_model(model)
    if is_quantized(model):
        raise ConfigError("an int8-quantised model cannot be saved as safetensors", "use --format torchscript --int8")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise MinivitError(f"safetensors output {directory} is a file", "pass a folder path")
    try:
        save_pretrained(model, directory)
    except OSError as e:
        raise MinivitError(f"cannot write {directory}: {e.strerror or e}", "choose a writable folder") from None
    files = sorted(p for p in directory.iterdir() if p.name in ("config.json", "model.safetensors"))
    nbytes = sum(p.stat().st_size for p in files)
    return {
        "format": "safetensors",
        "path": str(directory),
        "files": [str(p) for p in files],
        "bytes": nbytes,
        "mb": to_mb(nbytes),
        "int8": False,
    }
