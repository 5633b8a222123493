"""Backbones: forward_intermediates, prune_intermediate_layers and features_only for every minivit model."""

import pytest
import timm
import torch

import minivit
from minivit.errors import ConfigError

SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=10)
VIT = dict(img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=3, num_classes=10)
X = torch.randn(2, 3, 32, 32)


def perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def close(a, b, tol=1e-5) -> bool:
    return all((p - q).abs().max().item() <= tol * max(1.0, q.abs().max().item()) for p, q in zip(a, b))


def test_mini_swin_t_features_only_gives_swin_t_stage_maps():
    x = torch.randn(1, 3, 224, 224)
    mini = timm.create_model("mini_swin_tiny_patch4_window7_224", features_only=True).eval()
    ref = timm.create_model("swin_tiny_patch4_window7_224", features_only=True).eval()
    with torch.no_grad():
        got, want = mini(x), ref(x)
    assert [t.shape for t in got] == [t.shape for t in want] and len(got) == 4
    assert mini.feature_info.reduction() == ref.feature_info.reduction() == [4, 8, 16, 32]
    assert mini.feature_info.channels() == ref.feature_info.channels()


def test_mini_deit_features_only_respects_out_indices():
    kw = dict(img_size=64, features_only=True)
    mini = timm.create_model("mini_deit_tiny_patch16_224", **kw).eval()
    ref = timm.create_model("deit_tiny_patch16_224", **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert [t.shape for t in mini(x)] == [t.shape for t in ref(x)] == [(2, 192, 4, 4)] * 3
    picked = timm.create_model("mini_deit_tiny_patch16_224", img_size=64, features_only=True, out_indices=(0, 3, -1))
    assert sum(len(g.layers) for g in picked.model.blocks) == 12 and picked.feature_info.reduction() == [16] * 3
    early = timm.create_model("mini_deit_tiny_patch16_224", img_size=64, features_only=True, out_indices=(2,))
    assert [len(g.layers) for g in early.model.blocks] == [2, 1]  # the second group keeps its first layer only
    with torch.no_grad():
        assert [t.shape for t in early(x)] == [(2, 192, 4, 4)]


@pytest.mark.parametrize("fmt", ["NCHW", "NLC"])
def test_a_share_1_vit_student_returns_its_teachers_intermediates(fmt):
    teacher = perturbed(timm.create_model("deit_tiny_patch16_224", **VIT))
    student = minivit.multiplex(teacher, share=1).eval()
    kw = dict(output_fmt=fmt, norm=True, return_prefix_tokens=True)
    with torch.no_grad():
        s_final, s_layers = student.forward_intermediates(X, **kw)
        t_final, t_layers = teacher.forward_intermediates(X, **kw)
    assert len(s_layers) == len(t_layers) == 4 and close([s_final], [t_final])
    for (s_map, s_prefix), (t_map, t_prefix) in zip(s_layers, t_layers):
        assert s_map.shape == t_map.shape and close([s_map, s_prefix], [t_map, t_prefix])
    with torch.no_grad():
        some = student.forward_intermediates(X, indices=[0, -1], intermediates_only=True, output_fmt=fmt)
        want = teacher.forward_intermediates(X, indices=[0, -1], intermediates_only=True, output_fmt=fmt)
    assert close(some, want)


def test_a_share_1_swin_student_returns_its_teachers_stage_maps():
    teacher = perturbed(timm.create_model("swin_tiny_patch4_window7_224", **SWIN))
    student = minivit.multiplex(teacher, share=1).eval()
    for kw in (dict(), dict(norm=True), dict(indices=1, stop_early=True)):
        with torch.no_grad():
            s_final, s_maps = student.forward_intermediates(X, **kw)
            t_final, t_maps = teacher.forward_intermediates(X, **kw)
        assert [m.shape for m in s_maps] == [m.shape for m in t_maps] and close(s_maps, t_maps)
        assert close([s_final], [t_final])


def test_a_shared_student_gives_one_feature_per_layer():
    student = perturbed(minivit.multiplex(perturbed(timm.create_model("deit_tiny_patch16_224", **VIT)), share=2))
    with torch.no_grad():
        final, layers = student.forward_intermediates(X, output_fmt="NLC", norm=True, return_prefix_tokens=True)
        features = student.forward_features(X)
    assert len(layers) == student.depth == 4 and len(student.feature_info) == 4
    assert torch.allclose(torch.cat(layers[-1][::-1], dim=1), features, atol=1e-6) and torch.equal(final, features)
    assert student.feature_info[3]["module"] == "blocks.1.layers.1.block_out"
    assert dict(student.named_modules())["blocks.1.layers.1.block_out"] is not None
    out = student.forward_intermediates(X, output_dict=True, indices=2)
    assert set(out) == {"image_intermediates", "image_features"} and len(out["image_intermediates"]) == 2


def test_saved_students_are_backbones_from_local_dir(tmp_path):
    vit = perturbed(minivit.multiplex(perturbed(timm.create_model("deit_tiny_patch16_224", **VIT)), share=2))
    swin = perturbed(minivit.multiplex(perturbed(timm.create_model("swin_tiny_patch4_window7_224", **SWIN)), share=2))
    for name, model, indices in (("vit", vit, (1, 2)), ("swin", swin, (0,))):
        minivit.save_pretrained(model, tmp_path / name)
        features = timm.create_model(f"local-dir:{tmp_path / name}", pretrained=True, features_only=True,
                                     out_indices=indices).eval()  # fmt: skip
        with torch.no_grad():
            got = features(X)
            want = model.forward_intermediates(X, indices=list(indices), intermediates_only=True)
        if name == "swin":  # timm's Swin features are NHWC maps
            want = [w.permute(0, 2, 3, 1) for w in want]
        assert len(got) == len(indices) and close(got, want, 1e-6)
    assert [n for n, _ in features.named_children()] == ["patch_embed", "layers_0"]  # nothing after the last index


def test_prune_intermediate_layers_keeps_what_the_indices_need():
    swin = minivit.create_model("mini_swin_tiny_patch4_window7_224", **{**SWIN, "depths": [2, 4]}).eval()
    assert swin.prune_intermediate_layers([0]) == [0]
    assert len(swin.layers) == 1 and swin.num_features == 32 and isinstance(swin.norm, torch.nn.Identity)
    with torch.no_grad():
        assert swin.forward_intermediates(X, intermediates_only=True)[0].shape == (2, 32, 16, 16)
    vit = minivit.multiplex(timm.create_model("deit_tiny_patch16_224", **VIT), share=4)
    assert vit.prune_intermediate_layers(2) == [2, 3] and vit.depth == 4 and vit.num_classes == 0
    with pytest.raises(ConfigError, match="out of range"):
        vit.forward_intermediates(X, indices=[7])
    with pytest.raises(ConfigError, match="output_fmt"):
        swin.forward_intermediates(X, output_fmt="NLC")
