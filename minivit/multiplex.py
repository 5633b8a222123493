"""``minivit.multiplex``: turn any timm ViT/DeiT (or Swin) into a weight-multiplexed student."""

from __future__ import annotations

from torch import nn

from .errors import ConfigError
from .families import family_of_teacher
from .spec import MultiplexSpec, as_spec
from .zoo import create_model


def multiplex(
    model_or_name: nn.Module | str,
    spec: MultiplexSpec | dict | None = None,
    *,
    pretrained: bool = False,
    **options,
) -> nn.Module:
    """A weight-multiplexed copy of a timm vision transformer, initialised from it.

    Args:
        model_or_name: a timm ``VisionTransformer`` / ``SwinTransformer`` instance, or a timm model name
            (created with ``pretrained`` and the keyword options that are not spec fields;
            ``pretrained=True`` downloads weights).
        spec: a :class:`~minivit.MultiplexSpec` (every multiplexing option); keyword ``options`` named like
            its fields override them, so ``multiplex(teacher, share=4)`` and
            ``multiplex(teacher, MultiplexSpec(share=4))`` are the same. An int as ``spec`` is taken as ``share``.

    The student has the teacher's floating-point type (an fp16 teacher gives an fp16 student) and device.
    The input model is not modified. With ``share=1`` and the default options the student computes the same
    function as the input. The family (ViT or Swin) is picked by the model's type; the spec is stored whole
    as ``student.spec``.
    """
    if isinstance(spec, (int, list, tuple, str)) and not isinstance(spec, bool):
        options = {"share": spec, **options}
        spec = None
    names = MultiplexSpec.field_names()
    model_kwargs = {k: v for k, v in options.items() if k not in names}
    spec = as_spec(spec, **{k: v for k, v in options.items() if k in names})
    if isinstance(model_or_name, str):
        model = create_model(model_or_name, pretrained=pretrained, **model_kwargs)
    elif isinstance(model_or_name, nn.Module):
        if model_kwargs or pretrained:
            raise ConfigError("model keyword arguments only apply when a model name is given", "drop them")
        model = model_or_name
    else:
        raise ConfigError(f"expected a timm model or model name, got {type(model_or_name).__name__}")
    student = family_of_teacher(model).from_teacher(model, spec)
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return student.to(dtypes.pop()) if len(dtypes) == 1 else student  # an fp16 teacher gives an fp16 student
