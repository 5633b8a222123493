"""Model size and speed: unique parameters, megabytes, single-image CPU latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..core import unique_parameter_count


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a shared tensor counts once)."""
    return unique_parameter_count(model)


def size_mb(model: nn.Module) -> float:
    """Megabytes (10^6 bytes) of the distinct parameters and persistent buffers, as stored."""
    tensors = {id(t): t for t in model.state_dict(keep_vars=True).values()}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], runs: int = 30, warmup: int = 5) -> float:
    """Median wall time (ms) of one forward pass on a batch of ``input_shape`` (eval mode, model's device)."""
    param = next(model.parameters())
    x = torch.randn(*input_shape, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    times = []
    for i in range(warmup + runs):
        if param.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if param.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    model.train(was_training)
    return 1000.0 * statistics.median(times)
