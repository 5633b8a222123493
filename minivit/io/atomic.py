"""Atomic writes: every file minivit writes appears complete or not at all.

* :func:`atomic_write` writes one file: a temporary file in the same folder, flushed and ``fsync``-ed,
  renamed over the target, then the folder itself is ``fsync``-ed. At any moment (``kill -9`` included)
  the target is either its previous complete version or the new complete one.
* :func:`atomic_folder` writes a set of files (``model.safetensors`` + ``config.json``): they are staged
  in a temporary folder inside the target's parent folder (same file system), then the staged folder is
  renamed into place; when the target folder already exists (a run folder holding other files) they
  are staged inside it and each staged file is renamed onto its name in it, in a stated order (the file
  readers look at first last).
* :func:`staging` + :func:`commit` are the two halves of :func:`atomic_folder`, for writers that stage
  several candidates and choose which files to keep (the exporters).

Temporary names start with :data:`TEMP_PREFIX` and carry the writer's process id. A process killed
mid-write leaves them behind; :func:`clean_stale` (called by every writer on the folder it writes into)
removes those whose process no longer runs, so a temporary file of a live writer is never touched.

Every failure (``OSError``, the ``RuntimeError`` that ``torch.save`` raises on a full disk,
``SafetensorError``) becomes one :class:`~minivit.errors.WriteError` line naming the cause (no space
left on the device / permission denied / read-only file system / the error's own words) and what was
kept (``the previous version is intact``); no temporary file is left.

Files are written with mode ``0644`` (``rw-r--r--``) whatever the process umask, like the model files
of a Hub download; folders created for them get ``0755``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import MinivitError, WriteError

TEMP_PREFIX = ".minivit-tmp-"
"""Every temporary file or folder of a writer is named ``.minivit-tmp-<pid>-<target name>-<random>``."""
FILE_MODE = 0o644
DIR_MODE = 0o755
WRITE_HINT = {
    "no space left on the device": "free some space or choose another --output",
    "permission denied": "make the folder writable or choose another --output",
    "read-only file system": "choose another --output on a writable file system",
}
_TEXT_CAUSES = (
    (("No space left", "os error 28", "ENOSPC"), "no space left on the device"),
    (("Permission denied", "os error 13", "Operation not permitted", "os error 1)"), "permission denied"),
    (("Read-only file system", "os error 30"), "read-only file system"),
)
_ERRNO_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "no space left on the device",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a folder on its path is a file",
    errno.EISDIR: "it is a folder",
}


# ----------------------------------------------------------------------------------------- failures


def failure_cause(error: BaseException, folder: str | os.PathLike | None = None) -> str:
    """What made a write fail, in a few words: no space / permission denied / read-only / the error's text.

    ``OSError`` is read by its ``errno``; ``SafetensorError`` and others by their text (``os error 28``).
    ``torch.save`` on a full disk raises a bare ``RuntimeError`` (``unexpected pos ...``): when the
    error says nothing useful and ``folder``'s file system has no free space left, that is the cause.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:  # the real OSError may sit in __cause__ / __context__
        seen.add(id(e))
        cause = _ERRNO_CAUSES.get(getattr(e, "errno", None) or 0)
        if cause:
            return cause
        text = str(e)
        for needles, cause in _TEXT_CAUSES:
            if any(n in text for n in needles):
                return cause
        e = e.__cause__ or e.__context__
    if folder is not None and _disk_full(Path(folder)):
        return "no space left on the device"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _disk_full(folder: Path) -> bool:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def write_failure(
    error: BaseException, target: str | os.PathLike, kept: str | None = None, *, cls: type[MinivitError] = WriteError
) -> MinivitError:
    """The one-line error for a failed write of ``target``: ``cannot write T: <cause>[; <kept>] (<hint>)``.

    ``kept`` says what is left; by default ``the previous version is intact`` when ``target`` exists
    (nothing is said of a new target: nothing of it was written). ``cls`` is the
    :class:`MinivitError` subclass to raise.
    """
    target = Path(target)
    if isinstance(error, MinivitError):
        return error
    cause = failure_cause(error, target.parent)
    if kept is None and target.exists():
        kept = "the previous version is intact"
    message = f"cannot write {target}: {cause}" + (f"; {kept}" if kept else "")
    return cls(message, WRITE_HINT.get(cause, "choose another --output"))


# ----------------------------------------------------------------------------------------- helpers


def _temp_prefix(name: str) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{name}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else (or cannot tell): keep its files
        return True
    return True


def clean_stale(folder: str | os.PathLike, patterns: Iterable[str] = ()) -> list[Path]:
    """Remove temporary files/folders in ``folder`` left by writers that no longer run; return them.

    Only entries named ``.minivit-tmp-<pid>-...`` whose process is gone are removed (a live writer's
    are kept), plus any entry matching one of the glob ``patterns`` (names an older version used).
    A missing folder is fine.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    extra = {p for pattern in patterns for p in folder.glob(pattern)}
    for entry in entries:
        stale = entry in extra
        if entry.name.startswith(TEMP_PREFIX):
            pid = entry.name[len(TEMP_PREFIX) :].split("-", 1)[0]
            stale = pid.isdigit() and not _alive(int(pid))
        if stale:
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry)
    return removed


def fsync_dir(folder: str | os.PathLike) -> None:
    """``fsync`` a folder so that renames in it survive a power cut (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_dirs(folder: Path) -> None:
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        os.chmod(d, DIR_MODE)


class _RecordingFile:
    """A file object that remembers the ``OSError`` of a failed ``write`` (``torch.save`` hides it)."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


# ----------------------------------------------------------------------------------------- writers


def atomic_write(
    path: str | os.PathLike,
    data: bytes | str | Callable[[IO[bytes]], object],
    *,
    kept: str | None = None,
    error: type[MinivitError] = WriteError,
) -> Path:
    """Write ``data`` to ``path`` atomically (mode 0644); returns ``path``.

    ``data`` is bytes, text (UTF-8) or a function called with a binary file object
    (``lambda f: torch.save(obj, f)``). Parent folders are created. On any failure the temporary file
    is removed, ``path`` keeps its old content, and ``error`` (a :class:`MinivitError` subclass) is
    raised as :func:`write_failure` describes; ``kept`` overrides its "what is left" part.
    """
    path = Path(path)
    tmp, f = None, None
    try:
        _make_dirs(path.parent)
        clean_stale(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), dir=path.parent)
        with os.fdopen(fd, "wb") as raw:
            f = _RecordingFile(raw)
            if callable(data):
                data(f)  # type: ignore[arg-type]
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fchmod(raw.fileno(), FILE_MODE)
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - writers raise OSError, RuntimeError (torch.save), SafetensorError...
        cause = f.error if f is not None and f.error is not None else e
        raise write_failure(cause, path, kept, cls=error) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


@contextlib.contextmanager
def staging(parent: str | os.PathLike, name: str, *, error: type[MinivitError] = WriteError) -> Iterator[Path]:
    """A temporary folder inside ``parent`` (created with its parents) for files about to be committed.

    Always removed on exit. Failing to create it raises ``error`` (:func:`write_failure`).
    """
    parent = Path(parent)
    try:
        _make_dirs(parent)
        clean_stale(parent)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(name), dir=parent))
    except OSError as e:
        raise write_failure(e, parent / name, cls=error) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(
    files: Sequence[tuple[str | os.PathLike, str | os.PathLike]], *, error: type[MinivitError] = WriteError
) -> list[Path]:
    """Move staged files onto their targets: each is set to mode 0644 and ``fsync``-ed, then renamed in order.

    Put the file readers open first (``config.json``, ``model.onnx``) last. Target folders are created.
    Returns the targets. A failure raises ``error``: targets not yet renamed keep their previous version.
    """
    pairs = [(Path(s), Path(d)) for s, d in files]
    done = 0
    try:
        for src, _ in pairs:
            os.chmod(src, FILE_MODE)
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
        for src, dst in pairs:
            _make_dirs(dst.parent)
            os.replace(src, dst)
            done += 1
        for folder in {dst.parent for _, dst in pairs}:
            fsync_dir(folder)
    except OSError as e:
        kept = "nothing was replaced" if done == 0 else f"{done} of {len(pairs)} files were replaced"
        raise write_failure(e, pairs[min(done, len(pairs) - 1)][1], kept, cls=error) from None
    return [dst for _, dst in pairs]


def _order(names: list[str], last: Sequence[str]) -> list[str]:
    tail = [n for n in last if n in names]
    return [n for n in sorted(names) if n not in tail] + tail


@contextlib.contextmanager
def atomic_folder(
    directory: str | os.PathLike, *, last: Sequence[str] = (), error: type[MinivitError] = WriteError
) -> Iterator[Path]:
    """Yield a staging folder; the files written at its top level end up in ``directory`` atomically.

    A new ``directory`` is the staged folder renamed into place (one step: all files or none). An
    existing one receives each staged file by rename, sorted by name with the names in ``last`` at
    the end, so a reader never sees a new ``config.json`` next to old weights when ``last=("config.json",)``.
    Sub-folders of the staging folder are not copied. A failure inside the ``with`` body or while
    committing raises ``error`` with :func:`write_failure`'s message and leaves no temporary file.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise error(f"cannot write {directory}: it is a file", "pass a folder path")
    # an existing folder (a run folder) stages inside itself: a killed writer leaves nothing in the parent
    with staging(directory if directory.is_dir() else directory.parent, directory.name, error=error) as tmp:
        try:
            yield tmp
        except (KeyboardInterrupt, SystemExit, MinivitError):
            raise
        except Exception as e:  # noqa: BLE001 - OSError, SafetensorError, torch's RuntimeError ...
            raise write_failure(e, directory, cls=error) from None
        names = _order([p.name for p in tmp.iterdir() if p.is_file()], last)
        if not directory.exists():
            try:
                for n in names:
                    os.chmod(tmp / n, FILE_MODE)
                    with open(tmp / n, "rb") as fh:
                        os.fsync(fh.fileno())
                for sub in tmp.iterdir():
                    if sub.is_dir():
                        shutil.rmtree(sub)
                os.chmod(tmp, DIR_MODE)
                os.rename(tmp, directory)
                fsync_dir(directory.parent)
                return
            except OSError as e:
                if not directory.exists():  # else it was created meanwhile: go on file by file
                    raise write_failure(e, directory, cls=error) from None
        commit([(tmp / n, directory / n) for n in names], error=error)
