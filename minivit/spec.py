"""``MultiplexSpec``: every weight-multiplexing option in one object, validated once.

The spec travels whole from the command line through :func:`minivit.multiplex` to the family
builders (ViT, Swin) and into a saved model's ``config.json``. A new per-layer option is one field
here: its default, its check in :meth:`MultiplexSpec.__post_init__` and its help text in
``FIELD_HELP`` (the CLI builds its flags from the fields).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

INITS = ("first", "mean", "random")
TRANSFORM_INITS = ("identity", "trunc_normal")

FIELD_HELP = {
    "share": "layers per shared block: a divisor of the depth (ViT), or of every stage's depth (Swin; "
    "an int or one per stage); 'all' keeps a single block per stack",
    "transforms": "per-layer pre/post-softmax head mixing of the attention maps",
    "separate_norms": "per-layer LayerNorms (off, with transforms off, is naive sharing)",
    "init": "where a group's shared weights start: its first layer, the mean of its layers, or random",
    "transform_init": "head-mixing start: identity (the student equals its shared blocks at step 0) "
    "or trunc_normal (the authors')",
    "irpe": "per-layer image relative position encoding on keys (ViT only, as Mini-DeiT)",
    "irpe_ratio": "iRPE piecewise bucketing ratio",
    "mlp_transform": "Swin only: the per-layer LayerNorm + depth-wise 7x7 conv before the MLP "
    "(None: on for Swin, off for ViT)",
    "mlp_residual": "Swin MLP transform form: x + DWConv(LN(x)) with the conv starting at zero (a student starts "
    "equal to its teacher), or off: the authors' x = LN(x); x = x + DWConv(x) (the released Mini-Swin models)",
    "delta_rank": "relaxed sharing: each layer adds a rank-r delta to the shared qkv/proj/fc1/fc2 weights, "
    "initialised from the SVD of (teacher layer - shared); 0 is plain MiniViT",
    "delta_bias": "bias offsets in the relaxed-sharing deltas: each layer adds (teacher layer - shared) to the "
    "shared biases; without them the layers of a group share their biases, which saves bytes (in an int8 file an "
    "offset number costs 4 bytes, a delta weight 1)",
}

ALL = "all"  # share="all": one block for the whole stack (each stage for Swin)


@dataclass(frozen=True)
class MultiplexSpec:
    """How a stack of transformer layers is multiplexed (see ``FIELD_HELP`` for each field)."""

    share: int | tuple[int, ...] | str = 2
    transforms: bool = True
    separate_norms: bool = True
    init: str = "first"
    transform_init: str = "identity"
    irpe: bool = False
    irpe_ratio: float = 1.9
    mlp_transform: bool | None = None
    mlp_residual: bool = True
    delta_rank: int = 0
    delta_bias: bool = True
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # unknown keys of an older/newer config

    def __post_init__(self):
        share = self.share
        if isinstance(share, list):
            share = tuple(share)
            object.__setattr__(self, "share", share)
        if isinstance(share, str):
            if share != ALL:
                raise ConfigError(f"share must be a positive integer or 'all', got {share!r}", "e.g. share=2")
        else:
            items = share if isinstance(share, tuple) else (share,)
            if not items or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in items):
                raise ConfigError(
                    f"share must be a positive integer (or one per stage), got {share!r}",
                    "use 1 (no sharing) up to the depth",
                )
        for name in ("transforms", "separate_norms", "irpe", "mlp_residual", "delta_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.mlp_transform is not None and not isinstance(self.mlp_transform, bool):
            raise ConfigError(f"mlp_transform must be true, false or None, got {self.mlp_transform!r}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}", f"use one of {', '.join(INITS)}")
        if self.transform_init not in TRANSFORM_INITS:
            raise ConfigError(
                f"unknown transform_init {self.transform_init!r}", f"use one of {', '.join(TRANSFORM_INITS)}"
            )
        if isinstance(self.delta_rank, bool) or not isinstance(self.delta_rank, int) or self.delta_rank < 0:
            raise ConfigError(f"delta_rank must be an integer >= 0, got {self.delta_rank!r}", "0 is plain MiniViT")
        if not isinstance(self.irpe_ratio, (int, float)) or isinstance(self.irpe_ratio, bool) or self.irpe_ratio <= 0:
            raise ConfigError(f"irpe_ratio must be a positive number, got {self.irpe_ratio!r}", "1.9 as the authors")
        if self.irpe and self.mlp_transform:
            raise ConfigError("irpe (ViT) and mlp_transform (Swin) do not go together", "pick the one of your family")

    # ------------------------------------------------------------------ conversions

    def replace(self, **changes) -> MultiplexSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (for ``config.json``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if isinstance(out["share"], tuple):
            out["share"] = list(out["share"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiplexSpec:
        """Build from ``to_dict()`` output; unknown keys are kept in ``extra`` (not an error)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extra")


def as_spec(spec: MultiplexSpec | dict | None = None, **overrides) -> MultiplexSpec:
    """A spec from a spec, a dict, or nothing, with keyword overrides (``multiplex(m, share=4)``)."""
    if spec is None:
        spec = MultiplexSpec()
    elif isinstance(spec, dict):
        spec = MultiplexSpec.from_dict(spec)
    elif not isinstance(spec, MultiplexSpec):
        raise ConfigError(f"expected a MultiplexSpec, got {type(spec).__name__}", "minivit.MultiplexSpec(share=2)")
    return with_overrides(spec, overrides, "multiplexing")


def with_overrides(config, overrides: dict, what: str):
    """``config.replace(**overrides)``, refusing names that are not fields of the config (one clear line)."""
    names = type(config).field_names()
    unknown = set(overrides) - set(names)
    if unknown:
        listed = ", ".join(sorted(unknown))
        raise ConfigError(f"unknown {what} option(s): {listed}", f"the options are {', '.join(names)}")
    return config.replace(**overrides) if overrides else config
