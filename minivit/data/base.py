"""Dataset base classes shared by the built-in sets and image folders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from minivit.data.config import AugmentConfig, DataConfig, legacy_data_config
from minivit.data.pipeline import ImagePipeline, ImgSize, LightAugment
from minivit.data.transforms import isolated_rng, random_erasing
from minivit.errors import DataError

Sample = tuple[torch.Tensor, int]


SPLITS = ("train", "val")
"""Split names; "test" is accepted as an alias of "val"."""


def normalize_split(split: str) -> str:
    """Return "train" or "val" for ``split`` ("test" means "val"; case-insensitive)."""
    key = split.strip().lower() if isinstance(split, str) else split
    if key == "test":
        return "val"
    if key not in SPLITS:
        raise DataError(f"unknown split {split!r}", hint='use "train" or "val" ("test" is an alias of "val")')
    return key


def check_limit(limit: int | None) -> int | None:
    """Validate an optional per-split sample limit."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"limit must be a positive int or None, got {limit!r}", hint="e.g. limit=5000")
    return limit


def stratified_first_n(targets: Sequence[int] | np.ndarray, n: int | None) -> np.ndarray:
    """Indices of ``n`` samples taken class by class, in dataset order (deterministic).

    The first sample of every class comes first, then the second of every class, and so on, so
    the classes stay balanced (to within one sample, while each class has enough samples) and
    every class is present as soon as ``n >= num_classes``. The indices are returned sorted.
    """
    targets = np.asarray(targets)
    total = len(targets)
    if n is None or n >= total:
        return np.arange(total)
    order = np.argsort(targets, kind="stable")
    sorted_targets = targets[order]
    first_of_class = np.searchsorted(sorted_targets, sorted_targets, side="left")
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total) - first_of_class
    picked = np.lexsort((np.arange(total), rank))[:n]
    return np.sort(picked)


class ImageDataset(Dataset):
    """Common interface of every dataset built by :func:`minivit.data.build_dataset`.

    Samples are ``(image, label)`` with ``image`` a float32 tensor ``[in_chans, H, W]``
    preprocessed as :attr:`data_config` says (normalised by :attr:`mean`/:attr:`std`), and
    ``label`` an int in ``[0, num_classes)``. Subclasses implement :meth:`__len__`,
    :meth:`__getitems__` (batched fetching, used by ``DataLoader``) and :meth:`sample_id`;
    ``__getitem__`` fetches a batch of one.

    Without ``data_config`` the preprocessing is :func:`~minivit.data.config.legacy_data_config`
    of ``img_size`` and ``in_chans`` (squash, bilinear, mean 0.5 / std 0.5).

    Args:
        classes: class names.
        img_size, in_chans: the model's input size and channels (or give ``data_config``).
        augment: optional training augmentation.
        name: a short name for messages and ``repr``.
        data_config: the model's preprocessing (see :class:`~minivit.data.config.DataConfig`).
        erasing: optional random erasing of normalised batches (see
            :func:`~minivit.data.transforms.random_erasing`).
    """

    def __init__(
        self,
        classes: Sequence[str],
        *,
        img_size: ImgSize | None = None,
        in_chans: int | None = None,
        augment: LightAugment | None = None,
        name: str = "",
        data_config: DataConfig | None = None,
        erasing=None,
    ):
        self.classes: list[str] = list(classes)
        self.name = name
        if data_config is None:
            data_config = legacy_data_config(img_size, in_chans)
        elif (img_size, in_chans) != (None, None):
            raise DataError("give either data_config or img_size and in_chans, not both")
        self.data_config = data_config
        self.pipeline = ImagePipeline.from_config(data_config, augment, erasing)
        self._generator: torch.Generator | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> tuple[int, int]:
        return self.pipeline.img_size

    @property
    def in_chans(self) -> int:
        return self.pipeline.in_chans

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean subtracted from pixels in ``[0, 1]``."""
        return self.pipeline.mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std the centred pixels are divided by."""
        return self.pipeline.std

    @property
    def augment(self) -> LightAugment | None:
        return self.pipeline.augment

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        raise NotImplementedError

    def set_augment_seed(self, seed: int | None) -> None:
        """Draw augmentation randomness from a private generator seeded with ``seed``.

        ``None`` goes back to torch's global RNG. :func:`minivit.data.build_loaders` calls this in
        the main process and again in every worker, so augmented runs are reproducible.
        """
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed) % 2**63)

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        """How a predictions file names sample ``index`` (a file path, or ``<split>/<index>``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, samples={len(self)}, classes={self.num_classes}, "
            f"img_size={self.img_size}, in_chans={self.in_chans})"
        )


class TensorImageDataset(ImageDataset):
    """An in-memory dataset of ``uint8`` images, converted batch-wise with torch ops.

    Args:
        images: ``uint8`` tensor ``[N, H, W]`` (grey) or ``[N, C, H, W]``.
        labels: integer labels ``[N]`` in ``[0, len(classes))``.
        classes: class names.
        limit: keep only this many samples (see :func:`stratified_first_n`).
        name: a short name for messages and ``repr``.
        split: the split's name, used by :meth:`sample_id`.
        preprocess: ``img_size``, ``in_chans``, ``augment``, ``data_config``, ``erasing`` as for
            :class:`ImageDataset`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        *,
        limit: int | None = None,
        name: str = "tensor",
        split: str = "",
        **preprocess,
    ):
        super().__init__(classes, name=name, **preprocess)
        self.split = split
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise DataError(
                f"images must be a uint8 tensor [N, H, W] or [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if images.ndim == 3:
            images = images.unsqueeze(1)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise DataError(f"{images.shape[0]} images but labels have shape {tuple(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(f"labels must lie in [0, {len(self.classes)}), found {labels.min()}..{labels.max()}")
        # Fail at construction, not in the first batch, when channels cannot be converted.
        if len(images):
            self.pipeline(images[:1])
        keep = torch.from_numpy(stratified_first_n(labels.numpy(), check_limit(limit)))
        if len(keep) < len(labels):
            images, labels = images[keep], labels[keep]
        self.images = images
        self.labels = labels
        self.source_index = keep
        """Index of every sample in the full split (before ``limit``)."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        if self.pipeline.erasing is not None and self._generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._generator))
            with isolated_rng(seed):  # random erasing draws from Python's random
                batch = self.pipeline(self.images[index], self._generator)
        else:
            batch = self.pipeline(self.images[index], self._generator)
        return list(zip(batch.unbind(0), self.labels[index].tolist()))

    def sample_id(self, index: int) -> str:
        return f"{self.split or 'sample'}/{int(self.source_index[index])}"


def in_memory_split(
    tensors: tuple[torch.Tensor, torch.Tensor],
    classes: Sequence[str],
    split: str,
    *,
    name: str,
    train_augment: bool = False,
    augment: AugmentConfig | None = None,
    **options,
) -> TensorImageDataset:
    """One split of a built-in in-memory set, ``tensors`` its images and labels, as a :class:`TensorImageDataset`
    (``options``: its ``img_size``, ``in_chans``, ``limit`` and ``data_config``).

    ``train_augment`` (or an ``augment`` config) adds a random shift by 1/14 of the side (2 pixels at 28x28) with
    black padding and a random horizontal flip (probability ``augment.hflip``), plus random erasing when
    ``augment.reprob`` is positive.
    """
    if augment is not None:
        light = LightAugment(flip=augment.hflip > 0)
    else:
        light = LightAugment() if train_augment else None
    images, labels = tensors
    return TensorImageDataset(
        images, labels, classes, augment=light, erasing=random_erasing(augment), name=name,
        split=normalize_split(split), **options,
    )  # fmt: skip
