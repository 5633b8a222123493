"""TorchScript export.

:func:`export_torchscript` traces the model (``torch.jit.trace``) on a random batch, saves it
atomically, loads the saved file back and compares it with the eager model on fresh inputs of two
batch sizes. Dynamically quantised int8 models (:func:`~minivit.export.quantize.quantize_dynamic_int8`)
trace too, which makes TorchScript the PyTorch-native way to ship them.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from torch import nn

from ..errors import MinivitError
from ..io.atomic import write_failure
from ._io import ExportJob, export_job, flat_outputs, quiet, random_input


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
    is written. Returns ``format``, ``path``, ``files``, ``bytes``, ``mb``, ``input_size``, ``int8``,
    ``max_abs_diff``, ``max_abs_ref`` and ``batches``.
    """
    with export_job(model, path, "TorchScript", input_size) as job:
        result: dict[str, Any] = {"format": "torchscript", "input_size": list(job.size), "int8": is_quantized(model)}
        staged = job.staged()
        x = random_input(job.model, job.size)
        try:
            with quiet():
                traced = torch.jit.trace(job.model, x, check_trace=False)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - tracing raises anything the model's code raises
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise MinivitError(f"TorchScript tracing failed: {msg}", "try --format onnx") from None
        buffer = io.BytesIO()  # torch.jit.save to a file aborts the process (C++ terminate) on a full disk
        torch.jit.save(traced, buffer)
        try:
            staged.write_bytes(buffer.getbuffer())
        except OSError as e:
            raise write_failure(e, job.target) from None
        del buffer
        if verify:
            result.update(_verify(staged, job, x.device))
            job.check(result["max_abs_diff"], result["max_abs_ref"], tolerance, "the traced model",
                      "the model has data-dependent control flow; use --format onnx or safetensors")  # fmt: skip
        return {**result, **job.write([staged])}


def _verify(staged, job: ExportJob, device) -> dict[str, Any]:
    """Load the saved file back and compare it with the eager model on fresh inputs of every batch size."""
    with quiet():
        loaded = torch.jit.load(str(staged), map_location=device)
    diff, ref = 0.0, 0.0
    batches = job.batches()
    for i, b in enumerate(batches):
        xi = random_input(job.model, (b, *job.size[1:]), seed=1 + i)
        d, r = _max_diff(loaded(xi), job.model(xi))
        diff, ref = max(diff, d), max(ref, r)
    return {"max_abs_diff": diff, "max_abs_ref": ref, "batches": list(batches)}
