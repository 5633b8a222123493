"""scikit-learn's 8x8 handwritten digits: 1797 images, 10 classes, always available offline.

The 17 grey levels (0..16) are scaled to 0..255. The split is fixed: for every class, a seeded
permutation puts 20% of its images in "val" and the rest in "train" (1438 / 359 images).
No augmentation is applied (flipping or shifting 8x8 digits changes what they show).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from minivit.data.base import TensorImageDataset, in_memory_split, normalize_split
from minivit.data.pipeline import ImgSize

DIGITS_CLASSES = tuple(str(d) for d in range(10))
VAL_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of ``split``: a stratified, seeded ``VAL_FRACTION`` of each class is "val"."""
    rng = np.random.default_rng(SPLIT_SEED)
    val = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        val.append(members[: round(len(members) * VAL_FRACTION)])
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[np.concatenate(val)] = True
    return np.flatnonzero(is_val if normalize_split(split) == "val" else ~is_val)


def load_digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 [N, 8, 8]`` and labels ``int64 [N]`` of ``split``."""
    images, labels = _load_all()
    keep = split_indices(labels, split)
    return torch.from_numpy(images[keep]), torch.from_numpy(labels[keep])


def load_digits(
    split: str, img_size: ImgSize | None = None, in_chans: int | None = None, **options
) -> TensorImageDataset:
    """The digits as a :class:`TensorImageDataset` (``options``: ``limit``, ``data_config``; see
    :func:`~minivit.data.base.in_memory_split`). ``train_augment`` is accepted and ignored."""
    options.pop("train_augment", None)  # never augmented: flipping or shifting 8x8 digits changes what they show
    tensors = load_digits_tensors(split)
    return in_memory_split(
        tensors, DIGITS_CLASSES, split, name="digits", img_size=img_size, in_chans=in_chans, **options
    )
