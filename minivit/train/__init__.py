"""Training: one Accelerate loop (:func:`fit`, in parts: :class:`Loop`) for every objective, exact resume."""

from .engine import Loop, Position, StepContext, TrainConfig, TrainingError, config_diff, evaluate, fit

__all__ = [
    "Loop",
    "Position",
    "StepContext",
    "TrainConfig",
    "TrainingError",
    "config_diff",
    "evaluate",
    "fit",
]
