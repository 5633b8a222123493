"""Create models by name: the released Mini-* models and any timm model, with clear errors."""

from __future__ import annotations

import difflib

import timm
from torch import nn

from ..errors import ConfigError


def list_models(pattern: str = "mini_*") -> list[str]:
    """Names of the registered models matching ``pattern`` (the Mini-* family by default)."""
    return timm.list_models(pattern)


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` with a helpful error for unknown names and bad keyword arguments."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `minivit models` or timm.list_models()"
        raise ConfigError(f"unknown model name {name!r}", hint)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
        model.minivit_config = {"family": "timm", "name": name, "model_args": dict(kwargs)}
        return model
    except TypeError as e:
        raise ConfigError(f"bad arguments for model {name!r}: {e}", "check --model-args names") from None
    except (AssertionError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"cannot build model {name!r} with {kwargs}: {e}", "check --model-args values") from None
