"""Which intermediate features a backbone returns: timm's ``indices`` convention, shared by both families."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError


def take_indices(count: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """``(absolute indices, largest index)`` of the features to return out of ``count``, as timm reads
    ``indices``: ``None`` all, an int the last ``n``, a sequence those positions (negative from the end)."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ConfigError(f"cannot take the last {indices} of {count} features", f"use 1 to {count}")
        taken = list(range(count - indices, count))
    else:
        taken = []
        for i in indices:
            j = count + i if i < 0 else i
            if not 0 <= j < count:
                raise ConfigError(f"feature index {i} is out of range for {count} features", f"use 0 to {count - 1}")
            taken.append(j)
    return taken, max(taken)
