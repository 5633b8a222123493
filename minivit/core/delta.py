"""Relaxed sharing: a per-layer low-rank delta on the weights a group shares.

With ``delta_rank = r > 0`` every layer of a group adds ``B_l (A_l x) + b_l`` to each shared linear map
(attention qkv and proj, MLP fc1 and fc2): ``A_l`` is ``(r, in)``, ``B_l`` is ``(out, r)`` and ``b_l`` a bias
offset (where the shared map has a bias; none with ``delta_bias=False``, where the layers of a group share its
biases). The factors stay factorised, in the model and in saved files, so a layer costs ``r * (in + out) + out``
numbers per map instead of ``in * out`` (``r * (in + out)`` without offsets).

Built from a teacher, the delta starts at the truncated SVD of ``W_teacher_l - W_shared`` (and
``b_l = bias_teacher_l - bias_shared``): the student equals its teacher when ``r`` reaches the rank of that
difference (without offsets only its weights do; its biases are the group's). Components with no singular
value to start from (e.g. the first layer of a group with ``init=first``) get a small random ``A`` and a zero
``B``: they add nothing at step 0 but can learn.

For inference, :func:`fold_deltas` returns a copy in which each layer runs one map with weight
``W_shared + B_l A_l`` (:class:`FoldedDelta`): the same arithmetic as the teacher, instead of three products
and a sum per map. Saved models keep the factors; only that inference copy holds full weights. For export,
:func:`merge_in_graph` writes the merge ``W_shared + B_l A_l`` into the graph on the stored factors
(:class:`GraphMergedDelta`): the file keeps the factors and a runtime that folds constants (onnxruntime does,
when it loads a model) runs one product per map.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

DELTA_NAMES = ("qkv", "proj", "fc1", "fc2")


class LowRankDelta(nn.Module):
    """``x -> up @ (down @ x) + bias``: a rank-``rank`` correction of one shared ``nn.Linear``.

    The two factors are ``nn.Linear`` modules (``down_proj``: in -> rank, no bias; ``up_proj``: rank -> out, with
    the bias offset), so tools that handle linear layers (dynamic int8 quantisation, exporters) handle the deltas
    too; ``down``, ``up`` and ``bias`` are their tensors.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None):
        super().__init__()
        rank = min(rank, in_features, out_features)
        self.rank = rank
        self.down_proj = nn.Linear(in_features, rank, bias=False, device=device)
        self.up_proj = nn.Linear(rank, out_features, bias=bias, device=device)
        nn.init.normal_(self.down_proj.weight, std=0.02)
        nn.init.zeros_(self.up_proj.weight)
        if bias:
            nn.init.zeros_(self.up_proj.bias)

    @property
    def down(self) -> Tensor:
        return self.down_proj.weight

    @property
    def up(self) -> Tensor:
        return self.up_proj.weight

    @property
    def bias(self) -> Tensor | None:
        return self.up_proj.bias

    @torch.no_grad()
    def init_from(self, weight: Tensor, bias: Tensor | None = None) -> LowRankDelta:
        """Start at the best rank-``rank`` approximation of ``weight`` (an (out, in) difference)."""
        r = self.rank
        u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
        root = s[:r].sqrt()
        down, up = root[:, None] * vh[:r], u[:, :r] * root
        dead = s[:r] <= s[0] * 1e-7 if s.numel() and s[0] > 0 else torch.ones(r, dtype=torch.bool)
        down[dead] = torch.randn_like(down[dead]) * 0.02
        up[:, dead] = 0
        self.down.copy_(down.to(self.down))
        self.up.copy_(up.to(self.up))
        if self.bias is not None:
            self.bias.copy_(bias if bias is not None else torch.zeros_like(self.bias))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.up_proj(self.down_proj(x))

    def apply_to(self, shared: nn.Linear, x: Tensor) -> Tensor:
        """The corrected map: ``shared(x)`` plus this delta."""
        return shared(x) + self(x)

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


class LayerDeltas(nn.Module):
    """One layer's deltas on its group's shared ``qkv``, ``proj``, ``fc1`` and ``fc2``."""

    def __init__(self, deltas: dict[str, LowRankDelta]):
        super().__init__()
        for name in DELTA_NAMES:
            setattr(self, name, deltas[name])

    @classmethod
    def fresh(cls, shared: dict[str, nn.Linear], rank: int, bias: bool = True) -> LayerDeltas:
        """Deltas on the ``shared`` maps that add nothing yet (small random ``A``, zero ``B``): for a model built
        from its config, whose weights are loaded next. ``bias=False``: no bias offsets (the layer runs the
        shared biases)."""
        deltas = {}
        for name in DELTA_NAMES:
            s = shared[name]
            offset = bias and s.bias is not None
            deltas[name] = LowRankDelta(s.in_features, s.out_features, rank, offset, device=s.weight.device)
        return cls(deltas)

    @classmethod
    def between(cls, shared: dict[str, nn.Linear], own: dict[str, nn.Linear], rank: int,
                bias: bool = True) -> LayerDeltas:
        """Deltas taking the ``shared`` linear maps to this layer's ``own`` (same names, same shapes; see
        :func:`block_linears`): :meth:`fresh` ones, started at the SVD of each difference (and the bias offsets
        at the difference of the biases, unless ``bias=False``)."""
        deltas = cls.fresh(shared, rank, bias)
        for name in DELTA_NAMES:
            s, o = shared[name], own[name]
            getattr(deltas, name).init_from(o.weight - s.weight, None if s.bias is None else o.bias - s.bias)
        return deltas


class _DeltaForm(nn.Module):
    """Another way to run a :class:`LowRankDelta`: it keeps the delta's factors (same state-dict keys) and
    computes the corrected map in :meth:`apply_to`."""

    def __init__(self, delta: LowRankDelta):
        super().__init__()
        self.rank = delta.rank
        self.down_proj, self.up_proj = delta.down_proj, delta.up_proj

    def apply_to(self, shared: nn.Linear, x: Tensor) -> Tensor:
        raise NotImplementedError


class _Folded(_DeltaForm):
    """A form holding weights computed once from the factors: inference only (training would leave it stale)."""

    def drop_factors(self) -> None:
        """Forget the factors, which the folded weights no longer need (for a smaller exported file)."""
        del self.down_proj, self.up_proj

    def train(self, mode: bool = True) -> _Folded:
        if mode:
            raise ConfigError("this model's deltas are folded for inference and cannot train",
                              "train the model you folded, then call minivit.fold_deltas(model) again")
        return super().train(False)


class FoldedDelta(_Folded):
    """A :class:`LowRankDelta` folded into the shared map it corrects, for inference: ``x -> (W + up @ down) x +
    (b + bias)`` in one product. The factors stay (same state-dict keys as the delta); the folded ``weight`` and
    ``bias`` are non-persistent buffers computed once, when folding. Inference only: training mode is refused,
    since the folded weight would go stale as the factors learn."""

    def __init__(self, shared: nn.Linear, delta: LowRankDelta):
        super().__init__(delta)
        with torch.no_grad():
            weight = shared.weight + delta.up @ delta.down
            bias = None if shared.bias is None else shared.bias + (0 if delta.bias is None else delta.bias)
        self.register_buffer("weight", weight.detach().clone(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)
        self.training = False

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def apply_to(self, shared: nn.Linear, x: Tensor) -> Tensor:
        return self(x)  # (the folded weight already holds the shared one)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, folded"


class QuantizedFoldedDelta(_Folded):
    """:class:`FoldedDelta` for a dynamically quantised (int8) model: the stored int8 factors and shared weight
    are dequantised, summed into the layer's full weight ``W + up @ down``, and that weight is quantised again
    (per output channel where the shared weight was), so the layer runs one int8 product per map, as an int8
    teacher does, instead of three. Differs from running the factors as stored by one more int8 rounding of
    the weight. Inference only, like :class:`FoldedDelta`; the factors stay (same state-dict keys as the
    delta), and ``merged`` holds the requantised map."""

    def __init__(self, shared: nn.Module, delta: LowRankDelta):
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        super().__init__(delta)
        w_shared, w_up, w_down = (m.weight().dequantize() for m in (shared, delta.up_proj, delta.down_proj))
        full = nn.Linear(w_shared.shape[1], w_shared.shape[0], bias=shared.bias() is not None)
        with torch.no_grad():
            full.weight.copy_(w_shared + w_up @ w_down)
            if full.bias is not None:
                offset = delta.up_proj.bias()
                full.bias.copy_(shared.bias() + (0 if offset is None else offset))
        per_channel = shared.weight().qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        full.qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        self.merged = DynamicQuantizedLinear.from_float(full)
        self.training = False

    def apply_to(self, shared: nn.Module, x: Tensor) -> Tensor:
        return self.merged(x)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, folded and requantised to int8"


class GraphMergedDelta(_DeltaForm):
    """A :class:`LowRankDelta` whose layer runs ``F.linear(x, W + up @ down, b + bias)``, the merge computed from
    the weights in every call: for export graphs, where it is a subgraph on constants that the runtime folds once
    (onnxruntime's constant folding at load) while the file stores only the factors. Same state-dict keys as
    the delta; slower than either form in eager PyTorch."""

    def apply_to(self, shared: nn.Linear, x: Tensor) -> Tensor:
        weight = shared.weight + self.up_proj.weight @ self.down_proj.weight
        bias = shared.bias if self.up_proj.bias is None else shared.bias + self.up_proj.bias
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, merged in the graph"


def has_deltas(model: nn.Module) -> bool:
    """Whether any layer of ``model`` has relaxed-sharing deltas."""
    from .multiplex import iter_layers

    return any(getattr(layer, "delta", None) is not None for _, layer in iter_layers(model))


def _replace_deltas(model: nn.Module, make, int8=None) -> nn.Module:
    """A copy of ``model`` with each float :class:`LowRankDelta` replaced by ``make(shared_linear, delta)``, and
    each dynamically quantised one by ``int8(shared, delta)`` if given; ``model`` itself when it has none."""
    from .multiplex import iter_layers

    if not has_deltas(model):
        return model
    out = copy.deepcopy(model).eval()
    for shared, layer in iter_layers(out):
        if layer.delta is None:
            continue
        maps = block_linears(shared)
        for name in DELTA_NAMES:
            delta, base = getattr(layer.delta, name), maps[name]
            if type(delta) is not LowRankDelta:
                continue
            if type(base) is nn.Linear and type(delta.up_proj) is nn.Linear:
                setattr(layer.delta, name, make(base, delta))
            elif int8 is not None and all(_dynamic_int8(m) for m in (base, delta.up_proj, delta.down_proj)):
                setattr(layer.delta, name, int8(base, delta))
    return out


def _dynamic_int8(module: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return type(module) is DynamicQuantizedLinear and module.weight().dtype == torch.qint8


def merge_in_graph(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose deltas run as :class:`GraphMergedDelta` (for export: a small file that
    runs at the speed of full weights where the runtime folds constants); ``model`` itself if it has none."""
    return _replace_deltas(model, lambda shared, delta: GraphMergedDelta(delta))


def fold_deltas(model: nn.Module, *, keep_factors: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` whose low-rank deltas are folded into full per-layer weights
    (:class:`FoldedDelta`): each corrected map is one ``F.linear``, so a relaxed-sharing student runs at the
    cost of a plain one. Outputs equal ``model``'s to float rounding. An int8 model (dynamic quantisation, as
    ``export --int8`` writes it) is folded the same way and its full weights quantised again
    (:class:`QuantizedFoldedDelta`): one int8 product per map, outputs equal to int8 rounding. ``model``
    itself is untouched; a model without deltas is returned as it is. Use the copy for predictions and
    latency, and keep ``model`` for saving, training and export (where the deltas stay factorised).

    ``keep_factors=False`` drops the factors from the copy, which runs without them: for a deployed file
    (``export --fold-deltas``) that holds only what runs. That copy's state dict no longer matches
    ``model``'s."""
    out = _replace_deltas(model, FoldedDelta, QuantizedFoldedDelta)
    if not keep_factors and out is not model:
        for module in out.modules():
            if isinstance(module, _Folded):
                module.drop_factors()
    return out


def layer_deltas(shared: nn.Module, block: nn.Module, rank: int, *, from_block: bool = True,
                 bias: bool = True) -> LayerDeltas | None:
    """The deltas taking a group's ``shared`` block to a layer's source ``block``; None for ``rank == 0``.
    ``from_block=False`` (a model built from its config, its weights loaded next): deltas that add nothing,
    without the SVD, whose start would be thrown away. ``bias=False``: without bias offsets."""
    if not rank:
        return None
    if not from_block:
        return LayerDeltas.fresh(block_linears(shared), rank, bias)
    return LayerDeltas.between(block_linears(shared), block_linears(block), rank, bias)


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The maps a delta corrects, by name, in a timm (or a shared) block: ``attn.qkv/proj``, ``mlp.fc1/fc2``."""
    return dict(qkv=block.attn.qkv, proj=block.attn.proj, fc1=block.mlp.fc1, fc2=block.mlp.fc2)


def linear(module: nn.Linear, x: Tensor, delta: LowRankDelta | _DeltaForm | None) -> Tensor:
    """``module(x)``, corrected by the layer's delta if it has one (in whichever form it runs)."""
    return module(x) if delta is None else delta.apply_to(module, x)


def mlp(module: nn.Module, x: Tensor, deltas: LayerDeltas | None) -> Tensor:
    """timm's ``Mlp`` forward (fc1, act, drop1, norm, fc2, drop2) with the layer's deltas on fc1 and fc2."""
    if deltas is None:
        return module(x)
    x = module.drop1(module.act(linear(module.fc1, x, deltas.fc1)))
    return module.drop2(linear(module.fc2, module.norm(x), deltas.fc2))
