"""Image folders: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>``.

* Classes are the sub-folders of ``train/`` (sorted; hidden folders ignored); ``val/`` may hold
  any subset of them. Images may sit in nested folders below their class folder; every folder is
  entered once, so a link loop or a link into another class is skipped with one warning
  (see :mod:`minivit.data.scan`).
* Extensions png, jpg, jpeg, bmp, gif, tif, tiff and webp are read, in any letter case; other
  and hidden files (``.DS_Store``, ``._x.jpg``) are ignored.
* Nothing is decoded up front at scale: a split of more than :data:`VERIFY_MAX_FILES` files is
  only listed (a 1.28M-image folder starts in seconds); a file that fails when it is met is
  replaced by the next good sample, with one warning per process naming the first such file
  (all are listed in ``dataset.broken``). Smaller splits are test-decoded when built (JPEGs at
  reduced scale, in a few threads), so a broken file is reported before training: skipped with
  one warning, or :class:`DataError` if none decodes. ``verify=True``/``False`` forces either.
* Any PIL mode is handled: palette and alpha images are composited over black, 16-bit and 32-bit
  grey images are scaled to their full range, CMYK/YCbCr/... are converted to RGB; the image is
  then converted to the model's channels ("RGB" or "L").
* Each sample then goes through timm's transform for the data config
  (:func:`~minivit.data.transforms.create_image_transform`): for evaluation exactly timm's resize
  and centre crop; for training timm's ImageNet augmentation when an
  :class:`~minivit.data.config.AugmentConfig` is given.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minivit.data.base import ImageDataset, Sample, check_limit, normalize_split, stratified_first_n
from minivit.data.config import AugmentConfig, DataConfig
from minivit.data.pipeline import ImgSize, LightAugment
from minivit.data.scan import (
    IMAGE_EXTENSIONS,
    SampleTable,
    folder_key,
    is_image_name,
    os_error,
    sub_folders,
    walk_images,
)
from minivit.data.transforms import apply_transform, create_image_transform, sample_seeds
from minivit.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "LAYOUT_HINT", "VERIFY_MAX_FILES", "ImageFolderDataset", "scan_image_folder"]

LAYOUT_HINT = "an image folder needs train/ and val/ sub-folders, each with one sub-folder per class"
VERIFY_MAX_FILES = 1000
"""Splits with at most this many files are test-decoded when built (``verify=None``)."""
_GREY_HIGH_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def _show(paths: Sequence, limit: int = 3) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _high_depth_grey(img: Image.Image) -> np.ndarray:
    """``[1, H, W]`` float in ``[0, 1]`` from a 16-bit, 32-bit integer or float grey image.

    ``I;16*`` modes use the full 16-bit range. Mode ``I`` (32-bit) is treated as 16-bit when any
    value exceeds 255 (16-bit PNGs and TIFFs open this way) and as 8-bit otherwise. Mode ``F`` is
    taken as ``[0, 1]`` when its maximum is at most 1, else as ``[0, 255]``.
    """
    array = np.asarray(img, dtype=np.float64)
    peak = array.max(initial=0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and peak > 255):
        scale = 65535.0
    elif img.mode == "F" and peak <= 1.0:
        scale = 1.0
    else:
        scale = 255.0
    return np.clip(array / scale, 0.0, 1.0).astype(np.float32)[None]


def pil_to_array(img: Image.Image) -> np.ndarray:
    """An image as ``[C, H, W]`` with C = 1 (grey) or 3 (colour), ``uint8`` or float in ``[0, 1]``.

    Transparent pixels are composited over black: for the usual transparent PNG whose hidden
    pixels are black this equals dropping the alpha channel, and it hides stray colours elsewhere.
    """
    if img.mode in _GREY_HIGH_DEPTH:
        return _high_depth_grey(img)
    if img.mode in ("P", "PA"):
        has_alpha = img.mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("RGBa", "La"):  # premultiplied alpha is already "over black"
        img = img.convert(img.mode[0] if img.mode == "La" else "RGB")
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    array = np.asarray(img)
    if img.mode in ("LA", "RGBA"):
        colour = array[..., :-1].astype(np.uint16) * array[..., -1:].astype(np.uint16)
        array = ((colour + 127) // 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return np.array(array.transpose(2, 0, 1), order="C")  # a writable copy (PIL's buffer is read-only)


def to_rgb_or_grey(img: Image.Image) -> Image.Image:
    """A loaded image as mode "RGB" or "L" (8-bit), converted as :func:`pil_to_array` does."""
    if img.mode in ("RGB", "L"):
        return img
    array = pil_to_array(img)
    if array.dtype != np.uint8:
        array = np.rint(array * 255.0).astype(np.uint8)
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def open_image(path: str | os.PathLike, in_chans: int) -> Image.Image:
    """Decode ``path`` to a PIL image with ``in_chans`` channels (1: "L", 3: "RGB"); raises on failure."""
    with Image.open(path) as img:
        img.load()
        img = to_rgb_or_grey(img)
    if in_chans == 3 and img.mode == "L":
        return img.convert("RGB")
    if in_chans == 1 and img.mode == "RGB":
        return img.convert("L")
    return img


def _failure(path: str | os.PathLike) -> str | None:
    """Why ``path`` does not decode ("cannot be read", "could not be decoded"), or None if it does.

    JPEGs decode at 1/8 scale, which still reads the whole stream.
    """
    try:
        if os.stat(path).st_size == 0:
            return "could not be decoded"
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (1, 1))
            img.load()
        return None
    except PermissionError:
        return "cannot be read"
    except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return "could not be decoded"


@contextmanager
def single_thread() -> Iterator[None]:
    """Run per-image torch ops on one thread, as in loader workers.

    ``ToTensor`` and ``Normalize`` on one 224 px image are far too small to share: with several
    intra-op threads on a busy machine they ran ~10x slower than on one.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_decodable(paths: list[Path]) -> list[str | None]:
    if len(paths) < 32:
        return [_failure(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(_failure, paths, chunksize=16))


def scan_image_folder(root: str | os.PathLike, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Validate the layout of ``root`` and list ``split``'s files without decoding them.

    Returns:
        The class names (from ``train/``) and ``(path, label)`` for every image file of ``split``
        (a :class:`~minivit.data.scan.SampleTable`, indexable like a list of tuples).

    Raises:
        DataError: for a missing folder or split folder, no or a single class, empty class
            folders, val classes that train does not have, or a folder that cannot be read
            (saying why: permissions, a name too long, ...).
    """
    root = Path(root).expanduser()
    try:
        return _scan(root, normalize_split(split))
    except OSError as err:
        raise os_error(err, getattr(err, "filename", None) or root) from None


def _check_layout(root: Path, split: str) -> tuple[list[str], list[str]]:
    """The train classes and ``split``'s class folder names, after the layout checks."""
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist", hint=LAYOUT_HINT)
    for name in ("train", "val"):
        if not (root / name).is_dir():
            raise DataError(f"'{root}' has no '{name}/' sub-folder", hint=LAYOUT_HINT)
    classes = sub_folders(root / "train")
    split_classes = classes if split == "train" else sub_folders(root / "val")
    if not split_classes:
        loose = any(is_image_name(name) for name in os.listdir(root / split))
        raise DataError(
            f"'{root / split}' has no class sub-folders" + (" (its images lie directly in it)" if loose else ""),
            hint=f"put each class's images in their own folder, e.g. {split}/<class name>/image.png",
        )
    if len(classes) == 1:
        raise DataError(
            f"'{root / 'train'}' has only one class ('{classes[0]}'); classification needs at least two",
            hint="add one sub-folder of images per class",
        )
    unknown = [name for name in split_classes if name not in classes]
    if unknown:
        raise DataError(
            f"'{root / 'val'}' has classes that train/ does not: {', '.join(repr(u) for u in unknown)}",
            hint="val/ classes must be a subset of train/ classes; rename or remove those folders",
        )
    return classes, split_classes


def _scan(root: Path, split: str) -> tuple[list[str], SampleTable]:
    classes, split_classes = _check_layout(root, split)
    base = root / split
    # Reserve the root, both splits and every class folder: a link to any of them is not walked.
    visited = {folder_key(p) for p in (root, root / "train", root / "val")}
    visited |= {folder_key(base / name) for name in split_classes}
    label_of = {name: i for i, name in enumerate(classes)}
    links: list[str] = []
    empty: list[Path] = []

    def items():
        for name in split_classes:
            count = 0
            for rel in walk_images(str(base / name), visited, links, prefix=name + os.sep):
                count += 1
                yield rel, label_of[name]
            if not count:
                empty.append(base / name)

    table = SampleTable.build(base, items())
    if links:
        warnings.warn(
            f"skipped {len(links)} folder link(s) in '{base}' that lead to a folder already scanned "
            f"(a loop or a second path to the same images), e.g. {_show(links, 2)}; remove them to silence this",
            stacklevel=4,
        )
    if empty:
        raise DataError(
            f"class folder(s) without images: {_show(empty)}",
            hint=f"add images ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}) or remove the folder",
        )
    return classes, table


class ImageFolderDataset(ImageDataset):
    """An image folder split (see the module docstring for the layout and the rules).

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: "train" or "val" ("test" is an alias of "val").
        img_size, in_chans: the model's input size and channels, preprocessed as
            :func:`~minivit.data.config.legacy_data_config` says; or give ``data_config``.
        train_augment: with ``img_size``/``in_chans``: a random flip and a small random shift.
        limit: keep only this many samples, class-balanced (see
            :func:`~minivit.data.base.stratified_first_n`).
        data_config: the model's preprocessing; images go through timm's transform for it.
        augment: timm's training augmentation with these options (None: the eval transform).
        verify: test-decode every file now (True), never (False), or when the split has at most
            :data:`VERIFY_MAX_FILES` files (None).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        img_size: ImgSize | None = None,
        in_chans: int | None = None,
        *,
        train_augment: bool = False,
        limit: int | None = None,
        data_config: DataConfig | None = None,
        augment: AugmentConfig | None = None,
        verify: bool | None = None,
    ):
        light = LightAugment(padding_mode="reflect") if train_augment and data_config is None else None
        root = Path(root).expanduser()
        super().__init__(
            [], img_size=img_size, in_chans=in_chans, augment=light, name=str(root), data_config=data_config
        )
        limit = check_limit(limit)
        self.root = root
        self.split = normalize_split(split)
        self.classes, table = scan_image_folder(root, self.split)
        if verify or (verify is None and len(table) <= VERIFY_MAX_FILES):
            table = self._verified(table)
        else:
            self.skipped = []
        self.samples: SampleTable = table.subset(stratified_first_n(table.labels, limit))
        self.broken: dict[str, str] = {}
        """Files that failed while fetching samples in this process, with the reason."""
        config = self.data_config
        if config.in_chans not in (1, 3):
            chans = len(open_image(self.samples.path(0), 3).getbands()) if len(self.samples) else 3
            raise DataError(
                f"cannot convert {chans}-channel images to in_chans={config.in_chans}",
                hint="use in_chans=1 (grey) or in_chans=3 (RGB)",
            )
        self.transform = create_image_transform(config, augment)
        self.random = augment is not None or light is not None
        self._fetch(0, None)  # fail now, not in the first batch, if nothing decodes

    def _verified(self, table: SampleTable) -> SampleTable:
        failures = _check_decodable([table.path(i) for i in range(len(table))])
        bad = [(table.path(i), why) for i, why in enumerate(failures) if why]
        self.skipped: list[Path] = [path for path, _ in bad]
        good = np.flatnonzero([why is None for why in failures])
        where = self.root / self.split
        if not len(good):
            raise DataError(
                f"none of the {len(bad)} image files in '{where}' could be decoded or read",
                hint="check that they are real, complete, readable images (not empty, truncated or renamed files)",
            )
        if bad:
            parts = []
            for why in ("could not be decoded", "cannot be read"):
                paths = [path for path, reason in bad if reason == why]
                if paths:
                    suffix = " (permission denied)" if why == "cannot be read" else ""
                    parts.append(f"{len(paths)} {why}{suffix}, e.g. {_show(paths, 2)}")
            warnings.warn(
                f"skipped {len(bad)} of {len(table)} image files in '{where}': {'; '.join(parts)}; "
                "delete, fix or replace them to silence this",
                stacklevel=3,
            )
        return table.subset(good)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return self.samples.labels.tolist()

    def sample_id(self, index: int) -> str:
        return str(self.samples.path(index))

    def _fetch(self, index: int, seed: int | None) -> Sample:
        """Sample ``index`` transformed, a file that fails replaced by the next good one."""
        for step in range(len(self.samples)):
            candidate = (index + step) % len(self.samples)
            path, label = self.samples[candidate]
            if str(path) in self.broken:
                continue
            try:
                image = open_image(path, self.data_config.in_chans)
            except Exception as err:  # PIL raises many types; OSError for unreadable files
                self._note_broken(path, err)
                continue
            return apply_transform(self.transform, image, seed), label
        raise DataError(
            f"no image in '{self.root / self.split}' can be decoded or read",
            hint="check that the files are real, complete, readable images",
        )

    def _note_broken(self, path: Path, err: Exception) -> None:
        denied = isinstance(err, PermissionError)
        why = "permission denied" if denied else f"{type(err).__name__}: {err}"
        if not self.broken:
            warnings.warn(
                f"cannot {'read' if denied else 'decode'} '{path}' ({why}); it is replaced by another sample, "
                "and so is any other broken file met from now on (listed in dataset.broken); delete or fix them",
                stacklevel=4,
            )
        self.broken[str(path)] = why

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        indices = [range(len(self.samples))[i] for i in indices]  # IndexError, negative indices as lists
        seeds = sample_seeds(self._generator if self.random else None, len(indices))
        with single_thread():
            out = [self._fetch(index, seed) for index, seed in zip(indices, seeds)]
        if self.pipeline.augment is not None:  # the light augmentation of train_augment=True
            batch = self.pipeline.augment(torch.stack([x for x, _ in out]), self._generator)
            out = [(x, label) for x, (_, label) in zip(batch.unbind(0), out)]
        return out
