"""Where a group's shared weights start: one module standing for the group's layers."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from ..spec import INITS


@torch.no_grad()
def merge_modules(modules: list[nn.Module], init: str) -> nn.Module:
    """A copy of the first module (``first``), of the parameter mean (``mean``) or re-initialised (``random``).

    ``random``: ``Linear`` weights trunc-normal (std 0.02) with zero bias, ``LayerNorm`` ones/zeros, any other
    parameter held directly by a module (e.g. a relative-position-bias table) trunc-normal (std 0.02), as timm.
    The inputs are never modified; the same object listed twice counts once.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}", f"use one of {', '.join(INITS)}")
    modules = list({id(m): m for m in modules}.values())
    out = copy.deepcopy(modules[0])
    if init == "mean" and len(modules) > 1:
        for name, p in out.named_parameters():
            p.copy_(torch.stack([m.get_parameter(name) for m in modules]).mean(0))
    elif init == "random":
        for m in out.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            else:
                for p in m.parameters(recurse=False):
                    nn.init.trunc_normal_(p, std=0.02)
    return out
