"""The one teacher -> student recipe, and the record that describes a model family.

A family (ViT, Swin) knows which of its modules are *blocks* (what multiplexing replaces) and how to build
a student whose groups are made directly from a list of source blocks per stack. The recipe is then the
same for every family:

1. describe the teacher's architecture (the keyword arguments that rebuild it);
2. build the student with those arguments and the spec, each group built once from the teacher's blocks
   (no fresh blocks made and thrown away);
3. copy everything outside the blocks (embeddings, merging layers, final norm, head) key for key; a key
   that is missing or has another shape means the description missed something, which is an error;
4. give the student the teacher's ``pretrained_cfg`` (its data config: mean/std, interpolation, crop), with the
   student's own input size and architecture name, and without the teacher's weight location.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..spec import MultiplexSpec


@dataclass(frozen=True)
class Family:
    """What :func:`minivit.multiplex` and ``save/from_pretrained`` need to know about one model family.

    ``teacher_types``: the timm classes a student is made from; ``student_type``: the multiplexed model class,
    built as ``student_type(**arch_args, spec=spec)``; ``config_name``: its ``family`` in ``config.json``;
    ``from_teacher(teacher, spec)``: the student; ``legacy_spec``: spec fields implied by configs written
    before the ``multiplex`` object existed (their options lived among the architecture arguments).
    """

    name: str
    teacher_types: tuple[type, ...]
    student_type: type
    config_name: str
    from_teacher: Callable[[nn.Module, MultiplexSpec], nn.Module]
    legacy_spec: dict = field(default_factory=dict)


def copy_outside_blocks(teacher: nn.Module, student: nn.Module, is_block_key: Callable[[str], bool]) -> None:
    """Load every teacher tensor outside the blocks into ``student``; the two layouts must agree there."""
    own = student.state_dict()
    outside = {k: v for k, v in teacher.state_dict().items() if not is_block_key(k)}
    bad = [k for k, v in outside.items() if k not in own or own[k].shape != v.shape]
    bad += [k for k in own if not is_block_key(k) and k not in outside]
    if bad:
        raise ConfigError(
            f"cannot reproduce this {type(teacher).__name__}'s layout (first differing keys: {', '.join(bad[:3])})",
            "this timm model variant is not supported by multiplex",
        )
    student.load_state_dict(outside, strict=False)


SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag", "custom_load")
"""``pretrained_cfg`` keys that say where a model's weights come from (a student's are not its teacher's)."""


def inherited_pretrained_cfg(teacher: nn.Module, student: nn.Module, architecture: str) -> dict:
    """The teacher's ``pretrained_cfg`` as the student's: same data config, the student's own input size,
    architecture and class count, no weight location."""
    from ..data.config import model_input_size

    cfg = {k: v for k, v in dict(getattr(teacher, "pretrained_cfg", None) or {}).items() if k not in SOURCE_KEYS}
    cfg["architecture"] = architecture
    size = model_input_size(student)
    if size is not None:
        cfg["input_size"] = size
    if getattr(student, "num_classes", None) is not None:
        cfg["num_classes"] = student.num_classes
    return cfg


@torch.no_grad()
def student_from_teacher(
    teacher: nn.Module,
    student_type: type,
    arch_args: dict,
    spec: MultiplexSpec,
    sources: list[list[nn.Module]],
    is_block_key: Callable[[str], bool],
    architecture: str | None = None,
) -> nn.Module:
    """Steps 2-4 of the recipe: ``sources[s][i]`` is the teacher block that layer ``i`` of stack ``s`` starts
    from; ``architecture`` is the student's registered timm name. The teacher is left unchanged; the student gets
    its training mode and device."""
    if isinstance(teacher, student_type):
        raise ConfigError("the model is already multiplexed", "pass the original (teacher) model")
    device = next(teacher.parameters()).device
    with device:
        student = student_type(**arch_args, spec=spec, sources=sources)
    copy_outside_blocks(teacher, student, is_block_key)
    if architecture is not None:
        student.pretrained_cfg = student.default_cfg = inherited_pretrained_cfg(teacher, student, architecture)
    student.train(teacher.training)
    return student.to(device)
