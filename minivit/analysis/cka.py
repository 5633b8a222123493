"""Centred kernel alignment (CKA) between two sets of features.

MiniViT's analysis (METHOD.md section 4) compares, layer by layer, the features of the original and
of the compressed model with **linear CKA** (Kornblith et al., 2019). For centred features
``X`` (n x d1) and ``Y`` (n x d2) of the same ``n`` inputs::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

which is 1 for identical features and is invariant to orthogonal transforms and isotropic scaling
of either input.

Two estimators are provided:

* :func:`linear_cka` -- the exact (biased, full-batch) estimator above. It works on whichever
  of the two equivalent forms is cheaper: the feature form (d1 x d2 products) or the Gram form
  (n x n kernels), so very wide features (d >> n, e.g. flattened token maps) are fine.
* :class:`MinibatchCKA` / :func:`minibatch_cka` -- the minibatch estimator of Nguyen, Raghu and
  Kornblith (2021), "Do wide and deep networks learn the same things?": the unbiased HSIC
  estimator of Song et al. (2012) is computed on each minibatch and averaged, so CKA over a
  whole dataset needs only one minibatch of features in memory at a time. It also accumulates a
  whole (Lx, Ly) matrix of layer pairs at once, computing each layer's Gram matrix only once.

All arithmetic is in float64 on the device of the inputs. Inputs may be numpy arrays, torch
tensors (any dtype, any device, gradients are ignored) or nested lists.

Degenerate inputs: if either set of features has zero variance (every sample identical after
centring), CKA is 0/0 and undefined. Rather than crash or return ``inf``, both estimators return
``nan`` in that case, so a per-layer curve shows a visible gap instead of a misleading number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from minivit.errors import MinivitError

__all__ = ["linear_cka", "MinibatchCKA", "minibatch_cka"]

# A centred feature matrix whose Frobenius norm is below this fraction of the uncentred one is
# treated as constant: what is left is float64 rounding noise from subtracting the mean.
_ZERO_VARIANCE_RTOL = 1e-10

_MIN_SAMPLES_BIASED = 2
_MIN_SAMPLES_UNBIASED = 4


def _as_float64(x: Any, name: str) -> torch.Tensor:
    """Turn numpy arrays, tensors or lists into a detached float64 tensor (device kept)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as e:
            raise MinivitError(
                f"{name} cannot be read as a numeric array ({type(x).__name__})",
                hint="pass a numpy array or a torch tensor of shape (n_samples, n_features)",
            ) from e
    if t.is_complex():
        raise MinivitError(f"{name} is complex; CKA is defined for real-valued features")
    t = t.to(torch.float64)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise MinivitError(
            f"{name} contains NaN or infinite values",
            hint="check the model's activations (overflow in half precision?) before computing CKA",
        )
    return t


def _check_2d(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise MinivitError(
            f"{name} must be 2-D (n_samples, n_features), got shape {tuple(x.shape)}",
            hint="flatten per-sample features first, e.g. x.reshape(len(x), -1)",
        )
    return x


def _flatten_samples(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() < 2:
        raise MinivitError(
            f"{name} must have shape (n_samples, ...) with at least 2 dimensions, got shape {tuple(x.shape)}",
            hint="for one scalar feature per sample use x.reshape(-1, 1)",
        )
    return x.reshape(x.shape[0], -1)


def _check_pair(x: torch.Tensor, y: torch.Tensor, min_samples: int, what: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise MinivitError(
            f"x and y must hold the same samples, got {x.shape[0]} and {y.shape[0]} rows",
            hint="row i of both inputs must be the features of the same input image",
        )
    if x.shape[0] < min_samples:
        raise MinivitError(
            f"{what} needs at least {min_samples} samples, got {x.shape[0]}",
            hint="use a larger batch",
        )
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise MinivitError(f"features must not be empty, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise MinivitError(f"x is on {x.device} but y is on {y.device}", hint="move both to one device")


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Centre columns; also say whether the features are (numerically) constant across samples."""
    xc = x - x.mean(dim=0, keepdim=True)
    scale = torch.linalg.matrix_norm(x)
    constant = bool(torch.linalg.matrix_norm(xc) <= _ZERO_VARIANCE_RTOL * scale)
    return xc, constant


def _gram_is_cheaper(n: int, d1: int, d2: int) -> bool:
    # Multiply-adds of each form: feature form builds X^T X, Y^T Y and Y^T X; Gram form builds
    # X X^T and Y Y^T (the products of the n x n kernels are only O(n^2)).
    feature_cost = n * (d1 * d1 + d2 * d2 + d1 * d2)
    gram_cost = n * n * (d1 + d2 + 3)
    return gram_cost < feature_cost


def linear_cka(x: Any, y: Any, *, method: str = "auto") -> float:
    """Linear CKA (Kornblith et al., 2019) between features ``x`` (n, d1) and ``y`` (n, d2).

    Columns are centred, then ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` is returned as a
    Python float in [0, 1]. Row ``i`` of both inputs must describe the same sample.

    Args:
        x, y: 2-D numpy arrays or torch tensors with the same number of rows (>= 2).
        method: ``"feature"`` (d1 x d2 products), ``"gram"`` (n x n kernels, cheap when d >> n)
            or ``"auto"`` (whichever needs fewer operations). All give the same number.

    Returns:
        The CKA value, or ``nan`` if either input has zero variance across samples (undefined).

    Raises:
        MinivitError: non-2-D input, different sample counts, fewer than 2 samples, empty
            features, or NaN/inf values.
    """
    if method not in ("auto", "feature", "gram"):
        raise MinivitError(f"unknown CKA method {method!r}", hint="use 'auto', 'feature' or 'gram'")
    xt = _check_2d(_as_float64(x, "x"), "x")
    yt = _check_2d(_as_float64(y, "y"), "y")
    _check_pair(xt, yt, _MIN_SAMPLES_BIASED, "linear CKA")
    xc, x_const = _centre(xt)
    yc, y_const = _centre(yt)
    if x_const or y_const:
        return math.nan

    n, d1 = xc.shape
    d2 = yc.shape[1]
    use_gram = method == "gram" or (method == "auto" and _gram_is_cheaper(n, d1, d2))
    if use_gram:
        k = xc @ xc.T
        l_ = yc @ yc.T
        cross = torch.sum(k * l_)  # tr(K L) = ||Y^T X||_F^2 (both symmetric)
        norm_x = torch.linalg.matrix_norm(k)
        norm_y = torch.linalg.matrix_norm(l_)
    else:
        cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        norm_x = torch.linalg.matrix_norm(xc.T @ xc)
        norm_y = torch.linalg.matrix_norm(yc.T @ yc)
    return float(cross / (norm_x * norm_y))


# --------------------------------------------------------------------------- minibatch estimator


class _GramStats:
    """What the unbiased HSIC needs from one n x n linear kernel with its diagonal zeroed."""

    __slots__ = ("flat", "row_sums", "total")

    def __init__(self, feats: torch.Tensor):
        # Centring does not change the unbiased estimator (it is translation invariant for a linear
        # kernel) but keeps large feature offsets from costing precision.
        # Constant features give an exactly zero kernel (not rounding noise), hence a nan CKA.
        xc, constant = _centre(feats)
        k = xc.new_zeros((xc.shape[0], xc.shape[0])) if constant else xc @ xc.T
        k.fill_diagonal_(0.0)
        self.flat = k.reshape(-1)
        self.row_sums = k.sum(dim=1)
        self.total = self.row_sums.sum()


def _stack(stats: Sequence[_GramStats]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.stack([s.flat for s in stats]),
        torch.stack([s.row_sums for s in stats]),
        torch.stack([s.total for s in stats]),
    )


def _hsic_unbiased_matrix(a: Sequence[_GramStats], b: Sequence[_GramStats], n: int) -> torch.Tensor:
    """Unbiased HSIC (Song et al., 2012) for every pair (a_i, b_j), as an (len(a), len(b)) matrix.

    HSIC_1(K, L) = [tr(K~ L~) + 1^T K~ 1 * 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))
    with K~, L~ the kernels with zeroed diagonals.
    """
    fa, ra, ta = _stack(a)
    fb, rb, tb = _stack(b)
    trace = fa @ fb.T
    totals = torch.outer(ta, tb) / ((n - 1) * (n - 2))
    rows = (ra @ rb.T) * (2.0 / (n - 2))
    return (trace + totals - rows) / (n * (n - 3))


def _hsic_unbiased_self(a: Sequence[_GramStats], n: int) -> torch.Tensor:
    fa, ra, ta = _stack(a)
    trace = (fa * fa).sum(dim=1)
    totals = ta * ta / ((n - 1) * (n - 2))
    rows = (ra * ra).sum(dim=1) * (2.0 / (n - 2))
    return (trace + totals - rows) / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA accumulated over minibatches with the unbiased HSIC estimator.

    Following Nguyen, Raghu and Kornblith (2021), for minibatches ``i = 1..k``::

        CKA = sum_i HSIC_1(K_i, L_i) / sqrt(sum_i HSIC_1(K_i, K_i) * sum_i HSIC_1(L_i, L_i))

    where ``K_i``, ``L_i`` are the linear kernels of the batch's x and y features and ``HSIC_1`` is
    the unbiased estimator of Song et al. (2012). Every minibatch counts equally (as in the paper),
    so keep batch sizes equal, or drop a small last batch. With all the data in one batch this is
    the full-data unbiased CKA; with many batches it estimates the same quantity and, unlike the
    biased estimator, has no bias that depends on the batch size.

    Two modes, fixed by the first :meth:`update`:

    * **single pair**: ``update(x, y)`` with arrays; :meth:`compute` returns a float.
    * **layer matrix**: ``update([x_0, .., x_{Lx-1}], [y_0, .., y_{Ly-1}])`` with lists of per-layer
      features of the same batch; :meth:`compute` returns an ``(Lx, Ly)`` numpy array whose entry
      ``[i, j]`` is CKA(x layer i, y layer j). ``y`` may be omitted to compare x's layers with
      each other. Each layer's Gram matrix is computed once per batch.

    Features of any shape ``(n, ...)`` are flattened to ``(n, -1)``. Every batch needs at least 4
    samples (the unbiased estimator divides by n - 3).

    A result is ``nan`` where a layer's summed self-HSIC is not positive (constant features, or a
    negative unbiased estimate from very few samples): CKA is undefined there.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._matrix_mode: bool | None = None
        self._shape: tuple[int, int] | None = None
        self._cross: torch.Tensor | None = None
        self._self_x: torch.Tensor | None = None
        self._self_y: torch.Tensor | None = None
        self.num_batches = 0
        self.num_samples = 0

    @staticmethod
    def _layers(feats: Any, name: str) -> list[torch.Tensor]:
        if not isinstance(feats, (list, tuple)) or len(feats) == 0:
            raise MinivitError(f"{name} must be a non-empty list of per-layer feature arrays")
        return [_flatten_samples(_as_float64(f, f"{name}[{i}]"), f"{name}[{i}]") for i, f in enumerate(feats)]

    def update(self, x: Any, y: Any = None) -> None:
        """Add one minibatch: ``x`` and ``y`` hold features of the same ``n`` samples (n >= 4).

        Either two arrays (single-pair mode) or two lists of per-layer arrays (layer-matrix
        mode; ``y=None`` reuses ``x``). The mode and layer counts must not change between calls.
        """
        matrix_mode = isinstance(x, (list, tuple))
        if matrix_mode:
            xs = self._layers(x, "x")
            ys = xs if y is None else self._layers(y, "y")
        else:
            if y is None:
                raise MinivitError(
                    "update(x, y) needs y in single-pair mode", hint="pass both feature arrays"
                )
            if isinstance(y, (list, tuple)):
                raise MinivitError(
                    "x is an array but y is a list", hint="pass two arrays or two lists of arrays"
                )
            xs = [_flatten_samples(_as_float64(x, "x"), "x")]
            ys = [_flatten_samples(_as_float64(y, "y"), "y")]

        if self._matrix_mode is not None and matrix_mode != self._matrix_mode:
            raise MinivitError(
                "cannot mix single-pair and layer-list updates in one MinibatchCKA",
                hint="call reset() or use a new MinibatchCKA",
            )
        if self._shape is not None and (len(xs), len(ys)) != self._shape:
            raise MinivitError(
                f"this accumulator holds {self._shape[0]} x {self._shape[1]} layers, "
                f"got {len(xs)} x {len(ys)}",
                hint="pass the same layers in every batch",
            )
        n = xs[0].shape[0]
        for f in [*xs, *ys]:
            _check_pair(xs[0], f, _MIN_SAMPLES_UNBIASED, "the unbiased (minibatch) CKA estimator")

        sx = [_GramStats(f) for f in xs]
        sy = sx if ys is xs else [_GramStats(f) for f in ys]
        cross = _hsic_unbiased_matrix(sx, sy, n)
        self_x = _hsic_unbiased_self(sx, n)
        self_y = self_x if sy is sx else _hsic_unbiased_self(sy, n)

        if self._cross is None:
            self._cross, self._self_x, self._self_y = cross, self_x, self_y
        else:
            dev = self._cross.device
            self._cross = self._cross + cross.to(dev)
            self._self_x = self._self_x + self_x.to(dev)
            self._self_y = self._self_y + self_y.to(dev)
        self._matrix_mode = matrix_mode
        self._shape = (len(xs), len(ys))
        self.num_batches += 1
        self.num_samples += n

    def compute(self) -> float | np.ndarray:
        """CKA from everything accumulated: a float, or an (Lx, Ly) array in layer-matrix mode."""
        if self._cross is None:
            raise MinivitError(
                "MinibatchCKA.compute() called before any update()", hint="feed it batches first"
            )
        denom = torch.outer(self._self_x, self._self_y)
        valid = denom > 0
        safe = torch.where(valid, denom, torch.ones_like(denom)).sqrt()
        cka = torch.where(valid, self._cross / safe, torch.full_like(denom, math.nan))
        out = cka.cpu().numpy()
        if self._matrix_mode:
            return out
        return float(out[0, 0])


def minibatch_cka(pairs: Iterable[tuple[Any, Any]]) -> float | np.ndarray:
    """Minibatch unbiased linear CKA over an iterable of ``(x_batch, y_batch)`` pairs.

    Each pair is passed to :meth:`MinibatchCKA.update`, so a pair may also be two lists of
    per-layer features, giving an (Lx, Ly) matrix.
    """
    acc = MinibatchCKA()
    for item in pairs:
        try:
            x, y = item
        except (TypeError, ValueError) as e:
            raise MinivitError(
                "minibatch_cka expects an iterable of (x_batch, y_batch) pairs",
                hint="e.g. minibatch_cka(zip(feats_a, feats_b))",
            ) from e
        acc.update(x, y)
    return acc.compute()
