"""Mini-DeiT: the authors' released weight-multiplexed DeiT models.

Each is a DeiT with share 2 (12 layers from 6 shared blocks), per-layer LayerNorms, per-layer
pre/post-softmax head mixing (no bias) and per-layer iRPE on keys; no class token: the classifier
reads the average of the final-normed tokens. Parameter counts (1000 classes) equal the authors':
tiny 3,090,304, small 11,450,824, base 44,098,408, base-384 44,390,248.

``pretrained=True`` downloads the authors' release and converts it on the fly.
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..convert.official import convert_official_deit
from .vision_transformer import MultiplexedVisionTransformer

_RELEASE = "https://github.com/DominickZhang/MiniViT-model-zoo/releases/download/v1.0.0/"


def _cfg(file: str, **kwargs) -> dict:
    return {
        "url": _RELEASE + file,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2204.07154",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "mini_deit_tiny_patch16_224": _cfg("mini_deit_tiny_patch16_224.pth"),
        "mini_deit_small_patch16_224": _cfg("mini_deit_small_patch16_224.pth"),
        "mini_deit_base_patch16_224": _cfg("mini_deit_base_patch16_224.pth"),
        "mini_deit_base_patch16_384": _cfg("mini_deit_base_patch16_384.pth", input_size=(3, 384, 384), crop_pct=1.0),
    }
)

MINI_DEIT_DEFAULTS = dict(
    share=2,
    transforms=True,
    separate_norms=True,
    irpe=True,
    irpe_ratio=1.9,
    transform_init="trunc_normal",
    class_token=False,
    global_pool="avg",
    fc_norm=False,
    qkv_bias=True,
    mlp_ratio=4.0,
    norm_eps=1e-6,
)


def _filter_official(state_dict, model):
    if "model" in state_dict:
        state_dict = state_dict["model"]
    return convert_official_deit(state_dict)


def _create(variant: str, pretrained: bool, arch: dict, kwargs: dict) -> MultiplexedVisionTransformer:
    args = {**MINI_DEIT_DEFAULTS, **arch, **kwargs}
    model = build_model_with_cfg(
        MultiplexedVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=_filter_official,
        feature_cfg=None,
        **args,
    )
    return model


@register_model
def mini_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MultiplexedVisionTransformer:
    """Mini-DeiT-Ti: 3.09M parameters, 73.0% ImageNet top-1 (DeiT-Ti: 5.7M, 72.2%)."""
    arch = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("mini_deit_tiny_patch16_224", pretrained, arch, kwargs)


@register_model
def mini_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MultiplexedVisionTransformer:
    """Mini-DeiT-S: 11.45M parameters, 80.9% ImageNet top-1 (DeiT-S: 22M, 79.8%)."""
    arch = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("mini_deit_small_patch16_224", pretrained, arch, kwargs)


@register_model
def mini_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MultiplexedVisionTransformer:
    """Mini-DeiT-B: 44.10M parameters, 83.2% ImageNet top-1 (DeiT-B: 86M, 81.8%)."""
    arch = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("mini_deit_base_patch16_224", pretrained, arch, kwargs)


@register_model
def mini_deit_base_patch16_384(pretrained: bool = False, **kwargs) -> MultiplexedVisionTransformer:
    """Mini-DeiT-B at 384 px: 44.39M parameters, 84.9% ImageNet top-1."""
    arch = dict(img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("mini_deit_base_patch16_384", pretrained, arch, kwargs)
