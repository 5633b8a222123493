"""Batches whose order and augmentation are functions of (seed, epoch, step, rank) only.

That is what makes ``--resume`` exact: after a crash the sampler is rebuilt for the same epoch,
skips the batches already done, and every later batch holds the same samples with the same
augmentation as in an uninterrupted run, whatever the number of loader workers.

* :class:`EpochBatchSampler`: a fresh permutation per epoch, cut into per-process shards the way
  ``DistributedSampler`` does (padded so every process runs the same number of steps), then into
  batches; batch ``s`` of all processes together is batch ``s`` of a 1-process run with the global
  batch size.
* :class:`SeededBatches`: wraps a dataset; before fetching a batch it re-seeds the dataset's
  augmentation (``set_augment_seed``, :class:`minivit.data.ImageDataset`) with the batch's seed.
* :class:`WithTeacherLogits`: adds cached teacher logits to each sample.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, Sampler


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (order matters): a small, stable, non-cryptographic hash."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SeededBatch(list):
    """A list of sample indices that carries the seed of its augmentation."""

    def __init__(self, indices, seed: int):
        super().__init__(indices)
        self.seed = seed


class EpochBatchSampler(Sampler):
    """Shuffled, sharded batches; call :meth:`set_epoch` before iterating."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.skip = 0, 0

    @property
    def shard_size(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch (the same on every process)."""
        n = self.shard_size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch ``epoch``, leaving out its first ``skip`` batches (already trained on)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g).tolist()
        order += order[: self.shard_size * self.world_size - self.size]  # pad: equal shards
        shard = order[self.rank :: self.world_size]
        for b in range(self.skip, len(self)):
            seed = mix_seed(self.seed, self.epoch, b, self.rank)
            yield SeededBatch(shard[b * self.batch_size : (b + 1) * self.batch_size], seed)


class SeededBatches(Dataset):
    """``dataset`` fetched batch-wise, its augmentation seeded by each :class:`SeededBatch`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getitems__(self, batch):
        seed = getattr(batch, "seed", None)
        if seed is not None and hasattr(self.dataset, "set_augment_seed"):
            self.dataset.set_augment_seed(seed)
        fetch = getattr(self.dataset, "__getitems__", None)
        return fetch(list(batch)) if fetch else [self.dataset[i] for i in batch]


class WithTeacherLogits(Dataset):
    """Samples ``(image, label, teacher_logits[i])`` from ``dataset`` and a (N, classes) tensor."""

    def __init__(self, dataset: Dataset, logits: torch.Tensor):
        if len(logits) != len(dataset):
            raise ValueError(f"{len(logits)} cached logits for {len(dataset)} samples")
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # set_augment_seed, classes, ... of the wrapped dataset
        if name in ("dataset", "logits"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        fetch = getattr(self.dataset, "__getitems__", None)
        samples = fetch(list(indices)) if fetch else [self.dataset[i] for i in indices]
        return [(x, y, self.logits[i]) for (x, y), i in zip(samples, indices)]
