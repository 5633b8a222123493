"""Image folders: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>``.

* Classes are the sub-folders of ``train/`` (sorted; hidden folders ignored); ``val/`` may hold
  any subset of them. Images may sit in nested folders below their class folder.
* Extensions png, jpg, jpeg, bmp, gif, tif, tiff and webp are read, in any letter case; other
  and hidden files (``.DS_Store``, ``._x.jpg``) are ignored.
* Every file is test-decoded when the dataset is built (in a few threads, JPEGs at reduced
  scale). Files that fail, zero-byte ones included, are skipped with one warning giving their
  count; if none decodes, :class:`DataError` is raised. A file that breaks later, while
  training, is replaced by the next good sample with a warning instead of stopping the run.
* Any PIL mode is handled: palette and alpha images are composited over black, 16-bit and 32-bit
  grey images are scaled to their full range, CMYK/YCbCr/... are converted to RGB. The image is
  then converted to the model's channels and size by :class:`~minivit.data.pipeline.ImagePipeline`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minivit.data.base import ImageDataset, Sample, check_limit, normalize_split, stratified_first_n
from minivit.data.pipeline import ImgSize, LightAugment
from minivit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
LAYOUT_HINT = "an image folder needs train/ and val/ sub-folders, each with one sub-folder per class"
_GREY_HIGH_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _show(paths: Sequence[Path], limit: int = 3) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def class_folders(split_dir: Path) -> list[Path]:
    """The non-hidden sub-folders of ``split_dir``, sorted by name."""
    return sorted(
        (p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, following links), in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in sorted(filenames) if is_image_file(Path(f))]
    return found


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


def load_image(path: Path, draft_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to ``[C, H, W]`` (see :func:`pil_to_array`); raises on any failure.

    ``draft_size`` (``(height, width)``) lets JPEGs decode at a reduced scale no smaller than it.
    """
    with Image.open(path) as img:
        if draft_size is not None and img.format == "JPEG":
            img.draft(img.mode, (draft_size[1], draft_size[0]))
        img.load()
        return pil_to_array(img)


def _decodes(path: Path) -> bool:
    """Whether ``path`` decodes fully (JPEGs at 1/8 scale, which still reads the whole stream)."""
    try:
        if path.stat().st_size == 0:
            return False
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (1, 1))
            img.load()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return False


def _check_decodable(paths: list[Path]) -> list[bool]:
    if len(paths) < 32:
        return [_decodes(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(_decodes, paths, chunksize=16))


def scan_image_folder(root: str | os.PathLike, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Validate the layout of ``root`` and list ``split``'s files without decoding them.

    Returns:
        The class names (from ``train/``) and ``(path, label)`` for every image file of ``split``.

    Raises:
        DataError: for a missing folder or split folder, no or a single class, empty class
            folders, or val classes that train does not have.
    """
    try:
        return _scan(Path(root).expanduser(), normalize_split(split))
    except OSError as err:  # unreadable folders (permissions, broken links, ...)
        raise DataError(
            f"cannot read image folder '{root}': {err}", hint="check the folder's permissions"
        ) from None


def _scan(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist", hint=LAYOUT_HINT)
    for name in ("train", "val"):
        if not (root / name).is_dir():
            raise DataError(f"'{root}' has no '{name}/' sub-folder", hint=LAYOUT_HINT)
    train_classes = class_folders(root / "train")
    classes = [p.name for p in train_classes]
    split_classes = train_classes if split == "train" else class_folders(root / "val")
    if not split_classes:
        loose = any(is_image_file(p) for p in (root / split).iterdir())
        raise DataError(
            f"'{root / split}' has no class sub-folders"
            + (" (its images lie directly in it)" if loose else ""),
            hint=f"put each class's images in their own folder, e.g. {split}/<class name>/image.png",
        )
    if len(classes) == 1:
        raise DataError(
            f"'{root / 'train'}' has only one class ('{classes[0]}'); classification needs at least two",
            hint="add one sub-folder of images per class",
        )
    unknown = [p.name for p in split_classes if p.name not in classes]
    if unknown:
        raise DataError(
            f"'{root / 'val'}' has classes that train/ does not: {', '.join(repr(u) for u in unknown)}",
            hint="val/ classes must be a subset of train/ classes; rename or remove those folders",
        )
    label_of = {name: i for i, name in enumerate(classes)}
    samples, empty = [], []
    for folder in split_classes:
        files = list_images(folder)
        if not files:
            empty.append(folder)
        samples += [(path, label_of[folder.name]) for path in files]
    if empty:
        raise DataError(
            f"class folder(s) without images: {_show(empty)}",
            hint=f"add images ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}) or remove the folder",
        )
    return classes, samples


class ImageFolderDataset(ImageDataset):
    """An image folder split (see the module docstring for the layout and the rules).

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: "train" or "val" ("test" is an alias of "val").
        img_size, in_chans: the model's input size and channels.
        train_augment: random flip and a small random shift (reflect padding).
        limit: keep only this many samples, class-balanced (see
            :func:`~minivit.data.base.stratified_first_n`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        img_size: ImgSize,
        in_chans: int,
        *,
        train_augment: bool = False,
        limit: int | None = None,
    ):
        augment = LightAugment(padding_mode="reflect") if train_augment else None
        root = Path(root).expanduser()
        super().__init__([], img_size=img_size, in_chans=in_chans, augment=augment, name=str(root))
        limit = check_limit(limit)
        self.root = root
        self.split = normalize_split(split)
        self.classes, samples = scan_image_folder(root, self.split)
        ok = _check_decodable([path for path, _ in samples])
        bad = [path for (path, _), good in zip(samples, ok) if not good]
        samples = [sample for sample, good in zip(samples, ok) if good]
        if not samples:
            raise DataError(
                f"none of the {len(bad)} image files in '{root / self.split}' could be decoded",
                hint="check that they are real, complete images (not empty, truncated or renamed files)",
            )
        if bad:
            warnings.warn(
                f"skipped {len(bad)} of {len(bad) + len(samples)} image files in '{root / self.split}' that "
                f"could not be decoded (e.g. {_show(bad, 2)}); delete or replace them to silence this",
                stacklevel=2,
            )
        keep = stratified_first_n([label for _, label in samples], limit)
        self.samples: list[tuple[Path, int]] = [samples[i] for i in keep]
        self.skipped: list[Path] = bad
        self._broken: set[int] = set()
        self.pipeline(torch.from_numpy(self._decode(0)[0][None]))  # fail now if channels cannot convert

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def _decode(self, index: int) -> tuple[np.ndarray, int]:
        """Decode sample ``index``, replacing a file that has become unreadable by the next good one."""
        for step in range(len(self.samples)):
            candidate = (index + step) % len(self.samples)
            if candidate in self._broken:
                continue
            path, label = self.samples[candidate]
            try:
                return load_image(path, self.img_size), label
            except Exception as err:  # the file changed or a truncation only the full decode sees
                self._broken.add(candidate)
                warnings.warn(f"cannot decode '{path}' ({err}); using another sample instead", stacklevel=3)
        raise DataError(f"no image in '{self.root / self.split}' can be decoded any more")

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        out = []
        for index in indices:
            index = range(len(self.samples))[index]  # IndexError and negative indices as for lists
            array, label = self._decode(index)
            out.append((self.pipeline(torch.from_numpy(array[None]), self._generator)[0], label))
        return out
