"""Distillation losses for MiniViT (METHOD.md section 3), in pure, model-agnostic torch.

Every function takes plain tensors (or lists of them, one entry per distilled layer pair) and
knows nothing about the models that produced them. Teacher tensors are always treated as
fixed targets: they are detached, so no gradient ever reaches the teacher.

All arithmetic runs in at least float32: half / bfloat16 inputs are cast up and autocast is
switched off inside the losses, so they are safe to call under mixed precision. Float64 inputs
stay float64.

Public API
----------
- :func:`soft_cross_entropy` -- ``mean(-sum softmax(t/T) * log_softmax(s/T))`` over the last axis.
- :func:`attention_relation_loss` -- MiniLMv2 self-attention relation loss over the 9 Q/K/V pairs.
- :func:`hidden_relation_loss` -- MSE between Gram matrices of L2-normalised hidden states.
- :func:`hard_cross_entropy` -- cross-entropy with integer or soft (mixup / cutmix) targets.
- :func:`logit_distillation_loss` -- ``alpha * CE(z_s, y) + (1 - alpha) * softCE(z_s/T, z_t/T)``.
- :class:`HiddenProjectionMSE` -- MSE after a learned linear projection of the student states.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minivit.errors import MinivitError

__all__ = [
    "soft_cross_entropy",
    "attention_relation_loss",
    "hidden_relation_loss",
    "hard_cross_entropy",
    "logit_distillation_loss",
    "HiddenProjectionMSE",
]

_QKV = ("Q", "K", "V")


# --------------------------------------------------------------------------- helpers


def _up(x: Tensor) -> Tensor:
    """Cast floating tensors narrower than float32 up to float32; leave others alone."""
    if x.is_floating_point() and torch.finfo(x.dtype).bits < 32:
        return x.float()
    return x


def _no_autocast(x: Tensor):
    """A context that disables autocast for ``x``'s device type (so float32 stays float32)."""
    try:
        return torch.autocast(device_type=x.device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


def _check_tensor(x, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise MinivitError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_floating(x: Tensor, what: str) -> Tensor:
    if not x.is_floating_point():
        raise MinivitError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise MinivitError(f"temperature must be a positive number, got {temperature!r}") from None
    if not (t > 0 and math.isfinite(t)):
        raise MinivitError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def _as_pair_lists(student, teacher, what: str) -> tuple[list, list]:
    """Accept a single item or a list/tuple of items per side; check the lengths agree."""
    if isinstance(student, Tensor):
        student = [student]
    if isinstance(teacher, Tensor):
        teacher = [teacher]
    if not isinstance(student, Sequence) or not isinstance(teacher, Sequence):
        raise MinivitError(f"{what}: student and teacher must be lists (one entry per layer pair)")
    student, teacher = list(student), list(teacher)
    if len(student) != len(teacher):
        raise MinivitError(
            f"{what}: got {len(student)} student entries but {len(teacher)} teacher entries",
            hint="pass one entry per distilled layer pair, in the same order for both models",
        )
    if not student:
        raise MinivitError(f"{what}: no layer pairs given (empty lists)")
    return student, teacher


def _check_tokens(s: Tensor, t: Tensor, what: str) -> None:
    """Both (B, N, C) with matching B and N (C may differ)."""
    if s.dim() != 3 or t.dim() != 3:
        raise MinivitError(
            f"{what}: expected (B, N, C) tensors, got student shape {tuple(s.shape)} "
            f"and teacher shape {tuple(t.shape)}"
        )
    if s.shape[0] != t.shape[0]:
        raise MinivitError(
            f"{what}: batch sizes differ (student {s.shape[0]}, teacher {t.shape[0]})",
            hint="feed the same batch to student and teacher",
        )
    if s.shape[1] != t.shape[1]:
        raise MinivitError(
            f"{what}: token counts differ (student {s.shape[1]}, teacher {t.shape[1]})",
            hint="relations are N x N, so both models must see the same tokens (same windows / patches)",
        )


# --------------------------------------------------------------------------- logits


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Soft-target cross-entropy ``mean(-sum softmax(t/T) * log_softmax(s/T))``.

    The sum runs over the last axis; the mean over every leading position, so (B, C) logits give
    the mean over samples and (B, heads, N, N) relations the mean over batch, heads and rows.
    There is no ``T**2`` factor. The teacher logits are detached (they are the target). When
    ``student == teacher`` the value is the entropy of the teacher distribution, its minimum.

    Returns a 0-dim float32 (or float64) tensor.
    """
    s = _check_floating(_check_tensor(student_logits, "student_logits"), "student_logits")
    t = _check_floating(_check_tensor(teacher_logits, "teacher_logits"), "teacher_logits")
    temp = _check_temperature(temperature)
    if s.shape != t.shape:
        raise MinivitError(
            f"soft_cross_entropy: student shape {tuple(s.shape)} differs from teacher shape {tuple(t.shape)}"
        )
    if s.dim() == 0 or s.numel() == 0:
        raise MinivitError(
            f"soft_cross_entropy: need a non-empty tensor with a class axis, got {tuple(s.shape)}"
        )
    with _no_autocast(s):
        s, t = _up(s), _up(t.detach())
        if s.dtype != t.dtype:
            dtype = torch.promote_types(s.dtype, t.dtype)
            s, t = s.to(dtype), t.to(dtype)
        if temp != 1.0:
            s, t = s / temp, t / temp
        target = torch.softmax(t, dim=-1)
        return -(target * torch.log_softmax(s, dim=-1)).sum(dim=-1).mean()


def hard_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of (B, C) ``logits`` against labels, mean over samples.

    ``target`` is either integer class indices of shape (B,) or a floating (B, C) distribution per
    sample (mixup / cutmix soft targets). ``label_smoothing`` (in [0, 1)) mixes the target with
    the uniform distribution: ``(1 - eps) * target + eps / C``, for both kinds of target (the same
    convention as ``torch.nn.functional.cross_entropy``).
    """
    z = _check_floating(_check_tensor(logits, "logits"), "logits")
    y = _check_tensor(target, "target")
    eps = float(label_smoothing)
    if not 0.0 <= eps < 1.0:
        raise MinivitError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if z.dim() != 2:
        raise MinivitError(f"hard_cross_entropy: logits must be (B, C), got shape {tuple(z.shape)}")
    b, c = z.shape
    with _no_autocast(z):
        z = _up(z)
        if y.is_floating_point():
            if y.shape != z.shape:
                raise MinivitError(
                    f"hard_cross_entropy: soft targets must have the logits' shape {tuple(z.shape)}, "
                    f"got {tuple(y.shape)}"
                )
            y = y.detach().to(z.dtype)
            if eps > 0:
                y = y * (1.0 - eps) + eps / c
            return -(y * torch.log_softmax(z, dim=-1)).sum(dim=-1).mean()
        if y.dtype == torch.bool or y.is_complex():
            raise MinivitError(
                f"hard_cross_entropy: target must be integer labels or float soft targets, got {y.dtype}"
            )
        if y.shape != (b,):
            raise MinivitError(
                f"hard_cross_entropy: integer targets must have shape ({b},), got {tuple(y.shape)}",
                hint="one class index per sample",
            )
        lo, hi = (int(y.min()), int(y.max())) if b else (0, 0)
        if lo < 0 or hi >= c:
            raise MinivitError(f"hard_cross_entropy: labels must lie in [0, {c - 1}], got min {lo} max {hi}")
        return F.cross_entropy(z, y.long(), label_smoothing=eps)


def logit_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    target: Tensor | None = None,
    alpha: float = 0.0,
    temperature: float = 1.0,
) -> Tensor:
    """``alpha * CE(z_s, y) + (1 - alpha) * softCE(z_s / T, z_t / T)`` (no ``T**2`` factor).

    ``target`` (integer or soft, see :func:`hard_cross_entropy`) is needed only when ``alpha > 0``;
    ``teacher_logits`` may be None only when ``alpha == 1``. Terms with a zero weight are skipped.
    """
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise MinivitError(f"alpha must be in [0, 1], got {alpha!r}")
    temp = _check_temperature(temperature)
    total = None
    if a > 0:
        if target is None:
            raise MinivitError(
                "logit_distillation_loss: alpha > 0 needs the ground-truth target", hint="or set alpha=0"
            )
        total = a * hard_cross_entropy(student_logits, target)
    if a < 1:
        if teacher_logits is None:
            raise MinivitError(
                "logit_distillation_loss: alpha < 1 needs teacher_logits", hint="or set alpha=1"
            )
        kd = (1.0 - a) * soft_cross_entropy(student_logits, teacher_logits, temperature=temp)
        total = kd if total is None else total + kd
    return total


# --------------------------------------------------------------------------- relations


def _qkv_relations(x: Tensor, heads: int) -> Tensor:
    """(B, 3N, C) stacked [Q; K; V] -> (B, heads, 3, N, 3, N): ``[..., i, :, j, :]`` is ``I Jᵀ / sqrt(C / heads)``."""
    b, n3, c = x.shape
    d = c // heads
    x = x.reshape(b, n3, heads, d).transpose(1, 2)
    gram = torch.matmul(x, x.transpose(-1, -2)) / math.sqrt(d)
    return gram.reshape(b, heads, 3, n3 // 3, 3, n3 // 3)


def attention_relation_loss(
    student_qkv: Sequence[Sequence[Tensor]],
    teacher_qkv: Sequence[Sequence[Tensor]],
    num_relation_heads: int = 1,
) -> Tensor:
    """Self-attention relation loss (MiniLMv2), as used by MiniViT.

    ``student_qkv`` and ``teacher_qkv`` are lists over distilled layer pairs of ``(q, k, v)``
    triples, each tensor (B, N, C): the raw qkv-projection outputs, before any scaling, with
    heads merged into C. C may differ between student and teacher; B and N must match (for Swin,
    B counts windows and N tokens per window).

    For each layer pair and each of the 9 ordered pairs (I, J) of {Q, K, V}, the channels are
    split into ``num_relation_heads`` (Ar) heads of width ``d = C / Ar``, the relation
    ``R = I Jᵀ / sqrt(d)`` (B, Ar, N, N) is formed for both models, and
    ``soft_cross_entropy(R_student, R_teacher)`` (softmax over the last axis, teacher as
    target) is added. The sum is divided by ``9 * number of layer pairs``.
    """
    students, teachers = _as_pair_lists(student_qkv, teacher_qkv, "attention_relation_loss")
    if (
        isinstance(num_relation_heads, bool)
        or not isinstance(num_relation_heads, int)
        or num_relation_heads < 1
    ):
        raise MinivitError(f"num_relation_heads must be a positive integer, got {num_relation_heads!r}")
    ar = num_relation_heads
    total = None
    for p, (s_trip, t_trip) in enumerate(zip(students, teachers)):
        split = []
        for who, trip in (("student", s_trip), ("teacher", t_trip)):
            if isinstance(trip, Tensor) or not isinstance(trip, Sequence) or len(trip) != 3:
                raise MinivitError(f"attention_relation_loss: {who} entry {p} must be a (q, k, v) triple")
            for name, x in zip(_QKV, trip):
                _check_floating(_check_tensor(x, f"{who} {name} of pair {p}"), f"{who} {name} of pair {p}")
            if not (trip[0].shape == trip[1].shape == trip[2].shape):
                raise MinivitError(
                    f"attention_relation_loss: {who} q, k, v of pair {p} have different shapes "
                    f"{[tuple(x.shape) for x in trip]}"
                )
            split.append(trip)
        (sq, sk, sv), (tq, tk, tv) = split
        _check_tokens(sq, tq, f"attention_relation_loss, pair {p}")
        for who, c in (("student", sq.shape[-1]), ("teacher", tq.shape[-1])):
            if c % ar != 0:
                raise MinivitError(
                    f"attention_relation_loss, pair {p}: {who} width {c} is not divisible by "
                    f"num_relation_heads={ar}",
                    hint="choose a relation-head count that divides both models' qkv widths",
                )
        with _no_autocast(sq):
            # the 9 relations I Jᵀ are the 9 N x N blocks of one (3N x 3N) Gram matrix of [Q; K; V]
            r_s = _qkv_relations(torch.cat([_up(x) for x in (sq, sk, sv)], dim=1), ar)
            r_t = _qkv_relations(torch.cat([_up(x.detach()) for x in (tq, tk, tv)], dim=1), ar)
            term = 9 * soft_cross_entropy(r_s, r_t)  # the mean over (I, J, rows), times 9: the sum over pairs
            total = term if total is None else total + term
    return total / (9 * len(students))


def _check_hidden_pair(s: Tensor, t: Tensor, p: int, where: str) -> None:
    """Both hidden states of layer pair ``p`` are floating tensors with the same batch and tokens."""
    _check_floating(_check_tensor(s, f"student hidden {p}"), f"student hidden {p}")
    _check_floating(_check_tensor(t, f"teacher hidden {p}"), f"teacher hidden {p}")
    _check_tokens(s, t, f"{where}, pair {p}")


def hidden_relation_loss(student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor]) -> Tensor:
    """Hidden-state relation loss: MSE between Gram matrices of L2-normalised tokens.

    ``student_hidden`` and ``teacher_hidden`` are lists over layer pairs of (B, N, C) block
    outputs (C may differ; B and N must match). Per pair, each token is L2-normalised over C, the
    (B, N, N) Gram matrix of cosine similarities is formed, and the mean squared difference
    between student and teacher Grams is taken; the result is the mean over pairs. No constant
    factor (the official code multiplies by 49, the window area: scale gamma instead).
    Invariant to any positive per-token scaling of either input.
    """
    students, teachers = _as_pair_lists(student_hidden, teacher_hidden, "hidden_relation_loss")
    total = None
    for p, (s, t) in enumerate(zip(students, teachers)):
        _check_hidden_pair(s, t, p, "hidden_relation_loss")
        with _no_autocast(s):
            s, t = _up(s), _up(t.detach())
            dtype = torch.promote_types(s.dtype, t.dtype)
            s, t = F.normalize(s.to(dtype), dim=-1), F.normalize(t.to(dtype), dim=-1)
            g_s = torch.matmul(s, s.transpose(-1, -2))
            g_t = torch.matmul(t, t.transpose(-1, -2))
            term = F.mse_loss(g_s, g_t)
        total = term if total is None else total + term
    return total / len(students)


class HiddenProjectionMSE(nn.Module):
    """Plain MSE between a learned linear projection of the student states and the teacher's.

    One ``nn.Linear(student_dim, teacher_dim)`` (with bias) is shared by all layer pairs. The
    forward takes lists over layer pairs of (B, N, C_s) student and (B, N, C_t) teacher hidden
    states (B and N must match) and returns the mean over pairs of
    ``mse(proj(student), teacher)``. Its parameters must be given to the optimiser.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        for name, v in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MinivitError(f"HiddenProjectionMSE: {name} must be a positive integer, got {v!r}")
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.proj = nn.Linear(student_dim, teacher_dim)

    def extra_repr(self) -> str:
        return f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}"

    def forward(self, student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor]) -> Tensor:
        students, teachers = _as_pair_lists(student_hidden, teacher_hidden, "HiddenProjectionMSE")
        total = None
        for p, (s, t) in enumerate(zip(students, teachers)):
            _check_hidden_pair(s, t, p, "HiddenProjectionMSE")
            for who, c, want in (
                ("student", s.shape[-1], self.student_dim),
                ("teacher", t.shape[-1], self.teacher_dim),
            ):
                if c != want:
                    raise MinivitError(
                        f"HiddenProjectionMSE, pair {p}: {who} width is {c} but the projection expects {want}"
                    )
            with _no_autocast(s):
                w = self.proj.weight
                dtype = torch.promote_types(_up(w).dtype, torch.promote_types(_up(s).dtype, _up(t).dtype))
                y = F.linear(
                    s.to(dtype), w.to(dtype), None if self.proj.bias is None else self.proj.bias.to(dtype)
                )
                # (y - t)^2 rather than F.mse_loss, which saves the target for backward: a teacher run under
                # torch.inference_mode hands over tensors that autograd may not save
                term = (y - t.detach().to(dtype)).square().mean()
            total = term if total is None else total + term
        return total / len(students)
