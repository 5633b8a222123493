"""One entry point for every dataset: built-in names or image folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, get_worker_info

from minivit.data import fashion_mnist as fmnist
from minivit.data.base import ImageDataset, normalize_split
from minivit.data.config import AugmentConfig, DataConfig
from minivit.data.digits import load_digits
from minivit.data.folder import LAYOUT_HINT, ImageFolderDataset
from minivit.data.pipeline import ImgSize
from minivit.data.scan import os_error
from minivit.errors import DataError

BUILTIN_DATASETS = ("fashion-mnist", "digits")
"""Names :func:`build_dataset` understands besides folder paths."""
_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "digits": "digits",
}

Limit = int | None | tuple[int | None, int | None]


def _resolve(data: str | os.PathLike) -> tuple[str, Path | None]:
    """Map ``data`` to ``(kind, folder)`` with kind "fashion-mnist", "digits" or "folder".

    A built-in name wins over a same-named folder in the working directory unless ``data`` is
    written as a path (contains a separator, e.g. ``./digits``).
    """
    if not isinstance(data, str | os.PathLike) or not os.fspath(data).strip():
        raise DataError(
            f"dataset must be a name or a folder path, got {data!r}",
            hint=f"use one of {', '.join(BUILTIN_DATASETS)} or a folder",
        )
    text = os.fspath(data)
    key = text.strip().lower().replace("_", "-")
    is_pathlike = isinstance(data, os.PathLike) or any(sep in text for sep in (os.sep, os.altsep) if sep)
    if key in _ALIASES and not is_pathlike:
        return _ALIASES[key], None
    folder = Path(text).expanduser()
    try:
        return _resolve_folder(folder, text)
    except OSError as err:  # a name too long, a folder that cannot be read, ...
        raise os_error(err, text) from None


def _resolve_folder(folder: Path, text: str) -> tuple[str, Path | None]:
    if folder.is_dir():
        if fmnist.has_fashion_mnist(folder):
            return "fashion-mnist", folder
        if not (folder / "train").is_dir():
            if fmnist.has_fashion_mnist(folder / fmnist.SUBDIR):
                return "fashion-mnist", folder / fmnist.SUBDIR
            if any(fmnist.has_some_fashion_mnist(f) for f in (folder, folder / fmnist.SUBDIR)):
                fmnist.locate_fashion_mnist(folder)  # raises, naming the missing files
        return "folder", folder
    if folder.exists():
        raise DataError(f"dataset '{text}' is a file, not a folder", hint=LAYOUT_HINT)
    raise DataError(
        f"unknown dataset '{text}': not a built-in name ({', '.join(BUILTIN_DATASETS)}) and no such folder",
        hint=f"use a built-in name or a folder path; {LAYOUT_HINT}",
    )


def dataset_kind(data: str | os.PathLike) -> str:
    """What ``data`` names: "fashion-mnist", "digits" or "folder" (raises :class:`DataError` if nothing).

    Feed it to :func:`~minivit.data.config.default_data_config` for a model trained from scratch.
    """
    return _resolve(data)[0]


def build_dataset(
    data: str | os.PathLike,
    split: str,
    img_size: ImgSize | None = None,
    in_chans: int | None = None,
    train_augment: bool = False,
    *,
    limit: int | None = None,
    download: bool = True,
    data_config: DataConfig | None = None,
    augment: AugmentConfig | None = None,
    verify: bool | None = None,
) -> ImageDataset:
    """Build one split of a dataset, preprocessed for the model.

    Give either the model's data config (``data_config``, from
    :func:`~minivit.data.config.resolve_data_config`; timm's transforms for folders, the same
    resize/crop/normalisation batch-wise for the built-in sets) or ``img_size`` and ``in_chans``
    (squash to that size, mean 0.5 / std 0.5).

    Args:
        data: "fashion-mnist", "digits", a folder holding the four Fashion-MNIST ``.gz`` files,
            or an image folder with ``train/`` and ``val/`` (one sub-folder per class in each).
        split: "train" or "val" ("test" is an alias of "val").
        img_size: the model's input size, an int or ``(height, width)``.
        in_chans: the model's input channels (grey sources are repeated, RGB becomes grey by
            luminance).
        train_augment: light augmentation (random flip and small shift) for Fashion-MNIST and
            folders; digits are never augmented.
        limit: keep at most this many samples, class-balanced and deterministic.
        download: allow downloading Fashion-MNIST when it is not found locally.
        data_config: the model's preprocessing (replaces ``img_size`` and ``in_chans``).
        augment: training augmentation (timm's for folders, the light one plus random erasing
            for Fashion-MNIST; digits are never augmented). Give it for the train split only.
        verify: for folders, whether to test-decode every file now (see
            :class:`~minivit.data.folder.ImageFolderDataset`).

    Returns:
        An :class:`~minivit.data.base.ImageDataset` of ``(float32 [in_chans, H, W], int)``
        samples (``dataset.data_config`` says how they were made; ``dataset.mean``,
        ``dataset.std``), with ``.classes`` and ``.num_classes``.

    Raises:
        DataError: for an unknown name, a missing or malformed folder, or unreadable data.
    """
    split = normalize_split(split)
    kind, folder = _resolve(data)
    common: dict[str, Any] = {"limit": limit, "data_config": data_config}
    if kind == "fashion-mnist":
        return fmnist.load_fashion_mnist(
            split, img_size, in_chans, train_augment=train_augment, root=folder, download=download,
            augment=augment, **common,
        )  # fmt: skip
    if kind == "digits":
        return load_digits(split, img_size, in_chans, **common)
    return ImageFolderDataset(
        folder, split, img_size, in_chans, train_augment=train_augment, augment=augment, verify=verify, **common
    )


@dataclass(frozen=True)
class DataInfo:
    """What :func:`build_loaders` built; also readable dict-style (``info["num_classes"]``)."""

    name: str
    classes: list[str]
    num_classes: int
    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    val_size: int
    data_config: DataConfig | None = None
    """The preprocessing both loaders apply (record it in a saved model: ``apply_data_config``)."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own, reproducible augmentation stream."""
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, ImageDataset):
        info.dataset.set_augment_seed(info.seed)


def _split_limit(limit: Limit) -> tuple[int | None, int | None]:
    if isinstance(limit, Sequence) and not isinstance(limit, str):
        if len(limit) != 2:
            raise DataError(f"limit must be an int or a (train, val) pair, got {limit!r}")
        return limit[0], limit[1]
    return limit, limit


def build_loaders(
    data: str | os.PathLike,
    img_size: ImgSize | None = None,
    in_chans: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    *,
    train_augment: bool = False,
    limit: Limit = None,
    download: bool = True,
    drop_last: bool = False,
    pin_memory: bool = False,
    val_batch_size: int | None = None,
    data_config: DataConfig | None = None,
    augment: AugmentConfig | None = None,
    verify: bool | None = None,
) -> tuple[DataLoader, DataLoader, DataInfo]:
    """Train and val loaders plus a :class:`DataInfo` summary.

    The train loader shuffles with a generator seeded by ``seed``, so the order of batches is
    the same in every run; augmentation is seeded from it too (per worker when ``num_workers``
    is positive). ``limit`` is one cap for both splits or a ``(train, val)`` pair (``None`` for
    no cap). ``augment`` applies to the train split only. Other arguments are as in
    :func:`build_dataset` and :class:`torch.utils.data.DataLoader`.
    """
    for what, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"{what} must be an int >= {low}, got {value!r}")
    train_limit, val_limit = _split_limit(limit)
    common: dict[str, Any] = {"download": download, "data_config": data_config, "verify": verify}
    train = build_dataset(
        data, "train", img_size, in_chans, train_augment, limit=train_limit, augment=augment, **common
    )
    val = build_dataset(data, "val", img_size, in_chans, limit=val_limit, **common)
    if train.classes != val.classes:  # cannot happen with the built-in loaders; guards custom ones
        raise DataError(f"train and val of '{data}' have different classes")
    train.set_augment_seed(seed)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
        "worker_init_fn": _seed_worker if num_workers > 0 else None,
    }
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last and len(train) >= batch_size,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    val_loader = DataLoader(val, batch_size=val_batch_size or batch_size, shuffle=False, **common)
    info = DataInfo(
        name=train.name,
        classes=list(train.classes),
        num_classes=train.num_classes,
        img_size=train.img_size,
        in_chans=train.in_chans,
        mean=train.mean,
        std=train.std,
        train_size=len(train),
        val_size=len(val),
        data_config=train.data_config,
    )
    return train_loader, val_loader, info


def default_dataset() -> str:
    """The dataset the demo should use: Fashion-MNIST if it is available offline, else digits.

    Returns "fashion-mnist" when its files are found in ``$MINIVIT_DATA``, the system folder or
    the cache (see :func:`~minivit.data.fashion_mnist.search_dirs`), "digits" otherwise. Never
    downloads.
    """
    return "fashion-mnist" if fmnist.find_fashion_mnist() is not None else "digits"
