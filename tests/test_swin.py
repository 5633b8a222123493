"""Mini-Swin: released architectures, the authors' checkpoints, multiplex() of timm Swins, hooks and losses."""

import json

import pytest
import timm
import torch

import minivit
from minivit.core import iter_layers
from minivit.distill import FeatureCapture, attention_relation_loss, hidden_relation_loss, layer_mapping, layer_points
from minivit.errors import ConfigError
from minivit.families.swin import MultiplexedSwinTransformer
from minivit.families.swin import from_teacher as multiplex_swin
from minivit.zoo import mini_swin as mini_swin_module
from minivit.zoo.mini_swin import build_from_official_config, convert_official_swin

MINI_SWIN = {
    "mini_swin_tiny_patch4_window7_224": 12_001_765,
    "mini_swin_small_patch4_window7_224": 26_463_205,
    "mini_swin_base_patch4_window7_224": 46_444_852,
}
SMALL = dict(img_size=32, patch_size=2, window_size=4, num_classes=10)


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def tiny_swin(**kw):
    """A small timm Swin (v1) with every weight perturbed, as a trained model would be."""
    args = dict(SMALL, embed_dim=32, depths=(2, 2), num_heads=(2, 4))
    args.update(kw)
    torch.manual_seed(0)
    m = timm.create_model("swin_tiny_patch4_window7_224", **args).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def mini_swin(**kw):
    args = dict(SMALL, embed_dim=16, depths=[2, 4], num_heads=[1, 2], unique_blocks=[1, 2])
    args.update(kw)
    torch.manual_seed(0)
    return minivit.create_model("mini_swin_tiny_patch4_window7_224", **args).eval()


@pytest.mark.parametrize("name", list(MINI_SWIN))
def test_released_parameter_counts_are_exact(name):
    with torch.device("meta"):  # shapes only: no time spent initialising weights
        model = timm.create_model(name)
    assert nparams(model) == MINI_SWIN[name]


@pytest.mark.parametrize("name", list(MINI_SWIN))
def test_released_key_sets_match_the_authors(name, official_dir):
    ref = json.loads((official_dir / "official_architectures.json").read_text())[name]
    assert ref["params"] == MINI_SWIN[name]
    theirs = {k: torch.empty(s, device="meta") for k, s in ref["state_dict"].items()}
    converted = {k: tuple(v.shape) for k, v in convert_official_swin(theirs).items()}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in timm.create_model(name).state_dict().items()}
    assert converted == ours


def test_official_small_reference_logits(official_dir):
    io = torch.load(official_dir / "mini_swin_small_cfg_io.pt", weights_only=True)
    model = minivit.load_official(official_dir / "mini_swin_small_cfg.pth", official_dir / "mini_swin_small_cfg.json")
    assert isinstance(model, MultiplexedSwinTransformer) and not model.training
    with torch.no_grad():
        out = model(io["input"])
    rel = (out - io["logits"]).abs().max() / io["logits"].abs().max()
    assert rel < 1e-5
    # the authors' code also masks the regular (unshifted) windows; without that quirk the logits differ
    cfg = json.loads((official_dir / "mini_swin_small_cfg.json").read_text())
    plain = build_from_official_config(cfg)
    plain.load_state_dict(model.state_dict())
    for layer in plain.modules():
        if hasattr(layer, "masked"):
            layer.masked = layer.shifted
    with torch.no_grad():
        assert (plain.eval()(io["input"]) - io["logits"]).abs().max() / io["logits"].abs().max() > 1e-4
    with pytest.raises(ConfigError, match="unknown Mini-Swin config fields: use_irpe"):
        build_from_official_config({**cfg, "use_irpe": True})
    # the registered model with the same hyper-parameters as kwargs, loaded through its pretrained filter
    kw = {k: cfg[k] for k in ("img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size")}
    named = minivit.create_model("mini_swin_small_patch4_window7_224", num_classes=10, **kw,
                                 unique_blocks=cfg["separate_layer_num_list"]).eval()
    raw = torch.load(official_dir / "mini_swin_small_cfg.pth", weights_only=True)
    named.load_state_dict(mini_swin_module._filter_official(raw, named))
    with torch.no_grad():
        assert torch.equal(named(io["input"]), out)


def test_structure_shift_pattern_and_switches():
    model = mini_swin(depths=[2, 6], num_heads=[1, 2], unique_blocks=[1, 2])
    stage = model.layers[1]
    assert [g.share for g in stage.blocks] == [3, 3]
    # layer j of a stage shifts iff j is odd (the authors' rule); repeats of one block alternate
    assert [layer.shifted for g in stage.blocks for layer in g.layers] == [False, True] * 3
    assert all(layer.masked for g in stage.blocks for layer in g.layers)  # the authors' quirk, on by default
    # the 8x8 grid of stage 1 with window 4 shifts by 2; one mask buffer per shared block, not saved
    assert stage.blocks[0].shared.attn_mask.shape == (4, 16, 16)
    assert not any("attn_mask" in k or "relative_position_index" in k for k in model.state_dict())
    layer = stage.blocks[0].layers[0]
    assert layer.pre_mix.bias is not None and layer.local_conv.kernel_size == (7, 7)
    naive = mini_swin(transforms=False, separate_norms=False, mlp_transform=False)
    g = naive.layers[0].blocks[0]
    assert g.layers[0].pre_mix is None and g.layers[0].norm1 is None and g.layers[0].local_conv is None
    assert g.shared.norm1 is not None
    assert naive(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 32, 32)), pre_logits=True).shape == (1, 32)


def test_multiplex_share1_identity_equals_teacher():
    teacher = tiny_swin()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = teacher(x)
        for transforms in (True, False):
            student = minivit.multiplex(teacher, share=1, transforms=transforms, mlp_transform=False).eval()
            assert (student(x) - ref).abs().max() < 1e-5
        # the authors' MLP transform form: its LN replaces the residual stream: close to, but not exactly, the teacher
        student = minivit.multiplex(teacher, share=1, mlp_transform=True, mlp_residual=False).eval()
        assert 0 < (student(x) - ref).abs().max() < ref.abs().max()
    assert isinstance(teacher.layers[0].blocks[0], timm.models.swin_transformer.SwinTransformerBlock)


def test_multiplex_share_ratios_and_inits():
    teacher = tiny_swin(depths=(2, 4), num_heads=(2, 4))
    blocks = sum(p.numel() for st in teacher.layers for p in st.blocks.parameters())
    other = nparams(teacher) - blocks
    s2 = minivit.multiplex(teacher, share=2, mlp_transform=False)
    single = minivit.multiplex(teacher, share=[2, 4], transforms=False, separate_norms=False, mlp_transform=False)
    per_stage = [sum(p.numel() for p in st.blocks[0].parameters()) for st in teacher.layers]
    assert nparams(single) - other == sum(per_stage)  # one block's weights per stage
    assert 0.5 < (nparams(s2) - other) / blocks < 0.53  # half the blocks + per-layer norms and transforms
    assert [g.share for g in single.layers[1].blocks] == [4]
    q = [b.attn.qkv.weight for b in teacher.layers[1].blocks]
    first = minivit.multiplex(teacher, share=2, init="first")
    mean = minivit.multiplex(teacher, share=2, init="mean")
    rnd = minivit.multiplex(teacher, share=2, init="random")
    assert torch.equal(first.layers[1].blocks[1].shared.attn.qkv.weight, q[2])
    assert torch.allclose(mean.layers[1].blocks[1].shared.attn.qkv.weight, (q[2] + q[3]) / 2)
    assert not torch.equal(rnd.layers[1].blocks[1].shared.attn.qkv.weight, q[2])
    table = teacher.layers[1].blocks[2].attn.relative_position_bias_table
    assert torch.equal(first.layers[1].blocks[1].shared.attn.relative_position_bias_table, table)
    # per-layer norms from their own layer; identity transforms; MLP-transform conv starts at zero
    assert torch.equal(first.layers[1].blocks[1].layers[1].norm1.weight, teacher.layers[1].blocks[3].norm1.weight)
    assert torch.equal(first.layers[0].blocks[0].layers[0].pre_mix.weight, torch.eye(2))
    assert first.layers[0].blocks[0].layers[0].local_conv.weight.abs().sum() == 0
    assert not any(layer.masked and not layer.shifted for layer in first.modules() if hasattr(layer, "masked"))
    trunc = minivit.multiplex(teacher, share=2, transform_init="trunc_normal")
    assert not torch.equal(trunc.layers[0].blocks[0].layers[0].pre_mix.weight, torch.eye(2))


def test_save_and_load_roundtrip(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    for i, model in enumerate([minivit.multiplex(tiny_swin(), share=2), mini_swin()]):
        model.eval()
        minivit.save_pretrained(model, tmp_path / str(i))
        cfg = json.loads((tmp_path / str(i) / "config.json").read_text())
        assert cfg["family"] == ("multiplexed_swin" if i == 0 else "timm")
        again = minivit.from_pretrained(tmp_path / str(i))
        with torch.no_grad():
            assert torch.equal(again(x), model(x))


def test_trace_and_compile_without_graph_breaks():
    model = mini_swin(depths=[2, 2], unique_blocks=[1, 1])  # every stage: one block run twice, shifted once
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, x, check_trace=False)
        assert torch.allclose(traced(x), ref, atol=1e-6)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        assert torch.allclose(compiled(x), ref, atol=1e-6)


def test_hooks_and_relation_losses_between_swin_teacher_and_mini_swin_student():
    teacher = tiny_swin(embed_dim=32, depths=(2, 4), num_heads=(2, 4))  # 6 layers, widths 32/64
    student = mini_swin(embed_dim=16, depths=[2, 2], num_heads=[1, 2], unique_blocks=[1, 1])  # 4 layers, 16/32
    assert len(layer_points(teacher)) == 6 and len(layer_points(student)) == 4
    pairs = layer_mapping(4, 6, student_layers=[1, 3], teacher_layers=[1, 5])  # shifted with shifted
    s_idx, t_idx = [p[0] for p in pairs], [p[1] for p in pairs]
    x = torch.randn(2, 3, 32, 32)
    with FeatureCapture(student, s_idx, qkv=True, hidden=True) as sc, FeatureCapture(
        teacher, t_idx, qkv=True, hidden=True
    ) as tc:
        student.train()
        student(x)
        with torch.no_grad():
            teacher(x)
        # window-wise qkv: (B * windows, tokens per window, C); hidden: (B, H * W, C)
        assert [tuple(q.shape) for q, _, _ in sc.qkv] == [(2 * 16, 16, 16), (2 * 4, 16, 32)]
        assert [tuple(q.shape) for q, _, _ in tc.qkv] == [(2 * 16, 16, 32), (2 * 4, 16, 64)]
        assert [tuple(h.shape) for h in sc.hidden] == [(2, 256, 16), (2, 64, 32)]
        attn = attention_relation_loss(sc.qkv, tc.qkv)
        hid = hidden_relation_loss(sc.hidden, tc.hidden)
        assert torch.isfinite(attn) and attn > 0 and torch.isfinite(hid) and hid > 0
        (attn + 0.1 * hid).backward()
    g = student.layers[1].blocks[0].shared.attn.qkv.weight.grad
    assert g is not None and g.abs().sum() > 0
    # the hooks see each layer exactly once, also through shared blocks: a share-1 copy captures the same
    copy = minivit.multiplex(teacher, share=1, mlp_transform=False).eval()
    with FeatureCapture(copy, [5], qkv=True) as cc, FeatureCapture(teacher, [5], qkv=True) as tc, torch.no_grad():
        copy(x)
        teacher(x)
        assert torch.allclose(cc.qkv[0][0], tc.qkv[0][0], atol=1e-5)


def test_authors_mapping_swin_b_teacher_to_mini_swin_t_student():
    """Full-size shapes on the meta device (no weights): the pairs agree in stage, windows and shifting."""
    with torch.device("meta"):
        teacher = timm.create_model("swin_base_patch4_window7_224").eval()
        student = timm.create_model("mini_swin_tiny_patch4_window7_224").eval()
        x = torch.empty(2, 3, 224, 224)
    pairs = layer_mapping(12, 24, student_layers=[1, 3, 5, 7, 9, 11], teacher_layers=[1, 3, 9, 15, 21, 23])
    s_idx, t_idx = [p[0] for p in pairs], [p[1] for p in pairs]
    s_shift = [layer.shifted for _, layer in iter_layers(student)]
    t_shift = [any(b.shift_size) for st in teacher.layers for b in st.blocks]
    assert [s_shift[i] for i in s_idx] == [t_shift[i] for i in t_idx] == [True] * 5 + [False]
    with FeatureCapture(student, s_idx, qkv=True, hidden=True) as sc, FeatureCapture(
        teacher, t_idx, qkv=True, hidden=True
    ) as tc, torch.no_grad():
        student(x)
        teacher(x)
        windows = [(2 * 64, 49), (2 * 16, 49)] + [(2 * 4, 49)] * 3 + [(2, 49)]
        assert [tuple(q.shape[:2]) for q, _, _ in sc.qkv] == [tuple(q.shape[:2]) for q, _, _ in tc.qkv] == windows
        assert [h.shape[:2] for h in sc.hidden] == [h.shape[:2] for h in tc.hidden]
        assert attention_relation_loss(sc.qkv, tc.qkv).shape == hidden_relation_loss(sc.hidden, tc.hidden).shape == ()


def test_bad_input_gives_clear_errors():
    with pytest.raises(ConfigError, match="image height 30 does not fit.*nearest image sizes that fit: 224"):
        minivit.create_model("mini_swin_tiny_patch4_window7_224", img_size=30)
    with pytest.raises(ConfigError, match="image width 36 does not fit.*nearest image sizes that fit: 32 or 48"):
        mini_swin(img_size=(32, 36))
    with pytest.raises(ConfigError, match=r"stage 2: unique_blocks=4 does not divide its depth 6 \(use one of"):
        minivit.create_model("mini_swin_tiny_patch4_window7_224", unique_blocks=[1, 1, 4, 1])
    with pytest.raises(ConfigError, match="share=3 does not divide stage 0 depth=2"):
        minivit.multiplex(tiny_swin(), share=3)
    with pytest.raises(ConfigError, match="share has 3 entries for 2 stages"):
        minivit.multiplex(tiny_swin(), share=[1, 1, 1])
    with pytest.raises(ConfigError, match="unknown init"):
        minivit.multiplex(tiny_swin(), share=1, init="best")
    with pytest.raises(ConfigError, match="already multiplexed"):
        multiplex_swin(mini_swin(), 1)
    with pytest.raises(ConfigError, match="not divisible by 3 heads"):
        mini_swin(num_heads=[3, 3])


@pytest.mark.parametrize(
    "img_size, patch_size, window_size, depths",
    [(32, 2, 4, (2, 2)), (48, 4, 3, (2, 2)), (56, 2, 7, (2, 2)), ((32, 48), 2, 4, (2, 4)), (64, 4, 8, (4, 2))],
)
def test_default_student_starts_equal_to_its_teacher(img_size, patch_size, window_size, depths):
    teacher = tiny_swin(img_size=img_size, patch_size=patch_size, window_size=window_size, depths=depths)
    student = minivit.multiplex(teacher, share=1).eval()  # default options: MLP transform on, residual form
    layer = student.layers[0].blocks[0].layers[0]
    assert layer.local_conv is not None and layer.local_residual
    x = torch.randn(2, 3, *((img_size,) * 2 if isinstance(img_size, int) else img_size))
    with torch.no_grad():
        ref = teacher(x)
        assert (student(x) - ref).abs().max() / ref.abs().max() < 1e-5


def test_released_architectures_keep_the_authors_mlp_transform_form(tmp_path):
    model = mini_swin()
    assert model.spec.mlp_residual is False
    assert not any(getattr(m, "local_residual", False) for m in model.modules())
    student = minivit.multiplex(tiny_swin(), share=2)
    minivit.save_pretrained(student, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["multiplex"]["mlp_residual"] is True and "share" not in cfg["model_args"]
    assert minivit.from_pretrained(tmp_path / "s").spec == student.spec


LEGACY_SWIN_CONFIG = {
    "family": "multiplexed_swin",
    "model_args": {
        "img_size": [32, 32], "patch_size": [2, 2], "in_chans": 3, "num_classes": 10, "global_pool": "avg",
        "embed_dim": 32, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "mlp_ratio": 4.0, "qkv_bias": True,
        "drop_rate": 0.0, "proj_drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.10000000149011612,
        "norm_eps": 1e-05, "share": [2, 2], "transforms": True, "separate_norms": True, "mlp_transform": True,
        "mask_regular_windows": False, "transform_init": "identity",
    },
    "format_version": 1,
    "num_classes": 10,
}


def test_folders_saved_in_the_older_config_layout_still_load(tmp_path):
    """Such a folder's MLP transform is the authors' form (the only one there was)."""
    from safetensors.torch import save_file

    student = minivit.multiplex(tiny_swin(), share=2, mlp_residual=False).eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LEGACY_SWIN_CONFIG))
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(folder / "model.safetensors"))
    again = minivit.from_pretrained(folder)
    assert again.spec == minivit.MultiplexSpec(share=(2, 2), mlp_transform=True, mlp_residual=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), student(x))
