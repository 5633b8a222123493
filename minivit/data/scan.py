"""List the files of an image folder fast, once each, without decoding anything.

* :func:`walk_images` walks a class folder with ``os.scandir`` (no ``stat`` per file), follows
  folder links but enters every folder once: folders are keyed by ``(st_dev, st_ino)``, so a link
  back to a folder already walked (``self -> .``, ``up -> ..``, a link into another class) is
  skipped and reported instead of being walked again, and a scan never loops.
* :class:`SampleTable` stores ``(path, label)`` pairs as one byte buffer plus offsets: about 40
  bytes per image instead of a Python ``Path`` and tuple each (~300 bytes), and no per-item
  reference counts for forked loader workers to copy.
* Errors name their cause: a folder that cannot be read is a permission problem, a name too long
  for the file system says so, and so on (:func:`os_error`).
"""

from __future__ import annotations

import errno
import os
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from minivit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

_HINTS = {
    errno.EACCES: "make it readable (e.g. chmod -R a+rX on the folder) or remove it",
    errno.EPERM: "make it readable (e.g. chmod -R a+rX on the folder) or remove it",
    errno.ENAMETOOLONG: "shorten the file or folder names (most file systems allow 255 bytes per name)",
    errno.ELOOP: "a chain of symbolic links loops; remove or fix the link",
    errno.ENOENT: "the file or folder disappeared or is a broken link; fix or remove it",
    errno.EIO: "the disk reported an I/O error; check the storage",
}


def os_error(err: OSError, path: str | os.PathLike, what: str = "read") -> DataError:
    """A :class:`DataError` for an ``OSError`` met on ``path``, with a hint that fits its cause."""
    reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err)).lower()
    hint = _HINTS.get(err.errno or 0, "check the path and its permissions")
    return DataError(f"cannot {what} '{path}': {reason}", hint=hint)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def folder_key(path: str | os.PathLike) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of a folder (links followed): the same for every path to it."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def sub_folders(folder: str | os.PathLike) -> list[str]:
    """Names of the non-hidden sub-folders of ``folder`` (links followed), sorted."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e))
    except OSError as err:
        raise os_error(err, folder) from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a broken or looping link
        return False


def walk_images(folder: str, visited: set[tuple[int, int]], links: list[str], prefix: str = "") -> Iterator[str]:
    """Image files below ``folder``, as ``prefix`` + their path relative to ``folder``, in a stable
    order (a folder's own files by name, then its sub-folders by name, depth first).

    ``visited`` holds the keys of folders already walked (or reserved, like the class folders);
    a sub-folder whose key is in it is not entered and its path is appended to ``links``.
    """
    stack = [(folder, prefix)]
    while stack:
        current, rel = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise os_error(err, current) from None
        children = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                try:
                    key = folder_key(entry.path)
                except OSError as err:
                    raise os_error(err, entry.path) from None
                if key in visited:
                    links.append(entry.path)
                    continue
                visited.add(key)
                children.append((entry.path, f"{rel}{entry.name}/"))
            elif is_image_name(entry.name):
                yield rel + entry.name
        stack.extend(reversed(children))


class SampleTable(Sequence):
    """``(Path, label)`` pairs stored compactly: relative paths in one byte buffer, labels in an array.

    Indexing gives ``(Path, int)`` like a list of tuples; :attr:`labels` is an int64 array.
    """

    def __init__(self, base: str | os.PathLike, blob: bytes, offsets: np.ndarray, labels: np.ndarray):
        self.base = os.fspath(base)
        self._blob = np.frombuffer(blob, dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob
        self._offsets = offsets
        self.labels = labels

    @classmethod
    def build(cls, base: str | os.PathLike, items: Iterator[tuple[str, int]]) -> SampleTable:
        blob, ends, labels = bytearray(), array("q"), array("q")
        for rel, label in items:
            blob += os.fsencode(rel)
            ends.append(len(blob))
            labels.append(label)
        offsets = np.zeros(len(ends) + 1, dtype=np.int64)
        offsets[1:] = np.frombuffer(ends, dtype=np.int64) if len(ends) else []
        return cls(base, bytes(blob), offsets, np.frombuffer(labels, dtype=np.int64).copy())

    def __len__(self) -> int:
        return len(self.labels)

    def relative(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.fsdecode(self._blob[start:end].tobytes())

    def path(self, index: int) -> Path:
        return Path(self.base, self.relative(index))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        index = range(len(self))[index]  # IndexError and negative indices as for lists
        return self.path(index), int(self.labels[index])

    def subset(self, indices: np.ndarray) -> SampleTable:
        """The rows ``indices`` (sorted ascending keeps the order) as a new table."""
        if len(indices) == len(self):
            return self
        return SampleTable.build(self.base, ((self.relative(i), int(self.labels[i])) for i in indices))
