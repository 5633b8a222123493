"""Linear CKA (full batch and minibatch/unbiased) against naive numpy references, and the plot helpers."""

import itertools
import math
import os

import numpy as np
import pytest
import torch

from minivit.analysis.cka import MinibatchCKA, linear_cka, minibatch_cka
from minivit.analysis.plots import plot_heatmap, plot_lines, plot_scatter_labelled, plot_tradeoff
from minivit.errors import MinivitError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ naive numpy references


def naive_linear_cka(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    cross = np.linalg.norm(yc.T @ xc, ord="fro") ** 2
    norm_x = np.linalg.norm(xc.T @ xc, ord="fro")
    norm_y = np.linalg.norm(yc.T @ yc, ord="fro")
    return cross / (norm_x * norm_y)


def naive_hsic_unbiased(x, y):
    """Song et al. (2012) unbiased HSIC with linear kernels, on *uncentred* features."""
    n = x.shape[0]
    k = x @ x.T
    l_ = y @ y.T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    ones = np.ones(n)
    term1 = np.sum(k * l_.T)  # trace(K L)
    term2 = k.sum() * l_.sum() / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (ones @ k @ l_ @ ones)
    return (term1 + term2 - term3) / (n * (n - 3))


def naive_unbiased_cka(x, y):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    return naive_hsic_unbiased(x, y) / math.sqrt(naive_hsic_unbiased(x, x) * naive_hsic_unbiased(y, y))


def rng_pair(seed, n=50, d1=12, d2=8, noise=0.5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1))
    y = x @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return x, y


# ------------------------------------------------------------------------------- linear_cka


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_cka_matches_naive(seed):
    x, y = rng_pair(seed)
    x = x + 3.0  # non-zero means: centring must matter
    expected = naive_linear_cka(x, y)
    got = linear_cka(x, y)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got < 1.0


def test_linear_cka_accepts_tensors_and_float32():
    x, y = rng_pair(3)
    expected = naive_linear_cka(x, y)
    got = linear_cka(torch.from_numpy(x).float().requires_grad_(), torch.from_numpy(y))
    assert got == pytest.approx(expected, abs=1e-6)


def test_identical_features_give_one():
    x, _ = rng_pair(4)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, method="gram") == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x, y = rng_pair(5, d1=10, d2=10)
    base = linear_cka(x, y)
    rng = np.random.default_rng(50)
    q_x, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    q_y, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    assert linear_cka(x @ q_x, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x, y @ q_y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(7.5 * x, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x, 0.01 * y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x + 100.0, y - 5.0) == pytest.approx(base, abs=1e-10)  # translation


def test_not_invariant_to_anisotropic_scaling():
    x, y = rng_pair(6, d1=10, d2=10)
    scale = np.array([10.0] + [1.0] * 9)
    assert abs(linear_cka(x * scale, y) - linear_cka(x, y)) > 1e-3


def test_feature_and_gram_forms_agree_when_d_exceeds_n():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20, 300))
    y = x[:, :150] @ rng.standard_normal((150, 200)) + rng.standard_normal((20, 200))
    feature = linear_cka(x, y, method="feature")
    gram = linear_cka(x, y, method="gram")
    auto = linear_cka(x, y)
    assert feature == pytest.approx(gram, abs=1e-12)
    assert auto == pytest.approx(gram, abs=1e-12)
    assert feature == pytest.approx(naive_linear_cka(x, y), abs=1e-12)


def test_zero_variance_gives_nan():
    x, _ = rng_pair(8)
    assert math.isnan(linear_cka(x, np.full((50, 3), 0.1)))
    assert math.isnan(linear_cka(np.zeros((50, 4)), x))
    acc = MinibatchCKA()
    acc.update(x, np.full((50, 3), 0.1))
    assert math.isnan(acc.compute())


def test_linear_cka_input_errors():
    x, y = rng_pair(9)
    with pytest.raises(MinivitError, match="same samples"):
        linear_cka(x, y[:-1])
    with pytest.raises(MinivitError, match="at least 2 samples"):
        linear_cka(x[:1], y[:1])
    with pytest.raises(MinivitError, match="2-D"):
        linear_cka(x.reshape(50, 3, 4), y)
    with pytest.raises(MinivitError, match="2-D"):
        linear_cka(x[:, 0], y)
    with pytest.raises(MinivitError, match="NaN"):
        linear_cka(np.where(x > 2, np.nan, x), y)
    with pytest.raises(MinivitError, match="method"):
        linear_cka(x, y, method="fast")
    with pytest.raises(ValueError):  # MinivitError is a ValueError
        linear_cka(x, y[:10])


# ------------------------------------------------------------------------ unbiased / minibatch


def test_unbiased_hsic_closed_form_matches_u_statistic():
    """Check the reference formula itself against the U-statistic over distinct quadruples."""
    rng = np.random.default_rng(10)
    n = 7
    x = rng.standard_normal((n, 3))
    y = rng.standard_normal((n, 2)) + x[:, :2]
    k = x @ x.T
    l_ = y @ y.T
    total = 0.0
    count = 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
        count += 1
    assert naive_hsic_unbiased(x, y) == pytest.approx(total / count, rel=1e-10)


def test_single_batch_equals_full_data_unbiased_cka():
    x, y = rng_pair(11, n=64)
    x = x + 2.0
    expected = naive_unbiased_cka(x, y)
    acc = MinibatchCKA()
    acc.update(x, y)
    assert abs(acc.compute() - expected) < 1e-8
    assert abs(minibatch_cka([(torch.from_numpy(x), torch.from_numpy(y))]) - expected) < 1e-8


def test_several_batches_approach_full_data_unbiased_cka():
    x, y = rng_pair(12, n=2000, d1=16, d2=12, noise=2.0)
    expected = naive_unbiased_cka(x, y)
    got = minibatch_cka((x[i : i + 200], y[i : i + 200]) for i in range(0, 2000, 200))
    assert 0.2 < expected < 0.9
    assert got == pytest.approx(expected, abs=0.03)


def test_minibatch_removes_small_batch_bias():
    """Independent features: biased CKA on small batches is far from 0, the unbiased estimate is not."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1024, 64))
    y = rng.standard_normal((1024, 64))
    biased = np.mean([linear_cka(x[i : i + 32], y[i : i + 32]) for i in range(0, 1024, 32)])
    unbiased = minibatch_cka((x[i : i + 32], y[i : i + 32]) for i in range(0, 1024, 32))
    assert biased > 0.3
    assert abs(unbiased) < 0.05


def test_minibatch_identical_features_give_one_and_flatten():
    rng = np.random.default_rng(14)
    feats = rng.standard_normal((40, 3, 5))
    acc = MinibatchCKA()
    for i in range(0, 40, 10):
        acc.update(feats[i : i + 10], feats[i : i + 10])
    assert acc.compute() == pytest.approx(1.0, abs=1e-12)
    assert acc.num_batches == 4 and acc.num_samples == 40
    flat = naive_unbiased_cka(feats, feats[:, ::-1, :])  # (n, ...) flattened to (n, -1)
    assert minibatch_cka([(feats, feats[:, ::-1, :])]) == pytest.approx(flat, abs=1e-10)


def test_layer_matrix_mode_matches_pairwise():
    rng = np.random.default_rng(15)
    n = 32
    xs = [rng.standard_normal((n, 4, 3)) for _ in range(3)]
    ys = [xs[0].reshape(n, -1) @ rng.standard_normal((12, 6)), rng.standard_normal((n, 5))]
    batches = [(slice(0, 16)), slice(16, 32)]
    acc = MinibatchCKA()
    for sl in batches:
        acc.update([f[sl] for f in xs], [torch.from_numpy(f[sl]) for f in ys])
    mat = acc.compute()
    assert isinstance(mat, np.ndarray) and mat.shape == (3, 2)
    for i, j in itertools.product(range(3), range(2)):
        single = minibatch_cka((xs[i][sl], ys[j][sl]) for sl in batches)
        assert mat[i, j] == pytest.approx(single, abs=1e-12)

    self_acc = MinibatchCKA()
    self_acc.update(xs)  # y omitted: x layers against each other
    self_mat = self_acc.compute()
    assert self_mat.shape == (3, 3)
    np.testing.assert_allclose(np.diag(self_mat), 1.0, atol=1e-12)
    np.testing.assert_allclose(self_mat, self_mat.T, atol=1e-12)


def test_minibatch_errors():
    x, y = rng_pair(16, n=20)
    acc = MinibatchCKA()
    with pytest.raises(MinivitError, match="before any update"):
        acc.compute()
    with pytest.raises(MinivitError, match="same samples"):
        acc.update(x, y[:10])
    with pytest.raises(MinivitError, match="at least 4 samples"):
        acc.update(x[:3], y[:3])
    with pytest.raises(MinivitError, match="same samples"):
        acc.update([x, x[:10]], [y])
    with pytest.raises(MinivitError, match="at least 2 dimensions"):
        acc.update(x[:, 0], y)
    acc.update(x, y)
    with pytest.raises(MinivitError, match="mix"):
        acc.update([x], [y])
    mat = MinibatchCKA()
    mat.update([x, x], [y])
    with pytest.raises(MinivitError, match="layers"):
        mat.update([x], [y])
    with pytest.raises(MinivitError, match="pairs"):
        minibatch_cka([x])
    acc.reset()
    acc.update([x], [y])  # reset allows a new mode
    assert acc.compute().shape == (1, 1)


# ------------------------------------------------------------------------------------ plots


def _assert_png(path, directory):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    assert not [f for f in os.listdir(directory) if f.endswith(".tmp")]  # no temp files left


def test_plot_lines_writes_png(tmp_path):
    out = plot_lines(
        {
            "naive sharing": [1.0, 0.9, float("nan"), 0.5],
            "MiniViT": ([0, 1, 2, 3], np.array([1, 0.99, 0.98, 0.97])),
        },
        "CKA per layer",
        "layer",
        "linear CKA",
        tmp_path / "sub" / "lines.png",
    )
    assert out == tmp_path / "sub" / "lines.png"
    _assert_png(out, tmp_path / "sub")
    single = plot_lines({"only": (0.5, 0.6)}, "t", "x", "y", str(tmp_path / "one.png"))  # 2 y values
    _assert_png(single, tmp_path)
    with pytest.raises(MinivitError):
        plot_lines({}, "t", "x", "y", tmp_path / "empty.png")


def test_plot_heatmap_writes_png(tmp_path):
    m = torch.rand(4, 6)
    out = plot_heatmap(
        m, "CKA", "student layer", "teacher layer", tmp_path / "heat.png", colorbar_label="CKA"
    )
    _assert_png(out, tmp_path)
    with pytest.raises(MinivitError, match="labels"):
        plot_heatmap(m, "CKA", "x", "y", tmp_path / "bad.png", xticklabels=["a", "b"])
    with pytest.raises(MinivitError, match="2-D"):
        plot_heatmap(np.ones(3), "CKA", "x", "y", tmp_path / "bad.png")


def test_plot_scatter_labelled_writes_png(tmp_path):
    pts = [(5.7e6, 72.2, "DeiT-Ti"), (3.09e6, 73.0, "Mini-DeiT-Ti"), (22e6, 79.8, "DeiT-S")]
    out = plot_scatter_labelled(
        pts, "Accuracy vs size", "parameters", "top-1 (%)", tmp_path / "s.png", logx=True
    )
    _assert_png(out, tmp_path)
    grouped = [(*p, "MiniViT" if p[2].startswith("Mini") else "original") for p in pts]
    size_before = os.path.getsize(out)
    out = plot_scatter_labelled(grouped, "Accuracy vs size", "parameters", "top-1 (%)", out)  # overwrite
    _assert_png(out, tmp_path)
    assert os.path.getsize(out) != size_before
    with pytest.raises(MinivitError, match="positive"):
        plot_scatter_labelled([(0.0, 1.0, "a")], "t", "x", "y", tmp_path / "bad.png", logx=True)
    with pytest.raises(MinivitError, match="tuples"):
        plot_scatter_labelled([(1.0, "a")], "t", "x", "y", tmp_path / "bad.png")


def test_plot_tradeoff_draws_curves_labels_and_the_front(tmp_path):
    series = {"minivit": [(0.84, 89.96, "1/2"), (0.43, 89.52, "1/4")],
              "naive int8": [(0.23, 89.71, "1/2"), (0.13, 89.16, "1/4")]}
    styles = {"naive int8": {"color": "tab:purple", "linestyle": "--", "marker": "s"}}
    out = plot_tradeoff(series, "Top-1 vs MB", "MB", "top-1 (%)", tmp_path / "t.png", logx=True,
                        front=[(0.13, 89.16), (0.23, 89.71), (0.84, 89.96)], styles=styles)
    _assert_png(out, tmp_path)
    with pytest.raises(MinivitError, match="at least one point"):
        plot_tradeoff({"a": []}, "t", "x", "y", tmp_path / "bad.png")
    with pytest.raises(MinivitError, match="positive"):
        plot_tradeoff({"a": [(0.0, 1.0, "x")]}, "t", "x", "y", tmp_path / "bad.png", logx=True)
    with pytest.raises(MinivitError, match="tuples"):
        plot_tradeoff({"a": [(1.0, "x")]}, "t", "x", "y", tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
