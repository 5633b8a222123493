"""Save and load models as ``model.safetensors`` + ``config.json``.

``config.json`` records how to rebuild the architecture exactly:

* ``{"family": "timm", "name": ..., "model_args": {...}}`` for any model created by name (timm models and
  the registered Mini-* models);
* ``{"family": "multiplexed_vit" | "multiplexed_swin", "model_args": {...}, "multiplex": {...}}`` for a
  student made by :func:`minivit.multiplex`: its architecture arguments and its whole
  :class:`~minivit.MultiplexSpec`. Older files kept the multiplexing options among ``model_args``; they
  still load (the options are read back into a spec);
* ``{"family": "vit", "model_args": {...}}`` for a plain timm ViT built without a name.

Writes go to a temporary folder that is renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..families import build_vit, describe_vit, family_by_config_name, family_of_student
from ..spec import MultiplexSpec
from ..zoo import create_model
from .atomic import atomic_folder
from .limits import check_config_size, check_materialised
from .state_dict import load_state_dict_checked, read_weights

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def model_config(model: nn.Module) -> dict:
    """The JSON-able description that :func:`build_from_config` turns back into ``model``."""
    cfg = getattr(model, "minivit_config", None)
    family = family_of_student(model)
    if cfg is not None:
        cfg = dict(cfg)
    elif family is not None:
        cfg = {"family": family.config_name, "model_args": dict(model.arch_args), "multiplex": model.spec.to_dict()}
    elif isinstance(model, VisionTransformer):
        cfg = {"family": "vit", "model_args": describe_vit(model)}
    else:
        raise ConfigError(
            f"cannot describe a {type(model).__name__} for saving",
            "create models with minivit.create_model(name, ...) or minivit.multiplex(...)",
        )
    cfg["format_version"] = FORMAT_VERSION
    cfg["num_classes"] = getattr(model, "num_classes", None)
    return json.loads(json.dumps(cfg, default=_json_default))


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, MultiplexSpec):
        return o.to_dict()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _build_timm(cfg: dict, args: dict) -> nn.Module:
    name = cfg.get("name")
    if not isinstance(name, str):
        raise ConfigError("config field 'name' must be a model name string", "e.g. 'deit_tiny_patch16_224'")
    try:
        return create_model(name, pretrained=False, **args)
    except ConfigError as e:
        if not e.message.startswith("bad arguments"):
            raise  # e.g. an unknown model name: its own hint applies
        raise ConfigError(
            f"config.json does not describe a valid model: {e.message}",
            "check model_args in config.json, or re-save the model",
        ) from None


def _build_multiplexed(cfg: dict, args: dict) -> nn.Module:
    family = family_by_config_name(cfg["family"])
    if family is None:
        raise ConfigError(f"unknown model family {cfg['family']!r} in config", "regenerate config.json")
    spec = cfg.get("multiplex")
    if spec is None:  # written before the spec had its own object: the options sit among model_args
        names = MultiplexSpec.field_names()
        spec = {**family.legacy_spec, **{k: args.pop(k) for k in list(args) if k in names}}
    if not isinstance(spec, dict):
        raise ConfigError("config field 'multiplex' must be an object", f"got {type(spec).__name__}")
    return family.student_type(**args, spec=MultiplexSpec.from_dict(spec))


def build_from_config(cfg: dict) -> nn.Module:
    """Rebuild an architecture (random weights) from a :func:`model_config` dict."""
    check_config_size(cfg)  # an untrusted config may ask for any size: refused before allocating
    if not isinstance(cfg, dict) or "family" not in cfg:
        raise ConfigError("config has no 'family' field", "regenerate config.json with save_pretrained")
    args = cfg.get("model_args", {})
    if not isinstance(args, dict):
        raise ConfigError("config field 'model_args' must be an object", f"got {type(args).__name__}")
    args = {k: tuple(v) if k in ("img_size", "patch_size") and isinstance(v, list) else v for k, v in args.items()}
    try:
        if cfg["family"] == "timm":
            model = _build_timm(cfg, args)
        elif cfg["family"] == "vit":
            model = build_vit(args)
        else:
            model = _build_multiplexed(cfg, args)
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"config.json does not describe a valid model: {e}", "check model_args") from None
    if cfg["family"] == "timm":  # the others are described again from the model (older layouts are upgraded)
        model.minivit_config = {k: v for k, v in cfg.items() if k not in ("format_version", "num_classes")}
    return model


def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created; replaced atomically)."""
    directory = Path(directory)
    cfg = model_config(check_materialised(model))
    if extra:
        cfg.update(extra)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(directory, last=(CONFIG_NAME,)) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


def read_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise CheckpointError(f"model directory not found: {directory}", "pass a folder written by save_pretrained")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", "a saved model folder holds config.json and model.safetensors")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})", "the file is corrupted; re-save the model") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} must hold a JSON object", "re-save the model")
    return cfg


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a saved model's ``model.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", "a saved model folder holds config.json and model.safetensors")
    return read_weights(path)


def from_pretrained(directory: str | os.PathLike) -> nn.Module:
    """Rebuild the model saved in ``directory`` and load its weights (eval mode)."""
    cfg = read_config(directory)
    model = build_from_config(cfg)
    load_state_dict_checked(model, load_weights(Path(directory) / WEIGHTS_NAME), source=str(directory))
    return model.eval()
