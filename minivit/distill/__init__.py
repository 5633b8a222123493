"""Weight distillation: its config, losses (model-agnostic), layer mapping, hook-based feature capture,
the objectives the training loop minimises and the teacher-logit cache."""

from .cache import cache_teacher_logits, check_cacheable
from .config import DISTILL_TERMS, HIDDEN_RELATION_SCALE, DistillConfig, as_distill_config
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
from .objective import DistillationObjective, SupervisedObjective

__all__ = [
    "DISTILL_TERMS",
    "HIDDEN_RELATION_SCALE",
    "DistillConfig",
    "DistillationObjective",
    "SupervisedObjective",
    "as_distill_config",
    "cache_teacher_logits",
    "check_cacheable",
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
