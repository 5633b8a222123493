"""What the released Mini-* families share in timm: their pretrained configs, building a release whose
checkpoint is in the authors' layout, and one table-driven way to define and register their entrypoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..spec import MultiplexSpec
from .keys import KeyRules, official_filter

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


@dataclass(frozen=True)
class Release:
    """One released Mini-* model: its architecture keywords (beyond those its family shares), entrypoint
    docstring, checkpoint file in :data:`RELEASE_URL` (empty: ``<name>.pth``) and the fields of its pretrained
    config that differ from its family's."""

    arch: dict
    doc: str
    file: str = ""
    cfg: dict = field(default_factory=dict)


Create = Callable[[str, bool, dict, dict], nn.Module]


def release_cfgs(releases: Mapping[str, Release], **common) -> dict:
    """timm's ``default_cfgs`` of a family's releases (``common``: the fields its models share)."""
    cfgs = {name: release_cfg(r.file or f"{name}.pth", **{**common, **r.cfg}) for name, r in releases.items()}
    return generate_default_cfgs(cfgs)


def register_releases(module: str, releases: Mapping[str, Release], create: Create) -> dict[str, Callable]:
    """Define and register (timm's ``register_model``) one entrypoint per release of ``module``.

    Each is ``name(pretrained=False, **kwargs)`` calling ``create(name, pretrained, release.arch, kwargs)``, with
    the name, module and docstring timm and ``help()`` read; add them to the module's globals so they import by
    name. ``module`` must already define ``default_cfgs`` (timm attaches the pretrained configs when registering).
    """
    entrypoints = {}
    for name, release in releases.items():
        entrypoints[name] = register_model(_entrypoint(module, name, release, create))
    return entrypoints


def _entrypoint(module: str, name: str, release: Release, create: Create) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return create(name, pretrained, release.arch, kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    entrypoint.__doc__ = release.doc
    return entrypoint
