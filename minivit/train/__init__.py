"""Training: one Accelerate loop (:func:`fit`, in parts: :class:`Loop`) for every objective, exact resume,
measurements."""

from .engine import Loop, Position, StepContext, TrainConfig, TrainingError, config_diff, evaluate, fit
from .measure import count_parameters, latency_ms, size_mb

__all__ = [
    "Loop",
    "Position",
    "StepContext",
    "TrainConfig",
    "TrainingError",
    "config_diff",
    "count_parameters",
    "evaluate",
    "fit",
    "latency_ms",
    "size_mb",
]
