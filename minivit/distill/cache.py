"""Teacher logits computed once over a training set and kept on disk.

With only the logit term distilled and no augmentation, the teacher's output for a sample never
changes: :func:`cache_teacher_logits` runs the teacher once, and training reads the logits back
(:class:`minivit.train.data.WithTeacherLogits` adds them to each sample) instead of running it at
every step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .config import DistillConfig


def check_cacheable(config: DistillConfig, augmented: bool) -> None:
    """Refuse a cache the run could not use: feature terms need the teacher at every step, and
    augmented (or mixed) images differ from the ones the cache was made from."""
    if not config.cache_teacher_logits:
        return
    if "attn" in config.distill or "hidden" in config.distill:
        raise ConfigError(
            "--cache-teacher-logits needs --distill logits only",
            "attention and hidden-state terms need the teacher's features at every step",
        )
    if augmented:
        raise ConfigError("cached teacher logits are computed once without augmentation", "drop --augment/--mixup")


@torch.no_grad()
def cache_teacher_logits(
    teacher: nn.Module, dataset, path: Path, key: dict, batch_size: int = 256, write: bool = True
) -> torch.Tensor:
    """Teacher logits of every sample of ``dataset`` (no augmentation), computed once and kept in ``path``.

    ``key`` (JSON-able: teacher, data, subset) is stored with them; a cache made for another key is
    recomputed. ``write=False`` computes without writing (the other processes of a multi-process run).
    """
    key = json.dumps(json.loads(json.dumps(key, default=str)), sort_keys=True)
    path = Path(path)
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached["logits"]
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    teacher = teacher.to(device).eval()
    chunks = []
    for start in range(0, len(dataset), batch_size):
        items = _fetch(dataset, range(start, min(start + batch_size, len(dataset))))
        images = torch.stack([x for x, *_ in items]).to(device)
        chunks.append(teacher(images).float().cpu())
    logits = torch.cat(chunks)
    teacher.cpu()
    if write:
        from ..train.state import atomic_write

        payload = {"key": key, "logits": logits}
        atomic_write(path, lambda f: torch.save(payload, f))
    return logits


def _fetch(dataset, indices) -> list:
    fetch = getattr(dataset, "__getitems__", None)
    return fetch(list(indices)) if fetch else [dataset[i] for i in indices]


__all__ = ["cache_teacher_logits", "check_cacheable"]
