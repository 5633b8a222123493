"""Weight multiplexing: the one mechanism both model families are built on.

A stack of ``depth`` layers is cut into groups of ``share`` consecutive layers. Each group is a
:class:`Multiplexed` module holding

* ``shared``: one block whose heavy weights (attention qkv/proj, MLP) every layer of the group runs;
* ``layers``: one small module per layer, with what stays per layer (norms, drop-path, the
  head-mixing transforms, relative-position tables, ...).

The shared block's ``forward(x, layer)`` takes the per-layer module as an argument, so which layer is
running is plain data flow: nothing is stored on a module during ``forward``, which keeps the model
traceable, compilable and exportable.

Every per-layer module carries two parameter-free taps, ``qkv_out`` and ``block_out``
(:class:`Tap`), that the shared block calls on the raw qkv projection and on the block output.
Forward hooks on them see each layer exactly once, which is how distillation and analysis read
features without touching ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

from ..errors import ConfigError


class Tap(nn.Identity):
    """A named point in the graph (returns its input) where forward hooks can read a feature."""


class LayerParts(nn.Module):
    """What one layer keeps for itself (norms, drop-path, transforms, deltas, ...; ``None`` where unused), in the
    order given, plus its two taps ``qkv_out`` and ``block_out``. Each family's per-layer parts build on it."""

    def __init__(self, **parts):
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)
        self.qkv_out = Tap()
        self.block_out = Tap()


class Multiplexed(nn.Module):
    """``len(layers)`` consecutive layers that run one shared block, each with its own parts."""

    def __init__(self, shared: nn.Module, layers: list[nn.Module]):
        super().__init__()
        self.shared = shared
        self.layers = nn.ModuleList(layers)

    @property
    def share(self) -> int:
        return len(self.layers)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        for layer in self.layers:
            x = self.shared(x, layer, *args, **kwargs)
        return x


def check_share(depth: int, share: int, what: str = "depth") -> int:
    """Validate a share number and return the number of groups."""
    if isinstance(share, bool) or not isinstance(share, int) or share < 1:
        raise ConfigError(f"share must be a positive integer, got {share!r}", "use 1 (no sharing) up to the depth")
    if depth % share != 0:
        divisors = [d for d in range(1, depth + 1) if depth % d == 0]
        raise ConfigError(
            f"share={share} does not divide {what}={depth}",
            f"choose one of {divisors}; share={depth} keeps a single block",
        )
    return depth // share


def build_groups(
    depth: int,
    share: int,
    make_shared: Callable[[int], nn.Module],
    make_layer: Callable[[int, nn.Module], nn.Module],
) -> list[Multiplexed]:
    """Build ``depth // share`` groups, each shared block once.

    ``make_shared(g)`` takes the 0-based group index, ``make_layer(i, shared)`` the 0-based layer index and
    the shared block its group runs (per-layer parts such as low-rank deltas are defined relative to it).
    """
    groups = []
    for g in range(check_share(depth, share)):
        shared = make_shared(g)
        groups.append(Multiplexed(shared, [make_layer(g * share + r, shared) for r in range(share)]))
    return groups


def iter_layers(module: nn.Module) -> Iterator[tuple[nn.Module, nn.Module]]:
    """Yield ``(shared_block, layer_parts)`` for every layer of ``module``, in forward order."""
    for m in module.modules():
        if isinstance(m, Multiplexed):
            for layer in m.layers:
                yield m.shared, layer


def unique_parameter_count(module: nn.Module) -> int:
    """Number of distinct parameters (a shared tensor counts once): :func:`minivit.measure.count_parameters`."""
    from ..measure import count_parameters

    return count_parameters(module)


def adopt(module: nn.Module, source: nn.Module, names: tuple[str, ...]) -> None:
    """Set ``module.<name> = source.<name>`` for each name: a shared block takes over its teacher's parts."""
    for name in names:
        setattr(module, name, getattr(source, name))
