"""``minivit.multiplex``: turn any timm ViT/DeiT (or Swin) into a weight-multiplexed student."""

from __future__ import annotations

from torch import nn

from .errors import ConfigError
from .models.registry import create_model
from .spec import MultiplexSpec, as_spec


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

    The input model is not modified. With ``share=1`` and identity transforms the student computes
    the same function as the input.
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

    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        if spec.mlp_transform:
            raise ConfigError("mlp_transform applies to Swin models only", "drop mlp_transform for a ViT")
        if not isinstance(spec.share, int):
            raise ConfigError("a ViT takes one share number", f"got {spec.share!r}")
        from .convert.timm_vit import multiplex_vit

        return multiplex_vit(
            model,
            spec.share,
            transforms=spec.transforms,
            separate_norms=spec.separate_norms,
            irpe=spec.irpe,
            init=spec.init,
            transform_init=spec.transform_init,
        )
    if isinstance(model, SwinTransformer):
        if spec.irpe:
            raise ConfigError("irpe applies to ViT models only", "Swin has its own relative position bias")
        from .convert.timm_swin import multiplex_swin

        return multiplex_swin(
            model,
            list(spec.share) if isinstance(spec.share, tuple) else spec.share,
            transforms=spec.transforms,
            separate_norms=spec.separate_norms,
            mlp_transform=True if spec.mlp_transform is None else spec.mlp_transform,
            init=spec.init,
            transform_init=spec.transform_init,
        )
    raise ConfigError(
        f"multiplex needs a timm VisionTransformer or SwinTransformer, got {type(model).__name__}",
        "pass e.g. 'deit_small_patch16_224' or 'swin_tiny_patch4_window7_224'",
    )
