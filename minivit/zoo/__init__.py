"""The released Mini-* models and the generic student entrypoints (registered in timm on import), the authors'
key and config mappings, and creating models by name."""

from . import mini_deit, mini_swin, students
from .keys import KeyRules, rename_keys
from .registry import create_model, list_models

OFFICIAL = {"deit": mini_deit, "swin": mini_swin}  # per family: KEY_RULES, official_kwargs, build_from_official_config

__all__ = ["OFFICIAL", "KeyRules", "create_model", "list_models", "mini_deit", "mini_swin", "rename_keys", "students"]
