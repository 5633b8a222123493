"""Reading weights files and loading state dicts with one clear error for what does not fit.

* :func:`read_weights`: a ``.safetensors`` file, or a ``.pth`` / ``.pt`` read with ``weights_only=True``
  (never runs code from the file), unwrapping ``{"state_dict": ...}``, ``{"model": ...}`` or
  ``{"model_ema": ...}`` and ``module.`` prefixes (DataParallel / DDP);
* :func:`load_state_dict_checked`: a strict ``load_state_dict`` whose error names the first missing,
  unexpected and mis-shaped keys in one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError
from .unpickle import load_weights_only

WRAPPERS = ("model", "state_dict", "model_ema")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}", "the file is corrupted or truncated; re-save it") from None


def _read_pickle(path: Path) -> object:
    return load_weights_only(path)


def read_weights(path: str | os.PathLike, missing_hint: str = "check the path") -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.safetensors``, else a weights-only PyTorch pickle), unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", missing_hint)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = _read_pickle(path)
    if isinstance(obj, Mapping):
        wrapped = next((obj[w] for w in WRAPPERS if isinstance(obj.get(w), Mapping)), None)
        obj = obj if wrapped is None else wrapped
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors", "expected {'model': state_dict}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"):
    """``load_state_dict(strict=True)`` that names the first offending keys in one clear error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), first: {'; '.join(wrong[:3])}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model: " + "; ".join(problems),
            "check that the config/architecture matches the one the checkpoint was trained with",
        )
    bad_dtype = [k for k, v in state_dict.items() if not (v.is_floating_point() or own[k].dtype == v.dtype)]
    if bad_dtype:
        raise CheckpointError(
            f"{source} has non-floating tensors where weights are expected: {', '.join(bad_dtype[:3])}",
            "the checkpoint is corrupted or from another model",
        )
    model.load_state_dict(state_dict, strict=True)
    return model
