"""One rule-table key renamer for the authors' checkpoints of the released Mini-* families, and timm's
checkpoint filter built on it.

A :class:`KeyRules` table says where the authors' blocks live (``block``: a regex whose named groups build
our group ``prefix``, and whose last group ``rest`` is the key inside the block), how each in-block name maps
to ours (``rules``: regex on ``rest`` -> template using its named groups), how keys outside the blocks move
(``outside``), and which keys to drop (``drop``). Unknown keys are kept as they are so the strict load that
follows names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

Template = str | Callable[[re.Match], str]


@dataclass(frozen=True)
class KeyRules:
    block: str
    prefix: str
    rules: tuple[tuple[str, str], ...]
    outside: tuple[tuple[str, Template], ...] = ()
    drop: str | None = None
    fix_value: Callable[[str, torch.Tensor], torch.Tensor] | None = field(default=None)


def _apply(template: Template, m: re.Match) -> str:
    return template(m) if callable(template) else template.format(**m.groupdict())


def rename_keys(state_dict: Mapping[str, torch.Tensor], table: KeyRules) -> dict[str, torch.Tensor]:
    """The authors' state dict with our key names (values untouched unless ``table.fix_value`` says)."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if table.drop and re.search(table.drop, key):
            continue
        new = next((_apply(t, m) for p, t in table.outside if (m := re.match(p, key))), None)
        b = re.match(table.block, key) if new is None else None
        if b is not None:
            rest = b.group("rest")
            inner = next((_apply(t, m) for p, t in table.rules if (m := re.match(p, rest))), None)
            if inner is not None:
                new = f"{table.prefix.format(**b.groupdict())}.{inner}"
        new = new or key
        out[new] = table.fix_value(new, value) if table.fix_value else value
    return out


def official_filter(table: KeyRules) -> Callable[[dict, nn.Module], dict]:
    """timm's ``pretrained_filter_fn`` for the authors' release: unwrap ``{"model": ...}`` and rename. A state
    dict already in the model's own layout (a folder minivit saved, loaded by ``timm.create_model("local-dir:...")``)
    passes unchanged."""

    def filter_fn(state_dict, model):
        if "model" in state_dict:
            state_dict = state_dict["model"]
        if set(state_dict) <= set(model.state_dict()):
            return state_dict
        return rename_keys(state_dict, table)

    return filter_fn
