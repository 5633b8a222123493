"""timm entrypoints for models described by their arguments, so that every model minivit saves is a timm model.

* ``multiplexed_vit``: a :class:`~minivit.families.vit.MultiplexedVisionTransformer` (any student
  :func:`minivit.multiplex` makes from a ViT/DeiT) from its architecture keywords plus ``multiplex={...}`` (the
  :class:`~minivit.MultiplexSpec` as a dict);
* ``multiplexed_swin``: the same for :class:`~minivit.families.swin.MultiplexedSwinTransformer`;
* ``plain_vit``: a timm ``VisionTransformer`` from :func:`~minivit.families.describe_vit` keywords (``norm_eps``
  and ``act_layer`` by name), for a ViT built without a registered name.

``config.json`` names one of them as its ``architecture`` and lists the keywords as ``model_args``, so after
``import minivit``, ``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``"hf-hub:USER/NAME"``) rebuilds
the model and loads its weights. ``features_only=True`` and ``out_indices`` work as for timm's own ViT and Swin.
"""

from __future__ import annotations

from functools import partial

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..families import MultiplexedSwinTransformer, MultiplexedVisionTransformer
from .releases import imagenet_cfg


def _cfg(classifier: str) -> dict:
    return imagenet_cfg(fixed_input_size=True, classifier=classifier)


default_cfgs = generate_default_cfgs(
    {"multiplexed_vit": _cfg("head"), "multiplexed_swin": _cfg("head.fc"), "plain_vit": _cfg("head")}
)


def _as_tuples(kwargs: dict) -> dict:
    """JSON lists back to the tuples the constructors expect for sizes."""
    return {k: tuple(v) if k in ("img_size", "patch_size") and isinstance(v, list) else v for k, v in kwargs.items()}


def build_student(model_cls: type, variant: str, pretrained: bool, kwargs: dict) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a multiplexed model: ``multiplex`` is its spec (dict)."""
    kwargs = _as_tuples(kwargs)
    spec = kwargs.pop("multiplex", None)
    if spec is not None:
        kwargs["spec"] = spec
    feature_cfg = model_cls.feature_cfg(kwargs)
    return build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


@register_model
def multiplexed_vit(pretrained: bool = False, **kwargs) -> MultiplexedVisionTransformer:
    """A weight-multiplexed ViT from timm ViT keywords (``norm_eps`` for the LayerNorm eps) and ``multiplex``."""
    return build_student(MultiplexedVisionTransformer, "multiplexed_vit", pretrained, kwargs)


@register_model
def multiplexed_swin(pretrained: bool = False, **kwargs) -> MultiplexedSwinTransformer:
    """A weight-multiplexed Swin from :class:`MultiplexedSwinTransformer` keywords and ``multiplex``."""
    return build_student(MultiplexedSwinTransformer, "multiplexed_swin", pretrained, kwargs)


@register_model
def plain_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """timm's VisionTransformer from :func:`~minivit.families.describe_vit` keywords."""
    kwargs = _as_tuples(kwargs)
    eps = kwargs.pop("norm_eps", 1e-6)
    feature_cfg = dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter")
    return build_model_with_cfg(
        VisionTransformer, "plain_vit", pretrained, feature_cfg=feature_cfg,
        norm_layer=partial(nn.LayerNorm, eps=eps), **kwargs,
    )  # fmt: skip
