"""Reading the MiniViT authors' checkpoints into minivit models.

The authors save ``{"model": state_dict}`` in a ``.pth`` file with their own module layout; the key rules and
the hyper-parameter mapping of each released family live beside its registrations (:mod:`minivit.zoo`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..zoo import OFFICIAL, create_model, rename_keys
from .state_dict import load_state_dict_checked, read_weights


def _read_config(config) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, Path)) and str(config).endswith(".json"):
        p = Path(config)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}", "pass a dict or the path of the JSON config")
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}", "fix or regenerate the config file") from None
    raise ConfigError(
        f"config must be a dict, a .json path or a released model name, got {config!r}",
        "e.g. load_official('mini_deit_small_patch16_224.pth', 'mini_deit_small_patch16_224')",
    )


def load_official(path: str | Path, config) -> nn.Module:
    """Build the model described by ``config`` and load the authors' checkpoint at ``path``.

    ``config`` is a dict in the authors' hyper-parameter names (as their JSON configs), the path of
    such a JSON file, or the name of a released model (``"mini_deit_small_patch16_224"``). The
    checkpoint is read with ``weights_only=True``. Returns the model in eval mode; its outputs equal
    those of the authors' code.
    """
    if isinstance(config, str) and not config.endswith(".json"):
        model = create_model(config, pretrained=False)
        family = "swin" if "swin" in config else "deit"
    else:
        cfg = _read_config(config)
        family = "swin" if ("depths" in cfg or "Swin" in str(cfg.get("architecture", ""))) else "deit"
        model = OFFICIAL[family].build_from_official_config(cfg)
    state_dict = rename_keys(read_weights(path), OFFICIAL[family].KEY_RULES)
    load_state_dict_checked(model, state_dict, source=str(path))
    return model.eval()
