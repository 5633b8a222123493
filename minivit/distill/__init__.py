"""Weight distillation: losses (model-agnostic), layer mapping and hook-based feature capture."""

from .hooks import FeatureCapture, layer_points, num_layers
from .losses import (
    HiddenProjectionMSE,
    attention_relation_loss,
    hard_cross_entropy,
    hidden_relation_loss,
    logit_distillation_loss,
    soft_cross_entropy,
)
from .mapping import layer_mapping

__all__ = [
    "FeatureCapture",
    "HiddenProjectionMSE",
    "attention_relation_loss",
    "hard_cross_entropy",
    "hidden_relation_loss",
    "layer_mapping",
    "layer_points",
    "logit_distillation_loss",
    "num_layers",
    "soft_cross_entropy",
]
