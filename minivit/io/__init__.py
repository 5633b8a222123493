"""Saving and loading: the timm-style model folder, checked state-dict loading, the authors' checkpoints."""

from .official import load_official
from .pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_from_config,
    from_pretrained,
    load_weights,
    model_config,
    read_config,
    save_pretrained,
)
from .state_dict import load_state_dict_checked, read_weights

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "build_from_config",
    "from_pretrained",
    "load_official",
    "load_state_dict_checked",
    "load_weights",
    "model_config",
    "read_config",
    "read_weights",
    "save_pretrained",
]
