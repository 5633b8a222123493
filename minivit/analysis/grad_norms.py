"""Per-layer gradient l2 norms, the paper's diagnosis of naive weight sharing.

For layer ``l`` the recorded value is ``||dL/dθ_l||_2``, where ``θ_l`` are the weights layer ``l``
*uses*. A layer's own parameters (its norms, transforms, position tables; every parameter of an
unshared timm block) contribute their ``.grad``. A weight shared by ``k`` layers receives the sum
of ``k`` contributions in ``.grad``; the recorder separates them: for every ``nn.Linear`` inside a
shared block it keeps each call's input and output gradient and adds ``||g_outᵀ x||²`` (+ the bias
term) to the layer that made the call. Shared parameters outside Linear layers (the shared
LayerNorms of naive sharing, Swin's relative position bias table) are left out of the split.

That costs about one extra matrix product per shared Linear per layer, so it is only done on the
steps that are recorded (``every``): call :meth:`arm` before the forward of a step and
:meth:`collect` after its backward; on other steps both return at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..core import Multiplexed


def _layer_groups(model: nn.Module) -> list[tuple[nn.Module | None, list[nn.Module]]]:
    """``(shared_module or None, [layer modules])`` in forward order."""
    groups = [(m.shared, list(m.layers)) for m in model.modules() if isinstance(m, Multiplexed)]
    if groups:
        return groups
    from ..distill.hooks import layer_points

    return [(None, [p.hidden]) for p in layer_points(model)]  # unshared: the block is the layer


class GradNormRecorder:
    """Record per-layer gradient norms every ``every`` optimisation steps."""

    def __init__(self, model: nn.Module, every: int = 10):
        self.every = max(1, int(every))
        self.groups = _layer_groups(model)
        self.num_layers = sum(len(layers) for _, layers in self.groups)
        self.history: list[dict] = []
        self._handles: list = []
        self._sq: list[float] = []
        self._armed = False

    def arm(self, step: int) -> bool:
        """Start separating shared-weight gradients for this step if it is a recorded one."""
        if step % self.every != 0:
            return False
        if not self._armed:
            self._sq = [0.0] * self.num_layers
            first = 0
            for shared, layers in self.groups:
                if shared is not None:
                    for lin in (m for m in shared.modules() if isinstance(m, nn.Linear)):
                        self._handles.append(lin.register_forward_hook(self._linear_hook(first, len(layers))))
                first += len(layers)
            self._armed = True
        return True

    def _linear_hook(self, first: int, k: int):
        calls = [0]

        def hook(module: nn.Linear, inputs, output):
            if not torch.is_grad_enabled() or not output.requires_grad:
                return
            layer = first + calls[0] % k
            calls[0] += 1
            x = inputs[0].detach().reshape(-1, module.in_features)
            has_bias = module.bias is not None

            def grad_hook(g):
                g = g.detach().reshape(-1, module.out_features).float()
                sq = (g.t() @ x.float()).square().sum()
                if has_bias:
                    sq = sq + g.sum(0).square().sum()
                self._sq[layer] += float(sq)

            output.register_hook(grad_hook)

        return hook

    @torch.no_grad()
    def collect(self, step: int) -> list[float] | None:
        """After backward: finish the step's per-layer norms (``None`` on steps not recorded)."""
        if not self._armed:
            return None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._armed = False
        sq = list(self._sq)
        i = 0
        for _, layers in self.groups:
            for layer in layers:
                for p in layer.parameters():
                    if p.grad is not None:
                        sq[i] += float(p.grad.detach().float().square().sum())
                i += 1
        norms = [v**0.5 for v in sq]
        self.history.append({"step": int(step), "grad_norms": norms})
        return norms

    def write_jsonl(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")
        self.history.clear()
        return path


def read_grad_norms(path: str | os.PathLike) -> tuple[list[int], list[list[float]]]:
    steps, norms = [], []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            steps.append(row["step"])
            norms.append(row["grad_norms"])
    return steps, norms


def plot_grad_norms(runs: dict[str, str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Per-layer gradient norms of one or more runs (name -> grad_norms.jsonl) as PNGs.

    Writes ``grad_norms_per_layer.png`` (each run's norm per layer, median over the recorded steps,
    with the spread across steps as a band-free min/max pair of lines) and one
    ``grad_norms_<run>.png`` heatmap per run (layer x step).
    """
    import numpy as np

    from .plots import plot_heatmap, plot_lines

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series, written = {}, []
    for name, path in runs.items():
        steps, norms = read_grad_norms(path)
        arr = np.asarray(norms)  # (steps, layers)
        layers = list(range(1, arr.shape[1] + 1))
        series[f"{name} (median)"] = (layers, np.median(arr, 0))
        series[f"{name} (max)"] = (layers, arr.max(0))
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        written.append(
            plot_heatmap(
                np.log10(arr.T + 1e-12),
                f"Gradient l2-norm per layer over training: {name}",
                "training step",
                "layer",
                out_dir / f"grad_norms_{safe}.png",
                xticklabels=[str(s) for s in steps],
                yticklabels=[str(i) for i in layers],
                colorbar_label="log10 gradient l2-norm",
            )
        )
    written.insert(
        0,
        plot_lines(
            series, "Gradient l2-norm of each layer", "layer", "gradient l2-norm",
            out_dir / "grad_norms_per_layer.png", logy=True,
        ),
    )
    return written


class GradNormLogger:
    """A training-engine callback: records every ``every`` steps and appends to ``path`` (JSON lines).

    The engine calls it after backward; it collects the step it armed and arms the next recorded
    step, so only recorded steps pay for the per-layer split.
    """

    def __init__(self, path: str | os.PathLike, every: int = 10):
        self.path = Path(path)
        self.every = every
        self.recorder: GradNormRecorder | None = None

    def __call__(self, ctx) -> None:
        if self.recorder is None:  # first call: the model exists now; this step was not armed
            self.recorder = GradNormRecorder(ctx.model, self.every)
        elif self.recorder.collect(ctx.step) is not None and ctx.accelerator.is_main_process:
            self.recorder.write_jsonl(self.path)
        self.recorder.history.clear()
        self.recorder.arm(ctx.step + 1)
