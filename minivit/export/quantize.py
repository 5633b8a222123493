"""Dynamic int8 quantisation of Linear layers, and the size bookkeeping of the whole compression chain.

:func:`quantize_dynamic_int8` is ``torch.ao.quantization.quantize_dynamic`` for ``nn.Linear`` (int8
weights, activations quantised per batch at run time), written as an explicit module swap with a
memo: every distinct ``nn.Linear`` object becomes exactly one quantised module, even when it is
reachable under several names. In a weight-multiplexed model the shared block's attention and MLP
Linears are single modules run ``k`` times, so each is quantised once and stays shared.

:func:`size_report` puts the chain side by side: teacher (fp32) -> multiplexed student (fp32) ->
int8 student, with the ratio of each step and the combined one.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..measure import count_parameters, to_mb
from ._io import check_model, quiet


def quantize_dynamic_int8(model: nn.Module, per_channel: bool = False, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``nn.Linear`` layers are dynamically quantised to int8.

    Args:
        model: any ``nn.Module``; only exact ``nn.Linear`` instances are swapped (as
            ``torch.ao.quantization.quantize_dynamic`` does), everything else stays fp32.
        per_channel: one scale per output channel instead of per tensor (usually more accurate).
        inplace: swap the modules in ``model`` itself instead of a deep copy.

    The result runs on CPU with the current ``torch.backends.quantized.engine``; it can be traced
    and saved with :func:`~minivit.export.export_torchscript`. ``model.minivit_int8`` is set to
    ``True`` on the result.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    model = check_model(model)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    memo: dict[int, nn.Module] = {}
    visited: set[int] = set()

    def swap(parent: nn.Module) -> None:
        if id(parent) in visited:
            return
        visited.add(id(parent))
        for name, child in list(parent._modules.items()):  # not named_children(): it hides aliases
            if child is None:
                continue
            if type(child) is nn.Linear:
                if id(child) not in memo:
                    if child.weight.device.type != "cpu":
                        raise ConfigError("dynamic int8 quantisation runs on CPU", "call model.cpu() first")
                    child.qconfig = qconfig
                    memo[id(child)] = DynamicQuantizedLinear.from_float(child)
                    del child.qconfig
                setattr(parent, name, memo[id(child)])
            else:
                swap(child)

    with quiet():  # torch.ao.quantization warns that it is deprecated in favour of torchao
        swap(model)
    model.minivit_int8 = True
    return model


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: one measure that fits fp32 and int8 models alike.

    Shared tensors are stored once by ``torch.save``; int8 Linear weights are their packed int8
    tensors plus a scale and zero point.
    """
    buf = io.BytesIO()
    with quiet():
        torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _entry(model: nn.Module) -> dict[str, Any]:
    nbytes = state_dict_bytes(model)
    return {"params": count_parameters(model), "bytes": nbytes, "mb": to_mb(nbytes)}


def size_report(teacher: nn.Module, student: nn.Module, student_int8: nn.Module | None = None) -> dict[str, Any]:
    """Sizes of teacher -> student -> int8 student and the ratio of each step.

    ``student_int8`` defaults to :func:`quantize_dynamic_int8` of ``student``. Sizes are
    :func:`state_dict_bytes`. Returns ``{"teacher": {...}, "student": {...}, "student_int8": {...},
    "ratios": {"teacher/student", "student/student_int8", "teacher/student_int8"}}``, each entry
    holding ``params``, ``bytes`` and ``mb``; ``teacher/student_int8`` is the combined compression.
    """
    if student_int8 is None:
        student_int8 = quantize_dynamic_int8(student)
    t, s, q = _entry(teacher), _entry(student), _entry(student_int8)
    return {
        "teacher": t,
        "student": s,
        "student_int8": q,
        "ratios": {
            "teacher/student": round(t["bytes"] / s["bytes"], 3),
            "student/student_int8": round(s["bytes"] / q["bytes"], 3),
            "teacher/student_int8": round(t["bytes"] / q["bytes"], 3),
        },
    }
