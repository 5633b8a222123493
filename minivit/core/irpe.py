"""Image relative position encoding (iRPE, Wu et al., ICCV 2021), as used by Mini-DeiT.

Mini-DeiT gives every layer its own iRPE table in *contextual* mode with the *product* method, on
keys only, one table shared by all heads. The term added to the attention logits is
``q_i . r(i, j)``, where ``r`` is read from the layer's table at a 2-D bucket of the relative
position of token ``i`` to token ``j``. Buckets come from the piecewise index function: exact for
small offsets, logarithmic beyond ``alpha``, clipped at ``beta``.

The bucket index depends only on the token grid, so it is computed once per shared block
(:func:`product_bucket_index`) and handed to each layer's :class:`ContextualRPE`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .attention import rpe_logits


def piecewise_index(offset: Tensor, alpha: float, beta: float, gamma: float) -> Tensor:
    """Map integer offsets to bucket offsets in ``[-int(beta), int(beta)]``.

    ``|x| <= alpha`` keeps ``x``; beyond, ``sign(x) * min(round(alpha + ln(|x|/alpha) /
    ln(gamma/alpha) * (beta - alpha)), beta)``, truncated to an integer.
    """
    x = offset.to(torch.float64)
    far = x.abs() > alpha
    safe = torch.where(far, x.abs(), torch.full_like(x, alpha))
    y = (alpha + torch.log(safe / alpha) / math.log(gamma / alpha) * (beta - alpha)).round().clamp(max=beta)
    out = torch.where(far, torch.sign(x) * y, x.round())
    return out.trunc().to(torch.long)


def product_bucket_index(grid: tuple[int, int], ratio: float = 1.9, num_prefix_tokens: int = 0) -> Tensor:
    """Bucket ids ``(N, N)`` for a ``grid = (rows, cols)`` of tokens after ``num_prefix_tokens``.

    ``alpha, beta, gamma = ratio, 2 ratio, 8 ratio``; the row and column offsets are bucketed
    separately and combined as ``r * (2 int(beta) + 1) + c``. Prefix tokens (class/register tokens)
    use one extra bucket, ``num_buckets``.
    """
    alpha, beta, gamma = 1.0 * ratio, 2.0 * ratio, 8.0 * ratio
    b = int(beta)
    side = 2 * b + 1
    rows, cols = grid
    pos = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    diff = pos[:, None, :] - pos[None, :, :]
    r = piecewise_index(diff[..., 0], alpha, beta, gamma) + b
    c = piecewise_index(diff[..., 1], alpha, beta, gamma) + b
    ids = r * side + c
    if num_prefix_tokens:
        n = ids.shape[0] + num_prefix_tokens
        full = torch.full((n, n), side * side, dtype=torch.long)
        full[num_prefix_tokens:, num_prefix_tokens:] = ids
        ids = full
    return ids


def num_product_buckets(ratio: float = 1.9, num_prefix_tokens: int = 0) -> int:
    side = 2 * int(2.0 * ratio) + 1
    return side * side + (1 if num_prefix_tokens else 0)


class ContextualRPE(nn.Module):
    """One layer's iRPE table on keys: returns the ``(B, H, N, N)`` term ``q_i . r(bucket(i, j))``.

    ``weight`` has shape ``(1 or H, head_dim, num_buckets)`` (1 when shared across heads) and starts
    at zero, so a fresh table adds nothing.
    """

    def __init__(self, head_dim: int, num_buckets: int, num_heads: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_heads, head_dim, num_buckets))

    def forward(self, q: Tensor, bucket_index: Tensor) -> Tensor:
        return rpe_logits(q, self.weight, bucket_index)

    def extra_repr(self) -> str:
        heads, dim, buckets = self.weight.shape
        return f"head_dim={dim}, num_buckets={buckets}, tables={heads}"
