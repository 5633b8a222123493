"""The Swin family: weight-multiplexed Swin Transformer (Mini-Swin) and its construction from a timm Swin.

Layout follows timm's ``SwinTransformer`` (NHWC tensors, the patch merging at the *start* of stages 1..S-1,
``head.fc``), so everything outside the blocks keeps timm's names and a timm Swin teacher maps onto a student
1:1. Each stage's ``blocks`` are groups of :class:`~minivit.core.Multiplexed` layers:

* ``shared`` (:class:`SharedSwinBlock`): window attention (qkv, proj and the relative-position-bias table) and
  the MLP that ``share`` consecutive layers run, plus the group's shifted-window mask (a non-persistent buffer
  computed at init; the relative position index is one too);
* ``layers[r]`` (:class:`SwinLayerParts`): what stays per layer: norm1/norm2, drop-path, the pre/post-softmax
  head transforms (:class:`~minivit.core.HeadMix` *with* bias), the MLP transform (per-layer LayerNorm +
  depth-wise 7x7 conv), the low-rank deltas of relaxed sharing and two taps (``qkv_out`` on the window-wise qkv
  projection, (B*nW, N, 3C); ``block_out`` on the layer output, (B, H, W, C)).

Window shifting follows the authors (and timm for ``share=1``): layer ``j`` of a stage (0-based, counted over
all of the stage's layers) runs shifted windows iff ``j`` is odd, so the repeats of one shared block alternate
regular/shifted. Attention order per layer: ``q k^T * scale + rel-pos bias -> Fpre -> + shift mask -> softmax
-> Fpost -> @ v -> proj``.

**MLP transform**, between the two residuals, in one of two forms (``spec.mlp_residual``):

* residual (default): ``x = x + DWConv7x7_l(LN_l(x))``; built from a teacher, the conv starts at zero, so the
  student starts as its teacher's function;
* the authors' (the released Mini-Swin models): ``x = LN_l(x); x = x + DWConv7x7_l(x)``: ``LN_l`` replaces the
  residual stream, so no initialisation makes it an identity map.

Then ``x = x + MLP(norm2_l(x))``.

``mask_regular_windows`` reproduces a quirk of the authors' implementation: their shared block passes its
shifted-window mask to *every* layer, also to the layers that do not shift (the mask is then applied to
regular windows). Their released checkpoints were trained that way, so the registered Mini-Swin models turn
it on; students made from a timm Swin leave it off (plain Swin).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, Mlp, PatchEmbed, to_2tuple, trunc_normal_
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    get_relative_position_index,
    window_partition,
    window_reverse,
)
from torch import Tensor, nn

from ..core import (
    Family,
    HeadMix,
    LayerParts,
    adopt,
    build_groups,
    check_share,
    merge_modules,
    per_stage,
    resolve_window_sizes,
    shifted_window_mask,
    stage_geometry,
    student_from_teacher,
    take_indices,
)
from ..core import delta as deltas
from ..core.attention import mix_weights, mixed_attention
from ..errors import ConfigError
from ..spec import ALL, MultiplexSpec, as_spec

ARCHITECTURE = "multiplexed_swin"
"""The timm entrypoint (:mod:`minivit.zoo.students`) that rebuilds a student from its ``arch_args`` and spec."""


def resolve_share(depths: Sequence[int], share=None, unique_blocks=None) -> list[int]:
    """Layers per shared block for every stage, from ``share`` (int or per stage) or ``unique_blocks``."""
    if share is not None and unique_blocks is not None:
        raise ConfigError("give either share or unique_blocks, not both", "unique_blocks[s] = depths[s] // share[s]")
    n = len(depths)
    if unique_blocks is not None:
        out = []
        for s, (d, u) in enumerate(zip(depths, per_stage(unique_blocks, n, "unique_blocks"))):
            if isinstance(u, bool) or not isinstance(u, int) or u < 1 or d % u:
                divisors = [k for k in range(1, d + 1) if d % k == 0]
                raise ConfigError(
                    f"stage {s}: unique_blocks={u!r} does not divide its depth {d}",
                    f"use one of {divisors} unique blocks for stage {s}",
                )
            out.append(d // u)
        return out
    shares = list(depths) if share == ALL else per_stage(2 if share is None else share, n, "share")
    for s, (d, k) in enumerate(zip(depths, shares)):
        check_share(d, k, what=f"stage {s} depth")
    return list(shares)


def check_spec(spec: MultiplexSpec, depths: Sequence[int]) -> list[int]:
    """The Swin checks of a spec; returns the layers per shared block of every stage."""
    if spec.irpe:
        raise ConfigError("irpe applies to ViT models only", "Swin has its own relative position bias")
    return resolve_share(depths, spec.share)


# --------------------------------------------------------------------------- the multiplexed block


class SharedWindowAttention(nn.Module):
    """Window attention whose qkv, proj and relative-position-bias table a group shares."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        parts = ("num_heads", "scale", "qkv", "relative_position_bias_table", "attn_drop", "proj", "proj_drop")
        adopt(self, attn, parts)
        self.window_size = tuple(attn.window_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        index = get_relative_position_index(*self.window_size, device=attn.relative_position_bias_table.device)
        self.register_buffer("relative_position_index", index, persistent=False)

    def rel_pos_bias(self) -> Tensor:
        n = self.window_area
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)

    def forward(self, x: Tensor, layer: nn.Module, mask: Tensor | None) -> Tensor:
        b, n, _ = x.shape
        d = layer.delta
        qkv = layer.qkv_out(deltas.linear(self.qkv, x, None if d is None else d.qkv))
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rel_pos_bias()
        if layer.pre_mix is None and layer.post_mix is None:
            if mask is not None:
                nw = mask.shape[0]
                bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(b // nw, -1, -1, -1, -1)
                bias = bias.reshape(b, self.num_heads, n, n)
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            # logits + bias -> Fpre -> + mask -> softmax -> Fpost (core.attention; the inference path in eval mode)
            x = mixed_attention(
                q, k, v, self.scale, **mix_weights(layer.pre_mix, layer.post_mix), bias=bias, mask=mask,
                dropout_p=self.attn_drop.p if self.training else 0.0, fast=not self.training,
            )
        x = x.transpose(1, 2).reshape(b, n, -1)
        return self.proj_drop(deltas.linear(self.proj, x, None if d is None else d.proj))


class SharedSwinBlock(nn.Module):
    """What a group of Swin layers shares: window attention, MLP (and the norms, if shared), and its mask."""

    def __init__(self, attn: SharedWindowAttention, mlp: nn.Module, resolution, window, shift,
                 mask: Tensor | None, norm1=None, norm2=None):
        super().__init__()
        self.input_resolution = tuple(resolution)
        self.window_size = tuple(window)
        self.shift_size = tuple(shift)
        self.norm1 = norm1
        self.attn = attn
        self.norm2 = norm2
        self.mlp = mlp
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: Tensor, layer: nn.Module) -> Tensor:
        b, h, w, c = x.shape
        norm1 = layer.norm1 if self.norm1 is None else self.norm1
        norm2 = layer.norm2 if self.norm2 is None else self.norm2
        y = norm1(x)
        if layer.shifted:
            y = torch.roll(y, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(y, self.window_size).view(-1, self.window_size[0] * self.window_size[1], c)
        windows = self.attn(windows, layer, self.attn_mask if layer.masked else None)
        y = window_reverse(windows.view(-1, self.window_size[0], self.window_size[1], c), self.window_size, h, w)
        if layer.shifted:
            y = torch.roll(y, shifts=self.shift_size, dims=(1, 2))
        x = x + layer.drop_path1(y)
        if layer.local_conv is not None:
            y = layer.local_norm(x)
            x = (x if layer.local_residual else y) + layer.local_conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + layer.drop_path2(deltas.mlp(self.mlp, norm2(x), layer.delta))
        return layer.block_out(x)

    def extra_repr(self) -> str:
        return f"resolution={self.input_resolution}, window={self.window_size}, shift={self.shift_size}"


class SwinLayerParts(LayerParts):
    """What one Swin layer keeps for itself; unused parts are ``None``.

    ``shifted`` (cyclic shift of the windows), ``masked`` (add the group's mask) and ``local_residual`` (the
    MLP transform's form, see the module docstring) are fixed at init.
    """

    def __init__(self, *, norm1, norm2, drop_path1, drop_path2, pre_mix, post_mix, local_norm, local_conv,
                 shifted: bool, masked: bool, local_residual: bool = False, delta=None):
        super().__init__(norm1=norm1, norm2=norm2, drop_path1=drop_path1, drop_path2=drop_path2, pre_mix=pre_mix,
                         post_mix=post_mix, local_norm=local_norm, local_conv=local_conv, delta=delta)
        self.shifted = bool(shifted)
        self.masked = bool(masked)
        self.local_residual = bool(local_residual)

    def extra_repr(self) -> str:
        return f"shifted={self.shifted}, masked={self.masked}, local_residual={self.local_residual}"


def _check_swin_blocks(blocks) -> list[SwinTransformerBlock]:
    blocks = list(blocks)
    for i, blk in enumerate(blocks):
        if not isinstance(blk, SwinTransformerBlock):
            raise ConfigError(
                f"block {i} ({type(blk).__name__}) is not a timm SwinTransformerBlock",
                "multiplex supports timm SwinTransformer (v1) models",
            )
        if getattr(blk, "dynamic_mask", False) or getattr(blk, "always_partition", False):
            raise ConfigError(
                "Swin models with dynamic_img_size/strict_img_size=False or always_partition are not supported",
                "use a timm Swin built with a fixed img_size",
            )
    return blocks


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


def _mlp_transform(blk: SwinTransformerBlock, spec: MultiplexSpec) -> tuple[nn.Module, nn.Module]:
    """A layer's LayerNorm + depth-wise 7x7 conv. The conv starts at zero in the residual form (the layer is
    then its teacher's) and with identity transform init; else PyTorch's default init, as the authors."""
    dim, device = blk.norm1.normalized_shape[0], blk.norm1.weight.device
    norm = nn.LayerNorm(dim, eps=blk.norm1.eps, device=device)
    conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=blk.attn.qkv.bias is not None, device=device)
    if spec.mlp_residual or spec.transform_init == "identity":
        nn.init.zeros_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return norm, conv


class _StageLayers:
    """Which layers of a stage shift and which add the group's mask (``mask_regular_windows``: all)."""

    def __init__(self, geometry: dict, mask_regular_windows: bool):
        self.has_shift = any(geometry["shift"])
        self.mask_regular_windows = mask_regular_windows

    def shifted(self, i: int) -> bool:
        return self.has_shift and i % 2 == 1

    def masked(self, i: int) -> bool:
        return self.has_shift and (self.shifted(i) or self.mask_regular_windows)


@torch.no_grad()
def multiplex_swin_blocks(
    blocks,
    share: int,
    spec: MultiplexSpec,
    *,
    geometry: dict,
    mask_regular_windows: bool = False,
    drop_path: Sequence[float] | None = None,
    fresh: bool = False,
) -> nn.Sequential:
    """Turn one stage's timm ``SwinTransformerBlock`` list into groups of ``share`` multiplexed layers.

    ``blocks[i]`` provides layer ``i``'s norms (and drop-path, unless ``drop_path`` rates are given) and, merged
    per group by ``spec.init``, the shared attention/MLP. The blocks are copied, never modified. A list that
    repeats one block object per group builds a fresh model without throwaway blocks; ``fresh`` (a model built
    from its config) skips the deltas' SVD start.
    """
    blocks = _check_swin_blocks(blocks)
    check_share(len(blocks), share)
    res, window, shift = geometry["resolution"], geometry["window"], geometry["shift"]
    rule = _StageLayers(geometry, mask_regular_windows)
    mlp_transform = spec.mlp_transform is not False
    num_heads = blocks[0].attn.num_heads

    def make_shared(g: int) -> SharedSwinBlock:
        group = blocks[g * share : (g + 1) * share]
        attn = merge_modules([b.attn for b in group], spec.init)
        mlp = merge_modules([b.mlp for b in group], spec.init)
        uses_mask = any(rule.masked(g * share + r) for r in range(share))
        mask = shifted_window_mask(res, window, shift) if uses_mask else None
        if mask is not None:
            mask = mask.to(device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
        norms = (None, None)
        if not spec.separate_norms:
            norms = [merge_modules([getattr(b, n) for b in group], spec.init) for n in ("norm1", "norm2")]
        return SharedSwinBlock(SharedWindowAttention(attn), mlp, res, window, shift, mask, *norms)

    def make_layer(i: int, shared: SharedSwinBlock) -> SwinLayerParts:
        blk = blocks[i]
        dps = [_drop_path(drop_path[i]) for _ in range(2)] if drop_path is not None else None
        own = merge_modules([nn.ModuleDict(dict(n1=blk.norm1, n2=blk.norm2, d1=blk.drop_path1, d2=blk.drop_path2))],
                            "first")  # copies: the teacher stays intact
        local = _mlp_transform(blk, spec) if mlp_transform else (None, None)
        mixes = [None, None]
        if spec.transforms:
            device = blk.norm1.weight.device
            mixes = [HeadMix(num_heads, bias=True, init=spec.transform_init).to(device) for _ in range(2)]
        delta = deltas.layer_deltas(shared, blk, spec.delta_rank, from_block=not fresh, bias=spec.delta_bias)
        return SwinLayerParts(
            norm1=own["n1"] if spec.separate_norms else None,
            norm2=own["n2"] if spec.separate_norms else None,
            drop_path1=dps[0] if dps else own["d1"],
            drop_path2=dps[1] if dps else own["d2"],
            pre_mix=mixes[0], post_mix=mixes[1], local_norm=local[0], local_conv=local[1],
            shifted=rule.shifted(i), masked=rule.masked(i), local_residual=spec.mlp_residual, delta=delta,
        )

    return nn.Sequential(*build_groups(len(blocks), share, make_shared, make_layer))


class MultiplexedSwinStage(nn.Module):
    """One Swin stage: timm's patch merging (Identity in stage 0), then groups of multiplexed layers."""

    def __init__(self, downsample: nn.Module, blocks: nn.Sequential):
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


# --------------------------------------------------------------------------- the model


def _check_widths(embed_dim, depths: list[int], num_heads: list[int]) -> list[int]:
    """Per-stage widths (doubling from ``embed_dim``); ConfigError if heads do not divide them."""
    if not depths or len(num_heads) != len(depths):
        raise ConfigError(f"depths {depths} and num_heads {num_heads} must have one entry per stage")
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
        raise ConfigError(f"embed_dim must be a positive int, got {embed_dim!r}")
    dims = [embed_dim * 2**s for s in range(len(depths))]
    for s, (dim, heads) in enumerate(zip(dims, num_heads)):
        if dim % heads:
            raise ConfigError(f"stage {s}: width {dim} is not divisible by {heads} heads", "change num_heads")
    return dims


class MultiplexedSwinTransformer(nn.Module):
    """Swin Transformer (timm layout, NHWC) with weight-multiplexed blocks: Mini-Swin.

    Args (timm's names): ``img_size``, ``patch_size``, ``in_chans``, ``num_classes``, ``global_pool``,
    ``embed_dim``, ``depths``, ``num_heads``, ``window_size`` (int, (h, w) or one per stage), ``mlp_ratio``,
    ``qkv_bias``, ``drop_rate`` (before the classifier), ``proj_drop_rate``, ``attn_drop_rate``,
    ``drop_path_rate``, ``norm_eps``; ``mask_regular_windows`` (the authors' mask quirk, see the module
    docstring); ``spec`` (a :class:`~minivit.MultiplexSpec` or its dict: every multiplexing option; ``share`` an
    int for every stage or one per stage); ``sources`` (per stage, the ``depth`` timm blocks the layers start
    from; by default one fresh block per group). ``self.spec`` and ``self.arch_args`` (JSON-able) record how
    the model was built.
    """

    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size=7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-5,
        mask_regular_windows: bool = False,
        spec: MultiplexSpec | dict | None = None,
        sources: list[list[nn.Module]] | None = None,
    ):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        self.arch_args = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
            window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
            proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            norm_eps=norm_eps, mask_regular_windows=mask_regular_windows,
        )  # JSON-able record of the architecture (config.json of save_pretrained)
        self.spec = as_spec(spec)
        dims = _check_widths(embed_dim, depths, num_heads)
        self.share = check_spec(self.spec, depths)
        self.geometry = stage_geometry(img_size, patch_size, resolve_window_sizes(window_size, len(depths)))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = dims[-1]

        def norm_layer(d, **kw):
            return nn.LayerNorm(d, eps=norm_eps, **kw)

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            norm_layer=norm_layer, strict_img_size=True, output_fmt="NHWC",
        )
        fresh = sources is None
        if fresh:
            sources = self._fresh_blocks(dims, depths, norm_layer)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info = [], []
        for s, (dim, k, geo) in enumerate(zip(dims, self.share, self.geometry)):
            start = sum(depths[:s])
            blocks = multiplex_swin_blocks(
                sources[s], k, self.spec, geometry=geo, mask_regular_windows=mask_regular_windows,
                drop_path=dpr[start : start + depths[s]], fresh=fresh,
            )
            downsample = PatchMerging(dim=dims[s - 1], out_dim=dim, norm_layer=norm_layer) if s > 0 else nn.Identity()
            stages.append(MultiplexedSwinStage(downsample, blocks))
            reduction = max(to_2tuple(patch_size)) * 2**s
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"layers.{s}"))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC"
        )
        if fresh:  # else every weight comes from the teacher
            self._init_weights()

    def _fresh_blocks(self, dims, depths, norm_layer) -> list[list[nn.Module]]:
        """Per stage, one new timm block per group, listed once per layer (no throwaway blocks)."""
        a, out = self.arch_args, []
        for dim, depth, heads, k, geo in zip(dims, depths, a["num_heads"], self.share, self.geometry):
            fresh = [
                SwinTransformerBlock(
                    dim=dim, input_resolution=geo["resolution"], num_heads=heads, window_size=geo["window"],
                    shift_size=0, mlp_ratio=a["mlp_ratio"], qkv_bias=a["qkv_bias"], proj_drop=a["proj_drop_rate"],
                    attn_drop=a["attn_drop_rate"], norm_layer=norm_layer,
                )
                for _ in range(depth // k)
            ]
            out.append([fresh[i // k] for i in range(depth)])
        return out

    @torch.no_grad()
    def _init_weights(self) -> None:
        """As the authors and timm: Linear trunc-normal(0.02) with zero bias; LayerNorm ones/zeros."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def depth(self) -> int:
        return sum(g.share for stage in self.layers for g in stage.blocks)

    @property
    def depths(self) -> list[int]:
        return [sum(g.share for g in stage.blocks) for stage in self.layers]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+).downsample", (0,)),
                (r"^layers\.(\d+)\.\w+\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        if global_pool is not None:
            self.global_pool = global_pool
        self.arch_args.update(num_classes=num_classes, global_pool=self.global_pool)

    @staticmethod
    def feature_cfg(kwargs: dict) -> dict:
        """timm's ``feature_cfg`` for ``features_only=True`` (pops ``out_indices``; default every stage)."""
        stages = len(kwargs.get("depths", (2, 2, 6, 2)))
        return dict(flatten_sequential=True, out_indices=kwargs.pop("out_indices", tuple(range(stages))))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's ``forward_intermediates``: per stage, its output as an NCHW map (the last one final-normed if
        ``norm``); with the final features unless ``intermediates_only``."""
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt {output_fmt!r} is not supported", "Swin stage maps are NCHW")
        take, last = take_indices(len(self.layers), indices)
        x = self.patch_embed(x)
        out, final = [], len(self.layers) - 1
        stages = self.layers[: last + 1] if stop_early else self.layers
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == final else x
                out.append(y.permute(0, 3, 1, 2).contiguous())
        if intermediates_only:
            return out
        return (self.norm(x) if len(stages) - 1 == final else x), out

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one ``indices`` needs, and the norm / head, as timm's Swin."""
        take, last = take_indices(len(self.layers), indices)
        cut = last < len(self.layers) - 1
        if prune_norm or cut:
            self.norm = nn.Identity()  # sized for the last stage
        self.layers = self.layers[: last + 1]
        if cut:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or cut:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = self.layers(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def describe_swin(model: SwinTransformer) -> dict:
    """The keyword arguments of :class:`MultiplexedSwinTransformer` that rebuild ``model``'s architecture."""
    if isinstance(model, MultiplexedSwinTransformer):
        return dict(model.arch_args)
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


def from_teacher(teacher: SwinTransformer, spec: MultiplexSpec) -> MultiplexedSwinTransformer:
    """A :class:`MultiplexedSwinTransformer` whose groups are built once from a timm Swin ``teacher``'s blocks.

    ``spec.share``: layers per shared block, an int for every stage (it must divide each stage depth) or one
    per stage. With ``share=1``, identity transforms and the residual MLP transform (the defaults) the student
    computes the teacher's function.
    """
    if isinstance(teacher, MultiplexedSwinTransformer):
        raise ConfigError("the model is already multiplexed", "pass the original (teacher) Swin")
    args = describe_swin(teacher)
    sources = [list(stage.blocks) for stage in teacher.layers]
    return student_from_teacher(
        teacher, MultiplexedSwinTransformer, args, spec, sources, lambda k: ".blocks." in k, architecture=ARCHITECTURE
    )


FAMILY = Family(
    name="swin",
    teacher_types=(SwinTransformer,),
    student_type=MultiplexedSwinTransformer,
    config_name=ARCHITECTURE,
    from_teacher=from_teacher,
    legacy_spec={"mlp_residual": False},  # the only MLP transform form before the residual one existed
)
