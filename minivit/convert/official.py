"""Read checkpoints in the MiniViT authors' format into minivit models.

The authors save ``{"model": state_dict}`` in a ``.pth`` file, with their own module layout:
``blocks.{g}.block.norm1.instances.{r}.weight``, ``...attn.conv_l.instances.{r}.weight`` (1x1 convs
over heads), ``...attn.rpe_k.instances.{r}.lookup_table_weight`` and so on. This module renames those
keys to minivit's layout (``blocks.{g}.layers.{r}.norm1.weight``, ``...layers.{r}.pre_mix.weight``,
``...layers.{r}.rpe.weight``) and builds the model from the authors' hyper-parameter names, the
same names as their JSON configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

# authors' block-internal names -> (where, our name); ``where`` is "shared" or "layer"
_DEIT_RULES = [
    (r"norm1\.instances\.(\d+)\.(weight|bias)$", "layer", "norm1.{p}"),
    (r"norm2\.instances\.(\d+)\.(weight|bias)$", "layer", "norm2.{p}"),
    (r"attn\.rpe_k\.instances\.(\d+)\.lookup_table_weight$", "layer", "rpe.weight"),
    (r"attn\.conv_l\.instances\.(\d+)\.(weight|bias)$", "layer", "pre_mix.{p}"),
    (r"attn\.conv_w\.instances\.(\d+)\.(weight|bias)$", "layer", "post_mix.{p}"),
    (r"attn\.(qkv|proj)\.(weight|bias)$", "shared", "attn.{0}.{p}"),
    (r"mlp\.(fc1|fc2)\.(weight|bias)$", "shared", "mlp.{0}.{p}"),
]


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an authors'-format ``.pth`` safely (``weights_only=True``) and return its state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", "check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"cannot read {path} as a weights-only PyTorch checkpoint: {msg}",
            "the file is corrupted, truncated, or holds code/objects that are refused for safety",
        ) from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors", "expected {'model': state_dict}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def convert_official_deit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an authors' Mini-DeiT state dict to :class:`MultiplexedVisionTransformer` keys."""
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"blocks\.(\d+)\.(?:block\.)?(.+)$", key)
        if not m:
            out[key] = value
            continue
        g, rest = m.groups()
        for pattern, where, template in _DEIT_RULES:
            r = re.match(pattern, rest)
            if not r:
                continue
            groups = r.groups()
            if where == "layer":
                idx, param = groups[0], groups[-1] if len(groups) > 1 else "weight"
                name = template.format(p=param)
                if name.endswith("_mix.weight") and value.dim() == 4:
                    value = value.flatten(1)  # 1x1 conv over heads -> (H, H) matrix
                out[f"blocks.{g}.layers.{idx}.{name}"] = value
            else:
                out[f"blocks.{g}.shared.{template.format(groups[0], p=groups[1])}"] = value
            break
        else:
            out[key] = value  # unknown: reported by the strict load below
    return out


def deit_kwargs_from_config(cfg: Mapping) -> dict:
    """Map the authors' Mini-DeiT hyper-parameter names to MultiplexedVisionTransformer kwargs."""
    known = {
        "architecture", "layer_norm_eps", "irpe", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
        "mlp_ratio", "qkv_bias", "num_classes", "use_cls_token", "repeated_times", "use_transform", "in_chans",
        "drop_path_rate", "drop_rate", "attn_drop_rate",
    }
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"unknown Mini-DeiT config fields: {', '.join(unknown)}", f"known fields: {sorted(known)}")
    irpe = cfg.get("irpe")
    if irpe:
        expected = {"method": "product", "mode": "contextual", "shared_head": True, "rpe_on": "k"}
        for k, v in expected.items():
            got = irpe.get(k, v)
            if (got if k != "mode" else {"ctx": "contextual"}.get(got, got)) != v:
                raise ConfigError(f"iRPE {k}={got!r} is not supported", f"Mini-DeiT uses {k}={v!r}")
    cls_token = bool(cfg.get("use_cls_token", True))
    eps = float(cfg.get("layer_norm_eps", 1e-6))
    return dict(
        img_size=cfg.get("img_size", 224),
        patch_size=cfg.get("patch_size", 16),
        in_chans=cfg.get("in_chans", 3),
        num_classes=cfg.get("num_classes", 1000),
        embed_dim=cfg.get("embed_dim", 768),
        depth=cfg.get("depth", 12),
        num_heads=cfg.get("num_heads", 12),
        mlp_ratio=cfg.get("mlp_ratio", 4.0),
        qkv_bias=cfg.get("qkv_bias", True),
        class_token=cls_token,
        global_pool="token" if cls_token else "avg",
        fc_norm=False,
        norm_eps=eps,
        drop_rate=cfg.get("drop_rate", 0.0),
        attn_drop_rate=cfg.get("attn_drop_rate", 0.0),
        drop_path_rate=cfg.get("drop_path_rate", 0.0),
        share=cfg.get("repeated_times", 1),
        transforms=bool(cfg.get("use_transform", False)),
        separate_norms=True,
        irpe=bool(irpe),
        irpe_ratio=float(irpe.get("ratio", 1.9)) if irpe else 1.9,
    )


def _read_config(config) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, Path)) and str(config).endswith(".json"):
        p = Path(config)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}", "pass a dict or the path of the JSON config")
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}", "fix or regenerate the config file") from None
    raise ConfigError(
        f"config must be a dict, a .json path or a released model name, got {config!r}",
        "e.g. load_official('mini_deit_small_patch16_224.pth', 'mini_deit_small_patch16_224')",
    )


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


def load_official(path: str | Path, config) -> nn.Module:
    """Build the model described by ``config`` and load the authors' checkpoint at ``path``.

    ``config`` is a dict in the authors' hyper-parameter names (as their JSON configs), the path of
    such a JSON file, or the name of a released model (``"mini_deit_small_patch16_224"``). The
    checkpoint is read with ``weights_only=True``. Returns the model in eval mode; its outputs equal
    those of the authors' code.
    """
    from ..models.registry import create_model

    if isinstance(config, str) and not config.endswith(".json"):
        model = create_model(config, pretrained=False)
        family = "swin" if "swin" in config else "deit"
    else:
        cfg = _read_config(config)
        family = "swin" if ("depths" in cfg or "Swin" in str(cfg.get("architecture", ""))) else "deit"
        model = _build_from_official_config(cfg, family)
    state_dict = read_official_checkpoint(path)
    if family == "deit":
        state_dict = convert_official_deit(state_dict)
    else:
        from .official_swin import convert_official_swin

        state_dict = convert_official_swin(state_dict)
    load_state_dict_checked(model, state_dict, source=str(path))
    return model.eval()


def _build_from_official_config(cfg: dict, family: str) -> nn.Module:
    if family == "deit":
        from ..models.vision_transformer import MultiplexedVisionTransformer

        return MultiplexedVisionTransformer(**deit_kwargs_from_config(cfg))
    from ..models.swin import build_from_official_config

    return build_from_official_config(cfg)
