"""Read the MiniViT authors' Mini-Swin checkpoints into :class:`~minivit.models.swin.MultiplexedSwinTransformer`.

Their layout (``{"model": state_dict}``): ``layers.{s}.blocks.{g}.norm1_list.{r}.weight`` (per-layer parts as
lists indexed by the repeat ``r``), ``...proj_l.{r}`` / ``...proj_w.{r}`` (head transforms, ``nn.Linear`` over
heads), ``...local_norm_list.{r}`` / ``...local_conv_list.{r}`` (MLP transform), shared ``...attn.qkv``,
``...attn.proj``, ``...attn.relative_position_bias_table``, ``...mlp.fc1/fc2``; the patch merging at the *end*
of stage ``s`` (``layers.{s}.downsample``) and the classifier as ``head``. Ours follows timm: merging at the
start of stage ``s + 1``, ``head.fc``, and ``layers.{s}.blocks.{g}.shared`` / ``.layers.{r}``. The persistent
buffers of their code (``attn_mask``, ``relative_position_index``) are recomputed by our model and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# authors' block-internal names -> (where, our name); ``where`` is "shared" or "layer"
_SWIN_RULES = [
    (r"norm1_list\.(\d+)\.(weight|bias)$", "layer", "norm1.{p}"),
    (r"norm2_list\.(\d+)\.(weight|bias)$", "layer", "norm2.{p}"),
    (r"proj_l\.(\d+)\.(weight|bias)$", "layer", "pre_mix.{p}"),
    (r"proj_w\.(\d+)\.(weight|bias)$", "layer", "post_mix.{p}"),
    (r"local_norm_list\.(\d+)\.(weight|bias)$", "layer", "local_norm.{p}"),
    (r"local_conv_list\.(\d+)\.(weight|bias)$", "layer", "local_conv.{p}"),
    (r"(norm1|norm2)\.(weight|bias)$", "shared", "{0}.{p}"),
    (r"attn\.(qkv|proj)\.(weight|bias)$", "shared", "attn.{0}.{p}"),
    (r"attn\.(relative_position_bias_table)()$", "shared", "attn.{0}"),
    (r"mlp\.(fc1|fc2)\.(weight|bias)$", "shared", "mlp.{0}.{p}"),
]
_DROPPED = re.compile(r"(^|\.)(attn_mask|relative_position_index)$")


def convert_official_swin(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an authors' Mini-Swin state dict to :class:`MultiplexedSwinTransformer` keys."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if _DROPPED.search(key):
            continue
        m = re.match(r"layers\.(\d+)\.downsample\.(.+)$", key)
        if m:
            out[f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"] = value
            continue
        m = re.match(r"head\.(weight|bias)$", key)
        if m:
            out[f"head.fc.{m.group(1)}"] = value
            continue
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)$", key)
        if not m:
            out[key] = value  # patch_embed.*, norm.*; unknown keys are reported by the strict load
            continue
        s, g, rest = m.groups()
        prefix = f"layers.{s}.blocks.{g}"
        for pattern, where, template in _SWIN_RULES:
            r = re.match(pattern, rest)
            if not r:
                continue
            if where == "layer":
                out[f"{prefix}.layers.{r.group(1)}.{template.format(p=r.group(2))}"] = value
            else:
                out[f"{prefix}.shared.{template.format(r.group(1), p=r.group(2))}"] = value
            break
        else:
            out[key] = value
    return out
