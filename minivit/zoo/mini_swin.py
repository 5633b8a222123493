"""Mini-Swin: the authors' released weight-multiplexed Swin Transformers, registered in timm.

Each is a Swin whose stages run ``unique_blocks`` shared blocks (Mini-Swin-T: depths [2, 2, 6, 2] from
[1, 1, 1, 1] blocks; Mini-Swin-S/B: [2, 2, 18, 2] from [1, 1, 9, 1]), with per-layer LayerNorms, per-layer
head transforms (with bias) and the per-layer MLP transform (LN + depth-wise 7x7 conv). Parameter counts
(1000 classes) equal the authors': tiny 12,001,765, small 26,463,205, base 46,444,852.

Small variants by keyword: ``img_size``, ``patch_size``, ``embed_dim``, ``depths``, ``num_heads``,
``window_size``, ``unique_blocks`` (or ``share``), ``num_classes``, ``in_chans``, ... (see
:class:`~minivit.families.swin.MultiplexedSwinTransformer`) and multiplexing options (``spec=`` or its fields).
Other ``depths`` without ``unique_blocks``/``share`` get one shared block per stage. ``pretrained=True``
downloads the authors' release and converts it on the fly. They use the authors' MLP transform form
(``mlp_residual=False``), so the released checkpoints load.

Also here: the authors' checkpoint key names (:data:`KEY_RULES`) and hyper-parameter names
(:func:`official_kwargs`) for Mini-Swin.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..families.swin import MultiplexedSwinTransformer, resolve_share
from ..spec import MultiplexSpec, as_spec
from .keys import KeyRules, official_filter, rename_keys
from .releases import Release, build_release, register_releases, release_cfgs, split_spec_options

MINI_SWIN_SPEC = MultiplexSpec(transforms=True, separate_norms=True, mlp_transform=True, mlp_residual=False,
                               transform_init="trunc_normal")
MINI_SWIN_ARCH = dict(mask_regular_windows=True, mlp_ratio=4.0, qkv_bias=True)  # the mask quirk: as the authors

# the authors' layout: layers.{s}.blocks.{g}.norm1_list.{r}.weight (per-layer parts as lists indexed by the
# repeat r), ...proj_l.{r} / ...proj_w.{r} (head transforms), ...local_norm_list.{r} / ...local_conv_list.{r}
# (MLP transform), shared ...attn.qkv, ...attn.relative_position_bias_table, ...mlp.fc1; the patch merging at
# the *end* of stage s and the classifier as ``head``. Ours follows timm: merging at the start of stage s + 1,
# ``head.fc``, and ``.shared`` / ``.layers.{r}``. Their persistent buffers (attn_mask,
# relative_position_index) are recomputed by our model and dropped.
_R, _P = r"(?P<r>\d+)", r"(?P<p>weight|bias)$"
KEY_RULES = KeyRules(
    block=r"layers\.(?P<s>\d+)\.blocks\.(?P<g>\d+)\.(?P<rest>.+)$",
    prefix="layers.{s}.blocks.{g}",
    rules=(
        (rf"norm1_list\.{_R}\.{_P}", "layers.{r}.norm1.{p}"),
        (rf"norm2_list\.{_R}\.{_P}", "layers.{r}.norm2.{p}"),
        (rf"proj_l\.{_R}\.{_P}", "layers.{r}.pre_mix.{p}"),
        (rf"proj_w\.{_R}\.{_P}", "layers.{r}.post_mix.{p}"),
        (rf"local_norm_list\.{_R}\.{_P}", "layers.{r}.local_norm.{p}"),
        (rf"local_conv_list\.{_R}\.{_P}", "layers.{r}.local_conv.{p}"),
        (rf"(?P<n>norm1|norm2)\.{_P}", "shared.{n}.{p}"),
        (rf"attn\.(?P<n>qkv|proj)\.{_P}", "shared.attn.{n}.{p}"),
        (r"attn\.relative_position_bias_table$", "shared.attn.relative_position_bias_table"),
        (rf"mlp\.(?P<n>fc1|fc2)\.{_P}", "shared.mlp.{n}.{p}"),
    ),
    outside=(
        (r"layers\.(\d+)\.downsample\.(.+)$", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"),
        (rf"head\.{_P}", "head.fc.{p}"),
    ),
    drop=r"(^|\.)(attn_mask|relative_position_index)$",
)


def convert_official_swin(state_dict) -> dict:
    """Rename an authors' Mini-Swin state dict to :class:`MultiplexedSwinTransformer` keys."""
    return rename_keys(state_dict, KEY_RULES)


_filter_official = official_filter(KEY_RULES)  # what timm applies to the downloaded release


def _create(variant: str, pretrained: bool, arch: dict, kwargs: dict) -> MultiplexedSwinTransformer:
    options = split_spec_options(kwargs)
    unique_blocks = kwargs.pop("unique_blocks", None)
    args = {**MINI_SWIN_ARCH, **arch, **kwargs}
    released = args.pop("unique_blocks")
    depths = list(args["depths"])
    if "share" in options:  # the caller's share replaces the released unique-block counts
        options["share"] = resolve_share(depths, options["share"], unique_blocks)
    elif unique_blocks is not None:
        options["share"] = resolve_share(depths, unique_blocks=unique_blocks)
    elif depths != arch["depths"]:  # other depths: one shared block per stage
        options["share"] = depths
    else:
        options["share"] = resolve_share(depths, unique_blocks=released)
    spec = as_spec(kwargs.pop("spec", None) or MINI_SWIN_SPEC, **options)
    args.pop("spec", None)
    return build_release(MultiplexedSwinTransformer, variant, pretrained, KEY_RULES, spec=spec, **args)


RELEASES = {
    "mini_swin_tiny_patch4_window7_224": Release(
        dict(img_size=224, patch_size=4, window_size=7, embed_dim=96, depths=[2, 2, 6, 2],
             num_heads=[3, 6, 12, 24], unique_blocks=[1, 1, 1, 1], drop_path_rate=0.0),
        "Mini-Swin-T: 12.00M parameters, 81.3% ImageNet top-1 (Swin-T: 28M, 81.2%).",
        "mini-swin-tiny-12m.pth",
    ),
    "mini_swin_small_patch4_window7_224": Release(
        dict(img_size=224, patch_size=4, window_size=7, embed_dim=96, depths=[2, 2, 18, 2],
             num_heads=[3, 6, 12, 24], unique_blocks=[1, 1, 9, 1], drop_path_rate=0.1),
        "Mini-Swin-S: 26.46M parameters, 83.9% ImageNet top-1 (Swin-S: 50M, 83.2%).",
        "mini-swin-small-26m.pth",
    ),
    "mini_swin_base_patch4_window7_224": Release(
        dict(img_size=224, patch_size=4, window_size=7, embed_dim=128, depths=[2, 2, 18, 2],
             num_heads=[4, 8, 16, 32], unique_blocks=[1, 1, 9, 1], drop_path_rate=0.2),
        "Mini-Swin-B: 46.44M parameters, 84.5% ImageNet top-1 (Swin-B: 88M, 83.5%).",
        "mini-swin-base-46m.pth",
    ),
}  # fmt: skip
"""The released Mini-Swin models, each a timm entrypoint of that name (``timm.create_model(name)``)."""

default_cfgs = release_cfgs(RELEASES, pool_size=(7, 7), fixed_input_size=True, classifier="head.fc")
globals().update(register_releases(__name__, RELEASES, _create))


# --------------------------------------------------------------------------- the authors' hyper-parameters


_OFFICIAL_FIELDS = {
    "architecture", "is_sep_layernorm", "is_transform_FFN", "is_transform_heads", "img_size", "patch_size",
    "in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "qkv_bias", "qk_scale",
    "num_classes", "separate_layer_num_list", "drop_rate", "attn_drop_rate", "drop_path_rate", "ape",
    "patch_norm", "use_checkpoint",
}


def official_kwargs(cfg) -> dict:
    """Map the authors' Mini-Swin hyper-parameter names to :class:`MultiplexedSwinTransformer` kwargs."""
    unknown = sorted(set(cfg) - _OFFICIAL_FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown Mini-Swin config fields: {', '.join(unknown)}", f"known fields: {sorted(_OFFICIAL_FIELDS)}"
        )
    if cfg.get("ape", False):
        raise ConfigError("absolute position embedding (ape=true) is not supported", "the released models have none")
    if not cfg.get("patch_norm", True):
        raise ConfigError("patch_norm=false is not supported", "the released models use patch_norm=true")
    if cfg.get("qk_scale") is not None:
        raise ConfigError("qk_scale is not supported", "the released models use the default head_dim**-0.5")
    depths = list(cfg.get("depths", (2, 2, 6, 2)))
    share = resolve_share(depths, unique_blocks=list(cfg.get("separate_layer_num_list", [1] * len(depths))))
    return dict(
        img_size=cfg.get("img_size", 224),
        patch_size=cfg.get("patch_size", 4),
        in_chans=cfg.get("in_chans", 3),
        num_classes=cfg.get("num_classes", 1000),
        embed_dim=cfg.get("embed_dim", 96),
        depths=depths,
        num_heads=list(cfg.get("num_heads", (3, 6, 12, 24))),
        window_size=cfg.get("window_size", 7),
        mlp_ratio=cfg.get("mlp_ratio", 4.0),
        qkv_bias=cfg.get("qkv_bias", True),
        proj_drop_rate=cfg.get("drop_rate", 0.0),
        attn_drop_rate=cfg.get("attn_drop_rate", 0.0),
        drop_path_rate=cfg.get("drop_path_rate", 0.1),
        mask_regular_windows=True,
        spec=MultiplexSpec(
            share=tuple(share),
            separate_norms=bool(cfg.get("is_sep_layernorm", False)),
            mlp_transform=bool(cfg.get("is_transform_FFN", False)),
            mlp_residual=False,
            transforms=bool(cfg.get("is_transform_heads", False)),
            transform_init="trunc_normal",
        ),
    )


def build_from_official_config(cfg) -> MultiplexedSwinTransformer:
    """The model the authors' code builds from ``cfg`` (their names, as their JSON configs)."""
    return MultiplexedSwinTransformer(**official_kwargs(cfg))
