"""``minivit.multiplex``: turn any timm ViT/DeiT (or Swin) into a weight-multiplexed student."""

from __future__ import annotations

from torch import nn

from .errors import ConfigError
from .models.registry import create_model


def multiplex(
    model_or_name: nn.Module | str,
    share: int | list[int] = 2,
    transforms: bool = True,
    separate_norms: bool = True,
    init: str = "first",
    transform_init: str = "identity",
    *,
    irpe: bool = False,
    mlp_transform: bool | None = None,
    pretrained: bool = False,
    **model_kwargs,
) -> nn.Module:
    """A weight-multiplexed copy of a timm vision transformer, initialised from it.

    Args:
        model_or_name: a timm ``VisionTransformer`` / ``SwinTransformer`` instance, or a timm model name
            (created with ``pretrained`` and ``model_kwargs``; ``pretrained=True`` downloads weights).
        share: layers per shared block; a divisor of the depth (ViT) or of every stage depth (Swin, an
            int or one per stage). ``share=depth`` keeps a single block.
        transforms: per-layer pre/post-softmax head mixing.
        separate_norms: per-layer LayerNorms (``False`` and ``transforms=False`` is naive sharing).
        init: shared weights taken from the ``first`` layer of each group, their ``mean``, or ``random``.
        transform_init: ``identity`` (the student starts equal to its shared blocks) or ``trunc_normal``.
        irpe: add per-layer iRPE on keys (ViT only; Mini-DeiT style).
        mlp_transform: Swin only: the per-layer LN + depth-wise 7x7 conv before the MLP (default on).

    The input model is not modified. With ``share=1`` and identity transforms the student computes
    the same function as the input.
    """
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
        if mlp_transform:
            raise ConfigError("mlp_transform applies to Swin models only", "drop mlp_transform for a ViT")
        if not isinstance(share, int):
            raise ConfigError("a ViT takes one share number", f"got {share!r}")
        from .convert.timm_vit import multiplex_vit

        return multiplex_vit(
            model,
            share,
            transforms=transforms,
            separate_norms=separate_norms,
            irpe=irpe,
            init=init,
            transform_init=transform_init,
        )
    if isinstance(model, SwinTransformer):
        if irpe:
            raise ConfigError("irpe applies to ViT models only", "Swin has its own relative position bias")
        from .convert.timm_swin import multiplex_swin

        return multiplex_swin(
            model,
            share,
            transforms=transforms,
            separate_norms=separate_norms,
            mlp_transform=True if mlp_transform is None else mlp_transform,
            init=init,
            transform_init=transform_init,
        )
    raise ConfigError(
        f"multiplex needs a timm VisionTransformer or SwinTransformer, got {type(model).__name__}",
        "pass e.g. 'deit_small_patch16_224' or 'swin_tiny_patch4_window7_224'",
    )
