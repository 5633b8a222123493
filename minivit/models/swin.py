"""Weight-multiplexed Swin Transformer (Mini-Swin), on the same mechanism as the ViT family.

Layout follows timm's ``SwinTransformer`` (NHWC tensors, the patch merging at the *start* of stages 1..S-1,
``head.fc``), so everything outside the blocks keeps timm's names and a timm Swin teacher maps onto a student
1:1. Each stage's ``blocks`` are groups of :class:`~minivit.layers.multiplex.Multiplexed` layers:

* ``shared`` (:class:`SharedSwinBlock`): window attention (qkv, proj and the relative-position-bias table) and
  the MLP that ``share`` consecutive layers run, plus the group's shifted-window mask (a non-persistent buffer
  computed at init; the relative position index is one too);
* ``layers[r]`` (:class:`SwinLayerParts`): what stays per layer: norm1/norm2, drop-path, the pre/post-softmax
  head transforms (:class:`~minivit.layers.transforms.HeadMix` *with* bias), the MLP transform (per-layer
  LayerNorm + depth-wise 7x7 conv) and two taps (``qkv_out`` on the window-wise qkv projection, (B*nW, N, 3C);
  ``block_out`` on the layer output, (B, H, W, C)).

Window shifting follows the authors (and timm for ``share=1``): layer ``j`` of a stage (0-based, counted over
all of the stage's layers) runs shifted windows iff ``j`` is odd, so the repeats of one shared block alternate
regular/shifted. Attention order per layer: ``q k^T * scale + rel-pos bias -> Fpre -> + shift mask -> softmax
-> Fpost -> @ v -> proj``. The MLP transform, between the two residuals: ``x = LN_l(x); x = x + DWConv7x7_l(x)``
(``LN_l`` replaces ``x``), then ``x = x + MLP(norm2_l(x))``.

``mask_regular_windows`` reproduces a quirk of the authors' implementation: their shared block passes its
shifted-window mask to *every* layer, also to the layers that do not shift (the mask is then applied to
regular windows). Their released checkpoints were trained that way, so the registered Mini-Swin models and
:func:`build_from_official_config` turn it on; students made from a timm Swin leave it off (plain Swin).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, PatchEmbed, to_2tuple, trunc_normal_
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    get_relative_position_index,
    window_partition,
    window_reverse,
)
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers.multiplex import Tap, build_groups, check_share
from ..layers.transforms import TRANSFORM_INITS, HeadMix
from .vision_transformer import INITS, _merge

MASK_VALUE = -100.0  # as timm and the authors (a large negative logit, not -inf)


# --------------------------------------------------------------------------- geometry and config checks


def _per_stage(value, num_stages: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            hint = "give one per stage or a single int"
            raise ConfigError(f"{what} has {len(value)} entries for {num_stages} stages", hint)
        return list(value)
    return [value] * num_stages


def resolve_window_sizes(window_size, num_stages: int) -> list[tuple[int, int]]:
    """An int, an (h, w) pair (with more than two stages), or one int / (h, w) per stage."""
    if isinstance(window_size, (list, tuple)) and len(window_size) == 2 and num_stages != 2:
        if all(isinstance(w, int) for w in window_size):
            window_size = [tuple(window_size)] * num_stages
    sizes = [to_2tuple(w) for w in _per_stage(window_size, num_stages, "window_size")]
    for s, ws in enumerate(sizes):
        if len(ws) != 2 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in ws):
            raise ConfigError(f"window size {ws!r} of stage {s} is not a positive int or (h, w) pair", "e.g. 7")
    return [tuple(ws) for ws in sizes]


def _fits_1d(size: int, patch: int, windows: Sequence[int]) -> bool:
    if size <= 0 or size % patch:
        return False
    res = size // patch
    for s, w in enumerate(windows):
        if s > 0:
            if res % 2:
                return False
            res //= 2
        if res > w and res % w:
            return False
    return True


def _size_hint(size: int, patch: int, windows: Sequence[int]) -> str:
    below = next((n for n in range(size - 1, 0, -1) if _fits_1d(n, patch, windows)), None)
    above = next((n for n in range(size + 1, 8 * size + 64) if _fits_1d(n, patch, windows)), None)
    near = " or ".join(str(n) for n in (below, above) if n is not None)
    return f"nearest image sizes that fit: {near}" if near else "change the patch or window size"


def stage_geometry(img_size, patch_size, window_sizes: Sequence[tuple[int, int]]) -> list[dict]:
    """Per stage: token grid ``resolution``, ``window`` and ``shift`` (both (h, w)); ConfigError if it can't fit.

    As timm: a window larger than the grid shrinks to the grid and then does not shift. As the authors' code
    requires: the patch size divides the image, every stage's grid is tiled by its windows exactly and patch
    merging halves even sides (no padding).
    """
    img, patch = to_2tuple(img_size), to_2tuple(patch_size)
    out = []
    for d in range(2):
        win_1d = [ws[d] for ws in window_sizes]
        if not _fits_1d(img[d], patch[d], win_1d):
            side = "height" if d == 0 else "width"
            raise ConfigError(
                f"image {side} {img[d]} does not fit patch size {patch[d]}, {len(window_sizes)} stages and windows "
                f"{win_1d} (each stage's token grid must be tiled by its windows)",
                _size_hint(img[d], patch[d], win_1d),
            )
    res = (img[0] // patch[0], img[1] // patch[1])
    for s, ws in enumerate(window_sizes):
        if s > 0:
            res = (res[0] // 2, res[1] // 2)
        window = tuple(r if r <= w else w for r, w in zip(res, ws))
        shift = tuple(0 if r <= w else w // 2 for r, w in zip(res, window))
        out.append(dict(resolution=res, window=window, shift=shift))
    return out


def resolve_share(depths: Sequence[int], share=None, unique_blocks=None) -> list[int]:
    """Layers per shared block for every stage, from ``share`` (int or per stage) or ``unique_blocks``."""
    if share is not None and unique_blocks is not None:
        raise ConfigError("give either share or unique_blocks, not both", "unique_blocks[s] = depths[s] // share[s]")
    n = len(depths)
    if unique_blocks is not None:
        out = []
        for s, (d, u) in enumerate(zip(depths, _per_stage(unique_blocks, n, "unique_blocks"))):
            if isinstance(u, bool) or not isinstance(u, int) or u < 1 or d % u:
                divisors = [k for k in range(1, d + 1) if d % k == 0]
                raise ConfigError(
                    f"stage {s}: unique_blocks={u!r} does not divide its depth {d}",
                    f"use one of {divisors} unique blocks for stage {s}",
                )
            out.append(d // u)
        return out
    shares = _per_stage(2 if share is None else share, n, "share")
    for s, (d, k) in enumerate(zip(depths, shares)):
        check_share(d, k, what=f"stage {s} depth")
    return list(shares)


def shifted_window_mask(resolution, window, shift) -> Tensor | None:
    """(nW, N, N) additive mask keeping cyclically shifted windows from attending across image borders."""
    if not any(shift):
        return None
    h, w = resolution
    region = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            region[:, hs, ws, :] = cnt
            cnt += 1
    ids = window_partition(region, window).reshape(-1, window[0] * window[1])
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


# --------------------------------------------------------------------------- the multiplexed block


class SharedWindowAttention(nn.Module):
    """Window attention whose qkv, proj and relative-position-bias table a group shares."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads = attn.num_heads
        self.window_size = tuple(attn.window_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        self.scale = attn.scale
        self.qkv = attn.qkv
        self.relative_position_bias_table = attn.relative_position_bias_table
        self.attn_drop = attn.attn_drop
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        index = get_relative_position_index(*self.window_size, device=attn.relative_position_bias_table.device)
        self.register_buffer("relative_position_index", index, persistent=False)

    def rel_pos_bias(self) -> Tensor:
        n = self.window_area
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)

    def forward(self, x: Tensor, layer: nn.Module, mask: Tensor | None) -> Tensor:
        b, n, _ = x.shape
        qkv = layer.qkv_out(self.qkv(x))
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
            # logits + bias -> Fpre -> + mask -> softmax -> Fpost. Fpre is affine over heads, so
            # Fpre(A + bias) = W A + Fpre(bias): the small (1 or nW, H, N, N) terms are formed first and the big
            # (B * nW, H, N, N) tensor is touched by one add; Fpost's bias is fused into its matmul.
            h = self.num_heads
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if layer.pre_mix is not None:
                w = layer.pre_mix.weight.expand(b, h, h)  # bmm: matmul with an (H, H) matrix transposes copies
                attn = torch.bmm(w, attn.reshape(b, h, n * n)).view(b, h, n, n)
                bias = layer.pre_mix(bias)
            if mask is not None:
                nw = mask.shape[0]
                attn = (attn.view(-1, nw, h, n, n) + (bias + mask.unsqueeze(1)).unsqueeze(0)).view(b, h, n, n)
            else:
                attn = attn + bias
            attn = attn.softmax(dim=-1)
            if layer.post_mix is not None:
                attn = layer.post_mix(attn)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(b, n, -1)
        return self.proj_drop(self.proj(x))


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
            x = layer.local_norm(x)
            x = x + layer.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + layer.drop_path2(self.mlp(norm2(x)))
        return layer.block_out(x)

    def extra_repr(self) -> str:
        return f"resolution={self.input_resolution}, window={self.window_size}, shift={self.shift_size}"


class SwinLayerParts(nn.Module):
    """What one Swin layer keeps for itself; unused parts are ``None``.

    ``shifted`` (cyclic shift of the windows) and ``masked`` (add the group's mask) are fixed at init.
    """

    def __init__(self, *, norm1, norm2, drop_path1, drop_path2, pre_mix, post_mix, local_norm, local_conv,
                 shifted: bool, masked: bool):
        super().__init__()
        self.norm1 = norm1
        self.norm2 = norm2
        self.drop_path1 = drop_path1
        self.drop_path2 = drop_path2
        self.pre_mix = pre_mix
        self.post_mix = post_mix
        self.local_norm = local_norm
        self.local_conv = local_conv
        self.qkv_out = Tap()
        self.block_out = Tap()
        self.shifted = bool(shifted)
        self.masked = bool(masked)

    def extra_repr(self) -> str:
        return f"shifted={self.shifted}, masked={self.masked}"


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


@torch.no_grad()
def multiplex_swin_blocks(
    blocks,
    share: int,
    *,
    geometry: dict,
    transforms: bool = True,
    separate_norms: bool = True,
    mlp_transform: bool = True,
    mask_regular_windows: bool = False,
    init: str = "first",
    transform_init: str = "identity",
    drop_path: Sequence[float] | None = None,
) -> nn.Sequential:
    """Turn one stage's timm ``SwinTransformerBlock`` list into groups of ``share`` multiplexed layers.

    ``blocks[i]`` provides layer ``i``'s norms (and drop-path, unless ``drop_path`` rates are given) and, merged
    per group by ``init`` (first | mean | random), the shared attention/MLP. The blocks are copied, never
    modified. A list that repeats one block object per group builds a fresh model without throwaway blocks.
    """
    blocks = _check_swin_blocks(blocks)
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}", f"use one of {', '.join(INITS)}")
    if transform_init not in TRANSFORM_INITS:
        raise ConfigError(f"unknown transform_init {transform_init!r}", f"use one of {', '.join(TRANSFORM_INITS)}")
    check_share(len(blocks), share)
    res, window, shift = geometry["resolution"], geometry["window"], geometry["shift"]
    has_shift = any(shift)
    dim = blocks[0].norm1.normalized_shape[0]
    num_heads = blocks[0].attn.num_heads
    conv_bias = blocks[0].attn.qkv.bias is not None

    def shifted(i: int) -> bool:
        return has_shift and i % 2 == 1

    def masked(i: int) -> bool:
        return has_shift and (shifted(i) or mask_regular_windows)

    def make_shared(g: int) -> SharedSwinBlock:
        group = blocks[g * share : (g + 1) * share]
        distinct = list({id(b): b for b in group}.values())
        attn = _merge([b.attn for b in distinct], init)
        if init == "random":
            trunc_normal_(attn.relative_position_bias_table, std=0.02)
        mlp = _merge([b.mlp for b in distinct], init)
        uses_mask = any(masked(g * share + r) for r in range(share))
        mask = shifted_window_mask(res, window, shift) if uses_mask else None
        if mask is not None:
            mask = mask.to(device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
        norms = (None, None)
        if not separate_norms:
            norms = (_merge([b.norm1 for b in distinct], init), _merge([b.norm2 for b in distinct], init))
        return SharedSwinBlock(SharedWindowAttention(attn), mlp, res, window, shift, mask, *norms)

    def make_layer(i: int) -> SwinLayerParts:
        blk = blocks[i]
        if drop_path is not None:
            dp1, dp2 = _drop_path(drop_path[i]), _drop_path(drop_path[i])
        else:
            dp1, dp2 = copy.deepcopy(blk.drop_path1), copy.deepcopy(blk.drop_path2)
        device = blk.norm1.weight.device
        local_norm = local_conv = None
        if mlp_transform:
            local_norm = nn.LayerNorm(dim, eps=blk.norm1.eps, device=device)
            local_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=conv_bias, device=device)
            if transform_init == "identity":  # the closest to identity: x = LN_l(x) (see multiplex_swin)
                nn.init.zeros_(local_conv.weight)
                if local_conv.bias is not None:
                    nn.init.zeros_(local_conv.bias)
        mixes = (None, None)
        if transforms:
            mixes = tuple(HeadMix(num_heads, bias=True, init=transform_init).to(device) for _ in range(2))
        return SwinLayerParts(
            norm1=copy.deepcopy(blk.norm1) if separate_norms else None,
            norm2=copy.deepcopy(blk.norm2) if separate_norms else None,
            drop_path1=dp1,
            drop_path2=dp2,
            pre_mix=mixes[0],
            post_mix=mixes[1],
            local_norm=local_norm,
            local_conv=local_conv,
            shifted=shifted(i),
            masked=masked(i),
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


class MultiplexedSwinTransformer(nn.Module):
    """Swin Transformer (timm layout, NHWC) with weight-multiplexed blocks: Mini-Swin.

    Args (timm's names): ``img_size``, ``patch_size``, ``in_chans``, ``num_classes``, ``global_pool``,
    ``embed_dim``, ``depths``, ``num_heads``, ``window_size`` (int, (h, w) or one per stage), ``mlp_ratio``,
    ``qkv_bias``, ``drop_rate`` (before the classifier), ``proj_drop_rate``, ``attn_drop_rate``,
    ``drop_path_rate``, ``norm_eps``. MiniViT's: ``share`` (layers per shared block: an int for every stage or
    one per stage) or ``unique_blocks`` (shared blocks per stage, the authors' ``separate_layer_num_list``),
    ``transforms`` (per-layer head mixing, with bias), ``separate_norms``, ``mlp_transform`` (per-layer LN +
    depth-wise 7x7 conv), ``transform_init`` (``trunc_normal`` as the authors, or ``identity``),
    ``mask_regular_windows`` (the authors' mask quirk, see the module docstring).
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
        share=None,
        unique_blocks=None,
        transforms: bool = True,
        separate_norms: bool = True,
        mlp_transform: bool = True,
        mask_regular_windows: bool = False,
        transform_init: str = "trunc_normal",
    ):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if not depths or len(num_heads) != len(depths):
            raise ConfigError(f"depths {depths} and num_heads {num_heads} must have one entry per stage")
        if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
            raise ConfigError(f"embed_dim must be a positive int, got {embed_dim!r}")
        dims = [embed_dim * 2**s for s in range(len(depths))]
        for s, (dim, heads) in enumerate(zip(dims, num_heads)):
            if dim % heads:
                raise ConfigError(f"stage {s}: width {dim} is not divisible by {heads} heads", "change num_heads")
        shares = resolve_share(depths, share, unique_blocks)
        windows = resolve_window_sizes(window_size, len(depths))
        geometry = stage_geometry(img_size, patch_size, windows)
        if transform_init not in TRANSFORM_INITS:
            raise ConfigError(f"unknown transform_init {transform_init!r}", f"use one of {', '.join(TRANSFORM_INITS)}")

        self.init_args = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
            window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
            proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            norm_eps=norm_eps, share=shares, transforms=transforms, separate_norms=separate_norms,
            mlp_transform=mlp_transform, mask_regular_windows=mask_regular_windows, transform_init=transform_init,
        )  # JSON-able record of how this model was built (config.json of save_pretrained)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = dims[-1]
        self.share = shares
        self.geometry = geometry

        def norm_layer(d, **kw):
            return nn.LayerNorm(d, eps=norm_eps, **kw)

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            norm_layer=norm_layer, strict_img_size=True, output_fmt="NHWC",
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, start = [], 0
        self.feature_info = []
        for s, (depth, dim, heads, k, geo) in enumerate(zip(depths, dims, num_heads, shares, geometry)):
            fresh = [
                SwinTransformerBlock(
                    dim=dim, input_resolution=geo["resolution"], num_heads=heads, window_size=geo["window"],
                    shift_size=0, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate, norm_layer=norm_layer,
                )
                for _ in range(depth // k)
            ]  # one per group: no throwaway blocks
            blocks = multiplex_swin_blocks(
                [fresh[i // k] for i in range(depth)], k, geometry=geo, transforms=transforms,
                separate_norms=separate_norms, mlp_transform=mlp_transform,
                mask_regular_windows=mask_regular_windows, init="first", transform_init=transform_init,
                drop_path=dpr[start : start + depth],
            )
            start += depth
            downsample = PatchMerging(dim=dims[s - 1], out_dim=dim, norm_layer=norm_layer) if s > 0 else nn.Identity()
            stages.append(MultiplexedSwinStage(downsample, blocks))
            reduction = max(to_2tuple(patch_size)) * 2**s
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"layers.{s}"))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC"
        )
        self._init_weights()

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
        self.init_args.update(num_classes=num_classes, global_pool=self.global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = self.layers(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- the authors' hyper-parameters

_OFFICIAL_FIELDS = {
    "architecture", "is_sep_layernorm", "is_transform_FFN", "is_transform_heads", "img_size", "patch_size",
    "in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "qkv_bias", "qk_scale",
    "num_classes", "separate_layer_num_list", "drop_rate", "attn_drop_rate", "drop_path_rate", "ape",
    "patch_norm", "use_checkpoint",
}


def swin_kwargs_from_official_config(cfg) -> dict:
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
        unique_blocks=list(cfg.get("separate_layer_num_list", [1] * len(depths))),
        separate_norms=bool(cfg.get("is_sep_layernorm", False)),
        mlp_transform=bool(cfg.get("is_transform_FFN", False)),
        transforms=bool(cfg.get("is_transform_heads", False)),
        mask_regular_windows=True,
        transform_init="trunc_normal",
    )


def build_from_official_config(cfg) -> MultiplexedSwinTransformer:
    """The model the authors' code builds from ``cfg`` (their names, as their JSON configs)."""
    return MultiplexedSwinTransformer(**swin_kwargs_from_official_config(cfg))
