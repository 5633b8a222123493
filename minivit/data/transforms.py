"""timm's per-image transforms for image folders, and seeded randomness for them.

:func:`create_image_transform` builds exactly what :func:`timm.data.create_transform` builds for a
:class:`~minivit.data.config.DataConfig`: for evaluation a resize and centre crop at ``crop_pct``
(bicubic for the DeiT and Swin teachers), for training timm's ImageNet recipe with the options of an
:class:`~minivit.data.config.AugmentConfig`. Transforms run on PIL images, one sample at a time, so
``DataLoader`` workers parallelise them.

timm's random transforms draw from Python's ``random``, NumPy's and torch's global generators.
:func:`isolated_rng` seeds all three for one sample and restores them afterwards, which makes the
augmentation of a sample a function of its seed (exact resume) without disturbing the training
loop's own randomness (dropout, stochastic depth) in the main process.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from minivit.data.config import AugmentConfig, DataConfig

ImageTransform = Callable[[Image.Image], torch.Tensor]


def create_image_transform(config: DataConfig, augment: AugmentConfig | None = None) -> ImageTransform:
    """timm's transform for ``config``: eval (resize + centre crop) or, with ``augment``, training.

    The returned callable maps a PIL image in mode "RGB" (3-channel configs) or "L" (1-channel)
    to a normalised float32 tensor ``[C, H, W]``.
    """
    from timm.data import create_transform

    common = {"input_size": config.input_size, "mean": config.mean, "std": config.std}
    if augment is None:
        return create_transform(
            **common, is_training=False, interpolation=config.interpolation,
            crop_pct=config.crop_pct, crop_mode=config.crop_mode,
        )  # fmt: skip
    return create_transform(
        **common,
        is_training=True,
        scale=augment.scale,
        ratio=augment.ratio,
        hflip=augment.hflip,
        color_jitter=augment.color_jitter,
        auto_augment=augment.aa,
        interpolation=augment.interpolation,
        re_prob=augment.reprob,
        re_mode=augment.remode,
        re_count=augment.recount,
    )


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators with ``seed`` inside the block only."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def sample_seeds(generator: torch.Generator | None, count: int) -> list[int | None]:
    """One seed per sample of a batch from ``generator`` (``None`` each without a generator)."""
    if generator is None:
        return [None] * count
    return torch.randint(0, 2**62, (count,), generator=generator).tolist()


def apply_transform(transform: ImageTransform, image: Image.Image, seed: int | None) -> torch.Tensor:
    """``transform(image)``, its randomness drawn from ``seed`` when given (global RNGs otherwise)."""
    if seed is None:
        return transform(image)
    with isolated_rng(seed):
        return transform(image)


def random_erasing(augment: AugmentConfig | None):
    """timm's ``RandomErasing`` for normalised batches ``[B, C, H, W]``, or None when ``reprob`` is 0."""
    if augment is None or augment.reprob <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(augment.reprob, mode=augment.remode, max_count=augment.recount, device="cpu")
