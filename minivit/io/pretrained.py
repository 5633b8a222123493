"""Save and load models as ``model.safetensors`` + ``config.json``, in timm's Hub layout.

``config.json`` is what timm's ``save_for_hf`` writes (``architecture``, ``num_classes``, ``num_features``,
``global_pool``, ``model_args``, ``pretrained_cfg`` with the data config) plus minivit's own fields, so after
``import minivit`` both :func:`from_pretrained` and ``timm.create_model("local-dir:DIR", pretrained=True)`` (or
``"hf-hub:USER/NAME"`` once pushed) rebuild the model. ``architecture`` is a registered timm name:

* a model created by name (timm models and the Mini-* models): that name, ``model_args`` its keywords; minivit's
  fields ``{"family": "timm", "name": ...}``;
* a student made by :func:`minivit.multiplex`: ``multiplexed_vit`` / ``multiplexed_swin``
  (:mod:`minivit.zoo.students`), ``model_args`` its architecture keywords plus ``multiplex`` (its whole
  :class:`~minivit.MultiplexSpec`); minivit's fields ``{"family": "multiplexed_vit" | "multiplexed_swin",
  "multiplex": ...}`` (the same spec);
* a plain timm ViT built without a name: ``plain_vit``; minivit's field ``{"family": "vit"}``.

Every file also holds ``format_version``. Older files still load: the layout without timm's fields (version 1,
``family``/``model_args``/``multiplex``) and the one before it, with the multiplexing options among
``model_args``. Their models get :func:`~minivit.data.legacy_data_config` (what they were trained with) as
data config; a folder in timm's layout written by timm itself loads too.

Writes go to a temporary folder that is renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models import PretrainedCfg
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..core import SOURCE_KEYS
from ..errors import CheckpointError, ConfigError
from ..families import build_vit, describe_vit, family_by_config_name, family_of_student
from ..spec import MultiplexSpec
from ..zoo import create_model
from .atomic import atomic_folder
from .limits import check_config_size, check_materialised
from .state_dict import load_state_dict_checked, read_weights

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 2
PLAIN_VIT = "plain_vit"  # the timm entrypoint of a ViT described by describe_vit (minivit.zoo.students)
_PRETRAINED_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))


def _describe(model: nn.Module) -> tuple[str, dict, dict]:
    """``(architecture, model_args, minivit's fields)`` of ``model``."""
    cfg = getattr(model, "minivit_config", None)
    family = family_of_student(model)
    if cfg is not None:
        return cfg["name"], dict(cfg.get("model_args", {})), {"family": "timm", "name": cfg["name"]}
    if family is not None:
        spec, name = model.spec.to_dict(), family.config_name
        return name, {**model.arch_args, "multiplex": spec}, {"family": name, "multiplex": spec}
    if isinstance(model, VisionTransformer):
        return PLAIN_VIT, describe_vit(model), {"family": "vit"}
    raise ConfigError(
        f"cannot describe a {type(model).__name__} for saving",
        "create models with minivit.create_model(name, ...) or minivit.multiplex(...)",
    )


def hub_pretrained_cfg(model: nn.Module, architecture: str) -> dict:
    """timm's ``pretrained_cfg`` for ``model`` as saved: its own (without the weight location) with the data
    config it resolves to (:func:`~minivit.data.resolve_data_config`: its own input size), its class count,
    classifier and input constraints."""
    from ..data.config import resolve_data_config

    own = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg = {k: v for k, v in own.items() if k in _PRETRAINED_FIELDS and k not in SOURCE_KEYS and v is not None}
    cfg.update(resolve_data_config(model).to_dict(), architecture=architecture, num_classes=model.num_classes)
    embed = getattr(model, "patch_embed", None)
    if embed is not None:
        cfg["fixed_input_size"] = bool(getattr(embed, "strict_img_size", False)) and not getattr(
            model, "dynamic_img_size", False
        )
        cfg.setdefault("first_conv", "patch_embed.proj")
    if cfg.get("fixed_input_size"):
        for key in ("test_input_size", "test_pool_size", "min_input_size"):
            cfg.pop(key, None)
    head = getattr(model, "head", None)
    cfg.setdefault("classifier", "head.fc" if isinstance(getattr(head, "fc", None), nn.Linear) else "head")
    cfg.setdefault("pool_size", None)
    return cfg


def model_config(model: nn.Module) -> dict:
    """The JSON-able ``config.json`` that :func:`build_from_config` (and timm's loader) turns back into ``model``."""
    architecture, args, own = _describe(model)
    cfg = {"architecture": architecture, "num_classes": getattr(model, "num_classes", None)}
    if getattr(model, "num_features", None) is not None:
        cfg["num_features"] = model.num_features
    if isinstance(getattr(model, "global_pool", None), str):
        cfg["global_pool"] = model.global_pool
    cfg.update(model_args=args, pretrained_cfg=hub_pretrained_cfg(model, architecture), **own)
    cfg["format_version"] = FORMAT_VERSION
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
    spec = args.pop("multiplex", None) or cfg.get("multiplex")  # timm's loader reads it from model_args
    if spec is None:  # written before the spec had its own object: the options sit among model_args
        names = MultiplexSpec.field_names()
        spec = {**family.legacy_spec, **{k: args.pop(k) for k in list(args) if k in names}}
    if not isinstance(spec, dict):
        raise ConfigError("config field 'multiplex' must be an object", f"got {type(spec).__name__}")
    return family.student_type(**args, spec=MultiplexSpec.from_dict(spec))


def _timm_model_args(cfg: dict) -> dict:
    """The keywords timm's loader passes for a config.json timm wrote (the class count is a top-level field)."""
    args = cfg.get("model_args", {})
    if isinstance(args, dict) and isinstance(cfg.get("num_classes"), int):
        args = {"num_classes": cfg["num_classes"], **args}
    return args


def build_from_config(cfg: dict) -> nn.Module:
    """Rebuild an architecture (random weights) from a :func:`model_config` dict (or timm's own config.json)."""
    if isinstance(cfg, dict) and "family" not in cfg and "format_version" not in cfg and "architecture" in cfg:
        cfg = {"family": "timm", "name": cfg["architecture"], "model_args": _timm_model_args(cfg)}  # timm's own
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
        model.minivit_config = {"family": "timm", "name": cfg["name"], "model_args": cfg.get("model_args", {})}
    return model


def weights_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors :func:`save_pretrained` writes to ``model.safetensors`` (the state dict, on CPU, contiguous)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created; replaced atomically)."""
    directory = Path(directory)
    cfg = model_config(check_materialised(model))
    if extra:
        cfg.update(extra)
    state = weights_to_save(model)
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
    """Rebuild the model saved in ``directory`` and load its weights (eval mode).

    A folder written by ``minivit export --format safetensors --int8`` (``config.json`` with an ``"int8"``
    entry, ``model.int8.safetensors``) gives back the dynamic-int8 model
    (:func:`~minivit.export.load_int8_safetensors`)."""
    cfg = read_config(directory)
    if isinstance(cfg.get("int8"), dict) and not (Path(directory) / WEIGHTS_NAME).is_file():
        from ..export.int8 import load_int8_safetensors

        return load_int8_safetensors(directory)
    model = build_from_config(cfg)
    load_state_dict_checked(model, load_weights(Path(directory) / WEIGHTS_NAME), source=str(directory))
    return restore_data_config(model, cfg.get("pretrained_cfg")).eval()


def check_float_model(model: nn.Module, source: object, use: str) -> nn.Module:
    """``model``, unless it is a dynamic-int8 model (from an ``--int8`` safetensors folder), which ``use``
    (e.g. "a teacher") cannot take: one line naming the fp32 folder to pass instead."""
    from ..export.torchscript import is_quantized

    if is_quantized(model):
        raise ConfigError(f"{source} holds an int8 model, which cannot be {use}",
                          "pass the fp32 model folder it was exported from; int8 folders are for eval and deployment")
    return model


def restore_data_config(model: nn.Module, pretrained_cfg: dict | None) -> nn.Module:
    """Give a loaded model the ``pretrained_cfg`` its folder recorded; a folder from before data configs were
    saved gets :func:`~minivit.data.legacy_data_config` (mean/std 0.5, squash: what it was trained with)."""
    from ..data.config import apply_data_config, legacy_data_config, model_input_size, resolve_data_config

    if isinstance(pretrained_cfg, dict):
        saved = {k: v for k, v in pretrained_cfg.items() if k in _PRETRAINED_FIELDS}
        model.pretrained_cfg = {**dict(getattr(model, "pretrained_cfg", None) or {}), **saved}
        return apply_data_config(model, resolve_data_config(model))
    size = model_input_size(model)
    return model if size is None else apply_data_config(model, legacy_data_config(size[1:], size[0]))
