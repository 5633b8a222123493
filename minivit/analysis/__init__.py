"""Analysis of compressed models: layer-wise CKA, gradient norms, size/speed tables, plots and reports.

``plots`` (and so ``analyze``, ``write_report`` and ``plot_grad_norms``) needs matplotlib; the names
are imported on first use, so ``import minivit.analysis`` does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_NAMES = {
    "MinibatchCKA": ".cka",
    "linear_cka": ".cka",
    "minibatch_cka": ".cka",
    "analyze": ".compare",
    "layer_cka": ".compare",
    "markdown_table": ".compare",
    "model_row": ".compare",
    "GradNormLogger": ".grad_norms",
    "GradNormRecorder": ".grad_norms",
    "plot_grad_norms": ".grad_norms",
    "read_grad_norms": ".grad_norms",
    "plot_heatmap": ".plots",
    "plot_lines": ".plots",
    "plot_scatter_labelled": ".plots",
    "plot_tradeoff": ".plots",
    "read_metrics": ".report",
    "write_report": ".report",
}

__all__ = [
    "GradNormLogger",
    "GradNormRecorder",
    "MinibatchCKA",
    "analyze",
    "layer_cka",
    "linear_cka",
    "markdown_table",
    "minibatch_cka",
    "model_row",
    "plot_grad_norms",
    "plot_heatmap",
    "plot_lines",
    "plot_scatter_labelled",
    "plot_tradeoff",
    "read_grad_norms",
    "read_metrics",
    "write_report",
]

if TYPE_CHECKING:
    from .cka import MinibatchCKA, linear_cka, minibatch_cka
    from .compare import analyze, layer_cka, markdown_table, model_row
    from .grad_norms import GradNormLogger, GradNormRecorder, plot_grad_norms, read_grad_norms
    from .plots import plot_heatmap, plot_lines, plot_scatter_labelled, plot_tradeoff
    from .report import read_metrics, write_report


__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
