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

Tensors that differ only by their last layer index (``blocks.3.attn.qkv.weight`` for blocks 0..11, a
relaxed-sharing student's ``deltas.5.fc1.down.weight`` for layers 0..11) and agree in shape and dtype are
stored stacked, as one tensor ``blocks.#.attn.qkv.weight`` of shape ``(12, ...)`` (the file's metadata says
``"packed": "1"``). The numbers are the same; what shrinks is the file's header, a hundred-odd bytes of JSON
per tensor, which for a student with a few hundred small delta factors and scales was a fifth of its file.

Written by ``minivit export --format safetensors --int8``. :func:`int8_bytes` is the size that file has,
without writing it: what the accuracy-per-byte benchmark counts for an int8 model (:func:`safetensors_bytes`
likewise for fp32).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
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


PACKED = "#"  # stands for the layer index in the name of a stacked tensor
METADATA = {"format": "pt", "packed": "1"}


def _stack_key(name: str) -> tuple[str, int] | None:
    """``("blocks.#.attn.qkv.weight", 3)`` for ``blocks.3.attn.qkv.weight``: the name with its last numeric
    part replaced, and that index; None for a name without one."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join([*parts[:i], PACKED, *parts[i + 1 :]]), int(parts[i])
    return None


def pack(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Stack the tensors that differ only by their last layer index, indices ``0..n-1`` (n > 1), same shape and
    dtype, into one tensor named with ``#`` in place of the index; the others stay as they are."""
    groups: dict[str, dict[int, str]] = {}
    for name in tensors:
        key = _stack_key(name)
        if key is not None and PACKED not in name.split("."):
            groups.setdefault(key[0], {})[key[1]] = name
    out, used = {}, set()
    for stacked, members in groups.items():
        names = [members.get(i) for i in range(len(members))]
        if len(names) < 2 or None in names:
            continue
        first = tensors[names[0]]
        if any(tensors[n].shape != first.shape or tensors[n].dtype != first.dtype for n in names):
            continue
        out[stacked] = torch.stack([tensors[n] for n in names])
        used.update(names)
    out.update({n: t for n, t in tensors.items() if n not in used})
    return out


def unpack(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`pack`: every ``#`` tensor split back into its layers' tensors."""
    out = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if PACKED not in parts:
            out[name] = t
            continue
        i = len(parts) - 1 - parts[::-1].index(PACKED)
        out.update({".".join([*parts[:i], str(j), *parts[i + 1 :]]): t[j].clone() for j in range(t.shape[0])})
    return out


def int8_tensors(qmodel: nn.Module) -> dict[str, Tensor]:
    """The tensors of ``model.int8.safetensors`` for a model quantised by :func:`quantize_dynamic_int8`,
    stacked by layer (:func:`pack`)."""
    return pack(_layer_tensors(qmodel))


def _layer_tensors(qmodel: nn.Module) -> dict[str, Tensor]:
    """:func:`int8_tensors` before stacking: one entry per layer's tensor."""
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
    return len(save(int8_tensors(_quantised(model, per_channel)), metadata=METADATA))


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
        save_file(tensors, str(tmp / INT8_WEIGHTS_NAME), metadata=METADATA)
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
        with safe_open(str(path), "pt") as f:
            packed = (f.metadata() or {}).get("packed") == "1"
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError (Rust) on a damaged file
        raise CheckpointError(f"cannot read {path} ({str(e).splitlines()[0]})", "re-export the model") from None
    tensors = unpack(tensors) if packed else tensors  # (files written before stacking hold one tensor per layer)
    model = quantize_dynamic_int8(build_from_config(cfg), per_channel=bool(scheme.get("per_channel")), inplace=True)
    expected = set(_layer_tensors(model))  # the keys this architecture's layers hold
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
