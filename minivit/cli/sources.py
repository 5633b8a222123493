"""Where the commands' models come from, and the preprocessing each one expects.

* :func:`saved_data_config`: the data config a saved model records (``config.json``'s timm-style
  ``data_config`` or ``pretrained_cfg``, or a run's recorded configuration); a model saved before data
  configs existed was trained on images squashed to its input size with mean 0.5 / std 0.5
  (:func:`~minivit.data.legacy_data_config`), and gets that;
* :func:`load_user_weights`: a user's own weights file (``.safetensors``, or ``.pth`` / ``.pt`` read with
  ``weights_only=True``; wrappers and ``module.`` prefixes handled) loaded into a model built by name. A
  classifier of another class count is dropped with a one-line note and the model keeps its freshly
  initialised head, as timm's ``num_classes=`` does with pretrained weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..data import DATA_CONFIG_KEYS, DataConfig, legacy_data_config
from ..io import load_state_dict_checked, read_weights
from ..measure import infer_input_size

Log = Callable[[str], None] | None


def saved_data_config(model: nn.Module, record: Mapping | None) -> DataConfig:
    """The preprocessing ``model`` was saved with: ``record`` is its ``config.json`` (or a run's recorded
    configuration). minivit's explicit ``data_config`` wins, then timm's ``pretrained_cfg``; neither (a folder
    written before data configs were recorded): the legacy squash."""
    record = record or {}
    for key in ("data_config", "pretrained_cfg"):
        saved = record.get(key)
        if isinstance(saved, Mapping) and all(k in saved for k in DATA_CONFIG_KEYS):
            return DataConfig.from_dict(dict(saved))
    _, chans, height, width = infer_input_size(model)
    return legacy_data_config((height, width), chans)


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of the model's classifier(s), as its ``pretrained_cfg["classifier"]`` names them."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def fit_head(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, log: Log = None) -> dict:
    """``state_dict`` with a classifier of another class count replaced by the model's own (fresh) one."""
    own = model.state_dict()
    heads = classifier_prefixes(model)
    mismatched = [
        k for k, v in state_dict.items() if k.startswith(heads) and k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if not mismatched:
        return dict(state_dict)
    weight = next((k for k in mismatched if k.endswith("weight")), mismatched[0])
    theirs, ours = state_dict[weight].shape[0], own[weight].shape[0]
    if log is not None:
        log(
            f"note: {source} has a {theirs}-class head and the model has {ours} classes: the head starts from "
            "fresh weights (the rest is loaded)"
        )
    out = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    out.update({k: v for k, v in own.items() if k.startswith(heads)})
    return out


def load_user_weights(model: nn.Module, path: str | os.PathLike, log: Log = None, what: str = "--checkpoint"):
    """Load a user's weights file into ``model`` (head re-sized if needed); missing/unexpected keys are an error."""
    source = f"{what} {os.fspath(path)}"
    weights = read_weights(path, missing_hint=f"check the {what} path")
    return load_state_dict_checked(model, fit_head(model, weights, source, log), source=source)


__all__ = ["classifier_prefixes", "fit_head", "load_user_weights", "saved_data_config"]
