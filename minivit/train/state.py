"""Training checkpoints: written atomically, read back exactly.

A checkpoint is one ``torch.save`` file holding everything a run needs to continue as if it had
never stopped: the objective's weights (student and any learned loss parameters, never the
teacher), optimizer, scheduler and grad-scaler states, the position (epoch, batches done, optimizer
step), the metrics so far, the run's configuration and every process's RNG states.

Writes go to a temporary file in the same folder, are flushed to disk (``fsync``) and renamed over
the old file, so at any moment (``kill -9`` included) ``last.pt`` is either the previous complete
checkpoint or the new complete one. ``best.pt`` is a hard link to the ``last.pt`` of the best
epoch (a copy where links are not supported).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError

LAST, BEST = "last.pt", "best.pt"
FORMAT = 1


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states, in types ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """random.setstate needs tuples where a round trip may have produced lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, fsync, rename over ``path``.

    On any failure (disk full, permissions) the temporary file is removed, ``path`` keeps its old
    content and :class:`~minivit.errors.CheckpointError` says what happened.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        old = "; the previous version is intact" if path.exists() else ""
        raise CheckpointError(
            f"cannot write {path}: {why}{old}",
            "make the folder writable or choose another --output"
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
            else "free some space or choose another --output",
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def save_checkpoint(folder: Path, state: dict, best: bool = False) -> Path:
    """Write ``state`` to ``folder/last.pt`` atomically; also make it ``best.pt`` when ``best``."""
    folder = Path(folder)
    last = folder / LAST
    for stale in [*folder.glob(f".{LAST}.*.tmp"), *folder.glob(f".{BEST}.*.tmp"), folder / f".{BEST}.link"]:
        with contextlib.suppress(OSError):  # left by a run killed mid-write (SIGTERM/SIGKILL); never read
            os.unlink(stale)
    atomic_write(last, lambda f: torch.save({"format": FORMAT, **state}, f))
    if best:
        tmp = folder / f".{BEST}.link"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            try:
                os.link(last, tmp)
            except OSError:
                shutil.copyfile(last, tmp)
            os.replace(tmp, folder / BEST)
            _fsync_dir(folder)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CheckpointError(f"cannot write {folder / BEST}: {e.strerror or e}", "free some space") from None
    return last


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain types only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as e:  # truncated / corrupted / foreign file
        raise CheckpointError(
            f"cannot read checkpoint {path}: {e}", "the file is damaged; delete it to restart"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minivit training checkpoint", "delete it or choose another --output")
    return state
