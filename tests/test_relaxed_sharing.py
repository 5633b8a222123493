"""Relaxed sharing (spec.delta_rank): per-layer low-rank deltas on the shared qkv/proj/fc1/fc2 weights."""

import pytest
import timm
import torch

import minivit
from minivit.core import DELTA_NAMES, LayerDeltas, LowRankDelta, iter_layers, unique_parameter_count


def tiny_vit():
    torch.manual_seed(0)
    m = minivit.create_model("vit_small_patch16_224", img_size=32, patch_size=8, depth=4, embed_dim=48,
                             num_heads=3, num_classes=10).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def tiny_swin(same_tables: bool = False):
    torch.manual_seed(0)
    m = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4, num_classes=10,
                          embed_dim=32, depths=(2, 2), num_heads=(2, 4)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if same_tables:  # what a delta cannot express: the shared relative-position table, made equal per pair
            for stage in m.layers:
                table = stage.blocks[0].attn.relative_position_bias_table
                stage.blocks[1].attn.relative_position_bias_table.copy_(table)
    return m


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_rank_zero_is_plain_minivit():
    teacher = tiny_vit()
    plain = minivit.multiplex(teacher, share=2)
    zero = minivit.multiplex(teacher, share=2, delta_rank=0)
    assert all(layer.delta is None for _, layer in iter_layers(zero))
    assert plain.state_dict().keys() == zero.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), zero.eval()(x))


@pytest.mark.parametrize("share, init", [(2, "first"), (4, "mean"), (2, "random")])
def test_full_rank_reproduces_the_vit_teacher(share, init):
    teacher = tiny_vit()
    student = minivit.multiplex(teacher, share=share, init=init, delta_rank=10_000).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(student(x), teacher(x)) < 1e-5


def test_full_rank_reproduces_the_swin_teacher():
    teacher = tiny_swin(same_tables=True)
    student = minivit.multiplex(teacher, share=2, delta_rank=10_000).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(student(x), teacher(x)) < 1e-5


def test_higher_rank_starts_closer_to_the_teacher_weights():
    teacher = tiny_vit()
    errs = []
    for r in (0, 4, 16, 48):
        student = minivit.multiplex(teacher, share=4, delta_rank=r)
        err = 0.0
        for (shared, layer), block in zip(iter_layers(student), teacher.blocks):
            w = shared.mlp.fc1.weight + (layer.delta.fc1.up @ layer.delta.fc1.down if r else 0)
            err += (w - block.mlp.fc1.weight).norm().item()
        errs.append(err)
    assert errs[0] > errs[1] > errs[2] > errs[3] and errs[3] < 1e-4 * errs[0]


def test_a_zero_delta_starts_silent_but_can_learn():
    student = minivit.multiplex(tiny_vit(), share=2, delta_rank=4)  # init=first: layer 0 of a group is its block
    d = student.blocks[0].layers[0].delta.qkv
    assert d.up.abs().sum() == 0 and d.down.abs().sum() > 0 and d.bias.abs().sum() == 0
    student.train()
    student(torch.randn(2, 3, 32, 32)).sum().backward()
    assert d.up.grad.abs().sum() > 0


@pytest.mark.parametrize("rank", [1, 3, 100])
def test_parameter_count_formula(rank):
    teacher = tiny_vit()
    base = unique_parameter_count(minivit.multiplex(teacher, share=2))
    student = minivit.multiplex(teacher, share=2, delta_rank=rank)
    extra = 0
    for shared, _ in iter_layers(student):
        for lin in (shared.attn.qkv, shared.attn.proj, shared.mlp.fc1, shared.mlp.fc2):
            r = min(rank, lin.in_features, lin.out_features)
            extra += r * (lin.in_features + lin.out_features) + lin.out_features
    assert unique_parameter_count(student) == base + extra
    # factorised in the saved state dict too: (rank, in) and (out, rank), never (out, in)
    layer = student.blocks[0].layers[1]
    assert layer.delta.fc1.down.shape == (min(rank, 48), 48) and layer.delta.fc1.up.shape == (192, min(rank, 48))


def test_save_load_roundtrip_and_trace(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    for i, student in enumerate([minivit.multiplex(tiny_vit(), share=2, delta_rank=3),
                                 minivit.multiplex(tiny_swin(), share=2, delta_rank=3)]):
        student.eval()
        minivit.save_pretrained(student, tmp_path / str(i))
        again = minivit.from_pretrained(tmp_path / str(i))
        assert again.spec.delta_rank == 3
        with torch.no_grad():
            ref = student(x)
            assert torch.equal(again(x), ref)
            traced = torch.jit.trace(student, x, check_trace=False)
            assert torch.allclose(traced(x), ref, atol=1e-6)


def test_low_rank_delta_init_is_the_truncated_svd():
    torch.manual_seed(0)
    w = torch.randn(6, 2) @ torch.randn(2, 5)  # rank 2
    exact = LowRankDelta(5, 6, 2).init_from(w)
    assert torch.allclose(exact.up @ exact.down, w, atol=1e-5)
    one = LowRankDelta(5, 6, 1).init_from(w)
    u, s, vh = torch.linalg.svd(w)
    assert torch.allclose(one.up @ one.down, s[0] * torch.outer(u[:, 0], vh[0]), atol=1e-5)
    lin = torch.nn.Linear(5, 6)
    deltas = LayerDeltas.between(dict.fromkeys(DELTA_NAMES, lin), dict.fromkeys(DELTA_NAMES, lin), 2)
    assert all(getattr(deltas, n).up.abs().sum() == 0 for n in DELTA_NAMES)


def test_int8_quantisation_reaches_the_deltas():
    from minivit.export import quantize_dynamic_int8, state_dict_bytes

    teacher = tiny_vit()
    student = minivit.multiplex(teacher, share=len(teacher.blocks), delta_rank=8).eval()
    q = quantize_dynamic_int8(student)
    kinds = {type(m.up_proj).__module__ for m in q.modules() if hasattr(m, "up_proj")}
    assert kinds and all("quantized" in k for k in kinds), kinds
    assert state_dict_bytes(q) < 0.7 * state_dict_bytes(student)  # a tiny model: per-tensor overhead counts
    x = torch.randn(2, *student.patch_embed.proj.weight.shape[1:2], *student.patch_embed.img_size)
    with torch.no_grad():
        ref = student(x)
        assert (q(x) - ref).abs().max() <= 0.05 * ref.abs().max()
    repr(q)  # printing a quantised student works


def _trained_a_little(student):
    """Deltas moved away from their SVD start, so folding has something to get wrong."""
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "delta" in name:
                p.add_(torch.randn_like(p) * 0.02)
    return student


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_folded_deltas_equal_the_factorised_student(family):
    teacher = tiny_vit() if family == "vit" else tiny_swin()
    student = _trained_a_little(minivit.multiplex(teacher, share=2, delta_rank=3, init="mean")).eval()
    folded = minivit.fold_deltas(student)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(folded(x), student(x)) < 1e-5
    # the inference copy runs one product per corrected map; the model it came from keeps its factors
    kinds = {type(getattr(layer.delta, n)).__name__ for _, layer in iter_layers(folded) for n in DELTA_NAMES}
    assert kinds == {"FoldedDelta"}
    assert all(type(layer.delta.qkv) is LowRankDelta for _, layer in iter_layers(student))
    assert folded.state_dict().keys() == student.state_dict().keys()
    assert minivit.measure.tensor_bytes(folded) == minivit.measure.tensor_bytes(student)
    # for a deployed file: the same function without the factors, which the folded maps no longer need
    lean = minivit.fold_deltas(student, keep_factors=False)
    with torch.no_grad():
        assert torch.equal(lean(x), folded(x))
    assert not any("up_proj" in k or "down_proj" in k for k in lean.state_dict())
    assert folded.state_dict().keys() == student.state_dict().keys()  # each copy is its own


def test_folded_model_refuses_training_and_plain_models_pass_through():
    student = minivit.multiplex(tiny_vit(), share=2, delta_rank=2)
    folded = minivit.fold_deltas(student)
    with pytest.raises(minivit.ConfigError, match="folded for inference"):
        folded.train()
    student.train()  # the original is untouched and can still train
    assert student.training and all(type(layer.delta.fc1) is LowRankDelta for _, layer in iter_layers(student))
    plain = minivit.multiplex(tiny_vit(), share=2)
    assert minivit.fold_deltas(plain) is plain


def test_folding_an_int8_student_runs_one_int8_product_per_map():
    """An int8 student (the factors stored as int8) folds into requantised per-layer weights: the same
    arithmetic as an int8 teacher, equal to the factorised int8 model up to one more int8 rounding."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    from minivit.core.delta import QuantizedFoldedDelta
    from minivit.export import quantize_dynamic_int8

    student = _trained_a_little(minivit.multiplex(tiny_vit(), share=2, delta_rank=2, init="mean")).eval()
    x = torch.randn(4, 3, 32, 32)
    for per_channel in (False, True):
        q = quantize_dynamic_int8(student, per_channel=per_channel)
        folded = minivit.fold_deltas(q)
        forms = [getattr(layer.delta, n) for _, layer in iter_layers(folded) for n in DELTA_NAMES]
        assert forms and all(type(f) is QuantizedFoldedDelta for f in forms)
        assert all(type(f.merged) is DynamicQuantizedLinear for f in forms)
        scheme = forms[0].merged.weight().qscheme()
        assert (scheme == torch.per_channel_affine) == per_channel
        with torch.no_grad():
            ref, fp32 = q(x), student(x)
            assert rel_err(folded(x), ref) < 0.05 and rel_err(folded(x), fp32) < 0.05
        assert all(type(layer.delta.qkv) is LowRankDelta for _, layer in iter_layers(q))  # q itself untouched
        with pytest.raises(minivit.ConfigError, match="folded for inference"):
            folded.train()


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_deltas_without_bias_offsets_share_the_group_biases(family, tmp_path):
    """``delta_bias=False``: the deltas carry no bias offsets (each layer runs its group's shared biases), the
    student is smaller by exactly those numbers, and every way to run, fold, quantise, export or reload it agrees."""
    from minivit.budget import estimate_bytes, int8_size
    from minivit.core.delta import merge_in_graph
    from minivit.export import int8_bytes, quantize_dynamic_int8
    from minivit.measure import tensor_bytes

    teacher = tiny_vit() if family == "vit" else tiny_swin()
    spec = minivit.MultiplexSpec(share=2, delta_rank=3, init="mean", delta_bias=False)
    student = _trained_a_little(minivit.multiplex(teacher, spec)).eval()
    with_offsets = minivit.multiplex(teacher, spec.replace(delta_bias=True))
    layers = [layer for _, layer in iter_layers(student)]
    assert all(getattr(layer.delta, n).bias is None for layer in layers for n in DELTA_NAMES)
    offsets = sum(getattr(layer.delta, n).bias.numel() for _, layer in iter_layers(with_offsets) for n in DELTA_NAMES)
    assert tensor_bytes(with_offsets) - tensor_bytes(student) == 4 * offsets
    assert estimate_bytes(teacher, 2, 3, spec) == tensor_bytes(student)
    assert int8_size(teacher, spec)(3) == int8_bytes(student) < int8_size(teacher, spec.replace(delta_bias=True))(3)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = student(x)
        assert rel_err(minivit.fold_deltas(student)(x), ref) < 1e-5
        assert rel_err(merge_in_graph(student)(x), ref) < 1e-5
        q = quantize_dynamic_int8(student)
        assert rel_err(minivit.fold_deltas(q)(x), q(x)) < 0.05
    minivit.save_pretrained(student, tmp_path / "s")
    again = minivit.from_pretrained(tmp_path / "s").eval()
    assert again.spec.delta_bias is False
    with torch.no_grad():
        assert torch.equal(again(x), ref)


def test_without_bias_offsets_full_rank_still_reproduces_every_weight():
    """Offsets or not, the weights start at the teacher's at full rank; only the biases are the group's mean."""
    from minivit.budget import start_error

    teacher = tiny_vit()
    student = minivit.multiplex(teacher, share=2, delta_rank=48, init="mean", delta_bias=False).eval()
    folded = minivit.fold_deltas(student)
    assert start_error(teacher, 2, 48, "mean") < 1e-20
    for i, (_, layer) in enumerate(iter_layers(folded)):
        own = teacher.blocks[i]
        assert torch.allclose(layer.delta.fc1.weight, own.mlp.fc1.weight, atol=1e-5)
        group = [teacher.blocks[j].mlp.fc1.bias for j in range(i - i % 2, i - i % 2 + 2)]
        assert torch.allclose(layer.delta.fc1.bias, torch.stack(group).mean(0), atol=1e-6)
