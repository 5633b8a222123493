"""Describe a timm VisionTransformer and multiplex it into a student initialised from it."""

from __future__ import annotations

from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import ConfigError
from ..models.vision_transformer import MultiplexedVisionTransformer

_ACT_NAMES = {"GELU": "gelu", "QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh", "SiLU": "silu", "ReLU": "relu"}


def _identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def describe_vit(model: VisionTransformer) -> dict:
    """The keyword arguments that rebuild ``model``'s architecture (JSON-able).

    Raises :class:`ConfigError` for ViT variants this cannot express.
    """
    if not isinstance(model, VisionTransformer) or type(model).__name__ == "VisionTransformerDistilled":
        raise ConfigError(
            f"{type(model).__name__} is not a plain timm VisionTransformer",
            "use a ViT/DeiT model such as deit_small_patch16_224 (distilled DeiTs are not supported)",
        )
    blocks = list(model.blocks)
    if isinstance(model, MultiplexedVisionTransformer):
        return {k: v for k, v in model.init_args.items()}
    b0 = blocks[0]
    if type(b0.mlp) is not Mlp:
        raise ConfigError(f"MLP type {type(b0.mlp).__name__} is not supported", "use a ViT with timm's Mlp")
    act = _ACT_NAMES.get(type(b0.mlp.act).__name__)
    if act is None:
        raise ConfigError(f"activation {type(b0.mlp.act).__name__} is not supported", f"supported: {list(_ACT_NAMES)}")
    if not isinstance(b0.norm1, nn.LayerNorm):
        raise ConfigError(f"norm {type(b0.norm1).__name__} is not supported", "use a ViT with LayerNorm")
    ls = getattr(b0.ls1, "gamma", None)
    args = dict(
        img_size=tuple(model.patch_embed.img_size),
        patch_size=tuple(model.patch_embed.patch_size),
        in_chans=model.patch_embed.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depth=len(blocks),
        num_heads=b0.attn.num_heads,
        mlp_ratio=b0.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=b0.attn.qkv.bias is not None,
        qk_norm=not _identity(b0.attn.q_norm),
        proj_bias=b0.attn.proj.bias is not None,
        init_values=float(ls.detach().abs().mean()) if ls is not None else None,
        class_token=model.cls_token is not None,
        pos_embed="learn" if model.pos_embed is not None else "none",
        no_embed_class=bool(model.no_embed_class),
        reg_tokens=int(model.num_reg_tokens),
        pre_norm=not _identity(model.norm_pre),
        final_norm=not (_identity(model.norm) and _identity(model.fc_norm)),
        fc_norm=not _identity(model.fc_norm),
        pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)) and model.global_pool != "map",
        dynamic_img_size=bool(getattr(model, "dynamic_img_size", False)),
        act_layer=act,
        norm_eps=float(b0.norm1.eps),
    )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def multiplex_vit(
    teacher: VisionTransformer,
    share: int,
    *,
    transforms: bool = True,
    separate_norms: bool = True,
    irpe: bool = False,
    irpe_ratio: float = 1.9,
    init: str = "first",
    transform_init: str = "identity",
) -> MultiplexedVisionTransformer:
    """A :class:`MultiplexedVisionTransformer` initialised from ``teacher`` (left unchanged)."""
    if isinstance(teacher, MultiplexedVisionTransformer):
        raise ConfigError("the model is already multiplexed", "pass the original (teacher) ViT")
    args = describe_vit(teacher)
    depth = args["depth"]
    student = MultiplexedVisionTransformer(
        **args,
        share=share,
        transforms=transforms,
        separate_norms=separate_norms,
        irpe=irpe,
        irpe_ratio=irpe_ratio,
        transform_init=transform_init,
    )
    # everything outside the blocks: copied as is (shapes must agree, else describe_vit missed something)
    own = student.state_dict()
    outside = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.")}
    bad = [k for k, v in outside.items() if k not in own or own[k].shape != v.shape]
    bad += [k for k in own if not k.startswith("blocks.") and k not in outside]
    if bad:
        raise ConfigError(
            f"cannot reproduce this ViT's layout (first differing keys: {', '.join(bad[:3])})",
            "this timm ViT variant is not supported by multiplex",
        )
    student.load_state_dict(outside, strict=False)
    student.blocks = student.multiplex_blocks(teacher.blocks, init=init)
    student.train(teacher.training)
    assert student.depth == depth
    return student


