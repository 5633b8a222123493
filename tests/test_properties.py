"""Property-based tests (hypothesis) for the multiplexed stack and the distillation losses."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minivit
from minivit.distill.losses import attention_relation_loss, hidden_relation_loss, soft_cross_entropy
from minivit.errors import ConfigError

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def vit_configs(draw):
    depth = draw(st.integers(1, 6))
    share = draw(st.sampled_from([d for d in range(1, depth + 1) if depth % d == 0]))
    heads = draw(st.integers(1, 4))
    width = heads * draw(st.sampled_from([4, 8]))
    class_token = draw(st.booleans())
    return dict(depth=depth, share=share, heads=heads, width=width, class_token=class_token,
                transforms=draw(st.booleans()), separate_norms=draw(st.booleans()), irpe=draw(st.booleans()),
                batch=draw(st.integers(1, 3)))


def teacher_for(c):
    torch.manual_seed(0)
    return minivit.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, depth=c["depth"], embed_dim=c["width"],
        num_heads=c["heads"], num_classes=5, class_token=c["class_token"],
        global_pool="token" if c["class_token"] else "avg",
    ).eval()


@FAST
@given(vit_configs())
def test_multiplexed_stack_shapes_params_and_determinism(c):
    teacher = teacher_for(c)
    student = minivit.multiplex(teacher, share=c["share"], transforms=c["transforms"],
                                separate_norms=c["separate_norms"], irpe=c["irpe"]).eval()
    x = torch.randn(c["batch"], 3, 16, 16)
    with torch.no_grad():
        out = student(x)
        assert out.shape == (c["batch"], 5)
        assert torch.isfinite(out).all()
        assert torch.equal(out, student(x))  # deterministic in eval mode
    groups = list(student.blocks)
    assert len(groups) == c["depth"] // c["share"]
    assert all(g.share == c["share"] for g in groups)
    # shared weights appear once per group, never per layer
    qkv = {id(g.shared.attn.qkv.weight) for g in groups}
    assert len(qkv) == len(groups)


@FAST
@given(vit_configs())
def test_share1_identity_transforms_reproduce_the_teacher(c):
    teacher = teacher_for(c)
    student = minivit.multiplex(teacher, share=1, transforms=c["transforms"], irpe=c["irpe"]).eval()
    x = torch.randn(c["batch"], 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(student(x), teacher(x), atol=1e-5, rtol=1e-5)


@FAST
@given(vit_configs())
def test_full_rank_deltas_reproduce_the_teacher_at_any_share(c):
    teacher = teacher_for(c)
    with torch.no_grad():
        for p in teacher.parameters():  # every layer different, as in a trained model
            p.add_(torch.randn_like(p) * 0.05)
    student = minivit.multiplex(teacher, share=c["share"], transforms=c["transforms"], irpe=c["irpe"],
                                delta_rank=4 * c["width"]).eval()
    x = torch.randn(c["batch"], 3, 16, 16)
    with torch.no_grad():
        ref = teacher(x)
        assert (student(x) - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6


@FAST
@given(st.integers(2, 12), st.integers(1, 12))
def test_share_must_divide_depth(depth, share):
    teacher = minivit.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=depth,
                                   embed_dim=8, num_heads=2, num_classes=2)
    if depth % share == 0:
        assert len(minivit.multiplex(teacher, share=share).blocks) == depth // share
    else:
        try:
            minivit.multiplex(teacher, share=share)
        except ConfigError as e:
            assert "does not divide" in str(e)
        else:
            raise AssertionError("expected a ConfigError")


logits = st.integers(1, 4).flatmap(
    lambda b: st.integers(2, 6).flatmap(
        lambda c: st.tuples(
            st.lists(st.floats(-8, 8), min_size=b * c, max_size=b * c).map(lambda v: torch.tensor(v).view(b, c)),
            st.lists(st.floats(-8, 8), min_size=b * c, max_size=b * c).map(lambda v: torch.tensor(v).view(b, c)),
        )
    )
)


@settings(max_examples=50, deadline=None)
@given(logits, st.floats(0.5, 4.0))
def test_soft_cross_entropy_is_minimal_at_the_teacher(pair, temperature):
    s, t = pair
    loss = soft_cross_entropy(s, t, temperature)
    at_teacher = soft_cross_entropy(t, t, temperature)
    assert loss >= 0 and at_teacher >= 0
    assert loss >= at_teacher - 1e-5  # cross-entropy >= entropy (Gibbs)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(2, 6), st.sampled_from([4, 8]), st.sampled_from([4, 6, 8]), st.integers(0, 99))
def test_relation_losses_nonnegative_and_minimal_at_equality(b, n, cs, ct, seed):
    g = torch.Generator().manual_seed(seed)
    qkv_s = [tuple(torch.randn(b, n, cs, generator=g) for _ in range(3))]
    qkv_t = [tuple(torch.randn(b, n, ct, generator=g) for _ in range(3))]
    loss = attention_relation_loss(qkv_s, qkv_t)
    same = attention_relation_loss(qkv_t, qkv_t)
    assert loss >= 0 and loss >= same - 1e-5
    h_s, h_t = [torch.randn(b, n, cs, generator=g)], [torch.randn(b, n, ct, generator=g)]
    assert hidden_relation_loss(h_s, h_t) >= 0
    assert hidden_relation_loss(h_t, h_t) < 1e-10
