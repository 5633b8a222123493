"""Multi-head attention with MiniViT's head mixing, as pure functions of tensors.

Both model families run the same attention core: logits ``s q k^T`` (``s`` the scale), an optional
input-dependent relative-position term (iRPE on keys), the pre-softmax head mix ``Fpre`` (an ``H x H``
matrix over the head axis, optional bias), optional constant terms (Swin's relative-position bias, mixed
by ``Fpre`` like the logits, then the shifted-window mask), softmax, the post-softmax head mix ``Fpost``
and the product with ``v``::

    P = Fpost . softmax(Fpre . (s q k^T + rpe + bias) + mask),   out_h = P_h v_h

:func:`mixed_attention` has two paths that compute the same function:

* the training path (``fast=False``) is the reference arithmetic, op for op as the layers ran it so far
  (it is what a model in training mode runs, and what gradients flow through);
* the inference path (``fast=True``, eval mode) does the same mathematics in fewer passes over the
  ``(B, H, N, N)`` tensor: the scale is folded into ``Fpre``'s matrix, ``Fpre`` is applied to the small
  constant terms and to ``q`` (for the iRPE term, whose table all heads share) instead of to their large
  sums, the pre-mix and every constant land in the logits with one batched multiply-add, and, where no
  gradient is being recorded, the mask add and ``Fpost`` write into buffers already allocated and a large
  batch is processed in slices of about 1 MiB of attention (:data:`CHUNK_BYTES`), whose ``q``, ``k``, ``v``
  are copied out of the strided qkv projection slice by slice and which stay in cache through all passes
  (the fused kernel a teacher calls never materialises the tensor at all). On a GPU the batch runs whole
  (slices would only add kernel launches), and under autocast no buffer is reused (autocast picks each
  product's dtype).
  The mask's "do not attend" entries (Swin's ``-100``) become ``-inf``: the attention weights this drops
  are ``exp(-100)``-small, below float32's normal range, and arithmetic on such subnormal numbers is many
  times slower on CPUs. Results agree with the training path to float32 rounding (``tests/test_attention.py``).
  Tiny attention tensors without a mask (:data:`SMALL_BYTES`) run the reference arithmetic in eager
  inference: with a handful of tokens the cost is the number of operations, not passes over memory.

Nothing here keeps state: every folded quantity is recomputed from the weights on each call (a few
``H x H`` or ``(H, N, N)`` operations), so parameters may change between calls and tracing,
``torch.compile`` and ONNX export see a plain graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["head_mix", "rpe_logits", "mixed_attention", "split_qkv"]


def head_mix(attn: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``out[:, o] = sum_h weight[o, h] * attn[:, h] (+ bias[o])`` over the head axis of (B, H, N, M).

    A batched product with the (H, H) matrix (bias fused in): no transposed copies of the large attention
    tensor, which a broadcast matmul would make.
    """
    b, h, n, m = attn.shape
    flat = attn.reshape(b, h, n * m)
    if bias is None:
        return torch.bmm(weight.expand(b, h, h), flat).view(b, h, n, m)
    return torch.baddbmm(bias.view(1, h, 1), weight.expand(b, h, h), flat).view(b, h, n, m)


def rpe_logits(q: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """Contextual iRPE on keys: the (B, H, N, N) term ``q_i . table[:, :, index[i, j]]``.

    ``q`` (B, H, N, D); ``table`` (1 or H, D, buckets); ``index`` (N, N) bucket ids.
    """
    b, h, n, _ = q.shape
    return torch.matmul(q, table).gather(-1, index.expand(b, h, n, n))


def mix_weights(pre_mix: nn.Module | None, post_mix: nn.Module | None) -> dict[str, Tensor | None]:
    """The ``pre_w/pre_b/post_w/post_b`` arguments of :func:`mixed_attention` from a layer's two ``HeadMix``."""
    return {
        "pre_w": None if pre_mix is None else pre_mix.weight,
        "pre_b": None if pre_mix is None else pre_mix.bias,
        "post_w": None if post_mix is None else post_mix.weight,
        "post_b": None if post_mix is None else post_mix.bias,
    }


def mixed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    *,
    pre_w: Tensor | None = None,
    pre_b: Tensor | None = None,
    post_w: Tensor | None = None,
    post_b: Tensor | None = None,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    rpe_table: Tensor | None = None,
    rpe_index: Tensor | None = None,
    dropout_p: float = 0.0,
    fast: bool = False,
) -> Tensor:
    """Attention with head mixing; returns (B, H, N, D) like ``softmax(...) @ v``.

    Args:
        q, k, v: (B, H, N, D) (views of the qkv projection are fine).
        scale: the logit scale (``head_dim ** -0.5``).
        pre_w, pre_b: ``Fpre`` (H, H) and its optional bias (H,); ``None``: no pre-softmax mix.
        post_w, post_b: ``Fpost`` likewise.
        bias: constant logit term (1, H, N, N) (Swin's relative-position bias), mixed by ``Fpre``.
        mask: additive (nW, N, N) shifted-window mask added after ``Fpre``: 0 to attend, a large negative
            value (Swin's -100) not to; B is a multiple of nW (window index fastest). No row may be fully
            masked.
        rpe_table, rpe_index: iRPE on keys (see :func:`rpe_logits`), added to the logits before ``Fpre``.
        dropout_p: attention dropout (training path only; pass 0 in eval mode).
        fast: the inference path (for eval mode; see the module docstring). It supports autograd too.
    """
    if rpe_table is not None and rpe_index is None:
        raise ValueError("rpe_table needs rpe_index")
    if fast and dropout_p == 0.0:
        return _inference(q, k, v, scale, pre_w, pre_b, post_w, post_b, bias, mask, rpe_table, rpe_index)
    return _training(q, k, v, scale, pre_w, pre_b, post_w, post_b, bias, mask, rpe_table, rpe_index, dropout_p)


def _training(q, k, v, scale, pre_w, pre_b, post_w, post_b, bias, mask, rpe_table, rpe_index, dropout_p):
    """The reference arithmetic (the ViT order ``Fpre(logits + rpe)``; Swin's ``Fpre(logits) + Fpre(bias)``)."""
    b, h, n, _ = q.shape
    q = q * scale
    attn = q @ k.transpose(-2, -1)
    if rpe_table is not None:
        attn = attn + rpe_logits(q, rpe_table, rpe_index)
    if pre_w is not None:
        if bias is not None:  # affine over heads: the small bias is mixed apart, the bias of Fpre goes with it
            attn = head_mix(attn, pre_w)
            bias = head_mix(bias, pre_w, pre_b)
        else:
            attn = head_mix(attn, pre_w, pre_b)
    if mask is not None:
        nw = mask.shape[0]
        extra = mask.unsqueeze(1) if bias is None else bias + mask.unsqueeze(1)
        attn = (attn.view(-1, nw, h, n, n) + extra.unsqueeze(0)).view(b, h, n, n)
    elif bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    if post_w is not None:
        attn = head_mix(attn, post_w, post_b)
    if dropout_p > 0.0:
        attn = F.dropout(attn, dropout_p, training=True)
    return attn @ v


_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch < 2.3 has none


def _may_reuse() -> bool:
    """True when intermediate buffers may be overwritten: no autograd, no tracing, compiling or exporting, no
    autocast (which picks each product's dtype, so a buffer of one dtype cannot take the result of another)."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or _is_compiling() or _autocasting())


def _autocasting() -> bool:
    try:
        return torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _sliced(device: torch.device) -> bool:
    """Whether eager inference slices a large batch to stay in cache: on CPUs. A GPU runs the whole batch in one
    product each (slices would only multiply kernel launches)."""
    return device.type == "cpu"


def _constant_logits(h, n, pre_w, pre_b, bias, mask) -> Tensor | None:
    """``Fpre(bias) + mask`` as (1 or nW, H, N*N), the mask's blocked entries at ``-inf``; None if nothing."""
    const = None
    if bias is not None:
        const = head_mix(bias, pre_w, pre_b) if pre_w is not None else bias
    elif pre_w is not None and pre_b is not None:
        const = pre_b.view(1, h, 1, 1).expand(1, h, n, n)
    if mask is not None:
        blocked = mask.masked_fill(mask < 0, float("-inf")).unsqueeze(1)
        const = blocked.expand(-1, h, -1, -1) if const is None else const + blocked
    return None if const is None else const.reshape(-1, h, n * n)


SMALL_BYTES = 1 << 16
"""Below this many bytes of (B, H, N, N) attention (and without a mask) eager inference runs the reference
arithmetic: for a handful of tokens the cost is the number of operations dispatched, not memory passes."""

CHUNK_BYTES = 1 << 20
"""Eager inference runs the (B, H, N, N) attention in slices of about this many bytes (about one core's L2
cache), so that its passes (logits, mixes, softmax, product with v) read the slice from cache, not memory."""


def split_qkv(qkv: Tensor, training: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` from the ``(3, B, H, N, D)`` view of a qkv projection, for :func:`mixed_attention`: one
    contiguous copy where the whole batch is used at once (training, a recorded graph, a batch that eager
    inference runs in one slice), views where eager inference slices the batch (each slice is copied where
    it is used, while it is in cache)."""
    _, b, h, n, _ = qkv.shape
    attn_bytes = h * n * n * qkv.element_size()
    if training or not _may_reuse() or not _sliced(qkv.device) or b <= max(1, CHUNK_BYTES // attn_bytes):
        qkv = qkv.contiguous()
    return qkv.unbind(0)


def _inference(q, k, v, scale, pre_w, pre_b, post_w, post_b, bias, mask, rpe_table, rpe_index):
    """The training path's function in fewer passes over (B, H, N, N) (see the module docstring)."""
    b, h, n, d = q.shape
    reuse = _may_reuse()
    if reuse and mask is None and b * h * n * n * q.element_size() <= SMALL_BYTES:
        return _training(q, k, v, scale, pre_w, pre_b, post_w, post_b, bias, None, rpe_table, rpe_index, 0.0)
    const = _constant_logits(h, n, pre_w, pre_b, bias, mask)
    args = (scale, pre_w, pre_b, post_w, post_b, const, mask is not None, rpe_table, rpe_index, reuse)
    rows = max(1, CHUNK_BYTES // (h * n * n * q.element_size()))
    if const is not None and const.shape[0] > 1:
        rows = const.shape[0] * max(1, rows // const.shape[0])  # whole images: the mask repeats per image
    if not reuse or rows >= b or not _sliced(q.device):  # (a traced or exported graph stays one piece)
        # batched products over strided views of the qkv projection are several times slower than over a copy
        return _inference_rows(q.contiguous(), k.contiguous(), v.contiguous(), *args)
    out = torch.empty(b, h, n, v.shape[-1], dtype=torch.result_type(q, v), device=v.device)
    for i in range(0, b, rows):  # each slice copied where it is used, while it is in cache
        piece = [t[i : i + rows].contiguous() for t in (q, k, v)]
        _inference_rows(*piece, *args, out=out[i : i + rows])
    return out


def _inference_rows(q, k, v, scale, pre_w, pre_b, post_w, post_b, const, masked, rpe_table, rpe_index, reuse,
                    out=None):
    """:func:`_inference` for one slice of the batch; ``const`` is :func:`_constant_logits` (per window if
    ``masked``, else one for all)."""
    b, h, n, d = q.shape
    raw = None
    if pre_w is None:
        qs = q * scale
        logits = torch.matmul(qs, k.transpose(-2, -1)).view(b, h, n * n)
        if rpe_table is not None:
            logits = logits + rpe_logits(qs, rpe_table, rpe_index).view(b, h, n * n)
    else:
        w = (pre_w * scale).expand(b, h, h)  # Fpre(s q k^T) = (s Fpre) q k^T
        raw = torch.matmul(q, k.transpose(-2, -1)).view(b, h, n * n)
        if rpe_table is not None and rpe_table.shape[0] == 1:
            # one table for all heads: Fpre(rpe(s q)) = rpe(s Fpre q), mixing the small q instead of the logits
            qm = torch.bmm(w, q.reshape(b, h, n * d)).view(b, h, n, d)
            logits = torch.baddbmm(rpe_logits(qm, rpe_table, rpe_index).view(b, h, n * n), w, raw)
        elif rpe_table is not None:
            term = raw.view(b, h, n, n) * scale + rpe_logits(q * scale, rpe_table, rpe_index)
            logits = head_mix(term, pre_w).view(b, h, n * n)
        elif const is not None and (not masked or (reuse and const.shape[0] == b)):
            # (b == nW only in eager mode: a traced graph must not depend on the batch size)
            logits, const = torch.baddbmm(const, w, raw), None
        else:
            logits = torch.bmm(w, raw)
    if const is not None:
        nw = const.shape[0]
        if reuse:
            logits.view(-1, nw, h, n * n).add_(const)
        else:
            logits = (logits.view(-1, nw, h, n * n) + const).view(b, h, n * n)
    attn = logits.view(b, h, n, n).softmax(dim=-1)  # (an in-place softmax is slower on CPU: it copies)
    if post_w is not None:
        buf = raw if reuse and raw is not None else None
        if buf is None:
            attn = head_mix(attn, post_w, post_b)
        elif post_b is None:
            attn = torch.bmm(post_w.expand(b, h, h), attn.view(b, h, n * n), out=buf).view(b, h, n, n)
        else:
            flat = attn.view(b, h, n * n)
            attn = torch.baddbmm(post_b.view(1, h, 1), post_w.expand(b, h, h), flat, out=buf).view(b, h, n, n)
    if out is None:
        return torch.matmul(attn, v)
    return torch.matmul(attn, v, out=out)
