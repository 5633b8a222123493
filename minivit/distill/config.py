"""``DistillConfig``: every option of MiniViT's weight distillation in one validated object.

The config travels whole from the command line (its flags are built from the fields, each field's
``metadata["help"]`` is its help text) to :class:`~minivit.distill.objective.DistillationObjective`
and into a run's recorded configuration (:meth:`DistillConfig.record`).

The loss it describes (METHOD.md section 3)::

    L = alpha * CE(z_s, y) + (1 - alpha) * softCE(z_s / T, z_t / T) + beta * L_attn + gamma * L_hid

where a term left out of ``distill`` has weight 0 (and costs nothing).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..spec import with_overrides

DISTILL_TERMS = ("logits", "attn", "hidden")
HIDDEN_LOSSES = ("relation", "projection")

HIDDEN_RELATION_SCALE = 49.0
"""The authors multiply the hidden-relation MSE by 49 (the Swin window area) and use gamma 0.1;
:func:`~minivit.distill.losses.hidden_relation_loss` has no factor, so the default ``gamma`` is
``0.1 * 49 = 4.9``."""


@dataclass(frozen=True)
class DistillConfig:
    """How a student is distilled from its teacher (each field's ``metadata["help"]`` says what it does).

    ``distill`` and the layer lists also accept comma strings (``"logits,attn"``, ``"1,3"``).
    """

    distill: tuple[str, ...] = field(
        default=DISTILL_TERMS, metadata={"help": "terms to distil, a comma list of logits, attn, hidden"}
    )
    alpha: float = field(default=0.0, metadata={"help": "hard-label CE weight; 1-alpha weighs the soft CE"})
    temperature: float = field(default=1.0, metadata={"help": "soft CE temperature T (no T^2 factor)"})
    beta: float = field(default=1.0, metadata={"help": "attention-relation weight"})
    gamma: float = field(
        default=0.1 * HIDDEN_RELATION_SCALE,
        metadata={"help": "hidden-state loss weight (4.9 = the authors' 0.1 x their factor 49)"},
    )
    hidden_loss: str = field(
        default="relation",
        metadata={
            "help": "hidden-state loss: Gram-matrix MSE (the paper) or MSE after a learned projection",
            "choices": HIDDEN_LOSSES,
        },
    )
    student_layers: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "student blocks to distil, e.g. 1,3 (default: the last one)",
            "flag": "--layers-student",
            "metavar": "I,J,...",
        },
    )
    teacher_layers: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "teacher blocks paired with them", "flag": "--layers-teacher", "metavar": "I,J,..."},
    )
    num_pairs: int | None = field(
        default=None, metadata={"help": "number of evenly spread layer pairs", "type": int, "min": 1}
    )
    num_relation_heads: int = field(
        default=1, metadata={"help": "relation heads of the attention relation loss (the authors' 1)", "min": 1}
    )
    cache_teacher_logits: bool = field(
        default=False,
        metadata={"help": "compute the teacher's logits once, without augmentation (needs --distill logits)"},
    )

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "distill", _terms(self.distill))
        set_(self, "student_layers", _layers(self.student_layers))
        set_(self, "teacher_layers", _layers(self.teacher_layers))
        set_(self, "alpha", number_in(self.alpha, "alpha", 0.0, 1.0))
        set_(self, "temperature", number_in(self.temperature, "temperature", 1e-6))
        set_(self, "beta", number_in(self.beta, "beta"))
        set_(self, "gamma", number_in(self.gamma, "gamma"))
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ConfigError(f"unknown hidden loss {self.hidden_loss!r}", "use 'relation' or 'projection'")
        for name, low in (("num_pairs", 1), ("num_relation_heads", 1)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if not isinstance(self.cache_teacher_logits, bool):
            raise ConfigError(f"cache_teacher_logits must be true or false, got {self.cache_teacher_logits!r}")
        if self.alpha == 0 and self.kd_weight == 0 and self.attn_weight == 0 and self.hidden_weight == 0:
            raise ConfigError("every distillation term has weight 0", "enable logits, attn or hidden, or set alpha > 0")

    # ------------------------------------------------------------------ effective weights

    @property
    def kd_weight(self) -> float:
        """Weight of the soft CE to the teacher's logits (0 when ``logits`` is not distilled)."""
        return (1.0 - self.alpha) if "logits" in self.distill else 0.0

    @property
    def attn_weight(self) -> float:
        return self.beta if "attn" in self.distill else 0.0

    @property
    def hidden_weight(self) -> float:
        return self.gamma if "hidden" in self.distill else 0.0

    # ------------------------------------------------------------------ conversions

    def replace(self, **changes) -> DistillConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """What defines a run's result, for its recorded configuration (effective weights; the layer
        pairs are recorded by whoever resolves them)."""
        return {
            "distill": list(self.distill),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "logits": "logits" in self.distill,
            "beta": self.attn_weight,
            "gamma": self.hidden_weight,
            "hidden_loss": self.hidden_loss,
            "num_relation_heads": self.num_relation_heads,
            "cache_teacher_logits": self.cache_teacher_logits,
        }

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def as_distill_config(config: DistillConfig | dict | None = None, **options) -> DistillConfig:
    """A config from a config, a dict or nothing, with keyword overrides.

    Besides the field names, the objective's keyword form is understood: ``logits=False`` leaves the
    soft CE out of ``distill``, ``hidden="projection"`` is ``hidden_loss``.
    """
    if config is None:
        config = DistillConfig()
    elif isinstance(config, dict):
        config = DistillConfig(**config)
    elif not isinstance(config, DistillConfig):
        raise ConfigError(f"expected a DistillConfig, got {type(config).__name__}", "minivit.DistillConfig(beta=1)")
    if "hidden" in options:
        options["hidden_loss"] = options.pop("hidden")
    if "logits" in options:
        keep = bool(options.pop("logits"))
        terms = options.get("distill", config.distill)
        terms = [t for t in _terms(terms) if t != "logits"]
        options["distill"] = (["logits"] if keep else []) + terms
    return with_overrides(config, options, "distillation")


def _terms(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value or ())
    terms = tuple(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))
    bad = [t for t in terms if t not in DISTILL_TERMS]
    if bad or not terms:
        raise ConfigError(
            f"unknown distillation term(s) {bad or value!r}", f"use a comma list of {', '.join(DISTILL_TERMS)}"
        )
    return terms


def _layers(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        layers = tuple(int(t) for t in items if str(t).strip())
    except (TypeError, ValueError):
        layers = None
    if layers is None or any(isinstance(t, bool) or (isinstance(t, float) and not t.is_integer()) for t in items):
        raise ConfigError(f"bad layer list {value!r}", "write 0-based block indices separated by commas, e.g. 1,3")
    return layers


def number_in(value, name: str, low: float = 0.0, high: float = math.inf) -> float:
    """``float(value)`` if it lies in ``[low, high]``, else a one-line :class:`ConfigError` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not (low <= v <= high) or math.isnan(v):
        raise ConfigError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return v


__all__ = [
    "DISTILL_TERMS",
    "HIDDEN_LOSSES",
    "HIDDEN_RELATION_SCALE",
    "DistillConfig",
    "as_distill_config",
    "number_in",
]
