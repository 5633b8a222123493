"""Model families. Importing this package registers the Mini-* models in timm."""

from . import mini_deit, mini_swin  # noqa: F401  (registers mini_deit_* and mini_swin_* in timm)
from .registry import create_model, list_models
from .vision_transformer import MultiplexedVisionTransformer

__all__ = ["MultiplexedVisionTransformer", "create_model", "list_models"]
