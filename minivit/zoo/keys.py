"""What the released Mini-* families share: one rule-table key renamer for the authors' checkpoints, their
timm pretrained config and checkpoint filter.

A :class:`KeyRules` table says where the authors' blocks live (``block``: a regex whose named groups build
our group ``prefix``, and whose last group ``rest`` is the key inside the block), how each in-block name maps
to ours (``rules``: regex on ``rest`` -> template using its named groups), how keys outside the blocks move
(``outside``), and which keys to drop (``drop``). Unknown keys are kept as they are so the strict load that
follows names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from torch import nn

from ..spec import MultiplexSpec

Template = str | Callable[[re.Match], str]


@dataclass(frozen=True)
class KeyRules:
    block: str
    prefix: str
    rules: tuple[tuple[str, str], ...]
    outside: tuple[tuple[str, Template], ...] = ()
    drop: str | None = None
    fix_value: Callable[[str, torch.Tensor], torch.Tensor] | None = field(default=None)


def _apply(template: Template, m: re.Match) -> str:
    return template(m) if callable(template) else template.format(**m.groupdict())


def rename_keys(state_dict: Mapping[str, torch.Tensor], table: KeyRules) -> dict[str, torch.Tensor]:
    """The authors' state dict with our key names (values untouched unless ``table.fix_value`` says)."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if table.drop and re.search(table.drop, key):
            continue
        new = next((_apply(t, m) for p, t in table.outside if (m := re.match(p, key))), None)
        b = re.match(table.block, key) if new is None else None
        if b is not None:
            rest = b.group("rest")
            inner = next((_apply(t, m) for p, t in table.rules if (m := re.match(p, rest))), None)
            if inner is not None:
                new = f"{table.prefix.format(**b.groupdict())}.{inner}"
        new = new or key
        out[new] = table.fix_value(new, value) if table.fix_value else value
    return out


RELEASE_URL = "https://github.com/DominickZhang/MiniViT-model-zoo/releases/download/v1.0.0/"


def imagenet_cfg(**kwargs) -> dict:
    """timm's pretrained config of an ImageNet-1k model at 224 px (the fields minivit's entrypoints share)."""
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2204.07154",
        **kwargs,
    }


def release_cfg(file: str, **kwargs) -> dict:
    """timm's pretrained config of one released Mini-* model (ImageNet-1k, 224 px unless overridden)."""
    return imagenet_cfg(url=RELEASE_URL + file, license="mit", **kwargs)


def official_filter(table: KeyRules) -> Callable[[dict, nn.Module], dict]:
    """timm's ``pretrained_filter_fn`` for the authors' release: unwrap ``{"model": ...}`` and rename. A state
    dict already in the model's own layout (a folder minivit saved, loaded by ``timm.create_model("local-dir:...")``)
    passes unchanged."""

    def filter_fn(state_dict, model):
        if "model" in state_dict:
            state_dict = state_dict["model"]
        if set(state_dict) <= set(model.state_dict()):
            return state_dict
        return rename_keys(state_dict, table)

    return filter_fn


def split_spec_options(kwargs: dict) -> dict:
    """Pop the :class:`~minivit.MultiplexSpec` field names out of a model's keyword arguments."""
    return {k: kwargs.pop(k) for k in list(kwargs) if k in MultiplexSpec.field_names()}


def build_release(model_cls: type, variant: str, pretrained: bool, table: KeyRules, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a released Mini-* model whose weights are in the authors' layout
    (``features_only=True`` and ``out_indices`` as for timm's ViT and Swin)."""
    feature_cfg = model_cls.feature_cfg(kwargs)
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=official_filter(table), feature_cfg=feature_cfg, **kwargs
    )
