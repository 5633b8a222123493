"""Window geometry of hierarchical (Swin) models: per-stage token grids, windows, shifts and shift masks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import to_2tuple
from timm.models.swin_transformer import window_partition
from torch import Tensor

from ..errors import ConfigError

MASK_VALUE = -100.0  # as timm and the authors (a large negative logit, not -inf)


def per_stage(value, num_stages: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            hint = "give one per stage or a single int"
            raise ConfigError(f"{what} has {len(value)} entries for {num_stages} stages", hint)
        return list(value)
    return [value] * num_stages


def resolve_window_sizes(window_size, num_stages: int) -> list[tuple[int, int]]:
    """An int, an (h, w) pair (with more than two stages), or one int / (h, w) per stage."""
    if isinstance(window_size, (list, tuple)) and len(window_size) == 2 and num_stages != 2:
        if all(isinstance(w, int) for w in window_size):
            window_size = [tuple(window_size)] * num_stages
    sizes = [to_2tuple(w) for w in per_stage(window_size, num_stages, "window_size")]
    for s, ws in enumerate(sizes):
        if len(ws) != 2 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in ws):
            raise ConfigError(f"window size {ws!r} of stage {s} is not a positive int or (h, w) pair", "e.g. 7")
    return [tuple(ws) for ws in sizes]


def _fits_1d(size: int, patch: int, windows: Sequence[int]) -> bool:
    if size <= 0 or size % patch:
        return False
    res = size // patch
    for s, w in enumerate(windows):
        if s > 0:
            if res % 2:
                return False
            res //= 2
        if res > w and res % w:
            return False
    return True


def _size_hint(size: int, patch: int, windows: Sequence[int]) -> str:
    below = next((n for n in range(size - 1, 0, -1) if _fits_1d(n, patch, windows)), None)
    above = next((n for n in range(size + 1, 8 * size + 64) if _fits_1d(n, patch, windows)), None)
    near = " or ".join(str(n) for n in (below, above) if n is not None)
    return f"nearest image sizes that fit: {near}" if near else "change the patch or window size"


def stage_geometry(img_size, patch_size, window_sizes: Sequence[tuple[int, int]]) -> list[dict]:
    """Per stage: token grid ``resolution``, ``window`` and ``shift`` (both (h, w)); ConfigError if it can't fit.

    As timm: a window larger than the grid shrinks to the grid and then does not shift. As the authors' code
    requires: the patch size divides the image, every stage's grid is tiled by its windows exactly and patch
    merging halves even sides (no padding).
    """
    img, patch = to_2tuple(img_size), to_2tuple(patch_size)
    out = []
    for d in range(2):
        win_1d = [ws[d] for ws in window_sizes]
        if not _fits_1d(img[d], patch[d], win_1d):
            side = "height" if d == 0 else "width"
            raise ConfigError(
                f"image {side} {img[d]} does not fit patch size {patch[d]}, {len(window_sizes)} stages and windows "
                f"{win_1d} (each stage's token grid must be tiled by its windows)",
                _size_hint(img[d], patch[d], win_1d),
            )
    res = (img[0] // patch[0], img[1] // patch[1])
    for s, ws in enumerate(window_sizes):
        if s > 0:
            res = (res[0] // 2, res[1] // 2)
        window = tuple(r if r <= w else w for r, w in zip(res, ws))
        shift = tuple(0 if r <= w else w // 2 for r, w in zip(res, window))
        out.append(dict(resolution=res, window=window, shift=shift))
    return out


def shifted_window_mask(resolution, window, shift) -> Tensor | None:
    """(nW, N, N) additive mask keeping cyclically shifted windows from attending across image borders."""
    if not any(shift):
        return None
    h, w = resolution
    region = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            region[:, hs, ws, :] = cnt
            cnt += 1
    ids = window_partition(region, window).reshape(-1, window[0] * window[1])
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)
