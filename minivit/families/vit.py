"""The ViT / DeiT family: weight-multiplexed Vision Transformer and its construction from a timm teacher.

:class:`MultiplexedVisionTransformer` is timm's ``VisionTransformer`` whose ``blocks`` are groups of
:class:`~minivit.core.Multiplexed` layers. Everything outside the blocks (patch embedding, class/register
tokens, position embedding, final norm, pooling, head) is timm's own, so every timm feature and checkpoint
name outside the blocks keeps working.

Per group, ``shared`` (:class:`SharedBlock`) holds the attention (qkv, proj) and MLP every layer runs; per
layer, ``layers[r]`` (:class:`LayerParts`) holds its norms, layer-scale, drop-path, the head-mixing transforms
(no bias), the iRPE table (Mini-DeiT), the low-rank deltas of relaxed sharing and two taps.
"""

from __future__ import annotations

import copy
from functools import partial

import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from ..core import (
    ContextualRPE,
    Family,
    HeadMix,
    Multiplexed,
    adopt,
    build_groups,
    check_share,
    merge_modules,
    num_product_buckets,
    product_bucket_index,
    student_from_teacher,
    take_indices,
)
from ..core import delta as deltas
from ..core.attention import mix_weights, mixed_attention, split_qkv
from ..core.multiplex import LayerParts as BaseLayerParts
from ..errors import ConfigError
from ..spec import ALL, MultiplexSpec, as_spec

ARCHITECTURE = "multiplexed_vit"
"""The timm entrypoint (:mod:`minivit.zoo.students`) that rebuilds a student from its ``arch_args`` and spec."""


class SharedAttention(nn.Module):
    """Multi-head self-attention whose weights a group shares; the layer's transforms plug in."""

    def __init__(self, attn: nn.Module, rpe_index: Tensor | None = None):
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise ConfigError("gated attention is not supported", "use a ViT with the standard timm Attention")
        adopt(self, attn, ("num_heads", "head_dim", "scale", "qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj",
                           "proj_drop"))
        if rpe_index is not None:
            self.register_buffer("rpe_index", rpe_index, persistent=False)
        else:
            self.rpe_index = None

    def forward(self, x: Tensor, layer: nn.Module) -> Tensor:
        b, n, _ = x.shape
        d = layer.delta
        qkv = layer.qkv_out(deltas.linear(self.qkv, x, None if d is None else d.qkv))
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if layer.rpe is None and layer.pre_mix is None and layer.post_mix is None:
            q, k, v = qkv.unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            # explicit attention: contiguous q, k, v so the batched products copy nothing (split_qkv); in eval mode
            # the inference path (same result to float rounding, see core.attention)
            q, k, v = split_qkv(qkv, self.training)
            q, k = self.q_norm(q), self.k_norm(k)
            x = mixed_attention(
                q, k, v, self.scale, **mix_weights(layer.pre_mix, layer.post_mix),
                rpe_table=None if layer.rpe is None else layer.rpe.weight, rpe_index=self.rpe_index,
                dropout_p=self.attn_drop.p if self.training else 0.0, fast=not self.training,
            )
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return self.proj_drop(deltas.linear(self.proj, x, None if d is None else d.proj))


class SharedBlock(nn.Module):
    """The weights a group of ViT layers shares: attention and MLP (and the norms, if shared)."""

    def __init__(self, attn: SharedAttention, mlp: nn.Module, norm1=None, norm2=None):
        super().__init__()
        self.norm1 = norm1
        self.attn = attn
        self.norm2 = norm2
        self.mlp = mlp

    def forward(self, x: Tensor, layer: nn.Module) -> Tensor:
        norm1 = layer.norm1 if self.norm1 is None else self.norm1
        norm2 = layer.norm2 if self.norm2 is None else self.norm2
        x = x + layer.drop_path1(layer.ls1(self.attn(norm1(x), layer)))
        x = x + layer.drop_path2(layer.ls2(deltas.mlp(self.mlp, norm2(x), layer.delta)))
        return layer.block_out(x)


class LayerParts(BaseLayerParts):
    """What one ViT layer keeps for itself (copies of ``block``'s parts); unused parts are ``None`` (or identity)."""

    COPIED = ("norm1", "norm2", "ls1", "ls2", "drop_path1", "drop_path2")

    def __init__(self, block: Block, separate_norms: bool, pre_mix=None, post_mix=None, rpe=None, delta=None):
        own = copy.deepcopy(nn.ModuleDict({n: getattr(block, n) for n in self.COPIED}))  # the block stays intact
        norms = (own["norm1"], own["norm2"]) if separate_norms else (None, None)
        super().__init__(norm1=norms[0], norm2=norms[1], ls1=own["ls1"], ls2=own["ls2"], drop_path1=own["drop_path1"],
                         drop_path2=own["drop_path2"], pre_mix=pre_mix, post_mix=post_mix, rpe=rpe, delta=delta)


def _check_blocks(blocks) -> list[Block]:
    blocks = list(blocks)
    for i, blk in enumerate(blocks):
        names = {n for n, _ in blk.named_children()}
        needed = {"norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"}
        if not needed <= names or not hasattr(getattr(blk, "attn", None), "qkv"):
            raise ConfigError(
                f"block {i} ({type(blk).__name__}) is not a standard timm ViT block",
                "multiplex supports timm VisionTransformer models built from timm's Block",
            )
    return blocks


def resolve_share(spec: MultiplexSpec, depth: int) -> int:
    """The ViT checks of a spec; returns the number of layers per shared block."""
    if spec.mlp_transform:
        raise ConfigError("mlp_transform applies to Swin models only", "drop mlp_transform for a ViT")
    share = depth if spec.share == ALL else spec.share
    if not isinstance(share, int):
        raise ConfigError("a ViT takes one share number", f"got {spec.share!r}")
    check_share(depth, share)
    return share


def multiplex_vit_blocks(
    blocks, spec: MultiplexSpec, grid_size: tuple[int, int], num_prefix_tokens: int = 0, fresh: bool = False
) -> nn.Sequential:
    """Groups of multiplexed layers from timm ViT ``Block`` modules (copied, never modified); ``fresh``: the
    blocks are timm's random ones (a model built from its config), so the deltas skip their SVD start."""
    blocks = _check_blocks(blocks)
    share = resolve_share(spec, len(blocks))
    num_heads, head_dim = blocks[0].attn.num_heads, blocks[0].attn.head_dim
    rpe_index = product_bucket_index(grid_size, spec.irpe_ratio, num_prefix_tokens) if spec.irpe else None
    buckets = num_product_buckets(spec.irpe_ratio, num_prefix_tokens)

    def make_shared(g: int) -> SharedBlock:
        group = blocks[g * share : (g + 1) * share]
        attn = SharedAttention(merge_modules([b.attn for b in group], spec.init), rpe_index)
        mlp = merge_modules([b.mlp for b in group], spec.init)
        if spec.separate_norms:
            return SharedBlock(attn, mlp)
        norms = [merge_modules([getattr(b, n) for b in group], spec.init) for n in ("norm1", "norm2")]
        return SharedBlock(attn, mlp, *norms)

    def make_layer(i: int, shared: SharedBlock) -> LayerParts:
        blk = blocks[i]
        mixes = [HeadMix(num_heads, False, spec.transform_init) for _ in range(2)] if spec.transforms else [None] * 2
        delta = deltas.layer_deltas(shared, blk, spec.delta_rank, from_block=not fresh, bias=spec.delta_bias)
        rpe = ContextualRPE(head_dim, buckets) if spec.irpe else None
        return LayerParts(blk, spec.separate_norms, *mixes, rpe=rpe, delta=delta)

    return nn.Sequential(*build_groups(len(blocks), share, make_shared, make_layer))


def _no_block(**_) -> nn.Module:
    return nn.Identity()  # stands in for timm's blocks when the groups come from a teacher's


class MultiplexedVisionTransformer(VisionTransformer):
    """timm's VisionTransformer with weight-multiplexed blocks.

    Args: timm's ``VisionTransformer`` keyword arguments (``norm_eps`` sets the LayerNorm eps), ``spec``
    (a :class:`~minivit.MultiplexSpec` or its dict: every multiplexing option) and ``sources`` (one list of
    ``depth`` timm blocks the layers start from; by default the fresh blocks timm builds).
    ``self.spec`` and ``self.arch_args`` (JSON-able) record how the model was built.
    """

    def __init__(self, *, spec: MultiplexSpec | dict | None = None, norm_eps: float = 1e-6, sources=None, **kwargs):
        spec = as_spec(spec)
        resolve_share(spec, kwargs.get("depth", 12))
        if spec.delta_rank and kwargs.get("mlp_layer", Mlp) is not Mlp:
            raise ConfigError("delta_rank needs timm's Mlp", "use a ViT with the standard MLP")
        arch_args = {k: v for k, v in kwargs.items() if k != "norm_layer"}
        kwargs.setdefault("norm_layer", partial(nn.LayerNorm, eps=norm_eps))
        if sources is not None:
            kwargs["block_fn"] = _no_block
        super().__init__(**kwargs)
        self.spec = spec
        self.arch_args = dict(arch_args, norm_eps=norm_eps)
        blocks = self.blocks if sources is None else sources[0]
        self.blocks = multiplex_vit_blocks(blocks, spec, tuple(self.patch_embed.grid_size), self.num_prefix_tokens,
                                           fresh=sources is None)
        self.feature_info = [  # one entry per layer (timm's: per block), named by the layer's output tap
            dict(info, module=f"blocks.{g}.layers.{r}.block_out")
            for info, (g, r) in zip(self.feature_info, self._layer_positions())
        ]

    def _layer_positions(self) -> list[tuple[int, int]]:
        return [(g, r) for g, group in enumerate(self.blocks) for r in range(len(group.layers))]

    @property
    def depth(self) -> int:
        return sum(g.share for g in self.blocks if isinstance(g, Multiplexed))

    @staticmethod
    def feature_cfg(kwargs: dict) -> dict:
        """timm's ``feature_cfg`` for ``features_only=True`` (pops ``out_indices``; default the last 3 layers)."""
        return dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter")

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ):
        """timm's ``forward_intermediates``, per *layer* (``indices`` count every layer of every group): the
        layer outputs (final-normed if ``norm``) as NCHW maps or NLC tokens, prefix tokens split off."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"output_fmt {output_fmt!r} is not supported", "use NCHW or NLC")
        if attn_mask is not None or is_causal:
            raise ConfigError("attention masks are not supported by multiplexed layers", "drop attn_mask/is_causal")
        layers = [(g.shared, layer) for g in self.blocks for layer in g.layers]
        take, last = take_indices(len(layers), indices)
        b, _, height, width = x.shape
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        out = []
        for i, (shared, layer) in enumerate(layers[: last + 1] if stop_early else layers):
            x = shared(x, layer)
            if i in take:
                out.append(self.norm(x) if norm else x)
        prefix = [y[:, : self.num_prefix_tokens] for y in out] if self.num_prefix_tokens else None
        out = [y[:, self.num_prefix_tokens :] for y in out]
        if output_fmt == "NCHW":
            h, w = self.patch_embed.dynamic_feat_size((height, width))
            out = [y.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for y in out]
        if output_dict:
            result = {"image_intermediates": out}
            if prefix is not None and return_prefix_tokens:
                result["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                result["image_features"] = self.norm(x)
            return result
        if return_prefix_tokens and prefix is not None:
            out = list(zip(out, prefix))
        return out if intermediates_only else (self.norm(x), out)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last one ``indices`` needs (a group may keep only its first layers), and
        the final norm / head on request, as timm's ``prune_intermediate_layers``; returns the kept indices."""
        take, last = take_indices(self.depth, indices)
        groups, left = [], last + 1
        for group in self.blocks:
            if left <= 0:
                break
            groups.append(group if group.share <= left else Multiplexed(group.shared, list(group.layers)[:left]))
            left -= group.share
        self.blocks = nn.Sequential(*groups)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take


_ACT_NAMES = {"GELU": "gelu", "QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh", "SiLU": "silu", "ReLU": "relu"}


def _identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _check_describable(model: VisionTransformer) -> str:
    """The activation name of a plain timm ViT; ConfigError for variants :func:`describe_vit` cannot express."""
    if not isinstance(model, VisionTransformer) or type(model).__name__ == "VisionTransformerDistilled":
        raise ConfigError(
            f"{type(model).__name__} is not a plain timm VisionTransformer",
            "use a ViT/DeiT model such as deit_small_patch16_224 (distilled DeiTs are not supported)",
        )
    b0 = model.blocks[0]
    if type(b0.mlp) is not Mlp:
        raise ConfigError(f"MLP type {type(b0.mlp).__name__} is not supported", "use a ViT with timm's Mlp")
    act = _ACT_NAMES.get(type(b0.mlp.act).__name__)
    if act is None:
        raise ConfigError(f"activation {type(b0.mlp.act).__name__} is not supported", f"supported: {list(_ACT_NAMES)}")
    if not isinstance(b0.norm1, nn.LayerNorm):
        raise ConfigError(f"norm {type(b0.norm1).__name__} is not supported", "use a ViT with LayerNorm")
    return act


def describe_vit(model: VisionTransformer) -> dict:
    """The keyword arguments that rebuild ``model``'s architecture (JSON-able, no multiplexing options)."""
    if isinstance(model, MultiplexedVisionTransformer):
        return dict(model.arch_args)
    act = _check_describable(model)
    b0 = model.blocks[0]
    ls = getattr(b0.ls1, "gamma", None)
    args = dict(
        img_size=tuple(model.patch_embed.img_size),
        patch_size=tuple(model.patch_embed.patch_size),
        in_chans=model.patch_embed.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
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


def build_vit(args: dict) -> VisionTransformer:
    """A plain timm ViT from :func:`describe_vit` output."""
    args = dict(args)
    eps = args.pop("norm_eps", 1e-6)
    return VisionTransformer(**args, norm_layer=partial(nn.LayerNorm, eps=eps))


def from_teacher(teacher: VisionTransformer, spec: MultiplexSpec) -> MultiplexedVisionTransformer:
    """A :class:`MultiplexedVisionTransformer` whose groups are built once from ``teacher``'s blocks."""
    if isinstance(teacher, MultiplexedVisionTransformer):
        raise ConfigError("the model is already multiplexed", "pass the original (teacher) ViT")
    args = describe_vit(teacher)
    args = {k: tuple(v) if k in ("img_size", "patch_size") else v for k, v in args.items()}
    return student_from_teacher(
        teacher, MultiplexedVisionTransformer, args, spec, [list(teacher.blocks)], lambda k: k.startswith("blocks."),
        architecture=ARCHITECTURE,
    )  # fmt: skip


FAMILY = Family(
    name="vit",
    teacher_types=(VisionTransformer,),
    student_type=MultiplexedVisionTransformer,
    config_name=ARCHITECTURE,
    from_teacher=from_teacher,
)
