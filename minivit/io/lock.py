"""One writer per output folder: an exclusive lock held for the whole of a run or an export.

:func:`lock_output` takes ``fcntl.flock`` on ``FOLDER/.minivit.lock`` (the file holds the holder's
process id and command) and keeps it until the ``with`` block ends. A second writer is refused at
once with one :class:`OutputInUse` line naming the live holder's process id. The kernel drops a
``flock`` when its process dies, however it dies (``kill -9`` included), so a lock file left by a
killed process is stale by construction: the next writer simply takes it.

On release the lock file is removed; a folder the lock created and that is still empty (the run
failed on its input before writing anything) is removed too, so a mistake leaves nothing behind.
Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import MinivitError
from .atomic import write_failure

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, no protection
    fcntl = None

LOCK_NAME = ".minivit.lock"


class OutputInUse(MinivitError):
    """Another live process writes the same output folder."""


def holder(folder: str | os.PathLike) -> str | None:
    """What the lock file in ``folder`` says about its holder (``pid 123: minivit train``), or ``None``."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(errors="replace").strip()
    except OSError:
        return None
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return None
    return f"pid {pid}" + (f": {command}" if command else "")


def _created_dirs(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _acquire(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; :class:`OutputInUse` when held elsewhere."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = holder(path.parent) or "another process"
            raise OutputInUse(
                f"{path.parent} is being written by another minivit run ({who})",
                "wait for it to finish, or choose another --output",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def lock_output(folder: str | os.PathLike, command: str = "") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block; yields the folder.

    Raises :class:`OutputInUse` (one line, with the holder's pid) when another live process holds
    it, and a :class:`~minivit.errors.WriteError` when the folder cannot be created or written.
    """
    folder = Path(folder).expanduser()
    if fcntl is None:
        yield folder
        return
    if folder.exists() and not folder.is_dir():
        raise MinivitError(f"cannot write into {folder}: it is a file", "choose a folder")
    created = _created_dirs(folder)
    path = folder / LOCK_NAME
    try:
        for d in reversed(created):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)  # like every folder minivit creates, whatever the umask
        fd = _acquire(path)
    except OSError as e:
        _remove_empty(created)
        raise write_failure(e, path) from None
    except BaseException:
        _remove_empty(created)
        raise
    try:
        with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk does not stop the run
            os.fchmod(fd, 0o644)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {command or ' '.join(['minivit', *sys.argv[1:2]])}\n".encode())
        yield folder
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before unlocking: a waiting writer that opened it re-checks and locks a new file
        os.close(fd)
        _remove_empty(created)


def locks_output(command: str, argument: str = "output"):
    """Decorate a function that writes the folder passed as its ``argument``: it runs under :func:`lock_output`.

    In a multi-process run only the main process (``RANK`` 0 or unset) takes the lock; the others
    write nothing of their own into the folder.
    """

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            folder = signature.bind_partial(*args, **kwargs).arguments.get(argument)
            main = os.environ.get("RANK", "0") == "0"
            with lock_output(folder, command) if main and folder is not None else contextlib.nullcontext():
                return fn(*args, **kwargs)

        return locked

    return wrap


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first; stops at the first folder that holds something
        try:
            d.rmdir()
        except OSError:
            return


__all__ = ["LOCK_NAME", "OutputInUse", "holder", "lock_output", "locks_output"]
