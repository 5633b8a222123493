"""Fashion-MNIST from the original IDX ``.gz`` files, located locally or downloaded once.

The four files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; uncompressed copies without the
``.gz`` work too) are looked for, in order, in

1. the folder passed explicitly (``build_dataset("/path/to/folder", ...)``),
2. ``$MINIVIT_DATA`` and ``$MINIVIT_DATA/fashion-mnist``,
3. ``/usr/share/datasets/fashion-mnist``,
4. the cache, ``$MINIVIT_CACHE/fashion-mnist`` (``MINIVIT_CACHE`` defaults to ``~/.cache/minivit``),

and, failing all of these, downloaded into the cache from the canonical Zalando mirror with MD5
verification (set ``MINIVIT_OFFLINE=1`` or pass ``download=False`` to never try). The whole set is
held in memory as ``uint8`` tensors (about 55 MB) and converted to the model's size and channels
batch-wise with torch ops.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from minivit.data.base import TensorImageDataset, in_memory_split, normalize_split
from minivit.data.idx import read_idx
from minivit.data.pipeline import ImgSize
from minivit.errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
"""MD5 of each published file; checked on download only (local copies may be re-compressed)."""
FASHION_MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}
"""MD5 of each file's uncompressed content: a mirror that re-compressed the files is accepted too."""
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBDIR = "fashion-mnist"

urlopen = urllib.request.urlopen
"""The opener used for downloads (a module attribute so tests can replace it)."""


def cache_dir() -> Path:
    """Where Fashion-MNIST is downloaded: ``$MINIVIT_CACHE/fashion-mnist`` (default ``~/.cache/minivit``)."""
    root = os.environ.get("MINIVIT_CACHE") or Path.home() / ".cache" / "minivit"
    return Path(root).expanduser() / SUBDIR


def search_dirs() -> list[Path]:
    """The folders searched for the four files, in order (explicit paths come before these)."""
    dirs = []
    if env := os.environ.get("MINIVIT_DATA"):
        dirs += [Path(env).expanduser(), Path(env).expanduser() / SUBDIR]
    return [*dirs, SYSTEM_DIR, cache_dir()]


def _file_in(folder: Path, name: str) -> Path | None:
    """``folder/name``, or its uncompressed twin without ``.gz``, if either exists."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def has_fashion_mnist(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds all four Fashion-MNIST files."""
    folder = Path(folder)
    return folder.is_dir() and all(_file_in(folder, name) for name in FASHION_MNIST_MD5)


def has_some_fashion_mnist(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds at least one of the four Fashion-MNIST files."""
    folder = Path(folder)
    return folder.is_dir() and any(_file_in(folder, name) for name in FASHION_MNIST_MD5)


def find_fashion_mnist(explicit: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding the four files: ``explicit``, then :func:`search_dirs`. Never downloads."""
    candidates = [Path(explicit).expanduser()] if explicit is not None else []
    for folder in candidates + search_dirs():
        if has_fashion_mnist(folder):
            return folder
    return None


def _how_to_provide() -> str:
    looked = ", ".join(str(d) for d in search_dirs())
    return (
        f"looked in: {looked}; put the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in one of these folders, set MINIVIT_DATA to "
        "their folder, pass that folder as the dataset, or use the built-in 'digits' dataset"
    )


def _md5(data_path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with data_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_content(path: Path, raw_md5: str | None) -> bool:
    """Whether the gzip file ``path`` decompresses to content with MD5 ``raw_md5``."""
    if raw_md5 is None:
        return False
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return digest.hexdigest() == raw_md5


def _download_file(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream ``url`` to a temporary file beside ``dest``, check its MD5, then rename it atomically."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        found = _md5(tmp)
        if found != md5 and not _same_content(tmp, FASHION_MNIST_RAW_MD5.get(dest.name)):
            raise DataError(
                f"Fashion-MNIST was not found locally and the download of {url} is corrupt "
                f"(MD5 {found}, expected {md5})",
                hint=f"retry later, or {_how_to_provide()}",
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_fashion_mnist(
    dest: str | os.PathLike | None = None, base_url: str = FASHION_MNIST_URL, timeout: float = 30.0
) -> Path:
    """Download the missing Fashion-MNIST files into ``dest`` (default :func:`cache_dir`).

    Each file is written to a temporary file, checked against :data:`FASHION_MNIST_MD5` and only
    then renamed into place, so an interrupted or corrupted download leaves nothing behind.

    Raises:
        DataError: when a download fails or a checksum does not match.
    """
    folder = Path(dest).expanduser() if dest is not None else cache_dir()
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, md5 in FASHION_MNIST_MD5.items():
            if not (folder / name).is_file():
                _download_file(base_url.rstrip("/") + "/" + name, folder / name, md5, timeout)
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if isinstance(err, DataError):
            raise
        reason = getattr(err, "reason", None) or err
        raise DataError(
            f"Fashion-MNIST was not found locally and downloading it from {base_url} failed ({reason})",
            hint=_how_to_provide(),
        ) from None
    return folder


def locate_fashion_mnist(explicit: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find the files (see :func:`find_fashion_mnist`) or download them into the cache.

    Downloading is skipped when ``download`` is false or the environment sets ``MINIVIT_OFFLINE=1``.
    """
    if explicit is not None and not has_fashion_mnist(explicit):
        missing = [n for n in FASHION_MNIST_MD5 if not _file_in(Path(explicit), n)]
        raise DataError(
            f"{explicit} does not hold the Fashion-MNIST files (missing: {', '.join(missing)})",
            hint="put all four idx .gz files in that folder",
        )
    folder = find_fashion_mnist(explicit)
    if folder is not None:
        return folder
    offline = os.environ.get("MINIVIT_OFFLINE", "").strip().lower() in {"1", "true", "yes"}
    if not download or offline:
        raise DataError("Fashion-MNIST was not found locally and downloading is disabled", hint=_how_to_provide())
    return download_fashion_mnist()


FALLBACK_HINT = (
    "set MINIVIT_DATA to a folder holding the four Fashion-MNIST .gz files, or install the Debian package "
    f"dataset-fashion-mnist ({SYSTEM_DIR})"
)


def fetch_fashion_mnist(
    log=None, *, base_url: str = FASHION_MNIST_URL, timeout: float = 30.0, download: bool = True
) -> Path | None:
    """The Fashion-MNIST folder for the demo: found locally, or downloaded (checksummed) into the cache.

    Offline (the download fails, ``download`` is false or ``MINIVIT_OFFLINE=1``) it returns None
    and passes one line to ``log`` saying that the demo falls back to the built-in digits and how
    to get the real data. Never raises for a missing network.
    """
    try:
        folder = find_fashion_mnist()
        if folder is None:
            if not download or os.environ.get("MINIVIT_OFFLINE", "").strip().lower() in {"1", "true", "yes"}:
                raise DataError("downloading is disabled")
            folder = download_fashion_mnist(base_url=base_url, timeout=timeout)
        return folder
    except DataError as err:
        reason = err.message.split(" failed (")[-1].rstrip(")") if " failed (" in err.message else err.message
        if log is not None:
            log(
                f"Fashion-MNIST is not available offline and could not be downloaded ({reason}); "
                f"falling back to the built-in digits; to use Fashion-MNIST, {FALLBACK_HINT}"
            )
        return None


@functools.lru_cache(maxsize=4)
def _load_split_cached(images_path: Path, labels_path: Path, _stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    fix = "delete the file and download it again"
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{images_path}/{labels_path.name}: expected uint8 IDX data", hint=fix)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels", hint=fix)
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path}: label {labels.max()} is out of range 0..9", hint=fix)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist_tensors(folder: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of ``split`` ("train" or "val").

    Parsed files are cached in memory (keyed by path, size and modification time).
    """
    folder = Path(folder)
    paths = []
    for name in SPLIT_FILES[normalize_split(split)]:
        path = _file_in(folder, name)
        if path is None:
            raise DataError(f"{folder / name} not found", hint="the folder must hold all four Fashion-MNIST files")
        paths.append(path.resolve())
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load_split_cached(paths[0], paths[1], stamp)


def load_fashion_mnist(
    split: str,
    img_size: ImgSize | None = None,
    in_chans: int | None = None,
    *,
    root: str | os.PathLike | None = None,
    download: bool = True,
    **options,
) -> TensorImageDataset:
    """Fashion-MNIST as a :class:`TensorImageDataset` ("val" is the official 10k test set), from ``root`` or
    found (and downloaded when ``download``) as :func:`locate_fashion_mnist` does. ``options``:
    ``train_augment``, ``augment``, ``limit``, ``data_config`` (see :func:`~minivit.data.base.in_memory_split`).
    """
    tensors = load_fashion_mnist_tensors(locate_fashion_mnist(root, download=download), split)
    return in_memory_split(
        tensors, FASHION_MNIST_CLASSES, split, name="fashion-mnist", img_size=img_size, in_chans=in_chans, **options
    )
