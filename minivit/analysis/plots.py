"""Small matplotlib helpers for analysis reports (per-layer curves, CKA matrices, trade-offs).

Every helper draws one figure with a title and axis labels (and a legend when there are several
series), lays it out tightly, writes it as a PNG with :func:`minivit.io.atomic_write` (a reader never sees a
half-written image) and returns the path.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly rather than
through ``pyplot``: no display is needed, nothing is registered in pyplot's global figure list
(so nothing is left open), and the helpers are safe to call from worker threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from minivit.errors import MinivitError
from minivit.io.atomic import atomic_write

__all__ = ["plot_lines", "plot_heatmap", "plot_scatter_labelled", "plot_tradeoff"]

DPI = 120
_MARKER_MAX_POINTS = 40  # draw point markers on curves with at most this many points
_ANNOTATE_MAX_CELLS = 12  # write values into heatmap cells when both sides are at most this long
_MAX_TICKS = 25  # thin out tick labels beyond this many


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike, *, layout: bool = True) -> Path:
    """Tight layout, then write ``fig`` as a PNG to ``path`` atomically; always release the figure."""
    try:
        if layout:
            fig.tight_layout()
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    finally:
        fig.clear()


def _as_1d(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=float)
    except (TypeError, ValueError) as e:
        raise MinivitError(f"{what} must be a sequence of numbers") from e
    if arr.ndim != 1:
        raise MinivitError(f"{what} must be 1-D, got shape {arr.shape}")
    return arr


def _set_ticks(axis_set_ticks, axis_set_labels, labels: Sequence[Any] | None, count: int, what: str) -> None:
    if labels is None:
        return
    if len(labels) != count:
        raise MinivitError(f"{what} has {len(labels)} labels for {count} rows/columns")
    step = max(1, math.ceil(count / _MAX_TICKS))
    positions = list(range(0, count, step))
    axis_set_ticks(positions)
    axis_set_labels([str(labels[i]) for i in positions])


def plot_lines(
    series: Mapping[str, Any],
    title: str,
    xlabel: str,
    ylabel: str,
    path: str | os.PathLike,
    *,
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One line per entry of ``series``: ``name -> ys`` (x = 0, 1, ...) or ``name -> (xs, ys)``.

    NaN values leave gaps. A legend is drawn when there are two or more series.
    """
    if not series:
        raise MinivitError("plot_lines needs at least one series")
    fig = _new_figure((6.4, 4.2))
    ax = fig.add_subplot()
    integer_x = True
    for name, data in series.items():
        if isinstance(data, tuple) and len(data) == 2 and all(np.ndim(d) == 1 for d in data):
            xs = _as_1d(data[0], f"x values of series {name!r}")
            ys = _as_1d(data[1], f"y values of series {name!r}")
            if len(xs) != len(ys):
                fig.clear()
                raise MinivitError(f"series {name!r} has {len(xs)} x values but {len(ys)} y values")
        else:
            ys = _as_1d(data, f"series {name!r}")
            xs = np.arange(len(ys))
        integer_x = integer_x and bool(np.all(np.mod(xs, 1) == 0))
        marker = "o" if len(ys) <= _MARKER_MAX_POINTS else None
        ax.plot(xs, ys, marker=marker, markersize=4, linewidth=1.6, label=str(name))
    if integer_x:  # layers, epochs, steps: no fractional ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


def plot_heatmap(
    matrix: Any,
    title: str,
    xlabel: str,
    ylabel: str,
    path: str | os.PathLike,
    xticklabels: Sequence[Any] | None = None,
    yticklabels: Sequence[Any] | None = None,
    colorbar_label: str | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
    cmap: str = "magma",
) -> Path:
    """Heatmap of a 2-D ``matrix``: entry ``[i, j]`` is drawn at row ``i`` (y) and column ``j`` (x).

    Row 0 is at the bottom, as usual for layer-by-layer CKA plots. Cell values are written in the
    cells when ``annotate`` is true (default: when both sides have at most 12 entries). NaN cells
    are left blank.
    """
    m = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    if m.ndim != 2 or m.size == 0:
        raise MinivitError(f"plot_heatmap needs a non-empty 2-D matrix, got shape {m.shape}")
    rows, cols = m.shape
    side = min(7.5, max(4.0, 0.45 * max(rows, cols) + 2.5))
    fig = _new_figure((side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(m, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    if xticklabels is None and cols <= _MAX_TICKS:
        xticklabels = list(range(cols))
    if yticklabels is None and rows <= _MAX_TICKS:
        yticklabels = list(range(rows))
    try:
        _set_ticks(ax.set_xticks, ax.set_xticklabels, xticklabels, cols, "xticklabels")
        _set_ticks(ax.set_yticks, ax.set_yticklabels, yticklabels, rows, "yticklabels")
    except MinivitError:
        fig.clear()
        raise
    if xticklabels is not None and max((len(str(t)) for t in xticklabels), default=0) > 3:
        for lab in ax.get_xticklabels():
            lab.set_rotation(45)
            lab.set_horizontalalignment("right")
    if annotate is None:
        annotate = rows <= _ANNOTATE_MAX_CELLS and cols <= _ANNOTATE_MAX_CELLS
    if annotate:
        lo = np.nanmin(m) if vmin is None else vmin
        hi = np.nanmax(m) if vmax is None else vmax
        mid = (lo + hi) / 2 if np.isfinite(lo) and np.isfinite(hi) else 0.0
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(m[i, j]):
                    colour = "black" if m[i, j] > mid else "white"  # magma: dark at low values
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


# Where to try putting a point's label, in order: (dx, dy) in points, horizontal, vertical alignment.
_LABEL_SPOTS = [
    (5, 3, "left", "bottom"),
    (5, -3, "left", "top"),
    (-5, 3, "right", "bottom"),
    (-5, -3, "right", "top"),
    (0, 7, "center", "bottom"),
    (0, -7, "center", "top"),
    (5, 12, "left", "bottom"),
    (5, -12, "left", "top"),
    (-5, 12, "right", "bottom"),
    (-5, -12, "right", "top"),
]


def _overlap_area(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(fig: Figure, ax, xs: np.ndarray, ys: np.ndarray, labels: list[str]) -> None:
    """Write each label next to its point, at the first spot that overlaps no other label or point."""
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    marker_r = 4.0 * fig.dpi / 72.0
    points = [to_px((x, y)) for x, y in zip(xs, ys)]
    point_boxes = [Bbox.from_extents(px - marker_r, py - marker_r, px + marker_r, py + marker_r) for px, py in points]
    axes_box = ax.get_window_extent(renderer)
    placed = []
    legend = ax.get_legend()
    if legend is not None:
        placed.append(legend.get_window_extent(renderer))
    for idx, (x, y, label) in enumerate(zip(xs, ys, labels)):
        best = None
        for dx, dy, ha, va in _LABEL_SPOTS:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8)
            box = text.get_window_extent(renderer)
            clash = sum(_overlap_area(box, other) for other in placed)
            clash += sum(_overlap_area(box, pb) for j, pb in enumerate(point_boxes) if j != idx)
            outside = box.width * box.height - _overlap_area(box, axes_box)
            cost = clash + outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


def _check_xy(xs: np.ndarray, ys: np.ndarray, logx: bool, what: str) -> None:
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise MinivitError(f"{what} needs finite x and y values")
    if logx and np.any(xs <= 0):
        raise MinivitError("logx=True needs positive x values", hint="drop logx or the non-positive points")


def plot_scatter_labelled(
    points: Sequence[tuple[float, float, str] | tuple[float, float, str, str]],
    title: str,
    xlabel: str,
    ylabel: str,
    path: str | os.PathLike,
    logx: bool = False,
) -> Path:
    """Scatter of ``(x, y, label)`` points with each label written next to its point.

    Meant for trade-off plots such as accuracy against parameter count (``logx=True``). A point may
    carry a fourth element, a group name (e.g. ``"original"`` / ``"compressed"``): groups get their
    own colour and a legend. Labels are nudged so that they do not cover each other or other points.
    """
    if not points:
        raise MinivitError("plot_scatter_labelled needs at least one point")
    try:
        xs = np.array([float(p[0]) for p in points])
        ys = np.array([float(p[1]) for p in points])
        labels = [str(p[2]) for p in points]
        groups = [str(p[3]) if len(p) > 3 else "" for p in points]
    except (TypeError, ValueError, IndexError) as e:
        raise MinivitError("points must be (x, y, label) tuples with numeric x and y") from e
    _check_xy(xs, ys, logx, "plot_scatter_labelled")
    fig = _new_figure((6.8, 4.8))
    ax = fig.add_subplot()
    group_names = list(dict.fromkeys(groups))
    for g in group_names:
        sel = np.array([gi == g for gi in groups])
        ax.scatter(xs[sel], ys[sel], s=30, zorder=3, label=g or None)
    if logx:
        ax.set_xscale("log")
    _limits(ax, xs, ys, logx)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, which="both")
    if len(group_names) > 1:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()  # fix the axes' size first: labels are placed in pixel space
    _place_labels(fig, ax, xs, ys, labels)
    return _save(fig, path, layout=False)


def _limits(ax, xs: np.ndarray, ys: np.ndarray, logx: bool) -> None:
    """Axis limits with room on the right and top, so that labels of the outermost points stay inside."""
    if logx:
        lo, hi = np.log10(xs.min()), np.log10(xs.max())
        pad = 0.08 * (hi - lo) if hi > lo else 0.1
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + 2 * pad))
    else:
        lo, hi = xs.min(), xs.max()
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1.0)
        ax.set_xlim(lo - pad, hi + 2 * pad)
    ylo, yhi = ys.min(), ys.max()
    ypad = 0.08 * (yhi - ylo) if yhi > ylo else max(abs(yhi) * 0.05, 1.0)
    ax.set_ylim(ylo - ypad, yhi + 1.5 * ypad)


def plot_tradeoff(
    series: Mapping[str, Sequence[tuple[float, float, str]]],
    title: str,
    xlabel: str,
    ylabel: str,
    path: str | os.PathLike,
    logx: bool = False,
    front: Sequence[tuple[float, float]] | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Trade-off curves: each series (one method at several sizes, say) a line through its ``(x, y, label)``
    points in the order given (e.g. by size, so that a curve of latency follows the sizes), each point labelled
    with its own short label (e.g. its budget, "1/4").

    ``front``: points ``(x, y)`` of a Pareto front, drawn as a wide grey staircase (the best y available at
    each x) with those points ringed. ``styles``: matplotlib line keywords per series name (colour,
    ``linestyle``, ``marker``); unstyled series get the default colour cycle with round markers.
    """
    if not series or not any(len(pts) for pts in series.values()):
        raise MinivitError("plot_tradeoff needs at least one point")
    try:
        data = {name: [(float(p[0]), float(p[1]), str(p[2])) for p in pts] for name, pts in series.items()}
    except (TypeError, ValueError, IndexError) as e:
        raise MinivitError("series must map names to (x, y, label) tuples with numeric x and y") from e
    xs = np.array([p[0] for pts in data.values() for p in pts])
    ys = np.array([p[1] for pts in data.values() for p in pts])
    labels = [p[2] for pts in data.values() for p in pts]
    _check_xy(xs, ys, logx, "plot_tradeoff")
    fig = _new_figure((7.4, 5.2))
    ax = fig.add_subplot()
    if logx:
        ax.set_xscale("log")
    if front:
        f = sorted((float(x), float(y)) for x, y in front)
        fx, fy = [x for x, _ in f], [y for _, y in f]
        ax.step(fx, fy, where="post", color="0.55", lw=6, alpha=0.3, zorder=1, solid_capstyle="round",
                label="Pareto front")
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="0.3", linewidths=1.0, zorder=4)
    for name, pts in data.items():
        style = {"marker": "o", "markersize": 5, "linewidth": 1.3, **((styles or {}).get(name, {}))}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, zorder=3, **style)
    _limits(ax, xs, ys, logx)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()  # fix the axes' size first: labels are placed in pixel space
    _place_labels(fig, ax, xs, ys, labels)
    return _save(fig, path, layout=False)
