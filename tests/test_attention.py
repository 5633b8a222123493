"""The attention core with head mixing: the training path is the reference arithmetic, the inference path
computes the same function (max |d| <= 1e-5 relative) in fewer passes."""

from __future__ import annotations

import pytest
import torch

from minivit.core.attention import head_mix, mixed_attention, rpe_logits

TOL = 1e-5  # relative to the largest output magnitude


@pytest.fixture(autouse=True)
def _no_small_shortcut(monkeypatch):
    """The inputs here are tiny; make the inference path run its own arithmetic on them too."""
    import minivit.core.attention as core

    monkeypatch.setattr(core, "SMALL_BYTES", 0)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _qkv(b: int, h: int, n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n, 3 * h * d, generator=g)  # the projection's output, as the layers see it
    return qkv.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)


def _mix(h: int, seed: int, bias: bool):
    g = torch.Generator().manual_seed(seed)
    w = torch.eye(h) + 0.3 * torch.randn(h, h, generator=g)
    return w, (0.2 * torch.randn(h, generator=g) if bias else None)


def _reference_vit(q, k, v, scale, pre_w, post_w, table=None, index=None):
    """The ViT layer's explicit attention as written before the core existed."""
    b, h, n, _ = q.shape
    q = q * scale
    attn = q @ k.transpose(-2, -1)
    if table is not None:
        attn = attn + torch.matmul(q, table).gather(-1, index.expand(b, h, n, n))
    if pre_w is not None:
        attn = torch.bmm(pre_w.expand(b, h, h), attn.reshape(b, h, n * n)).view(b, h, n, n)
    attn = attn.softmax(dim=-1)
    if post_w is not None:
        attn = torch.bmm(post_w.expand(b, h, h), attn.reshape(b, h, n * n)).view(b, h, n, n)
    return attn @ v


def _reference_swin(q, k, v, scale, pre, post, bias, mask):
    """The Swin layer's explicit attention as written before the core existed."""
    b, h, n, _ = q.shape
    attn = (q * scale) @ k.transpose(-2, -1)
    if pre is not None:
        attn = torch.bmm(pre[0].expand(b, h, h), attn.reshape(b, h, n * n)).view(b, h, n, n)
        bias = torch.baddbmm(pre[1].view(1, h, 1), pre[0].expand(1, h, h), bias.reshape(1, h, n * n))
        bias = bias.view(1, h, n, n)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(-1, nw, h, n, n) + (bias + mask.unsqueeze(1)).unsqueeze(0)).view(b, h, n, n)
    else:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    if post is not None:
        attn = torch.baddbmm(post[1].view(1, h, 1), post[0].expand(b, h, h), attn.reshape(b, h, n * n))
        attn = attn.view(b, h, n, n)
    return attn @ v


def _swin_mask(nw: int, n: int, seed: int = 0) -> torch.Tensor:
    """An additive (nW, N, N) mask like Swin's: 0 / -100 by region, never masking a token from itself."""
    g = torch.Generator().manual_seed(seed)
    region = torch.randint(0, 3, (nw, n), generator=g)
    region[: nw // 2] = 0  # some windows are not masked at all
    return torch.zeros(nw, n, n).masked_fill(region.unsqueeze(1) != region.unsqueeze(2), -100.0)


@pytest.mark.parametrize("rpe", [False, True])
@pytest.mark.parametrize("mixes", ["both", "pre", "post", "none"])
def test_vit_paths_match_reference(rpe, mixes):
    b, h, n, d = 3, 4, 17, 8  # a class token + a 4 x 4 grid
    q, k, v = _qkv(b, h, n, d)
    pre_w = _mix(h, 1, False)[0] if mixes in ("both", "pre") else None
    post_w = _mix(h, 2, False)[0] if mixes in ("both", "post") else None
    kw = dict(pre_w=pre_w, post_w=post_w)
    table = index = None
    if rpe:
        table = 0.5 * torch.randn(1, d, 50, generator=torch.Generator().manual_seed(3))
        index = torch.randint(0, 50, (n, n), generator=torch.Generator().manual_seed(4))
        index[0, :] = index[:, 0] = 49  # the class token's own bucket
        kw.update(rpe_table=table, rpe_index=index)
    ref = _reference_vit(q, k, v, d**-0.5, pre_w, post_w, table, index)
    torch.testing.assert_close(mixed_attention(q, k, v, d**-0.5, **kw), ref, rtol=0, atol=0)
    for ctx in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with ctx():
            assert _rel_err(mixed_attention(q, k, v, d**-0.5, fast=True, **kw), ref) <= TOL


def test_vit_per_head_rpe_tables():
    b, h, n, d = 2, 3, 10, 8
    q, k, v = _qkv(b, h, n, d, seed=5)
    table = torch.randn(h, d, 20, generator=torch.Generator().manual_seed(6))
    index = torch.randint(0, 20, (n, n), generator=torch.Generator().manual_seed(7))
    kw = dict(pre_w=_mix(h, 1, False)[0], post_w=_mix(h, 2, False)[0], rpe_table=table, rpe_index=index)
    ref = mixed_attention(q, k, v, d**-0.5, **kw)
    with torch.inference_mode():
        assert _rel_err(mixed_attention(q, k, v, d**-0.5, fast=True, **kw), ref) <= TOL


@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("masked", [True, False])
def test_swin_paths_match_reference(images, masked):
    nw, h, n, d = 4, 3, 9, 8  # 4 windows of 3 x 3 tokens per image
    b = images * nw
    q, k, v = _qkv(b, h, n, d, seed=8)
    pre, post = _mix(h, 1, True), _mix(h, 2, True)
    bias = torch.randn(1, h, n, n, generator=torch.Generator().manual_seed(9))
    mask = _swin_mask(nw, n) if masked else None
    kw = dict(pre_w=pre[0], pre_b=pre[1], post_w=post[0], post_b=post[1], bias=bias, mask=mask)
    ref = _reference_swin(q, k, v, d**-0.5, pre, post, bias, mask)
    torch.testing.assert_close(mixed_attention(q, k, v, d**-0.5, **kw), ref, rtol=0, atol=0)
    for ctx in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with ctx():
            assert _rel_err(mixed_attention(q, k, v, d**-0.5, fast=True, **kw), ref) <= TOL


def test_swin_without_pre_mix():
    nw, h, n, d = 4, 3, 9, 8
    q, k, v = _qkv(2 * nw, h, n, d, seed=10)
    post = _mix(h, 2, True)
    bias = torch.randn(1, h, n, n, generator=torch.Generator().manual_seed(11))
    kw = dict(post_w=post[0], post_b=post[1], bias=bias, mask=_swin_mask(nw, n))
    ref = mixed_attention(q, k, v, d**-0.5, **kw)
    with torch.inference_mode():
        assert _rel_err(mixed_attention(q, k, v, d**-0.5, fast=True, **kw), ref) <= TOL


def test_inference_path_gradients_match():
    """In eval mode with autograd on (e.g. saliency), the inference path is differentiable and agrees."""
    nw, h, n, d = 2, 3, 9, 8
    pre, post = _mix(h, 1, True), _mix(h, 2, True)
    grads = []
    for fast in (False, True):
        q, k, v = (t.clone().requires_grad_(True) for t in _qkv(2 * nw, h, n, d, seed=12))
        w = pre[0].clone().requires_grad_(True)
        bias = torch.randn(1, h, n, n, generator=torch.Generator().manual_seed(13))
        out = mixed_attention(q, k, v, d**-0.5, pre_w=w, pre_b=pre[1], post_w=post[0], post_b=post[1],
                              bias=bias, mask=_swin_mask(nw, n), fast=fast)
        out.square().sum().backward()
        grads.append([q.grad, k.grad, v.grad, w.grad])
    for slow, fast in zip(*grads):
        assert _rel_err(fast, slow) <= 1e-4


def test_inference_path_leaves_inputs_alone():
    b, h, n, d = 2, 3, 9, 8
    q, k, v = _qkv(b, h, n, d, seed=14)
    pre, post = _mix(h, 1, True), _mix(h, 2, True)
    bias = torch.randn(1, h, n, n)
    mask = _swin_mask(2, n)
    before = [t.clone() for t in (q, k, v, pre[0], post[0], bias, mask)]
    with torch.inference_mode():
        mixed_attention(q, k, v, 0.3, pre_w=pre[0], pre_b=pre[1], post_w=post[0], post_b=post[1],
                        bias=bias, mask=mask, fast=True)
    for t, t0 in zip((q, k, v, pre[0], post[0], bias, mask), before):
        assert torch.equal(t, t0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace: still what export can fall back to
def test_inference_path_traces_free_of_the_batch_size():
    """Traced with one image (batch == windows), run with three: the graph must not depend on the batch."""
    nw, h, n, d = 4, 3, 9, 8
    pre, post = _mix(h, 1, True), _mix(h, 2, True)
    bias, mask = torch.randn(1, h, n, n), _swin_mask(nw, n)
    kw = dict(pre_w=pre[0], pre_b=pre[1], post_w=post[0], post_b=post[1], bias=bias, mask=mask)

    def f(q, k, v):
        return mixed_attention(q, k, v, d**-0.5, fast=True, **kw)

    with torch.no_grad():
        traced = torch.jit.trace(f, tuple(t.contiguous() for t in _qkv(nw, h, n, d, seed=20)))
        q, k, v = (t.contiguous() for t in _qkv(3 * nw, h, n, d, seed=21))
        assert _rel_err(traced(q, k, v), mixed_attention(q, k, v, d**-0.5, **kw)) <= TOL


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace: still what export can fall back to
def test_inference_path_traces():
    b, h, n, d = 2, 3, 9, 8
    pre, post = _mix(h, 1, False)[0], _mix(h, 2, False)[0]

    def f(q, k, v):
        return mixed_attention(q, k, v, d**-0.5, pre_w=pre, post_w=post, fast=True)

    q, k, v = (t.contiguous() for t in _qkv(b, h, n, d, seed=15))
    with torch.no_grad():
        traced = torch.jit.trace(f, (q, k, v))
        q2, k2, v2 = (t.contiguous() for t in _qkv(b, h, n, d, seed=16))
        assert _rel_err(traced(q2, k2, v2), mixed_attention(q2, k2, v2, d**-0.5, pre_w=pre, post_w=post)) <= TOL


def test_dropout_runs_the_training_path():
    b, h, n, d = 2, 3, 9, 8
    q, k, v = _qkv(b, h, n, d)
    torch.manual_seed(0)
    a = mixed_attention(q, k, v, 0.3, pre_w=torch.eye(h), dropout_p=0.5, fast=True)
    torch.manual_seed(0)
    b_ = mixed_attention(q, k, v, 0.3, pre_w=torch.eye(h), dropout_p=0.5)
    assert torch.equal(a, b_)


def test_helpers():
    x = torch.randn(2, 3, 4, 5)
    w, bias = torch.randn(3, 3), torch.randn(3)
    torch.testing.assert_close(head_mix(x, w, bias), torch.einsum("oh,bhnm->bonm", w, x) + bias.view(1, 3, 1, 1))
    q = torch.randn(2, 3, 4, 6)
    table, index = torch.randn(1, 6, 7), torch.randint(0, 7, (4, 4))
    r = rpe_logits(q, table, index)
    assert r.shape == (2, 3, 4, 4)
    torch.testing.assert_close(r[1, 2, 3, 1], q[1, 2, 3] @ table[0, :, index[3, 1]])
    with pytest.raises(ValueError, match="rpe_index"):
        mixed_attention(q, q, q, 1.0, rpe_table=table)


@pytest.mark.parametrize("kind", ["vit_rpe", "swin"])
def test_inference_in_slices_matches(monkeypatch, kind):
    """A batch larger than the slice budget runs in slices (whole images when a window mask repeats)."""
    import minivit.core.attention as core

    monkeypatch.setattr(core, "CHUNK_BYTES", 3 * 9 * 9 * 4 * 3)  # three windows' worth of attention
    h, n, d = 3, 9, 8
    if kind == "swin":
        nw = 4
        q, k, v = _qkv(3 * nw, h, n, d, seed=17)
        pre, post = _mix(h, 1, True), _mix(h, 2, True)
        kw = dict(pre_w=pre[0], pre_b=pre[1], post_w=post[0], post_b=post[1],
                  bias=torch.randn(1, h, n, n), mask=_swin_mask(nw, n))
    else:
        q, k, v = _qkv(7, h, n, d, seed=18)
        kw = dict(pre_w=_mix(h, 1, False)[0], post_w=_mix(h, 2, False)[0],
                  rpe_table=torch.randn(1, d, 20), rpe_index=torch.randint(0, 20, (n, n)))
    ref = mixed_attention(q, k, v, d**-0.5, **kw)
    with torch.inference_mode():
        assert _rel_err(mixed_attention(q, k, v, d**-0.5, fast=True, **kw), ref) <= TOL


def test_tiny_attention_runs_the_reference_arithmetic(monkeypatch):
    import minivit.core.attention as core

    monkeypatch.setattr(core, "SMALL_BYTES", 1 << 16)
    b, h, n, d = 1, 3, 17, 8
    q, k, v = _qkv(b, h, n, d, seed=19)
    kw = dict(pre_w=_mix(h, 1, False)[0], post_w=_mix(h, 2, False)[0])
    with torch.inference_mode():
        assert torch.equal(mixed_attention(q, k, v, 0.3, fast=True, **kw), mixed_attention(q, k, v, 0.3, **kw))


def _train_path_logits(model, x):
    """The training path's output (train mode, no dropout/drop-path in these models)."""
    model.train()
    with torch.no_grad():
        out = model(x)
    model.eval()
    return out


@pytest.mark.parametrize("kind", ["vit", "vit_irpe", "swin"])
def test_models_in_eval_mode_take_the_inference_path_with_the_same_result(kind):
    import timm

    import minivit

    torch.manual_seed(0)
    if kind.startswith("vit"):
        teacher = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4, embed_dim=48,
                                    num_heads=3, num_classes=5)
        x = torch.randn(4, 3, 32, 32)
    else:
        teacher = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4,
                                    embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=5,
                                    drop_path_rate=0.0)
        x = torch.randn(4, 3, 32, 32)
    student = minivit.multiplex(teacher, share=2, transform_init="trunc_normal", irpe=kind == "vit_irpe")
    with torch.no_grad():  # non-trivial tables, so the iRPE term is exercised
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ref = _train_path_logits(student, x)
    with torch.no_grad():
        fast = student.eval()(x)
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_sliced_eager_inference_of_a_vit_equals_its_training_path():
    """Batches large enough to be sliced (257 tokens: about 0.5 MiB of attention per image): eager inference takes
    q, k, v as strided views of the qkv projection and copies them slice by slice; same result as training mode."""
    import minivit
    from minivit.core import attention

    torch.manual_seed(0)
    teacher = minivit.create_model("vit_small_patch16_224", img_size=64, patch_size=4, depth=2, embed_dim=32,
                                   num_heads=2, num_classes=5)
    student = minivit.multiplex(teacher, share=2)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "mix" in name:
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(5, 3, 64, 64)
    assert 5 > attention.CHUNK_BYTES // (2 * 257 * 257 * 4)  # the batch is sliced
    with torch.no_grad():
        reference = student.train()(x)
        fast = student.eval()(x)
    assert ((fast - reference).abs().max() / reference.abs().max()).item() < 1e-5


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_inference_path_under_autocast(kind):
    """Mixed-precision inference (autocast picks each product's dtype): the head-mixed inference path must not
    write a low-precision product into a float32 buffer, and lands within bf16 rounding of float32."""
    h, n, d = 3, 9, 8
    if kind == "swin":
        nw = 4
        q, k, v = _qkv(2 * nw, h, n, d, seed=21)
        kw = dict(pre_w=_mix(h, 1, False)[0], post_w=_mix(h, 2, False)[0], bias=torch.randn(1, h, n, n),
                  mask=_swin_mask(nw, n))
    else:
        q, k, v = _qkv(5, h, n, d, seed=22)
        kw = dict(pre_w=_mix(h, 1, False)[0], post_w=_mix(h, 2, True)[0])
    with torch.inference_mode():
        ref = mixed_attention(q, k, v, d**-0.5, fast=True, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = mixed_attention(q, k, v, d**-0.5, fast=True, **kw)
    assert _rel_err(low.float(), ref) <= 3e-2


def test_gpu_runs_the_batch_whole():
    """Cache-sized slices are a CPU measure: on a GPU they would only add kernel launches."""
    from minivit.core.attention import _sliced

    assert _sliced(torch.device("cpu"))
    assert not _sliced(torch.device("cuda", 0)) and not _sliced(torch.device("meta"))
