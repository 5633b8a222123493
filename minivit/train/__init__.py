"""Training: one Accelerate loop (:func:`fit`) for every objective, exact resume."""

from .engine import StepContext, TrainConfig, TrainingError, evaluate, fit

__all__ = [
    "StepContext",
    "TrainConfig",
    "TrainingError",
    "evaluate",
    "fit",
]
