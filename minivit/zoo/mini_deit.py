"""Mini-DeiT: the authors' released weight-multiplexed DeiT models.

Each is a DeiT with share 2 (12 layers from 6 shared blocks), per-layer LayerNorms, per-layer
pre/post-softmax head mixing (no bias) and per-layer iRPE on keys; no class token: the classifier
reads the average of the final-normed tokens. Parameter counts (1000 classes) equal the authors':
tiny 3,090,304, small 11,450,824, base 44,098,408, base-384 44,390,248.

``pretrained=True`` downloads the authors' release and converts it on the fly. Multiplexing options
(``share=...`` or ``spec=``) and timm ViT arguments are accepted as keywords.

Also here: the authors' checkpoint key names (:data:`KEY_RULES`) and hyper-parameter names
(:func:`official_kwargs`) for Mini-DeiT.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError
from ..families.vit import MultiplexedVisionTransformer
from ..spec import MultiplexSpec, as_spec
from .keys import KeyRules, official_filter, rename_keys
from .releases import Release, build_release, register_releases, release_cfgs, split_spec_options

MINI_DEIT_SPEC = MultiplexSpec(share=2, transforms=True, separate_norms=True, irpe=True, irpe_ratio=1.9,
                               transform_init="trunc_normal")
MINI_DEIT_ARCH = dict(img_size=224, patch_size=16, depth=12, class_token=False, global_pool="avg", fc_norm=False,
                      qkv_bias=True, mlp_ratio=4.0, norm_eps=1e-6)  # fmt: skip


def _flatten_mix(key: str, value):
    return value.flatten(1) if key.endswith("_mix.weight") and value.dim() == 4 else value  # 1x1 conv over heads


# the authors' layout: blocks.{g}.block.norm1.instances.{r}.weight, ...attn.conv_l.instances.{r}.weight (1x1
# convs over heads), ...attn.rpe_k.instances.{r}.lookup_table_weight; ours: blocks.{g}.layers.{r}.norm1.weight,
# ...layers.{r}.pre_mix.weight, ...layers.{r}.rpe.weight, blocks.{g}.shared.attn.qkv.weight
_R, _P = r"instances\.(?P<r>\d+)", r"(?P<p>weight|bias)$"
KEY_RULES = KeyRules(
    block=r"blocks\.(?P<g>\d+)\.(?:block\.)?(?P<rest>.+)$",
    prefix="blocks.{g}",
    rules=(
        (rf"norm1\.{_R}\.{_P}", "layers.{r}.norm1.{p}"),
        (rf"norm2\.{_R}\.{_P}", "layers.{r}.norm2.{p}"),
        (rf"attn\.rpe_k\.{_R}\.lookup_table_weight$", "layers.{r}.rpe.weight"),
        (rf"attn\.conv_l\.{_R}\.{_P}", "layers.{r}.pre_mix.{p}"),
        (rf"attn\.conv_w\.{_R}\.{_P}", "layers.{r}.post_mix.{p}"),
        (rf"attn\.(?P<n>qkv|proj)\.{_P}", "shared.attn.{n}.{p}"),
        (rf"mlp\.(?P<n>fc1|fc2)\.{_P}", "shared.mlp.{n}.{p}"),
    ),
    fix_value=_flatten_mix,
)


def convert_official_deit(state_dict) -> dict:
    """Rename an authors' Mini-DeiT state dict to :class:`MultiplexedVisionTransformer` keys."""
    return rename_keys(state_dict, KEY_RULES)


_filter_official = official_filter(KEY_RULES)  # what timm applies to the downloaded release


def _create(variant: str, pretrained: bool, arch: dict, kwargs: dict) -> MultiplexedVisionTransformer:
    options = split_spec_options(kwargs)
    spec = as_spec(kwargs.pop("spec", None) or MINI_DEIT_SPEC, **options)
    args = {**MINI_DEIT_ARCH, **arch, **kwargs}
    return build_release(MultiplexedVisionTransformer, variant, pretrained, KEY_RULES, spec=spec, **args)


RELEASES = {
    "mini_deit_tiny_patch16_224": Release(dict(embed_dim=192, num_heads=3),
        "Mini-DeiT-Ti: 3.09M parameters, 73.0% ImageNet top-1 (DeiT-Ti: 5.7M, 72.2%)."),
    "mini_deit_small_patch16_224": Release(dict(embed_dim=384, num_heads=6),
        "Mini-DeiT-S: 11.45M parameters, 80.9% ImageNet top-1 (DeiT-S: 22M, 79.8%)."),
    "mini_deit_base_patch16_224": Release(dict(embed_dim=768, num_heads=12),
        "Mini-DeiT-B: 44.10M parameters, 83.2% ImageNet top-1 (DeiT-B: 86M, 81.8%)."),
    "mini_deit_base_patch16_384": Release(dict(embed_dim=768, num_heads=12, img_size=384),
        "Mini-DeiT-B at 384 px: 44.39M parameters, 84.9% ImageNet top-1.",
        cfg=dict(input_size=(3, 384, 384), crop_pct=1.0)),
}  # fmt: skip
"""The released Mini-DeiT models, each a timm entrypoint of that name (``timm.create_model(name)``)."""

default_cfgs = release_cfgs(RELEASES)
globals().update(register_releases(__name__, RELEASES, _create))


# --------------------------------------------------------------------------- the authors' hyper-parameters


def official_kwargs(cfg: Mapping) -> dict:
    """Map the authors' Mini-DeiT hyper-parameter names to :class:`MultiplexedVisionTransformer` kwargs."""
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
        spec=MultiplexSpec(
            share=cfg.get("repeated_times", 1),
            transforms=bool(cfg.get("use_transform", False)),
            separate_norms=True,
            irpe=bool(irpe),
            irpe_ratio=float(irpe.get("ratio", 1.9)) if irpe else 1.9,
            transform_init="trunc_normal",
        ),
    )


def build_from_official_config(cfg: Mapping) -> MultiplexedVisionTransformer:
    """The model the authors' code builds from ``cfg`` (their names, as their JSON configs)."""
    return MultiplexedVisionTransformer(**official_kwargs(cfg))
