"""Describe a timm SwinTransformer (v1) and multiplex it into a Mini-Swin student initialised from it.

The student (:class:`~minivit.models.swin.MultiplexedSwinTransformer`) has timm's layout, so everything outside
the blocks (patch embedding, patch merging, final norm, head) is copied key for key; each stage's blocks become
groups of ``share`` layers whose shared attention (qkv, proj, relative-position-bias table) and MLP come from
the group's teacher blocks (``init``: first, mean or random), while every layer keeps its teacher block's norms
and drop-path. With ``share=1``, identity transforms and ``mlp_transform=False`` the student computes the
teacher's function.

**MLP transform and initialisation.** The per-layer MLP transform is ``x = LN_l(x); x = x + DWConv_l(x)``: the
LayerNorm *replaces* the residual stream, so no initialisation makes it an identity map (a LayerNorm cannot
restore each token's mean and scale). From a teacher, the student gets ``LN_l`` at ones/zeros and, with
``transform_init="identity"``, a zero depth-wise conv, so the transform reduces exactly to re-normalising the
residual stream before the MLP, the closest to identity there is; with ``"trunc_normal"`` the conv keeps
PyTorch's default init as in the authors' code. Such a student starts close to, but not equal to, the teacher;
distillation closes the gap (pass ``mlp_transform=False`` for an exact start).
"""

from __future__ import annotations

from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import nn

from ..errors import ConfigError
from ..models.swin import MultiplexedSwinTransformer, multiplex_swin_blocks, resolve_share


def describe_swin(model: SwinTransformer) -> dict:
    """The keyword arguments of :class:`MultiplexedSwinTransformer` that rebuild ``model``'s architecture."""
    if isinstance(model, MultiplexedSwinTransformer):
        return {k: v for k, v in model.init_args.items()}
    if not isinstance(model, SwinTransformer):
        raise ConfigError(
            f"{type(model).__name__} is not a timm SwinTransformer",
            "use a Swin (v1) model such as swin_tiny_patch4_window7_224",
        )
    stages = list(model.layers)
    blocks = [list(st.blocks) for st in stages]
    if not all(blocks) or not all(isinstance(b, SwinTransformerBlock) for bs in blocks for b in bs):
        raise ConfigError("every Swin stage needs at least one timm SwinTransformerBlock", "use a timm Swin (v1)")
    b0 = blocks[0][0]
    dims = [bs[0].norm1.normalized_shape[0] for bs in blocks]
    embed_dim = dims[0]
    if dims != [embed_dim * 2**s for s in range(len(dims))]:
        raise ConfigError(f"stage widths {dims} do not double per stage", "use a Swin with an int embed_dim")
    for s, bs in enumerate(blocks):
        attn = bs[0].attn
        if attn.qkv.out_features != 3 * dims[s]:
            raise ConfigError(f"stage {s} uses head_dim != width/heads", "use a Swin without a custom head_dim")
    if getattr(b0, "dynamic_mask", False) or getattr(b0, "always_partition", False):
        raise ConfigError(
            "Swin models with dynamic image size or always_partition are not supported",
            "build the timm Swin with a fixed img_size (strict_img_size=True) and always_partition=False",
        )
    if type(b0.mlp) is not Mlp or type(b0.mlp.act) is not nn.GELU or not isinstance(b0.norm1, nn.LayerNorm):
        raise ConfigError(
            "only Swin blocks with LayerNorm and timm's GELU Mlp are supported",
            "use a standard timm SwinTransformer",
        )
    ratios = {bs[0].mlp.fc1.out_features / dims[s] for s, bs in enumerate(blocks)}
    if len(ratios) != 1:
        raise ConfigError(f"per-stage mlp ratios {sorted(ratios)} are not supported", "use one mlp_ratio")
    windows = [list(w) for w in getattr(model, "_ref_window_sizes", [b[0].window_size for b in blocks])]
    window_size = windows[0][0] if all(w == [windows[0][0]] * 2 for w in windows) else windows
    last = blocks[-1][-1].drop_path1
    return dict(
        img_size=list(model.patch_embed.img_size),
        patch_size=list(model.patch_embed.patch_size),
        in_chans=model.patch_embed.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=embed_dim,
        depths=[len(bs) for bs in blocks],
        num_heads=[bs[0].attn.num_heads for bs in blocks],
        window_size=window_size,
        mlp_ratio=ratios.pop(),
        qkv_bias=b0.attn.qkv.bias is not None,
        drop_rate=float(model.head.drop.p),
        proj_drop_rate=float(b0.attn.proj_drop.p),
        attn_drop_rate=float(b0.attn.attn_drop.p),
        drop_path_rate=float(getattr(last, "drop_prob", 0.0)),
        norm_eps=float(b0.norm1.eps),
    )


def multiplex_swin(
    teacher: SwinTransformer,
    share: int | list[int] = 2,
    *,
    transforms: bool = True,
    separate_norms: bool = True,
    mlp_transform: bool = True,
    init: str = "first",
    transform_init: str = "identity",
) -> MultiplexedSwinTransformer:
    """A :class:`MultiplexedSwinTransformer` initialised from a timm Swin ``teacher`` (left unchanged).

    ``share``: layers per shared block, an int for every stage (it must divide each stage depth) or one per
    stage. See the module docstring for what ``mlp_transform`` does to the initial function.
    """
    if isinstance(teacher, MultiplexedSwinTransformer):
        raise ConfigError("the model is already multiplexed", "pass the original (teacher) Swin")
    args = describe_swin(teacher)
    shares = resolve_share(args["depths"], share)
    student = MultiplexedSwinTransformer(
        **args,
        share=shares,
        transforms=transforms,
        separate_norms=separate_norms,
        mlp_transform=mlp_transform,
        mask_regular_windows=False,
        transform_init=transform_init,
    )
    own = student.state_dict()
    outside = {k: v for k, v in teacher.state_dict().items() if ".blocks." not in k}
    bad = [k for k, v in outside.items() if k not in own or own[k].shape != v.shape]
    bad += [k for k in own if ".blocks." not in k and k not in outside]
    if bad:
        raise ConfigError(
            f"cannot reproduce this Swin's layout (first differing keys: {', '.join(bad[:3])})",
            "this timm Swin variant is not supported by multiplex",
        )
    student.load_state_dict(outside, strict=False)
    for stage, t_stage, k, geo in zip(student.layers, teacher.layers, shares, student.geometry):
        stage.blocks = multiplex_swin_blocks(
            t_stage.blocks,
            k,
            geometry=geo,
            transforms=transforms,
            separate_norms=separate_norms,
            mlp_transform=mlp_transform,
            mask_regular_windows=False,
            init=init,
            transform_init=transform_init,
        )
    student.train(teacher.training)
    return student.to(next(teacher.parameters()).device)
