"""Reading PyTorch pickles (``.pt``, ``.pth``) safely, with one short error line.

:func:`load_weights_only` is ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and
plain containers only, never code. A file holding other objects (a whole pickled model, a payload
calling ``os.system``) is refused with one line naming the first refused object and how to save the
file properly, instead of torch's multi-paragraph text (with terminal colour codes and a suggestion to
pass ``weights_only=False``, which would run the file's code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import CheckpointError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
SAVE_HINT = "save the weights only: torch.save(model.state_dict(), path) or minivit.save_pretrained(model, folder)"


def unpickling_error(error: BaseException, path: str | os.PathLike, damaged_hint: str) -> CheckpointError:
    """One line for a failed weights-only load of ``path``: refused objects, or a damaged file (``damaged_hint``)."""
    text = _ANSI.sub("", str(error))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found or "Weights only load failed" in text:
        what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        return CheckpointError(
            f"cannot read {path}: it holds {what}, and objects other than tensors are refused for safety "
            "(they could run code)",
            SAVE_HINT,
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return CheckpointError(f"cannot read {path}: {first[:300]}", damaged_hint)


def load_weights_only(path: str | os.PathLike, damaged_hint: str = "the file is corrupted or truncated") -> object:
    """``torch.load`` with ``weights_only=True`` on the CPU; failures raise :func:`unpickling_error`'s line."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's
        raise unpickling_error(e, path, damaged_hint) from None


__all__ = ["SAVE_HINT", "load_weights_only", "unpickling_error"]
