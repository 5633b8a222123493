"""Training: one Accelerate loop (:func:`fit`) for every objective, exact resume, measurements."""

from .engine import StepContext, TrainConfig, TrainingError, evaluate, fit
from .measure import count_parameters, latency_ms, size_mb

__all__ = [
    "StepContext",
    "TrainConfig",
    "TrainingError",
    "count_parameters",
    "evaluate",
    "fit",
    "latency_ms",
    "size_mb",
]
