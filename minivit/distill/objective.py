"""Training objectives: what the engine minimises, one batch at a time.

An objective is an ``nn.Module`` that owns the network being trained (``objective.model``) and
everything its loss needs (a frozen teacher, feature hooks, a learned projection). The engine only
calls ``objective(batch)`` and reads back a dict::

    {"loss": <scalar to backpropagate>, "<term>": <detached scalar>, ...}

It optimises ``objective.parameters()`` (the student, plus any learned loss parameters; never the
teacher), evaluates and saves ``objective.model``. A batch is ``(images, targets)`` or, when teacher
logits were cached once, ``(images, targets, teacher_logits)``; ``targets`` are class indices or
soft (mixup/cutmix) distributions.

* :class:`SupervisedObjective`: cross-entropy (optionally label-smoothed), for plain training.
* :class:`DistillationObjective`: MiniViT's weight distillation (METHOD.md section 3)::

      L = alpha * CE(z_s, y) + (1 - alpha) * softCE(z_s / T, z_t / T) + beta * L_attn + gamma * L_hid

  The losses come from :mod:`minivit.distill.losses` (model-agnostic); the features they need
  are read by :class:`~minivit.distill.hooks.FeatureCapture` forward hooks on the mapped layers of
  student and teacher. A term whose weight is 0 registers no hook and costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .config import HIDDEN_RELATION_SCALE, DistillConfig, as_distill_config, number_in
from .hooks import FeatureCapture, num_layers
from .losses import (
    HiddenProjectionMSE,
    attention_relation_loss,
    hard_cross_entropy,
    hidden_relation_loss,
    soft_cross_entropy,
)
from .mapping import layer_mapping

__all__ = ["SupervisedObjective", "DistillationObjective", "HIDDEN_RELATION_SCALE"]


class SupervisedObjective(nn.Module):
    """Cross-entropy of ``model(images)`` against the targets (class indices or soft targets)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = number_in(label_smoothing, "label_smoothing", 0.0, 0.999)

    def forward(self, batch: Sequence[Tensor]) -> dict[str, Tensor]:
        images, targets = batch[0], batch[1]
        loss = hard_cross_entropy(self.model(images), targets, self.label_smoothing)
        return {"loss": loss, "ce": loss.detach()}


class DistillationObjective(nn.Module):
    """MiniViT's distillation loss for a student and a frozen teacher.

    Args:
        student: the network being trained (``objective.model``).
        teacher: the frozen teacher; kept in eval mode, run under ``no_grad``, never optimised and
            not part of this module's parameters or ``state_dict`` (but moved by ``.to()``).
        config: a :class:`~minivit.distill.config.DistillConfig` (weights, terms, layer mapping,
            hidden loss); keyword ``options`` override its fields. The keyword form of earlier
            versions works too: ``alpha``, ``temperature``, ``beta`` (0: no qkv hooks), ``gamma``
            (0: no block hooks), ``logits`` (``False``: no soft CE), ``student_layers``,
            ``teacher_layers``, ``num_pairs`` (see :func:`~minivit.distill.mapping.layer_mapping`;
            default one pair, the last blocks, as MiniLMv2), ``num_relation_heads`` and ``hidden``
            (``"relation"``, the paper's Gram-matrix MSE, or ``"projection"``, MSE after a learned
            linear projection trained with the student).
        label_smoothing: for the hard-label CE with integer targets (a training option).

    ``forward(batch)`` returns ``{"loss", "ce", "kd", "attn", "hidden"}`` (only the enabled terms,
    each detached except ``loss``). With cached teacher logits (a third batch element) and no
    feature term, the teacher is not run at all.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        config: DistillConfig | dict | None = None,
        *,
        label_smoothing: float = 0.0,
        **options,
    ):
        super().__init__()
        config = as_distill_config(config, **options)
        self.config = config
        self.model = student
        # Not a registered submodule: no teacher weights in parameters(), state_dict() or DDP.
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self.alpha, self.temperature = config.alpha, config.temperature
        self.beta, self.gamma, self.kd_weight = config.attn_weight, config.hidden_weight, config.kd_weight
        self.label_smoothing = number_in(label_smoothing, "label_smoothing", 0.0, 0.999)
        self.num_relation_heads = config.num_relation_heads
        s_out = getattr(student, "num_classes", None)
        t_out = getattr(teacher, "num_classes", None)
        if s_out is not None and t_out is not None and s_out != t_out and (self.kd_weight > 0):
            raise ConfigError(
                f"student has {s_out} classes but the teacher has {t_out}", "logit distillation needs the same classes"
            )

        self.pairs: list[tuple[int, int]] = []
        self.projection = None
        self._captures: list[FeatureCapture] = []
        if self.beta > 0 or self.gamma > 0:
            n_s, n_t = num_layers(student), num_layers(teacher)
            num_pairs, s_layers, t_layers = config.num_pairs, config.student_layers, config.teacher_layers
            if num_pairs is None and s_layers is None and t_layers is None:
                num_pairs = 1  # the last blocks (MiniLMv2); the authors' Mini-Swin used 6 of 12: pass lists
            self.pairs = layer_mapping(
                n_s, n_t, num_pairs, None if s_layers is None else list(s_layers),
                None if t_layers is None else list(t_layers),
            )  # fmt: skip
            s_idx, t_idx = [s for s, _ in self.pairs], [t for _, t in self.pairs]
            want = dict(qkv=self.beta > 0, hidden=self.gamma > 0)
            self.student_features = FeatureCapture(student, s_idx, **want)
            self.teacher_features = FeatureCapture(teacher, t_idx, **want)
            self._captures = [self.student_features, self.teacher_features]
            if self.gamma > 0 and config.hidden_loss == "projection":
                self.projection = HiddenProjectionMSE(_width(student), _width(teacher))

    @property
    def needs_teacher_features(self) -> bool:
        return self.beta > 0 or self.gamma > 0

    def _apply(self, fn, recurse=True):  # .to(device) / .half() move the (unregistered) teacher too
        self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def remove_hooks(self) -> None:
        """Detach the feature hooks from both models (the objective is unusable afterwards)."""
        for c in self._captures:
            c.remove()
        self._captures = []

    def forward(self, batch: Sequence[Tensor]) -> dict[str, Tensor]:
        images, targets = batch[0], batch[1]
        cached = batch[2] if len(batch) > 2 else None
        for c in self._captures:
            c.clear()
        teacher_logits = cached
        if (cached is None and self.kd_weight > 0) or self.needs_teacher_features:
            with torch.no_grad():
                out = self.teacher(images)
            teacher_logits = out if cached is None else cached
        student_logits = self.model(images)

        terms: dict[str, Tensor] = {}
        if self.alpha > 0:
            terms["ce"] = self.alpha * hard_cross_entropy(student_logits, targets, self.label_smoothing)
        if self.kd_weight > 0:
            terms["kd"] = self.kd_weight * soft_cross_entropy(student_logits, teacher_logits, self.temperature)
        if self.beta > 0:
            terms["attn"] = self.beta * attention_relation_loss(
                self.student_features.qkv, self.teacher_features.qkv, self.num_relation_heads
            )
        if self.gamma > 0:
            s_hid, t_hid = self.student_features.hidden, self.teacher_features.hidden
            hid = self.projection(s_hid, t_hid) if self.projection is not None else hidden_relation_loss(s_hid, t_hid)
            terms["hidden"] = self.gamma * hid
        for c in self._captures:
            c.clear()  # do not keep activations alive until the next step
        loss = sum(terms.values())
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}


def _width(model: nn.Module) -> int:
    """Token width of a constant-width model (ViT/DeiT ``embed_dim``), for the hidden projection."""
    width = getattr(model, "embed_dim", None)
    if isinstance(width, int) and not isinstance(width, bool):
        return width
    raise ConfigError(
        f"the projection hidden loss needs a constant-width model, {type(model).__name__} has none",
        "use hidden='relation' (widths may differ per layer)",
    )
