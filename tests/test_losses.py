"""Distillation losses and layer mapping, checked against hand-computed references.

The references below are written out with numpy / explicit loops, independently of
``minivit.distill.losses``.
"""

import math

import numpy as np
import pytest
import torch

from minivit.distill.losses import (
    HiddenProjectionMSE,
    attention_relation_loss,
    hard_cross_entropy,
    hidden_relation_loss,
    logit_distillation_loss,
    soft_cross_entropy,
)
from minivit.distill.mapping import even_layers, layer_mapping
from minivit.errors import MinivitError

# ----------------------------------------------------------------------------- numpy references


def np_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_soft_ce_rows(s, t):
    """Mean over rows of -sum p_t log p_s, by explicit loop over the (flattened) rows."""
    s = np.asarray(s, dtype=np.float64).reshape(-1, np.shape(s)[-1])
    t = np.asarray(t, dtype=np.float64).reshape(-1, np.shape(t)[-1])
    total = 0.0
    for row_s, row_t in zip(s, t):
        p_t = np.exp(row_t) / np.exp(row_t).sum()
        log_p_s = row_s - math.log(np.exp(row_s).sum())
        total += -sum(p_t[c] * log_p_s[c] for c in range(len(row_s)))
    return total / len(s)


def naive_attention_relation(student, teacher, ar):
    """Triple loops over layer pairs, (I, J) and (batch, head, row): no vectorised tricks."""
    total = 0.0
    for s_trip, t_trip in zip(student, teacher):
        for i in range(3):
            for j in range(3):
                pair_sum, rows = 0.0, 0
                b_size, n, _ = s_trip[0].shape
                for b in range(b_size):
                    for h in range(ar):
                        rel = []
                        for trip in (s_trip, t_trip):
                            c = trip[0].shape[-1]
                            d = c // ar
                            a = trip[i][b, :, h * d : (h + 1) * d]
                            bb = trip[j][b, :, h * d : (h + 1) * d]
                            r = np.zeros((n, n))
                            for x in range(n):
                                for y in range(n):
                                    r[x, y] = sum(a[x, e] * bb[y, e] for e in range(d)) / math.sqrt(d)
                            rel.append(r)
                        for x in range(n):
                            pair_sum += np_soft_ce_rows(rel[0][x][None], rel[1][x][None])
                            rows += 1
                total += pair_sum / rows
    return total / (9 * len(student))


def naive_hidden_relation(student, teacher):
    total = 0.0
    for s, t in zip(student, teacher):
        grams = []
        for h in (s, t):
            h = np.asarray(h, dtype=np.float64)
            h = h / np.linalg.norm(h, axis=-1, keepdims=True)
            grams.append(np.einsum("bnc,bmc->bnm", h, h))
        total += np.mean((grams[0] - grams[1]) ** 2)
    return total / len(student)


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


# ----------------------------------------------------------------------------- soft cross-entropy


def test_soft_ce_known_value():
    # teacher [0, ln 3] -> p = [1/4, 3/4]; student [0, 0] -> log p = [-ln 2, -ln 2]; CE = ln 2
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])
    assert soft_cross_entropy(s, t).item() == pytest.approx(math.log(2.0), abs=1e-6)
    # second sample: student [ln 3, 0] -> log p = [ln(3/4), ln(1/4)], teacher as above:
    # CE = -(1/4 ln(3/4) + 3/4 ln(1/4)); the loss is the mean of both samples
    s2 = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    t2 = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    ce2 = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert soft_cross_entropy(s2, t2).item() == pytest.approx((math.log(2.0) + ce2) / 2, abs=1e-6)


def test_soft_ce_random_matches_numpy_and_leading_dims():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    got = soft_cross_entropy(t64(s), t64(t)).item()
    assert got == pytest.approx(np_soft_ce_rows(s, t), rel=1e-10)


def test_soft_ce_minimal_at_teacher_equals_entropy():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(3, 6))
    p = np_softmax(t)
    entropy = np.mean(-(p * np.log(p)).sum(-1))
    at_teacher = soft_cross_entropy(t64(t), t64(t)).item()
    assert at_teacher == pytest.approx(entropy, rel=1e-10)
    for _ in range(5):
        other = t + rng.normal(scale=0.5, size=t.shape)
        assert soft_cross_entropy(t64(other), t64(t)).item() > at_teacher
    # shifting the student logits by a constant per row does not change anything
    assert soft_cross_entropy(t64(t + 7.0), t64(t)).item() == pytest.approx(entropy, rel=1e-10)


def test_soft_ce_temperature_scaling():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    for temp in (0.5, 2.0, 4.0):
        expected = np_soft_ce_rows(s / temp, t / temp)
        assert soft_cross_entropy(t64(s), t64(t), temperature=temp).item() == pytest.approx(
            expected, rel=1e-10
        )
        # identical to dividing the inputs by hand (no T^2 factor)
        assert soft_cross_entropy(t64(s), t64(t), temperature=temp).item() == pytest.approx(
            soft_cross_entropy(t64(s / temp), t64(t / temp)).item(), rel=1e-12
        )
    # high temperature -> both uniform -> CE tends to log C
    assert soft_cross_entropy(t64(s), t64(t), temperature=1e6).item() == pytest.approx(math.log(7), rel=1e-5)


def test_soft_ce_gradients_student_only():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    soft_cross_entropy(s, t, temperature=2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # analytic gradient: (softmax(s/T) - softmax(t/T)) / (T * B)
    expected = (torch.softmax(s.detach() / 2, -1) - torch.softmax(t.detach() / 2, -1)) / (2 * 3)
    torch.testing.assert_close(s.grad, expected)


def test_soft_ce_half_inputs_computed_in_float32():
    s = torch.randn(4, 10).half()
    t = torch.randn(4, 10).bfloat16()
    out = soft_cross_entropy(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(np_soft_ce_rows(s.float().numpy(), t.float().numpy()), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert soft_cross_entropy(s.float(), t.float()).dtype == torch.float32


def test_soft_ce_errors():
    with pytest.raises(MinivitError, match="differs from teacher shape"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(MinivitError, match="temperature"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0)
    with pytest.raises(MinivitError, match="floating"):
        soft_cross_entropy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- attention relation


def _qkv(rng, layers, b, n, c):
    return [tuple(rng.normal(size=(b, n, c)) for _ in range(3)) for _ in range(layers)]


@pytest.mark.parametrize("ar", [1, 2])
def test_attention_relation_matches_naive_loops(ar):
    rng = np.random.default_rng(3 + ar)
    student = _qkv(rng, 2, 2, 3, 4)  # student C=4
    teacher = _qkv(rng, 2, 2, 3, 6)  # teacher C=6
    expected = naive_attention_relation(student, teacher, ar)
    to_t = [tuple(t64(x) for x in trip) for trip in student]
    tt = [tuple(t64(x) for x in trip) for trip in teacher]
    got = attention_relation_loss(to_t, tt, num_relation_heads=ar).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_attention_relation_single_hand_value():
    # B=1, N=2, C=1, identical q=k=v=x for student and teacher with x = [0, 1]:
    # R = x x^T = [[0, 0], [0, 1]] for all 9 pairs; loss = mean row entropy of the relation
    # row 0: softmax([0, 0]) -> entropy ln 2; row 1: softmax([0, 1]) -> p = [1/(1+e), e/(1+e)]
    x = torch.tensor([[[0.0], [1.0]]])
    p1 = np.array([1.0, math.e]) / (1 + math.e)
    expected = (math.log(2) + -(p1 * np.log(p1)).sum()) / 2
    got = attention_relation_loss([(x, x, x)], [(x, x, x)]).item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_attention_relation_float32_for_half_and_gradients():
    torch.manual_seed(0)
    s = [tuple(torch.randn(2, 4, 8, requires_grad=True) for _ in range(3))]
    t = [tuple(torch.randn(2, 4, 12, requires_grad=True) for _ in range(3))]
    loss = attention_relation_loss(s, t, num_relation_heads=4)
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s[0])
    assert all(x.grad is None for x in t[0])
    half = attention_relation_loss(
        [tuple(x.detach().half() for x in s[0])],
        [tuple(x.detach().half() for x in t[0])],
        num_relation_heads=4,
    )
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss.item(), rel=1e-2)


def test_attention_relation_errors():
    s = [tuple(torch.zeros(2, 3, 4) for _ in range(3))]
    t = [tuple(torch.zeros(2, 3, 6) for _ in range(3))]
    with pytest.raises(MinivitError, match="1 student entries but 2 teacher"):
        attention_relation_loss(s, t * 2)
    with pytest.raises(MinivitError, match="teacher width 6 is not divisible by num_relation_heads=4"):
        attention_relation_loss(s, t, num_relation_heads=4)
    with pytest.raises(MinivitError, match="num_relation_heads must be a positive integer"):
        attention_relation_loss(s, t, num_relation_heads=0)
    with pytest.raises(MinivitError, match=r"batch sizes differ \(student 2, teacher 3\)"):
        attention_relation_loss(s, [tuple(torch.zeros(3, 3, 6) for _ in range(3))])
    with pytest.raises(MinivitError, match=r"token counts differ \(student 3, teacher 5\)"):
        attention_relation_loss(s, [tuple(torch.zeros(2, 5, 6) for _ in range(3))])
    with pytest.raises(MinivitError, match=r"\(q, k, v\) triple"):
        attention_relation_loss([s[0][:2]], t)
    with pytest.raises(MinivitError, match="empty"):
        attention_relation_loss([], [])


# ----------------------------------------------------------------------------- hidden relation


def test_hidden_relation_matches_numpy():
    rng = np.random.default_rng(7)
    s = [rng.normal(size=(2, 5, 4)) for _ in range(3)]
    t = [rng.normal(size=(2, 5, 9)) for _ in range(3)]
    got = hidden_relation_loss([t64(x) for x in s], [t64(x) for x in t]).item()
    assert got == pytest.approx(naive_hidden_relation(s, t), rel=1e-10)


def test_hidden_relation_hand_value():
    # student tokens e1, e2 (orthogonal): Gram = I. teacher tokens e1, e1: Gram = all ones.
    # squared differences: off-diagonal 1 and 1, diagonal 0 -> mean 2/4 = 0.5
    s = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    t = torch.tensor([[[2.0, 0.0, 0.0], [5.0, 0.0, 0.0]]])
    assert hidden_relation_loss([s], [t]).item() == pytest.approx(0.5, abs=1e-7)


def test_hidden_relation_zero_and_scale_invariant():
    torch.manual_seed(1)
    h = torch.randn(2, 6, 8)
    assert hidden_relation_loss([h], [h.clone()]).item() == pytest.approx(0.0, abs=1e-12)
    scale = torch.rand(2, 6, 1) * 10 + 0.1  # positive per-token scaling
    assert hidden_relation_loss([h * scale], [h]).item() == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(2, 6, 5)
    torch.testing.assert_close(hidden_relation_loss([h * scale], [other]), hidden_relation_loss([h], [other]))
    torch.testing.assert_close(hidden_relation_loss([h], [other * scale]), hidden_relation_loss([h], [other]))


def test_hidden_relation_gradients_and_errors():
    s = torch.randn(2, 4, 3, requires_grad=True)
    t = torch.randn(2, 4, 5, requires_grad=True)
    hidden_relation_loss([s], [t]).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(MinivitError, match="2 student entries but 1 teacher"):
        hidden_relation_loss([s, s], [t])
    with pytest.raises(MinivitError, match=r"token counts differ \(student 4, teacher 3\)"):
        hidden_relation_loss([s], [torch.zeros(2, 3, 5)])
    with pytest.raises(MinivitError, match=r"expected \(B, N, C\)"):
        hidden_relation_loss([s], [torch.zeros(2, 4)])


# ----------------------------------------------------------------------------- hard CE / logit KD


def test_hard_cross_entropy_int_and_soft_targets():
    z = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    logp = np.log(np_softmax(z))
    y = np.array([1, 2])
    expected = -(logp[0, 1] + logp[1, 2]) / 2
    assert hard_cross_entropy(t64(z), torch.tensor(y)).item() == pytest.approx(expected, rel=1e-10)
    one_hot = np.eye(3)[y]
    assert hard_cross_entropy(t64(z), t64(one_hot)).item() == pytest.approx(expected, rel=1e-10)
    mix = 0.7 * np.eye(3)[[1, 2]] + 0.3 * np.eye(3)[[0, 1]]  # mixup targets
    assert hard_cross_entropy(t64(z), t64(mix)).item() == pytest.approx(
        np.mean(-(mix * logp).sum(-1)), rel=1e-10
    )
    eps = 0.1
    smooth = one_hot * (1 - eps) + eps / 3
    want = np.mean(-(smooth * logp).sum(-1))
    assert hard_cross_entropy(t64(z), torch.tensor(y), label_smoothing=eps).item() == pytest.approx(
        want, rel=1e-10
    )
    assert hard_cross_entropy(t64(z), t64(one_hot), label_smoothing=eps).item() == pytest.approx(
        want, rel=1e-10
    )


def test_hard_cross_entropy_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(MinivitError, match=r"integer targets must have shape \(2,\)"):
        hard_cross_entropy(z, torch.tensor([0, 1, 2]))
    with pytest.raises(MinivitError, match=r"labels must lie in \[0, 2\]"):
        hard_cross_entropy(z, torch.tensor([0, 3]))
    with pytest.raises(MinivitError, match="soft targets must have the logits' shape"):
        hard_cross_entropy(z, torch.zeros(2, 4))
    with pytest.raises(MinivitError, match="label_smoothing"):
        hard_cross_entropy(z, torch.tensor([0, 1]), label_smoothing=1.0)


def test_logit_distillation_loss_combination():
    rng = np.random.default_rng(9)
    zs, zt = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    y = np.array([0, 4, 2, 2])
    ce = np.mean(-np.log(np_softmax(zs))[np.arange(4), y])
    for alpha, temp in ((0.0, 1.0), (0.3, 2.0), (1.0, 3.0)):
        expected = alpha * ce + (1 - alpha) * np_soft_ce_rows(zs / temp, zt / temp)
        got = logit_distillation_loss(t64(zs), t64(zt), torch.tensor(y), alpha=alpha, temperature=temp).item()
        assert got == pytest.approx(expected, rel=1e-10)
    # alpha = 0 needs no target, alpha = 1 needs no teacher
    assert logit_distillation_loss(t64(zs), t64(zt)).item() == pytest.approx(
        np_soft_ce_rows(zs, zt), rel=1e-10
    )
    assert logit_distillation_loss(t64(zs), None, torch.tensor(y), alpha=1.0).item() == pytest.approx(
        ce, rel=1e-10
    )
    with pytest.raises(MinivitError, match="needs the ground-truth target"):
        logit_distillation_loss(t64(zs), t64(zt), alpha=0.5)
    with pytest.raises(MinivitError, match="needs teacher_logits"):
        logit_distillation_loss(t64(zs), None, torch.tensor(y), alpha=0.5)
    with pytest.raises(MinivitError, match=r"alpha must be in \[0, 1\]"):
        logit_distillation_loss(t64(zs), t64(zt), torch.tensor(y), alpha=1.5)


def test_logit_distillation_gradients_student_only():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    logit_distillation_loss(s, t, torch.tensor([0, 1, 2]), alpha=0.5).backward()
    assert s.grad is not None and t.grad is None


# ----------------------------------------------------------------------------- projection MSE


def test_hidden_projection_mse():
    torch.manual_seed(2)
    mod = HiddenProjectionMSE(3, 5).double()
    s = [torch.randn(2, 4, 3, dtype=torch.float64) for _ in range(2)]
    t = [torch.randn(2, 4, 5, dtype=torch.float64) for _ in range(2)]
    w, b = mod.proj.weight.detach().numpy(), mod.proj.bias.detach().numpy()
    expected = np.mean([np.mean((x.numpy() @ w.T + b - y.numpy()) ** 2) for x, y in zip(s, t)])
    t_req = [y.clone().requires_grad_(True) for y in t]
    loss = mod(s, t_req)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert mod.proj.weight.grad is not None and all(y.grad is None for y in t_req)
    with pytest.raises(MinivitError, match="student width is 4 but the projection expects 3"):
        mod([torch.zeros(2, 4, 4)], [torch.zeros(2, 4, 5)])
    with pytest.raises(MinivitError, match=r"token counts differ \(student 4, teacher 2\)"):
        mod([torch.zeros(2, 4, 3)], [torch.zeros(2, 2, 5)])
    with pytest.raises(MinivitError, match="2 student entries but 1 teacher"):
        mod(s, t[:1])
    half = HiddenProjectionMSE(3, 5)([torch.randn(2, 4, 3).half()], [torch.randn(2, 4, 5).half()])
    assert half.dtype == torch.float32


def test_losses_take_teacher_tensors_from_inference_mode():
    """A teacher run under torch.inference_mode (the cheapest way to run it) feeds every loss."""
    torch.manual_seed(3)
    s_logits = torch.randn(4, 5, requires_grad=True)
    s_feat = torch.randn(4, 6, 8, requires_grad=True)
    with torch.inference_mode():
        t_logits, t_feat = torch.randn(4, 5), torch.randn(4, 6, 8)
    losses = [
        soft_cross_entropy(s_logits, t_logits, 2.0),
        attention_relation_loss([(s_feat, s_feat, s_feat)], [(t_feat, t_feat, t_feat)]),
        hidden_relation_loss([s_feat], [t_feat]),
        HiddenProjectionMSE(8, 8)([s_feat], [t_feat]),
    ]
    sum(losses).backward()
    assert s_logits.grad is not None and s_feat.grad is not None


# ----------------------------------------------------------------------------- layer mapping


def test_layer_mapping_automatic_even_spread():
    assert layer_mapping(12, 24, num_pairs=6) == [(1, 3), (3, 7), (5, 11), (7, 15), (9, 19), (11, 23)]
    assert layer_mapping(12, 12, num_pairs=4) == [(2, 2), (5, 5), (8, 8), (11, 11)]
    assert layer_mapping(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert layer_mapping(3, 24) == [(0, 7), (1, 15), (2, 23)]  # default: min depth pairs
    assert layer_mapping(12, 24, num_pairs=1) == [(11, 23)]
    assert even_layers(12, 5) == [1, 3, 6, 8, 11]
    for depth in range(1, 30):
        for k in range(1, depth + 1):
            idx = even_layers(depth, k)
            assert idx[-1] == depth - 1 and len(idx) == k
            assert all(a < b for a, b in zip(idx, idx[1:]))


def test_layer_mapping_explicit_authors_mini_swin_t():
    pairs = layer_mapping(12, 24, student_layers=[1, 3, 5, 7, 9, 11], teacher_layers=[1, 3, 9, 15, 21, 23])
    assert pairs == [(1, 1), (3, 3), (5, 9), (7, 15), (9, 21), (11, 23)]
    # one list given: the other side is spread evenly
    assert layer_mapping(12, 24, student_layers=[5, 11]) == [(5, 11), (11, 23)]
    assert layer_mapping(12, 24, teacher_layers=(0, 23), num_pairs=2) == [(5, 0), (11, 23)]
    assert layer_mapping(12, 24, student_layers=np.array([1, 11]), teacher_layers=[3, 23]) == [
        (1, 3),
        (11, 23),
    ]


def test_layer_mapping_errors():
    with pytest.raises(MinivitError, match="student_layers has 2 entries but teacher_layers has 3"):
        layer_mapping(12, 24, student_layers=[1, 2], teacher_layers=[1, 2, 3])
    with pytest.raises(
        MinivitError, match=r"teacher_layers\[2\] = 24 is out of range for a 24-block teacher"
    ):
        layer_mapping(12, 24, student_layers=[1, 2, 3], teacher_layers=[1, 2, 24])
    with pytest.raises(MinivitError, match=r"student_layers\[0\] = -1 is out of range"):
        layer_mapping(12, 24, student_layers=[-1], teacher_layers=[1])
    with pytest.raises(MinivitError, match=r"student_layers\[1\] = 3 is not after student_layers\[0\] = 5"):
        layer_mapping(12, 24, student_layers=[5, 3], teacher_layers=[1, 2])
    with pytest.raises(MinivitError, match=r"teacher_layers\[1\] must be an integer block index, got 2.0"):
        layer_mapping(12, 24, student_layers=[1, 2], teacher_layers=[1, 2.0])
    with pytest.raises(MinivitError, match="cannot pick 13 distinct blocks from a model with 12 blocks"):
        layer_mapping(12, 24, num_pairs=13)
    with pytest.raises(MinivitError, match="num_pairs=3 but the layer lists have 2 entries"):
        layer_mapping(12, 24, num_pairs=3, student_layers=[1, 2])
    with pytest.raises(MinivitError, match="student_depth must be a positive integer"):
        layer_mapping(0, 24)
    with pytest.raises(MinivitError, match="student_layers is empty"):
        layer_mapping(12, 24, student_layers=[], teacher_layers=[])
