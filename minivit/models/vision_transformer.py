"""Weight-multiplexed Vision Transformer (ViT / DeiT families).

:class:`MultiplexedVisionTransformer` is timm's ``VisionTransformer`` whose ``blocks`` are replaced
by groups of :class:`~minivit.layers.multiplex.Multiplexed` layers. Everything outside the blocks
(patch embedding, class/register tokens, position embedding, final norm, pooling, head) is timm's own,
so every timm feature and checkpoint name outside the blocks keeps working.

The restructuring (:func:`multiplex_vit_blocks`) takes a list of timm ``Block`` modules and reuses their
modules: the shared attention/MLP weights of a group come from its layers (``init``: the first, the
mean, or fresh random ones), each layer keeps its own norms, layer-scale and drop-path. The same
function builds fresh models and students initialised from a teacher.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers.irpe import ContextualRPE, num_product_buckets, product_bucket_index
from ..layers.multiplex import Multiplexed, Tap, build_groups, check_share
from ..layers.transforms import TRANSFORM_INITS, HeadMix

INITS = ("first", "mean", "random")


class SharedAttention(nn.Module):
    """Multi-head self-attention whose weights a group shares; the layer's transforms plug in."""

    def __init__(self, attn: nn.Module, rpe_index: Tensor | None = None):
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise ConfigError("gated attention is not supported", "use a ViT with the standard timm Attention")
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale
        self.qkv = attn.qkv
        self.q_norm = attn.q_norm
        self.k_norm = attn.k_norm
        self.attn_drop = attn.attn_drop
        self.norm = attn.norm
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        if rpe_index is not None:
            self.register_buffer("rpe_index", rpe_index, persistent=False)
        else:
            self.rpe_index = None

    def forward(self, x: Tensor, layer: nn.Module) -> Tensor:
        b, n, _ = x.shape
        qkv = layer.qkv_out(self.qkv(x)).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if layer.rpe is None and layer.pre_mix is None and layer.post_mix is None:
            q, k, v = qkv.unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            # explicit attention: one copy makes q, k, v contiguous so the batched products below copy nothing
            q, k, v = qkv.contiguous().unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            if layer.rpe is not None:
                attn = attn + layer.rpe(q, self.rpe_index)
            if layer.pre_mix is not None:
                attn = layer.pre_mix(attn)
            attn = attn.softmax(dim=-1)
            if layer.post_mix is not None:
                attn = layer.post_mix(attn)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(self.norm(x)))


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
        x = x + layer.drop_path2(layer.ls2(self.mlp(norm2(x))))
        return layer.block_out(x)


class LayerParts(nn.Module):
    """What one ViT layer keeps for itself; unused parts are ``None`` (or identity)."""

    def __init__(self, block: Block, separate_norms: bool, pre_mix=None, post_mix=None, rpe=None):
        super().__init__()
        self.norm1 = block.norm1 if separate_norms else None
        self.norm2 = block.norm2 if separate_norms else None
        self.ls1, self.ls2 = block.ls1, block.ls2
        self.drop_path1, self.drop_path2 = block.drop_path1, block.drop_path2
        self.pre_mix = pre_mix
        self.post_mix = post_mix
        self.rpe = rpe
        self.qkv_out = Tap()
        self.block_out = Tap()


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


@torch.no_grad()
def _merge(modules: list[nn.Module], init: str) -> nn.Module:
    """One module standing for ``modules``: the first, the parameter mean, or re-initialised."""
    out = copy.deepcopy(modules[0])
    if init == "mean" and len(modules) > 1:
        for name, p in out.named_parameters():
            p.copy_(torch.stack([m.get_parameter(name) for m in modules]).mean(0))
    elif init == "random":
        for m in out.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return out


def multiplex_vit_blocks(
    blocks,
    share: int,
    *,
    transforms: bool = True,
    separate_norms: bool = True,
    irpe: bool = False,
    irpe_ratio: float = 1.9,
    grid_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 0,
    init: str = "first",
    transform_init: str = "identity",
) -> nn.Sequential:
    """Turn a list of timm ViT ``Block`` modules into groups of multiplexed layers.

    The blocks' modules are copied, never modified, so a teacher stays intact.
    """
    blocks = _check_blocks(blocks)
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}", f"use one of {', '.join(INITS)}")
    if transform_init not in TRANSFORM_INITS:
        raise ConfigError(f"unknown transform_init {transform_init!r}", f"use one of {', '.join(TRANSFORM_INITS)}")
    check_share(len(blocks), share)
    if irpe and grid_size is None:
        raise ConfigError("irpe needs the token grid size", "pass grid_size=(rows, cols)")
    num_heads = blocks[0].attn.num_heads
    head_dim = blocks[0].attn.head_dim
    rpe_index = product_bucket_index(grid_size, irpe_ratio, num_prefix_tokens) if irpe else None
    buckets = num_product_buckets(irpe_ratio, num_prefix_tokens)

    def make_shared(g: int) -> SharedBlock:
        group = blocks[g * share : (g + 1) * share]
        attn = SharedAttention(_merge([b.attn for b in group], init), rpe_index)
        mlp = _merge([b.mlp for b in group], init)
        if separate_norms:
            return SharedBlock(attn, mlp)
        return SharedBlock(attn, mlp, _merge([b.norm1 for b in group], init), _merge([b.norm2 for b in group], init))

    def make_layer(i: int) -> LayerParts:
        blk = copy.deepcopy(blocks[i])
        mixes = (HeadMix(num_heads, False, transform_init), HeadMix(num_heads, False, transform_init))
        return LayerParts(
            blk,
            separate_norms,
            *(mixes if transforms else (None, None)),
            rpe=ContextualRPE(head_dim, buckets) if irpe else None,
        )

    return nn.Sequential(*build_groups(len(blocks), share, make_shared, make_layer))


def _norm_layer(eps: float):
    return partial(nn.LayerNorm, eps=eps)


class MultiplexedVisionTransformer(VisionTransformer):
    """timm's VisionTransformer with weight-multiplexed blocks.

    Args beyond timm's: ``share`` (layers per shared block, a divisor of ``depth``), ``transforms``
    (per-layer pre/post-softmax head mixing), ``separate_norms`` (per-layer LayerNorms), ``irpe``
    (per-layer iRPE on keys, Mini-DeiT), ``irpe_ratio``, ``transform_init`` (``trunc_normal`` as the
    authors, or ``identity``).
    """

    def __init__(
        self,
        *,
        share: int = 2,
        transforms: bool = True,
        separate_norms: bool = True,
        irpe: bool = False,
        irpe_ratio: float = 1.9,
        transform_init: str = "trunc_normal",
        norm_eps: float = 1e-6,
        **kwargs,
    ):
        depth = kwargs.get("depth", 12)
        check_share(depth, share)
        if "norm_layer" not in kwargs:
            kwargs["norm_layer"] = _norm_layer(norm_eps)
        # JSON-able record of how this model was built (saved in config.json by save_pretrained)
        self_args = {k: v for k, v in kwargs.items() if k != "norm_layer"}
        super().__init__(**kwargs)
        self.init_args = dict(
            self_args,
            share=share,
            transforms=transforms,
            separate_norms=separate_norms,
            irpe=irpe,
            irpe_ratio=irpe_ratio,
            transform_init=transform_init,
            norm_eps=norm_eps,
        )
        self.blocks = self.multiplex_blocks(self.blocks)

    def multiplex_blocks(self, blocks, init: str = "first") -> nn.Sequential:
        """Groups of multiplexed layers built from timm ``blocks`` with this model's settings."""
        a = self.init_args
        return multiplex_vit_blocks(
            blocks,
            a["share"],
            transforms=a["transforms"],
            separate_norms=a["separate_norms"],
            irpe=a["irpe"],
            irpe_ratio=a["irpe_ratio"],
            grid_size=tuple(self.patch_embed.grid_size),
            num_prefix_tokens=self.num_prefix_tokens,
            init=init,
            transform_init=a["transform_init"],
        )

    @property
    def depth(self) -> int:
        return sum(g.share for g in self.blocks if isinstance(g, Multiplexed))

    def forward_intermediates(self, *args, **kwargs):  # timm's version indexes blocks as layers
        raise NotImplementedError("use minivit.distill hooks to read per-layer features")

