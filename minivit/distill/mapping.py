"""Which student block is distilled from which teacher block.

:func:`layer_mapping` returns 0-based ``(student_index, teacher_index)`` pairs in forward order.

Explicit lists are used as given (after validation). Otherwise the pairs are spread evenly with
the *last* block of each model always paired: for a model of depth ``D`` and ``k`` pairs, pair
``i`` (``i = 0 .. k-1``) uses block ::

    floor((i + 1) * D / k) - 1

i.e. the model is cut into ``k`` (near-)equal consecutive chunks and the last block of each
chunk is taken. Examples: depth 12, 6 pairs -> ``[1, 3, 5, 7, 9, 11]``; depth 24, 6 pairs ->
``[3, 7, 11, 15, 19, 23]``; depth 12, 4 pairs -> ``[2, 5, 8, 11]``; depth 12, 5 pairs ->
``[1, 3, 6, 8, 11]``. The indices are strictly increasing whenever ``k <= D``.

The authors' Mini-Swin-T from a 24-block Swin-B uses the explicit mapping student
``[1, 3, 5, 7, 9, 11]`` with teacher ``[1, 3, 9, 15, 21, 23]``, which is *not* the even spread;
pass it with ``student_layers=`` / ``teacher_layers=``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from minivit.errors import MinivitError

__all__ = ["layer_mapping", "even_layers"]


def _check_depth(depth, name: str) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise MinivitError(f"{name} must be a positive integer, got {depth!r}")
    return depth


def even_layers(depth: int, num: int) -> list[int]:
    """``num`` block indices of a ``depth``-block model, evenly spread, ending at ``depth - 1``."""
    _check_depth(depth, "depth")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise MinivitError(f"number of layer pairs must be a positive integer, got {num!r}")
    if num > depth:
        raise MinivitError(
            f"cannot pick {num} distinct blocks from a model with {depth} blocks",
            hint=f"use at most {depth} layer pairs or give the layer lists explicitly",
        )
    return [(i + 1) * depth // num - 1 for i in range(num)]


def _check_layers(layers, depth: int, who: str) -> list[int]:
    try:
        if isinstance(layers, (str, bytes, dict)):
            raise TypeError
        layers = list(layers)  # lists, tuples, ranges, numpy arrays, 1-d tensors
    except TypeError:
        raise MinivitError(
            f"{who}_layers must be a list of block indices, got {type(layers).__name__}"
        ) from None
    out = []
    for pos, idx in enumerate(layers):
        try:
            if isinstance(idx, bool):
                raise TypeError
            idx = operator.index(idx)  # int, numpy / torch integer scalars; not floats or bools
        except TypeError:
            raise MinivitError(f"{who}_layers[{pos}] must be an integer block index, got {idx!r}") from None
        if not 0 <= idx < depth:
            raise MinivitError(
                f"{who}_layers[{pos}] = {idx} is out of range for a {depth}-block {who}",
                hint=f"block indices are 0-based: 0 .. {depth - 1}",
            )
        if out and idx <= out[-1]:
            raise MinivitError(
                f"{who}_layers[{pos}] = {idx} is not after {who}_layers[{pos - 1}] = {out[-1]}",
                hint="list the blocks in forward order, each at most once",
            )
        out.append(idx)
    if not out:
        raise MinivitError(f"{who}_layers is empty", hint="give at least one block index")
    return out


def layer_mapping(
    student_depth: int,
    teacher_depth: int,
    num_pairs: int | None = None,
    student_layers: Sequence[int] | None = None,
    teacher_layers: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """0-based ``(student_block, teacher_block)`` pairs to distil, in forward order.

    - Both ``student_layers`` and ``teacher_layers`` given: validated (same length, each index in
      ``0 .. depth-1``, strictly increasing) and zipped.
    - Only one list given: the other side is spread evenly (see the module docstring) with as
      many pairs as the list has entries.
    - Neither given: both sides are spread evenly with ``num_pairs`` pairs (default
      ``min(student_depth, teacher_depth)``); the last blocks are always paired.

    ``num_pairs``, if given together with lists, must equal their length.
    Every mistake raises :class:`~minivit.errors.MinivitError` naming the offending index.
    """
    _check_depth(student_depth, "student_depth")
    _check_depth(teacher_depth, "teacher_depth")
    s = None if student_layers is None else _check_layers(student_layers, student_depth, "student")
    t = None if teacher_layers is None else _check_layers(teacher_layers, teacher_depth, "teacher")
    if s is not None and t is not None and len(s) != len(t):
        raise MinivitError(
            f"student_layers has {len(s)} entries but teacher_layers has {len(t)}",
            hint="the lists are paired position by position, so they need the same length",
        )
    given = s if s is not None else t
    if num_pairs is not None:
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise MinivitError(f"num_pairs must be a positive integer, got {num_pairs!r}")
        if given is not None and num_pairs != len(given):
            raise MinivitError(f"num_pairs={num_pairs} but the layer lists have {len(given)} entries")
    n = len(given) if given is not None else (num_pairs or min(student_depth, teacher_depth))
    if s is None:
        s = even_layers(student_depth, n)
    if t is None:
        t = even_layers(teacher_depth, n)
    return list(zip(s, t))
