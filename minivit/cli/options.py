"""Command-line options built from the config dataclasses, and the objects built back from them.

Each config field becomes one flag, ``--field-name``, with its help text and default taken from the
field (``metadata["help"]``; for :class:`~minivit.spec.MultiplexSpec`, ``FIELD_HELP``). A field's
metadata may also say:

* ``flag``: another flag name (``--layers-student`` for ``student_layers``);
* ``type``: the value type when the default (``None``) does not tell it;
* ``choices``, ``metavar``; ``min``: the smallest integer accepted; ``required``: the CLI asks for it;
* ``action``: an argparse action (:class:`Given` records that the flag was given);
* ``cli: False``: no flag (the default is used).

A boolean field that defaults to ``False`` is a switch (``--cache-teacher-logits``); one that defaults
to ``True`` is switched off by ``--no-field-name`` (or its ``flag``); one that defaults to ``None`` gets
both ``--field-name`` and ``--no-field-name``. :func:`from_args` builds the object back from the
parsed namespace, so the parser, the command functions and the run's recorded configuration all
read the same objects.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ..budget import RECIPE_DISTILL
from ..data import AugmentConfig
from ..data.config import INTERPOLATIONS
from ..spec import FIELD_HELP, INITS, TRANSFORM_INITS, MultiplexSpec


def positive_int(text: str) -> int:
    return int_at_least(1)(text)


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def share_value(text: str):
    """``--share``: ``all``, an int, or a comma list (one per Swin stage)."""
    if text.strip().lower() == "all":
        return "all"
    items = [positive_int(t) for t in text.split(",")]
    return items[0] if len(items) == 1 else tuple(items)


class Given(argparse.Action):
    """Store the value, and note in ``namespace.given`` that the flag was given (its default is kept apart)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = set(getattr(namespace, "given", None) or ()) | {self.dest}


# How the CLI spells MultiplexSpec's fields (spec.py keeps the help texts, FIELD_HELP).
SPEC_OPTIONS = {
    "share": {"type": share_value, "metavar": "K|K1,K2,..|all"},
    "separate_norms": {"flag": "--shared-norms"},
    "init": {"choices": INITS, "action": Given},
    "transform_init": {"choices": TRANSFORM_INITS},
    "irpe_ratio": {"metavar": "R"},
    "mlp_transform": {"type": bool},
    "delta_rank": {"min": 0, "metavar": "R", "action": Given},
}


def float_pair(text: str) -> tuple[float, float]:
    """``"0.08,1"`` -> ``(0.08, 1.0)``."""
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH, got {text!r}") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH, got {text!r}")
    return values


def optional_float(text: str) -> float | None:
    """A number, or ``none`` for off."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


# DistillConfig's fields the compress recipe sets unless given (minivit.budget.RECIPE_DISTILL).
DISTILL_OPTIONS = {
    "alpha": {"action": Given,
              "default_text": f"{RECIPE_DISTILL['alpha']} with --recipe frontier, 0 with --recipe exact"}
}


# How the CLI spells AugmentConfig's fields: timm's train.py flags (--aa, --reprob, --train-interpolation, ...).
AUGMENT_OPTIONS = {
    "aa": {"metavar": "POLICY"},
    "remode": {"choices": ("const", "rand", "pixel")},
    "recount": {"min": 1},
    "scale": {"type": float_pair, "metavar": "LOW,HIGH"},
    "ratio": {"type": float_pair, "metavar": "LOW,HIGH"},
    "color_jitter": {"type": optional_float, "metavar": "X"},
    "interpolation": {"flag": "--train-interpolation", "choices": ("random", *INTERPOLATIONS)},
}


def option_table(cls) -> dict[str, dict]:
    """``{field name: option metadata}`` of a config dataclass."""
    if cls is MultiplexSpec:
        return {
            f.name: {"help": FIELD_HELP.get(f.name, ""), **SPEC_OPTIONS.get(f.name, {})}
            for f in fields(cls)
            if f.name != "extra"
        }
    from ..distill.config import DistillConfig

    extra = AUGMENT_OPTIONS if cls is AugmentConfig else DISTILL_OPTIONS if cls is DistillConfig else {}
    return {f.name: {**f.metadata, **extra.get(f.name, {})} for f in fields(cls)}


def add_options(parser, cls, title: str | None = None) -> None:
    """Add one flag per field of the dataclass ``cls`` (in a group named ``title``)."""
    group = parser.add_argument_group(title) if title else parser
    table = option_table(cls)
    for f in fields(cls):
        meta = table.get(f.name)
        if meta is None or meta.get("cli", True) is False:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        group.add_argument(*_flag(f.name, default, meta), dest=f.name, **_argument(default, meta))


def from_args(cls, args: argparse.Namespace, **changes):
    """An instance of ``cls`` from the parsed flags (fields without a flag keep their default)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **changes})


def _flag(name: str, default, meta: dict) -> list[str]:
    if "flag" in meta:
        return [meta["flag"]]
    flag = "--" + name.replace("_", "-")
    return ["--no-" + flag[2:]] if default is True else [flag]


def _argument(default, meta: dict) -> dict:
    text = meta.get("help", "").replace("%", "%%")
    if isinstance(default, bool):
        if default:
            return {"action": "store_false", "help": f"no {text}" if text else None}
        return {"action": "store_true", "help": text or None}
    kind = meta.get("type", type(default) if isinstance(default, (int, float)) else str)  # lists: "a,b"
    if default is None and kind is bool:
        return {"action": argparse.BooleanOptionalAction, "default": None, "help": f"{text} (default: automatic)"}
    if "min" in meta:
        kind = int_at_least(meta["min"])
    shown = f"{text} (default {meta['default_text']})" if "default_text" in meta else None
    out = {"type": kind, "default": default, "help": shown or _with_default(text, default, meta.get("required"))}
    if kind is int or "min" in meta:
        out["metavar"] = "N"
    for key in ("choices", "metavar", "required", "action"):
        if key in meta:
            out[key] = meta[key]
    if out.get("required"):
        del out["default"]
    return out


def _with_default(text: str, default, required) -> str:
    if required or default is None:
        return text
    shown = (
        ",".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in default)
        if isinstance(default, tuple)
        else default
    )
    return f"{text} (default {shown})"


__all__ = [
    "AUGMENT_OPTIONS",
    "Given",
    "SPEC_OPTIONS",
    "add_options",
    "float_pair",
    "from_args",
    "int_at_least",
    "option_table",
    "optional_float",
    "positive_int",
    "share_value",
]
