"""The multiplexed ViT: released Mini-DeiT architectures, the authors' checkpoints, multiplex()."""

import json

import pytest
import timm
import torch

import minivit
from minivit.core import piecewise_index, product_bucket_index
from minivit.errors import CheckpointError, ConfigError
from minivit.zoo.mini_deit import convert_official_deit

MINI_DEIT = {
    "mini_deit_tiny_patch16_224": 3_090_304,
    "mini_deit_small_patch16_224": 11_450_824,
    "mini_deit_base_patch16_224": 44_098_408,
    "mini_deit_base_patch16_384": 44_390_248,
}


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def tiny_vit(**kw):
    args = dict(img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=3, num_classes=10)
    args.update(kw)
    torch.manual_seed(0)
    m = minivit.create_model("vit_small_patch16_224", **args).eval()
    with torch.no_grad():  # make every layer (norms included) different, as in a trained model
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("name", list(MINI_DEIT))
def test_released_parameter_counts_are_exact(name):
    assert nparams(timm.create_model(name)) == MINI_DEIT[name]


@pytest.mark.parametrize("name", list(MINI_DEIT))
def test_released_key_sets_match_the_authors(name, official_dir):
    ref = json.loads((official_dir / "official_architectures.json").read_text())[name]
    assert ref["params"] == MINI_DEIT[name]
    theirs = {k: torch.empty(s) for k, s in ref["state_dict"].items()}
    converted = {k: tuple(v.shape) for k, v in convert_official_deit(theirs).items()}
    ours = {k: tuple(v.shape) for k, v in timm.create_model(name).state_dict().items()}
    assert converted == ours


def test_official_small_reference_logits(official_dir):
    model = minivit.load_official(official_dir / "mini_deit_small_cfg.pth", official_dir / "mini_deit_small_cfg.json")
    io = torch.load(official_dir / "mini_deit_small_cfg_io.pt", weights_only=True)
    with torch.no_grad():
        out = model(io["input"])
    rel = (out - io["logits"]).abs().max() / io["logits"].abs().max()
    assert rel < 1e-5
    # the same through a config dict (the authors' names)
    cfg = json.loads((official_dir / "mini_deit_small_cfg.json").read_text())
    model2 = minivit.load_official(official_dir / "mini_deit_small_cfg.pth", cfg)
    assert torch.equal(model2(io["input"]), out)


def test_piecewise_index_matches_the_irpe_definition():
    x = torch.arange(-10, 11)
    got = piecewise_index(x, 1.9, 3.8, 15.2).tolist()
    # |x|<=1.9 exact; 2,3 -> 2; 4 -> 3; beyond -> clipped to 3
    expected = [-3] * 6 + [-3, -2, -2, -1, 0, 1, 2, 2, 3] + [3] * 6
    assert got == expected
    ids = product_bucket_index((14, 14))
    assert ids.shape == (196, 196) and ids.min() == 0 and ids.max() == 48
    assert (ids.diagonal() == 24).all()  # zero offset -> the centre bucket
    with_cls = product_bucket_index((4, 4), num_prefix_tokens=1)
    assert (with_cls[0] == 49).all() and (with_cls[:, 0] == 49).all()


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(class_token=False, global_pool="avg"),
        dict(global_pool="avg", reg_tokens=2),
        dict(init_values=1e-2, no_embed_class=True),
        dict(qk_norm=True),
    ],
)
def test_multiplex_share1_identity_equals_teacher(kw):
    teacher = tiny_vit(**kw)
    x = torch.randn(3, 3, 32, 32)
    student = minivit.multiplex(teacher, share=1).eval()
    with torch.no_grad():
        assert torch.allclose(student(x), teacher(x), atol=1e-5, rtol=1e-5)


def test_multiplex_share_ratios_and_inits():
    teacher = minivit.create_model("deit_small_patch16_224", num_classes=10)
    blocks = sum(p.numel() for p in teacher.blocks.parameters())
    other = nparams(teacher) - blocks
    s2 = minivit.multiplex(teacher, share=2)
    s12 = minivit.multiplex(teacher, share=12, transforms=False, separate_norms=False)
    s2_blocks = nparams(s2) - other
    assert 0.5 < s2_blocks / blocks < 0.52  # half the blocks + per-layer norms and transforms
    assert nparams(s12) - other == blocks // 12  # one block's weights
    first = minivit.multiplex(teacher, share=2, init="first")
    mean = minivit.multiplex(teacher, share=2, init="mean")
    q0, q1 = teacher.blocks[0].attn.qkv.weight, teacher.blocks[1].attn.qkv.weight
    assert torch.equal(first.blocks[0].shared.attn.qkv.weight, q0)
    assert torch.allclose(mean.blocks[0].shared.attn.qkv.weight, (q0 + q1) / 2)
    rnd = minivit.multiplex(teacher, share=2, init="random")
    assert not torch.equal(rnd.blocks[0].shared.attn.qkv.weight, q0)
    # per-layer norms copied from their own layer; teacher untouched
    assert torch.equal(s2.blocks[0].layers[1].norm1.weight, teacher.blocks[1].norm1.weight)
    assert isinstance(teacher.blocks[0], timm.models.vision_transformer.Block)


def test_multiplex_by_name_and_naive_flags():
    student = minivit.multiplex("deit_tiny_patch16_224", share=3, transforms=False, separate_norms=False,
                                img_size=32, patch_size=8, num_classes=5)
    group = student.blocks[0]
    assert group.share == 3 and group.shared.norm1 is not None and group.layers[0].norm1 is None
    assert group.layers[0].pre_mix is None
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_save_and_load_roundtrip(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    for model in [tiny_vit(), minivit.multiplex(tiny_vit(), share=2, irpe=True),
                  minivit.create_model("mini_deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)]:
        model.eval()
        out = tmp_path / type(model).__name__
        minivit.save_pretrained(model, out)
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
        again = minivit.from_pretrained(out)
        with torch.no_grad():
            assert torch.equal(again(x), model(x))


def test_trace_and_compile_without_graph_breaks():
    model = minivit.create_model("mini_deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), ref, atol=1e-6)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        assert torch.allclose(compiled(x), ref, atol=1e-6)


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown model name 'mini_deit_tiyn"):
        minivit.create_model("mini_deit_tiyn_patch16_224")
    with pytest.raises(ConfigError, match="share=5 does not divide depth=12"):
        minivit.multiplex("deit_tiny_patch16_224", share=5)
    with pytest.raises(ConfigError, match="share=5 does not divide depth=12"):
        minivit.create_model("mini_deit_tiny_patch16_224", share=5)
    with pytest.raises(ConfigError, match="needs a timm VisionTransformer"):
        minivit.multiplex(torch.nn.Linear(3, 3))
    # a checkpoint for another architecture: the first offending keys are named
    small = minivit.create_model("mini_deit_tiny_patch16_224", img_size=32, patch_size=8)
    torch.save({"model": {"pos_embed": torch.zeros(1, 4, 192)}}, tmp_path / "bad.pth")
    cfg = {"img_size": 32, "patch_size": 8, "embed_dim": 192, "depth": 12, "num_heads": 3, "use_cls_token": False,
           "repeated_times": 2, "use_transform": True, "irpe": {"ratio": 1.9}}
    with pytest.raises(CheckpointError, match="missing key.*shape mismatch"):
        minivit.load_official(tmp_path / "bad.pth", cfg)
    assert small is not None
    with pytest.raises(CheckpointError, match="not found"):
        minivit.load_official(tmp_path / "nope.pth", cfg)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        minivit.from_pretrained(tmp_path)


def test_spec_is_stored_whole_and_saved_as_one_object(tmp_path):
    spec = minivit.MultiplexSpec(share=2, irpe=True, init="mean")
    student = minivit.multiplex(tiny_vit(), spec)
    assert student.spec == spec and "share" not in student.arch_args
    minivit.save_pretrained(student, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["family"] == "multiplexed_vit" and cfg["multiplex"] == spec.to_dict()
    assert minivit.from_pretrained(tmp_path / "m").spec == spec


# config.json as written before the spec had its own object: the options sat among model_args
LEGACY_VIT_CONFIG = {
    "family": "multiplexed_vit",
    "model_args": {
        "img_size": [32, 32], "patch_size": [8, 8], "in_chans": 3, "num_classes": 10, "global_pool": "token",
        "embed_dim": 48, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0, "qkv_bias": True, "qk_norm": False,
        "proj_bias": True, "init_values": None, "class_token": True, "pos_embed": "learn", "no_embed_class": False,
        "reg_tokens": 0, "pre_norm": False, "final_norm": True, "fc_norm": False, "pool_include_prefix": False,
        "dynamic_img_size": False, "act_layer": "gelu", "share": 2, "transforms": True, "separate_norms": True,
        "irpe": True, "irpe_ratio": 1.9, "transform_init": "identity", "norm_eps": 1e-06,
    },
    "format_version": 1,
    "num_classes": 10,
}


def test_folders_saved_in_the_older_config_layout_still_load(tmp_path):
    from safetensors.torch import save_file

    student = minivit.multiplex(tiny_vit(), share=2, irpe=True).eval()
    with torch.no_grad():
        for p in student.parameters():  # trained-like: iRPE tables and transforms away from their start
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LEGACY_VIT_CONFIG))
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(folder / "model.safetensors"))
    again = minivit.from_pretrained(folder)
    assert again.spec == minivit.MultiplexSpec(share=2, irpe=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), student(x))
    minivit.save_pretrained(again, tmp_path / "new")  # re-saved in the current layout
    assert "multiplex" in json.loads((tmp_path / "new" / "config.json").read_text())
