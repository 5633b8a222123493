"""Students are timm/Hub models: config.json in timm's layout, local-dir:/hf-hub: loading, push, data config."""

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_model_data_config
from timm.models import PretrainedCfg

import minivit
from minivit.cli.main import main
from minivit.data import apply_data_config, default_data_config

X = torch.randn(2, 3, 32, 32)
SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=10)


def perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():  # every weight away from its init, as in a trained model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def vit_teacher():
    torch.manual_seed(0)
    return perturbed(
        timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=3,
                          num_classes=10)
    )  # fmt: skip


def swin_teacher():
    torch.manual_seed(0)
    return perturbed(timm.create_model("swin_tiny_patch4_window7_224", **SWIN))


def students():
    return {
        "vit": perturbed(minivit.multiplex(vit_teacher(), share=2, irpe=True)),
        "swin": perturbed(minivit.multiplex(swin_teacher(), share=2)),
    }


def max_diff(a, b) -> float:
    with torch.no_grad():
        return (a(X) - b(X)).abs().max().item()


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_timm_loads_a_saved_student_from_local_dir(tmp_path, kind):
    student = students()[kind]
    minivit.save_pretrained(student, tmp_path / kind)
    cfg = json.loads((tmp_path / kind / "config.json").read_text())
    assert cfg["architecture"] == f"multiplexed_{kind}" and cfg["num_classes"] == 10
    assert cfg["num_features"] == student.num_features and cfg["model_args"]["multiplex"] == student.spec.to_dict()
    PretrainedCfg(**cfg["pretrained_cfg"])  # only timm's own keys
    again = timm.create_model(f"local-dir:{tmp_path / kind}", pretrained=True).eval()
    assert type(again) is type(student) and again.spec == student.spec
    assert max_diff(again, student) <= 1e-6
    assert max_diff(minivit.from_pretrained(tmp_path / kind), student) <= 1e-6


def test_named_and_plain_models_load_from_local_dir(tmp_path):
    named = perturbed(minivit.create_model("mini_swin_tiny_patch4_window7_224", **{**SWIN, "depths": [2, 4],
                                                                                    "unique_blocks": [1, 2]}))
    plain = perturbed(timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, depth=2,
                                                                       embed_dim=48, num_heads=3, num_classes=10))
    for name, model in (("named", named), ("plain", plain)):
        minivit.save_pretrained(model, tmp_path / name)
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg["architecture"] == ("mini_swin_tiny_patch4_window7_224" if name == "named" else "plain_vit")
        again = timm.create_model(f"local-dir:{tmp_path / name}", pretrained=True).eval()  # no key renaming
        assert max_diff(again, model) <= 1e-6
        assert max_diff(minivit.from_pretrained(tmp_path / name), model) == 0


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_a_student_carries_its_teachers_data_config(tmp_path, kind):
    teacher = vit_teacher() if kind == "vit" else swin_teacher()
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, "mean": (0.5, 0.4, 0.3), "interpolation": "bilinear"}
    student = minivit.multiplex(teacher, share=2)
    want = {**resolve_model_data_config(teacher), "input_size": (3, 32, 32)}
    assert resolve_model_data_config(student) == want
    assert "url" not in student.pretrained_cfg and student.pretrained_cfg["architecture"] == f"multiplexed_{kind}"
    minivit.save_pretrained(student, tmp_path / "s")
    for again in (minivit.from_pretrained(tmp_path / "s"), timm.create_model(f"local-dir:{tmp_path / 's'}")):
        got = resolve_model_data_config(again)
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in got.items()} == want


def test_a_scratch_trained_model_resolves_to_its_training_statistics(tmp_path):
    model = perturbed(minivit.create_model("vit_small_patch16_224", img_size=28, patch_size=7, depth=2, embed_dim=32,
                                           num_heads=2, in_chans=1, num_classes=10))
    config = default_data_config("fashion-mnist", (1, 28, 28))
    apply_data_config(model, config)
    minivit.save_pretrained(model, tmp_path / "m")
    for again in (minivit.from_pretrained(tmp_path / "m"), timm.create_model(f"local-dir:{tmp_path / 'm'}")):
        got = resolve_model_data_config(again)
        assert tuple(got["mean"]) == (0.5,) and tuple(got["std"]) == (0.5,)
        assert (got["interpolation"], got["crop_pct"], got["crop_mode"]) == ("bilinear", 1.0, "squash")
        assert tuple(got["input_size"]) == (1, 28, 28)


# config.json exactly as the two earlier versions wrote it for the students of these tests
VERSION_1 = {
    "vit": {
        "family": "multiplexed_vit",
        "model_args": {
            "img_size": [32, 32], "patch_size": [8, 8], "in_chans": 3, "num_classes": 10, "global_pool": "token",
            "embed_dim": 48, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0, "qkv_bias": True, "qk_norm": False,
            "proj_bias": True, "init_values": None, "class_token": True, "pos_embed": "learn",
            "no_embed_class": False, "reg_tokens": 0, "pre_norm": False, "final_norm": True, "fc_norm": False,
            "pool_include_prefix": False, "dynamic_img_size": False, "act_layer": "gelu", "norm_eps": 1e-06,
        },
        "multiplex": {
            "share": 2, "transforms": True, "separate_norms": True, "init": "first", "transform_init": "identity",
            "irpe": True, "irpe_ratio": 1.9, "mlp_transform": None, "mlp_residual": True, "delta_rank": 0,
        },
        "format_version": 1,
        "num_classes": 10,
    },
    "swin": {
        "family": "multiplexed_swin",
        "model_args": {
            "img_size": [32, 32], "patch_size": [2, 2], "in_chans": 3, "num_classes": 10, "global_pool": "avg",
            "embed_dim": 32, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "mlp_ratio": 4.0,
            "qkv_bias": True, "drop_rate": 0.0, "proj_drop_rate": 0.0, "attn_drop_rate": 0.0,
            "drop_path_rate": 0.10000000149011612, "norm_eps": 1e-05, "mask_regular_windows": False,
        },
        "multiplex": {
            "share": 2, "transforms": True, "separate_norms": True, "init": "first", "transform_init": "identity",
            "irpe": False, "irpe_ratio": 1.9, "mlp_transform": None, "mlp_residual": True, "delta_rank": 0,
        },
        "format_version": 1,
        "num_classes": 10,
    },
}  # fmt: skip


def version_0(cfg: dict) -> dict:
    """The layout before the spec had its own object: its options among model_args, no version field."""
    spec = {k: v for k, v in cfg["multiplex"].items() if k not in ("init", "mlp_residual", "delta_rank")}
    return {"family": cfg["family"], "model_args": {**cfg["model_args"], **spec}}


@pytest.mark.parametrize("kind", ["vit", "swin"])
@pytest.mark.parametrize("version", [0, 1])
def test_folders_of_earlier_versions_load_with_their_training_preprocessing(tmp_path, kind, version):
    student = students()[kind]
    if version == 0 and kind == "swin":
        student = perturbed(minivit.multiplex(swin_teacher(), share=2, mlp_residual=False))
    cfg = VERSION_1[kind] if version == 1 else version_0(VERSION_1[kind])
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(folder / "model.safetensors"))
    again = minivit.from_pretrained(folder)
    assert again.spec == student.spec and max_diff(again, student) == 0
    got = resolve_model_data_config(again)
    assert (got["mean"], got["std"], got["crop_mode"]) == ((0.5,) * 3, (0.5,) * 3, "squash")
    minivit.save_pretrained(again, tmp_path / "new")  # upgraded: timm loads it now
    assert max_diff(timm.create_model(f"local-dir:{tmp_path / 'new'}", pretrained=True).eval(), student) <= 1e-6


def test_a_folder_written_by_timm_loads(tmp_path):
    model = perturbed(timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10))
    timm.models.save_for_hf(model, tmp_path / "t", safe_serialization=True)
    again = minivit.from_pretrained(tmp_path / "t")
    assert max_diff(again, model) == 0
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["model_args"].pop("num_classes", None)  # the class count only at the top, as older timm versions wrote it
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    assert max_diff(minivit.from_pretrained(tmp_path / "t"), model) == 0


# --------------------------------------------------------------------------- push (the upload mocked)


class FakeRepo:
    def __init__(self, repo_id):
        self.repo_id = repo_id


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface_hub's create_repo / file_exists / upload_folder replaced: the upload copies the folder."""
    import huggingface_hub

    uploaded = tmp_path / "uploaded"
    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        calls["create"] = dict(repo_id=repo_id, private=private)
        return FakeRepo(repo_id)

    def upload_folder(self, repo_id, folder_path, revision=None, **kw):
        calls["upload"] = dict(repo_id=repo_id, revision=revision)
        shutil.copytree(folder_path, uploaded)
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "file_exists", lambda self, *a, **kw: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return uploaded, calls


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_push_uploads_a_folder_timm_loads(tmp_path, hub, capsys, monkeypatch, kind):
    uploaded, calls = hub
    student = students()[kind]
    minivit.save_pretrained(student, tmp_path / "run")
    report = {"data": "fashion-mnist", "val": {"top1": 87.5, "top5": 99.0}}
    (tmp_path / "run" / "report.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit) as exit_:
        main(["push", "--model", str(tmp_path / "run"), "--repo", "alice/mini", "--private", "--revision", "dev"])
    assert exit_.value.code == 0 and "alice/mini" in capsys.readouterr().out
    assert calls == {"create": dict(repo_id="alice/mini", private=True), "upload": dict(repo_id="alice/mini",
                                                                                        revision="dev")}
    assert {p.name for p in uploaded.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    readme = (uploaded / "README.md").read_text()
    assert "87.5" in readme and "fashion-mnist" in readme and "hf-hub:alice/mini" in readme
    cfg = json.loads((uploaded / "config.json").read_text())
    assert cfg["architecture"] == f"multiplexed_{kind}" and cfg["family"] == f"multiplexed_{kind}"
    again = timm.create_model(f"local-dir:{uploaded}", pretrained=True).eval()
    assert max_diff(again, student) <= 1e-6
    assert max_diff(minivit.from_pretrained(uploaded), student) <= 1e-6
    from timm.models import _hub  # the download mocked: files come from the uploaded folder

    monkeypatch.setattr(_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(uploaded / filename))
    assert max_diff(timm.create_model("hf-hub:alice/mini", pretrained=True).eval(), student) <= 1e-6


def test_push_refuses_a_bad_repository_name(tmp_path, hub, capsys):
    minivit.save_pretrained(students()["vit"], tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        main(["push", "--model", str(tmp_path / "run"), "--repo", "no-owner"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: repository 'no-owner'") and "\n" not in err
    assert not Path(hub[0]).exists()


@pytest.mark.parametrize("family", ["deit", "swin"])
def test_released_models_are_timm_entrypoints_named_as_in_their_table(family):
    from timm.models import get_pretrained_cfg, model_entrypoint

    from minivit.zoo import OFFICIAL
    from minivit.zoo.releases import RELEASE_URL

    module = OFFICIAL[family]
    assert timm.list_models(f"mini_{family}_*") == sorted(module.RELEASES)
    for name, release in module.RELEASES.items():
        entrypoint = getattr(module, name)  # importable by name
        assert model_entrypoint(name) is entrypoint
        assert (entrypoint.__name__, entrypoint.__qualname__, entrypoint.__module__) == (name, name, module.__name__)
        assert entrypoint.__doc__ == release.doc
        cfg = get_pretrained_cfg(name)
        assert cfg.architecture == name and cfg.url == RELEASE_URL + (release.file or f"{name}.pth")
    assert get_pretrained_cfg("mini_deit_base_patch16_384").input_size == (3, 384, 384)
    assert get_pretrained_cfg("mini_swin_tiny_patch4_window7_224").classifier == "head.fc"
