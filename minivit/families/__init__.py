"""Model families: per family its shared block, per-layer parts, model class and ``from_teacher``.

``FAMILIES`` is the registry :func:`minivit.multiplex` (by the teacher's type) and ``save/from_pretrained``
(by the ``family`` name in ``config.json``) look families up in.
"""

from __future__ import annotations

from torch import nn

from ..core import Family
from ..errors import ConfigError
from . import swin, vit
from .swin import MultiplexedSwinTransformer, describe_swin
from .vit import MultiplexedVisionTransformer, build_vit, describe_vit

FAMILIES: tuple[Family, ...] = (vit.FAMILY, swin.FAMILY)


def family_of_teacher(model: nn.Module) -> Family:
    """The family whose students are made from ``model``'s type."""
    if family_of_student(model) is not None:
        raise ConfigError("the model is already multiplexed", "pass the original (teacher) model")
    for family in FAMILIES:
        if isinstance(model, family.teacher_types):
            return family
    raise ConfigError(
        f"multiplex needs a timm VisionTransformer or SwinTransformer, got {type(model).__name__}",
        "pass e.g. 'deit_small_patch16_224' or 'swin_tiny_patch4_window7_224'",
    )


def family_of_student(model: nn.Module) -> Family | None:
    """The family of a multiplexed model, or None."""
    return next((f for f in FAMILIES if isinstance(model, f.student_type)), None)


def family_by_config_name(name: str) -> Family | None:
    return next((f for f in FAMILIES if f.config_name == name), None)


__all__ = [
    "FAMILIES",
    "MultiplexedSwinTransformer",
    "MultiplexedVisionTransformer",
    "build_vit",
    "describe_swin",
    "describe_vit",
    "family_by_config_name",
    "family_of_student",
    "family_of_teacher",
]
