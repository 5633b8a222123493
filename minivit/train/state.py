"""Training checkpoints: written atomically, read back exactly.

A checkpoint is one ``torch.save`` file holding everything a run needs to continue as if it had
never stopped: the objective's weights (student and any learned loss parameters, never the
teacher), optimizer, scheduler and grad-scaler states, the position (epoch, batches done, optimizer
step), the metrics so far, the run's configuration and every process's RNG states.

Writes go through :func:`minivit.io.atomic_write` (a temporary file in the same folder, ``fsync``,
rename), so at any moment (``kill -9`` included) ``last.pt`` is either the previous complete
checkpoint or the new complete one; a failed write (full disk, permissions) raises one
:class:`~minivit.errors.CheckpointError` line and keeps the previous checkpoint. ``best.pt`` is a hard
link to the ``last.pt`` of the best epoch (a copy where links are not supported).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..io.atomic import atomic_write, clean_stale, commit, staging, write_failure
from ..io.unpickle import load_weights_only

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


LEGACY_TEMP = (f".{LAST}.*.tmp", f".{BEST}.*.tmp", f".{BEST}.link")
"""Temporary names of checkpoint writes before :mod:`minivit.io.atomic`; cleaned like its own."""


def save_checkpoint(folder: Path, state: dict, best: bool = False) -> Path:
    """Write ``state`` to ``folder/last.pt`` atomically; also make it ``best.pt`` when ``best``."""
    folder = Path(folder)
    last = folder / LAST
    clean_stale(folder, LEGACY_TEMP)  # left by a run killed mid-write (SIGTERM/SIGKILL); never read
    atomic_write(last, lambda f: torch.save({"format": FORMAT, **state}, f), error=CheckpointError)
    if best:
        _link_best(folder, last)
    return last


def _link_best(folder: Path, last: Path) -> None:
    """``best.pt`` becomes a hard link to ``last.pt`` (a copy where links are not supported), atomically."""
    with staging(folder, BEST, error=CheckpointError) as tmp:
        try:
            try:
                os.link(last, tmp / BEST)
            except OSError:
                shutil.copyfile(last, tmp / BEST)
        except OSError as e:
            raise write_failure(e, folder / BEST, cls=CheckpointError) from None
        commit([(tmp / BEST, folder / BEST)], error=CheckpointError)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain types only)."""
    path = Path(path)
    try:
        state = load_weights_only(path, "the file is damaged; delete it to restart")
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minivit training checkpoint", "delete it or choose another --output")
    return state
