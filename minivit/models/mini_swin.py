"""Mini-Swin: the authors' released weight-multiplexed Swin Transformers, registered in timm.

Each is a Swin whose stages run ``unique_blocks`` shared blocks (Mini-Swin-T: depths [2, 2, 6, 2] from
[1, 1, 1, 1] blocks; Mini-Swin-S/B: [2, 2, 18, 2] from [1, 1, 9, 1]), with per-layer LayerNorms, per-layer
head transforms (with bias) and the per-layer MLP transform (LN + depth-wise 7x7 conv). Parameter counts
(1000 classes) equal the authors': tiny 12,001,765, small 26,463,205, base 46,444,852.

Small variants by keyword: ``img_size``, ``patch_size``, ``embed_dim``, ``depths``, ``num_heads``,
``window_size``, ``unique_blocks`` (or ``share``), ``num_classes``, ``in_chans``, ... (see
:class:`~minivit.models.swin.MultiplexedSwinTransformer`). Other ``depths`` without ``unique_blocks``/``share``
get one shared block per stage. ``pretrained=True`` downloads the authors' release
and converts it on the fly.
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..convert.official_swin import convert_official_swin
from .swin import MultiplexedSwinTransformer

_RELEASE = "https://github.com/DominickZhang/MiniViT-model-zoo/releases/download/v1.0.0/"


def _cfg(file: str, **kwargs) -> dict:
    return {
        "url": _RELEASE + file,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        "license": "mit",
        "paper_ids": "arXiv:2204.07154",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "mini_swin_tiny_patch4_window7_224": _cfg("mini-swin-tiny-12m.pth"),
        "mini_swin_small_patch4_window7_224": _cfg("mini-swin-small-26m.pth"),
        "mini_swin_base_patch4_window7_224": _cfg("mini-swin-base-46m.pth"),
    }
)

MINI_SWIN_DEFAULTS = dict(
    transforms=True,
    separate_norms=True,
    mlp_transform=True,
    mask_regular_windows=True,  # as the authors' code (their checkpoints need it)
    transform_init="trunc_normal",
    mlp_ratio=4.0,
    qkv_bias=True,
)


def _filter_official(state_dict, model):
    if "model" in state_dict:
        state_dict = state_dict["model"]
    return convert_official_swin(state_dict)


def _create(variant: str, pretrained: bool, arch: dict, kwargs: dict) -> MultiplexedSwinTransformer:
    args = {**MINI_SWIN_DEFAULTS, **arch, **kwargs}
    if "share" in kwargs:  # the caller's share replaces the released unique-block counts
        args.pop("unique_blocks", None)
    elif "unique_blocks" not in kwargs and list(args["depths"]) != arch["depths"]:
        args["unique_blocks"] = [1] * len(args["depths"])  # other depths: one shared block per stage
    return build_model_with_cfg(
        MultiplexedSwinTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=_filter_official,
        feature_cfg=None,
        **args,
    )


@register_model
def mini_swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs) -> MultiplexedSwinTransformer:
    """Mini-Swin-T: 12.00M parameters, 81.3% ImageNet top-1 (Swin-T: 28M, 81.2%)."""
    arch = dict(img_size=224, patch_size=4, window_size=7, embed_dim=96, depths=[2, 2, 6, 2],
                num_heads=[3, 6, 12, 24], unique_blocks=[1, 1, 1, 1], drop_path_rate=0.0)
    return _create("mini_swin_tiny_patch4_window7_224", pretrained, arch, kwargs)


@register_model
def mini_swin_small_patch4_window7_224(pretrained: bool = False, **kwargs) -> MultiplexedSwinTransformer:
    """Mini-Swin-S: 26.46M parameters, 83.9% ImageNet top-1 (Swin-S: 50M, 83.2%)."""
    arch = dict(img_size=224, patch_size=4, window_size=7, embed_dim=96, depths=[2, 2, 18, 2],
                num_heads=[3, 6, 12, 24], unique_blocks=[1, 1, 9, 1], drop_path_rate=0.1)
    return _create("mini_swin_small_patch4_window7_224", pretrained, arch, kwargs)


@register_model
def mini_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs) -> MultiplexedSwinTransformer:
    """Mini-Swin-B: 46.44M parameters, 84.5% ImageNet top-1 (Swin-B: 88M, 83.5%)."""
    arch = dict(img_size=224, patch_size=4, window_size=7, embed_dim=128, depths=[2, 2, 18, 2],
                num_heads=[4, 8, 16, 32], unique_blocks=[1, 1, 9, 1], drop_path_rate=0.2)
    return _create("mini_swin_base_patch4_window7_224", pretrained, arch, kwargs)
