"""Per-layer weight transformation: mixing the attention maps across heads.

MiniViT gives every layer of a shared group two small ``H x H`` matrices that mix the attention
tensor ``(B, H, N, M)`` across its head axis, one before and one after the softmax. They are what
keeps layers that share their weights different. Mini-DeiT uses no bias (a 1x1 convolution over
heads), Mini-Swin a bias (a linear layer over heads); both are this one module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..spec import TRANSFORM_INITS
from .attention import head_mix


class HeadMix(nn.Module):
    """``out[:, o] = sum_h weight[o, h] * attn[:, h] (+ bias[o])`` over the head axis of (B, H, N, M)."""

    def __init__(self, num_heads: int, bias: bool = False, init: str = "identity"):
        super().__init__()
        self.num_heads = num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, num_heads))
        self.bias = nn.Parameter(torch.zeros(num_heads)) if bias else None
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "identity") -> None:
        """``identity`` leaves attention unchanged at step 0; ``trunc_normal`` (std 0.02) is the authors'."""
        if init == "identity":
            self.weight.copy_(torch.eye(self.num_heads))
        elif init == "trunc_normal":
            nn.init.trunc_normal_(self.weight, std=0.02)
        else:
            raise ValueError(f"unknown transform init {init!r}; use one of {TRANSFORM_INITS}")
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, attn: Tensor) -> Tensor:
        return head_mix(attn, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, bias={self.bias is not None}"
