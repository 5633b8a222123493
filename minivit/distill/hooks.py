"""Read per-layer features from any supported model with forward hooks (no change to ``forward``).

Two features per layer, as MiniViT's distillation needs them:

* ``qkv``: the raw output of the layer's qkv projection, split into ``(q, k, v)`` of shape (B, N, C)
  (for Swin, B counts windows and N is the window's tokens);
* ``hidden``: the layer's (block's) output as (B, N, C).

:func:`layer_points` finds, for each layer in forward order, the module whose output is that feature:
the per-layer taps of minivit's multiplexed models, ``blocks[i].attn.qkv`` / ``blocks[i]`` of timm ViTs,
``layers[s].blocks[j].attn.qkv`` / ``layers[s].blocks[j]`` of timm Swin models. Hooks are only
registered for the layers and features asked for, so a loss that is off costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..core import iter_layers
from ..errors import ConfigError


@dataclass
class LayerPoint:
    qkv: nn.Module  # output: (B, N, 3C)
    hidden: nn.Module  # output: (B, N, C) or (B, H, W, C)


def layer_points(model: nn.Module) -> list[LayerPoint]:
    """The feature points of every layer of ``model`` in forward order."""
    points = [LayerPoint(layer.qkv_out, layer.block_out) for _, layer in iter_layers(model)]
    if points:
        return points
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and all(hasattr(b, "attn") for b in blocks):
        return [LayerPoint(b.attn.qkv, b) for b in blocks]
    stages = getattr(model, "layers", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and all(hasattr(s, "blocks") for s in stages):
        return [LayerPoint(b.attn.qkv, b) for s in stages for b in s.blocks]
    raise ConfigError(
        f"cannot find transformer layers in {type(model).__name__}",
        "feature distillation supports timm ViT/DeiT/Swin and minivit models",
    )


def num_layers(model: nn.Module) -> int:
    return len(layer_points(model))


def _tokens(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, H*W, C); (B, N, C) unchanged."""
    return x.flatten(1, 2) if x.dim() == 4 else x


class FeatureCapture:
    """Collect qkv and/or hidden features of chosen layers during each forward.

    Use as a context manager or call :meth:`remove`. After a forward, ``qkv`` is a list of
    ``(q, k, v)`` and ``hidden`` a list of tensors, in the order of ``layers``. Call :meth:`clear`
    before the next forward (the training step does).
    """

    def __init__(self, model: nn.Module, layers: list[int], qkv: bool = False, hidden: bool = False):
        points = layer_points(model)
        for i in layers:
            if not 0 <= i < len(points):
                raise ConfigError(f"layer {i} out of range for a {len(points)}-layer model", "use 0-based indices")
        self.layers = list(layers)
        self._qkv: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self._hidden: dict[int, Tensor] = {}
        self._handles = []
        for slot, i in enumerate(self.layers):
            if qkv:
                self._handles.append(points[i].qkv.register_forward_hook(self._qkv_hook(slot)))
            if hidden:
                self._handles.append(points[i].hidden.register_forward_hook(self._hidden_hook(slot)))

    def _qkv_hook(self, slot: int):
        def hook(_module, _inputs, output):
            self._qkv[slot] = tuple(output.chunk(3, dim=-1))

        return hook

    def _hidden_hook(self, slot: int):
        def hook(_module, _inputs, output):
            self._hidden[slot] = _tokens(output)

        return hook

    @property
    def qkv(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        return [self._qkv[s] for s in range(len(self.layers)) if s in self._qkv]

    @property
    def hidden(self) -> list[Tensor]:
        return [self._hidden[s] for s in range(len(self.layers)) if s in self._hidden]

    def clear(self) -> None:
        self._qkv.clear()
        self._hidden.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
