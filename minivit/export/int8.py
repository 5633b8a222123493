"""int8 weights as plain safetensors: the model :func:`quantize_dynamic_int8` makes, stored tensor by tensor.

PyTorch keeps a dynamically quantised Linear's weight in a packed object that safetensors cannot hold and
that ``torch.save`` stores with a few hundred bytes of overhead per tensor (more than a small low-rank
factor itself weighs). This format stores the same numbers as plain tensors:

* for every quantised Linear ``name`` (each shared Linear once): ``name.weight`` (int8, ``(out, in)``),
  ``name.weight_scale`` (float32, ``[]`` per tensor or ``[out]`` per channel), ``name.weight_zero_point``
  (int8, same shape) and ``name.bias`` (float32, when the layer has one);
* every other tensor of the model's state dict unchanged (float32 norms, embeddings, head mixing, ...);

in ``model.int8.safetensors``, next to the fp32 model's ``config.json`` with an ``"int8"`` entry
(``{"scheme": "dynamic", "per_channel": ...}``). :func:`load_int8_safetensors` rebuilds the quantised model;
its outputs equal the exporter's quantised model up to the float32 rounding of the scales.

Written by ``minivit export --format safetensors --int8``. :func:`int8_bytes` is the size that file has,
without writing it: what the accuracy-per-byte benchmark counts for an int8 model (:func:`safetensors_bytes`
likewise for fp32).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save, save_file
from torch import Tensor, nn

from ..errors import CheckpointError
from ..io.atomic import atomic_folder
from ._io import check_model
from .quantize import quantize_dynamic_int8
from .torchscript import is_quantized

INT8_WEIGHTS_NAME = "model.int8.safetensors"


def _dynamic_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The dynamically quantised Linear layers by their first name (a shared layer once)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicQuantizedLinear)}


def _plain_tensors(model: nn.Module, skip: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Every state-dict tensor that does not belong to a quantised Linear (their packed parameters); the
    model's own tensors, not copies."""
    prefixes = tuple(f"{n}." for n in skip)
    return {k: v.detach() for k, v in model.state_dict().items()
            if isinstance(v, Tensor) and not k.startswith(prefixes)}


def int8_tensors(qmodel: nn.Module) -> dict[str, Tensor]:
    """The tensors of ``model.int8.safetensors`` for a model quantised by :func:`quantize_dynamic_int8`."""
    linears = _dynamic_linears(qmodel)
    out = {k: v.contiguous() for k, v in _plain_tensors(qmodel, linears).items()}
    for name, layer in linears.items():
        w = layer.weight()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale, zero = w.q_per_channel_scales(), w.q_per_channel_zero_points()
        else:
            scale, zero = torch.tensor(w.q_scale()), torch.tensor(w.q_zero_point())
        out[f"{name}.weight"] = w.int_repr().contiguous()
        out[f"{name}.weight_scale"] = scale.to(torch.float32)
        out[f"{name}.weight_zero_point"] = zero.to(torch.int8)
        if layer.bias() is not None:
            out[f"{name}.bias"] = layer.bias().detach().contiguous()
    return out


def _quantised(model: nn.Module, per_channel: bool) -> nn.Module:
    model = check_model(model)
    return model if is_quantized(model) else quantize_dynamic_int8(model, per_channel=per_channel)


def int8_bytes(model: nn.Module, per_channel: bool = False) -> int:
    """Bytes of the ``model.int8.safetensors`` that ``export_safetensors(model, dir, int8=True)`` writes
    (``model`` fp32, or already quantised by :func:`quantize_dynamic_int8`)."""
    return len(save(int8_tensors(_quantised(model, per_channel)), metadata={"format": "pt"}))


def safetensors_bytes(model: nn.Module) -> int:
    """Bytes of the ``model.safetensors`` :func:`minivit.save_pretrained` writes for ``model``."""
    from ..io.pretrained import weights_to_save

    return len(save(weights_to_save(model), metadata={"format": "pt"}))


def save_int8(model: nn.Module, directory: Path, per_channel: bool = False) -> None:
    """Quantise ``model`` (fp32) to dynamic int8 and save ``config.json`` + ``model.int8.safetensors`` in
    ``directory`` (atomically); :func:`minivit.export.export_safetensors` with ``int8=True`` is the exporter."""
    from ..io.pretrained import CONFIG_NAME, model_config

    cfg = dict(model_config(model), int8={"scheme": "dynamic", "per_channel": bool(per_channel)})
    tensors = int8_tensors(quantize_dynamic_int8(model, per_channel=per_channel))
    with atomic_folder(directory, last=(CONFIG_NAME,)) as tmp:
        save_file(tensors, str(tmp / INT8_WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


def load_int8_safetensors(directory: str | os.PathLike) -> nn.Module:
    """Rebuild the dynamic-int8 model that ``export_safetensors(model, dir, int8=True)`` saved (eval mode, CPU)."""
    from ..io.pretrained import build_from_config, read_config, restore_data_config

    directory = Path(directory)
    cfg = read_config(directory)
    scheme = cfg.get("int8")
    path = directory / INT8_WEIGHTS_NAME
    if not isinstance(scheme, dict) or not path.is_file():
        raise CheckpointError(f"{directory} holds no int8 model", "export one with: minivit export --format "
                              "safetensors --int8")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError (Rust) on a damaged file
        raise CheckpointError(f"cannot read {path} ({str(e).splitlines()[0]})", "re-export the model") from None
    model = quantize_dynamic_int8(build_from_config(cfg), per_channel=bool(scheme.get("per_channel")), inplace=True)
    expected = set(int8_tensors(model))  # the keys this architecture's file holds
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(f"{path} does not match its config.json (missing {missing[:3]}, unexpected "
                              f"{extra[:3]})", "re-export the model")
    linears = _dynamic_linears(model)
    with torch.no_grad():
        for key, value in _plain_tensors(model, linears).items():
            value.copy_(tensors[key])
    for name, layer in linears.items():
        layer.set_weight_bias(_qweight(tensors, name), tensors.get(f"{name}.bias"))
    return restore_data_config(model, cfg.get("pretrained_cfg")).eval()


def _qweight(tensors: dict[str, Tensor], name: str) -> Tensor:
    w, scale = tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"].to(torch.float64)
    zero = tensors[f"{name}.weight_zero_point"].to(torch.int64)
    if scale.dim() == 0:
        return torch._make_per_tensor_quantized_tensor(w, float(scale), int(zero))
    return torch._make_per_channel_quantized_tensor(w, scale, zero, 0)
