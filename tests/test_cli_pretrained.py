"""The command line takes the model's preprocessing; fine-tuning and users' own weights; eval predictions.

Everything runs offline: the "pretrained" weights are written by the tests themselves.
"""

import csv
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from cli_helpers import assert_one_line_error, cli
from PIL import Image

TINY_VIT = ["img_size=32", "patch_size=8", "depth=2", "embed_dim=32", "num_heads=2", "mlp_ratio=2"]
TINY_KW = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, mlp_ratio=2)




def photo_folder(root: Path, per_class: int = 3) -> Path:
    """train/ and val/ with two classes of RGB images of odd sizes (so resize and crop both matter)."""
    g = torch.Generator().manual_seed(0)
    sizes = [(61, 47), (40, 72), (55, 55), (90, 33)]
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[(i + (c == "dog")) % len(sizes)]
                pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def timm_eval_tensor(path, model_name: str = "deit_tiny_patch16_224") -> torch.Tensor:
    """What timm's own eval transform for ``model_name`` makes of the image at ``path``."""
    cfg = timm.data.resolve_data_config({}, model=timm.create_model(model_name, pretrained=False))
    return timm.data.create_transform(**cfg)(Image.open(path).convert("RGB"))


@pytest.fixture
def model_inputs(monkeypatch):
    """Every batch a patch embedding receives (teachers and students alike), in order."""
    from timm.layers import PatchEmbed

    seen = []
    forward = PatchEmbed.forward

    def record(self, x):
        seen.append(x.detach().clone())
        return forward(self, x)

    monkeypatch.setattr(PatchEmbed, "forward", record)
    monkeypatch.setattr("minivit.cli.commands.latency_ms", lambda *a, **k: 1.0)  # no random timing inputs
    return seen


# --------------------------------------------------------------------------- the acceptance test


def test_deit_teacher_and_student_receive_exactly_timms_eval_transform(capsys, tmp_path, model_inputs):
    data = photo_folder(tmp_path / "photos", per_class=2)
    teacher = timm.create_model("deit_tiny_patch16_224", num_classes=2)
    wrapped = {"state_dict": {"module." + k: v for k, v in teacher.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "deit.pth")
    out = tmp_path / "student"
    code, stdout, err = cli(
        capsys, "compress", "--teacher", "deit_tiny_patch16_224", "--teacher-checkpoint", tmp_path / "deit.pth",
        "--share", "6", "--distill", "logits", "--data", data, "--epochs", "1", "--batch-size", "4",
        "--no-progress", "--output", out,
    )  # fmt: skip
    assert code == 0, err
    files = sorted((data / "train").rglob("*.png")) + sorted((data / "val").rglob("*.png"))
    expected = torch.stack([timm_eval_tensor(f) for f in files])
    # the one all-zero image is the build check's probe forward (minivit.io.limits), not data
    rows = torch.stack([r for r in torch.cat([x.cpu() for x in model_inputs]) if r.any()])  # (training may be on a GPU)
    assert rows.shape[1:] == (3, 224, 224)
    matches = [[i for i in range(len(expected)) if torch.equal(r, expected[i])] for r in rows]
    assert all(matches), "a model received a tensor that timm's eval transform does not make"
    assert {i for m in matches for i in m} == set(range(len(files)))  # every train and val image was seen

    # the teacher is measured before distilling, and the final table shows both side by side
    report = json.loads((out / "report.json").read_text())
    assert report["teacher_top1"] == report["teacher"]["top1"]
    assert stdout.index("val top-1") < stdout.index("epoch") < stdout.index("| teacher |")
    assert "| student (share 6) |" in stdout
    saved = json.loads((out / "config.json").read_text())["data_config"]
    timms = timm.data.resolve_model_data_config(timm.create_model("deit_tiny_patch16_224"))
    assert saved["mean"] == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)
    assert saved["std"] == pytest.approx(timms["std"])
    assert (saved["interpolation"], saved["crop_pct"], saved["input_size"]) == ("bicubic", timms["crop_pct"],
                                                                                [3, 224, 224])  # fmt: skip

    # eval of the saved student: the same tensors, in the order of the predictions file
    model_inputs.clear()
    preds = tmp_path / "preds.csv"
    code, stdout, err = cli(capsys, "eval", "--model", out, "--data", data, "--predictions", preds, "--json")
    assert code == 0, err
    with open(preds, newline="") as f:
        table = list(csv.DictReader(f))
    assert [Path(r["path"]).resolve() for r in table] == [p.resolve() for p in sorted((data / "val").rglob("*.png"))]
    want = torch.stack([timm_eval_tensor(r["path"]) for r in table])
    assert torch.equal(torch.cat(model_inputs), want)
    assert json.loads(stdout)["top1"] == pytest.approx(report["val"]["top1"])


# --------------------------------------------------------------------------- users' weights files


def _source_model(num_classes: int = 5):
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **TINY_KW)


def _variants(folder: Path, sd: dict) -> dict[str, Path]:
    from safetensors.torch import save_file

    paths = {}
    for name, obj in {
        "plain.pth": sd,
        "model.pt": {"model": sd, "optimizer": {}},
        "ema.pth": {"model_ema": sd},
        "ddp.pth": {"state_dict": {"module." + k: v for k, v in sd.items()}},
    }.items():
        torch.save(obj, folder / name)
        paths[name] = folder / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "weights.safetensors"))
    paths["weights.safetensors"] = folder / "weights.safetensors"
    return paths


def test_every_weights_format_loads_and_a_head_of_another_size_is_renewed(tmp_path):
    from minivit.cli.sources import load_user_weights

    source = _source_model(5).state_dict()
    for name, path in _variants(tmp_path, source).items():
        notes = []
        model = timm.create_model("vit_tiny_patch16_224", num_classes=2, **TINY_KW)
        fresh_head = model.head.weight.detach().clone()
        load_user_weights(model, path, notes.append)
        got = model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in source.items() if not k.startswith("head.")), name
        assert torch.equal(model.head.weight, fresh_head) and model.head.out_features == 2
        assert len(notes) == 1 and "5-class head" in notes[0] and "2 classes" in notes[0], notes
        same = timm.create_model("vit_tiny_patch16_224", num_classes=5, **TINY_KW)
        notes.clear()
        load_user_weights(same, path, notes.append)
        assert torch.equal(same.head.weight, source["head.weight"]) and not notes


def test_train_checkpoint_fine_tunes_the_users_weights(capsys, tmp_path):
    data = photo_folder(tmp_path / "photos")
    source = _source_model(5).state_dict()
    path = _variants(tmp_path, source)["ddp.pth"]
    out = tmp_path / "ft"
    code, stdout, err = cli(
        capsys, "train", "--model", "vit_tiny_patch16_224", "--model-args", *TINY_VIT, "--checkpoint", path,
        "--data", data, "--epochs", "1", "--lr", "1e-12", "--min-lr", "0", "--warmup-epochs", "0",
        "--weight-decay", "0",
        "--no-progress", "--output", out,
    )  # fmt: skip
    assert code == 0, err
    assert "5-class head" in stdout
    from minivit.io import load_weights

    saved = load_weights(out / "model.safetensors")
    assert saved["head.weight"].shape == (2, 32)
    for k, v in source.items():
        if not k.startswith("head."):
            torch.testing.assert_close(saved[k], v, atol=1e-6, rtol=0)
    cfg = json.loads((out / "config.json").read_text())["data_config"]
    want = timm.data.resolve_model_data_config(timm.create_model("vit_tiny_patch16_224"))
    assert cfg["mean"] == pytest.approx(want["mean"]) and cfg["crop_pct"] == want["crop_pct"]
    assert cfg["input_size"] == [3, 32, 32]  # the model's own size, not the published 224


def test_train_pretrained_resizes_the_head_through_timm(capsys, tmp_path, monkeypatch):
    import timm.models._builder as builder

    source = _source_model(1000).state_dict()
    calls = []

    def fake_load_pretrained(model, pretrained_cfg=None, num_classes=1000, **kwargs):
        calls.append(num_classes)
        own = model.state_dict()
        model.load_state_dict({**source, **{k: v for k, v in own.items() if k.startswith("head.")}})

    monkeypatch.setattr(builder, "load_pretrained", fake_load_pretrained)
    data = photo_folder(tmp_path / "photos")
    out = tmp_path / "ft"
    code, _, err = cli(
        capsys, "train", "--model", "vit_tiny_patch16_224", "--model-args", *TINY_VIT, "--pretrained",
        "--data", data, "--epochs", "1", "--lr", "1e-12", "--min-lr", "0", "--warmup-epochs", "0",
        "--weight-decay", "0",
        "--augment", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--no-progress", "--output", out,
    )  # fmt: skip
    assert code == 0, err
    assert calls == [2]  # timm's loader was asked for a 2-class head
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["pretrained"] is True
    assert report["config"]["augmentation"]["aa"] == "rand-m9-mstd0.5-inc1"
    from minivit.io import load_weights

    torch.testing.assert_close(load_weights(out / "model.safetensors")["blocks.0.attn.qkv.weight"],
                               source["blocks.0.attn.qkv.weight"], atol=1e-6, rtol=0)  # fmt: skip


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_weights_files_that_do_not_fit_or_carry_code_are_refused(capsys, tmp_path):
    data = photo_folder(tmp_path / "photos")
    marker = tmp_path / "code-ran"
    torch.save({"model": _RunsCode(marker)}, tmp_path / "evil.pth")
    other = timm.create_model("vit_tiny_patch16_224", **{**TINY_KW, "depth": 3}).state_dict()
    torch.save(other, tmp_path / "deeper.pth")
    out = tmp_path / "out"
    train = ["train", "--model", "vit_tiny_patch16_224", "--model-args", *TINY_VIT, "--data", data, "--epochs", "1",
             "--output", out]  # fmt: skip
    compress = ["compress", "--teacher", "vit_tiny_patch16_224", "--teacher-args", *TINY_VIT, "--data", data,
                "--epochs", "1", "--output", out]  # fmt: skip
    cases = [
        ([*train, "--checkpoint", tmp_path / "evil.pth"], "pickled"),
        ([*compress, "--teacher-checkpoint", tmp_path / "evil.pth"], "pickled"),
        ([*train, "--checkpoint", tmp_path / "deeper.pth"], "unexpected key(s), first: blocks.2."),
        ([*train, "--pretrained", "--checkpoint", tmp_path / "missing.pth"], "not found"),
        (
            ["compress", "--teacher", tmp_path, *compress[10:], "--teacher-checkpoint", tmp_path / "deeper.pth"],
            "model name",
        ),  # fmt: skip
        ([*train, "--aa", "rand-m9"], "add --augment"),
        ([*train, "--augment", "--aa", "bogus-policy"], "augmentation policy"),
        ([*train, "--augment", "--scale", "0.5"], "--scale"),
    ]
    for argv, pattern in cases:
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, pattern)
        assert not out.exists(), argv
    assert not marker.exists(), "the pickle's code ran"


# --------------------------------------------------------------------------- eval: saved data configs, predictions


def test_eval_uses_the_saved_data_config_and_old_folders_the_legacy_squash(capsys, tmp_path, model_inputs):
    from minivit import save_pretrained
    from minivit.data import build_dataset
    from minivit.zoo import create_model

    model = create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, **TINY_KW).eval()
    old = save_pretrained(model, tmp_path / "old")
    cfg = json.loads((old / "config.json").read_text())  # as written before data configs were recorded
    cfg.pop("pretrained_cfg")
    (old / "config.json").write_text(json.dumps(cfg))
    code, stdout, err = cli(capsys, "eval", "--model", old, "--data", "digits", "--json")
    assert code == 0, err
    legacy = build_dataset("digits", "val", 32, 1)  # the squash to 32 px, mean 0.5 / std 0.5 of old runs
    assert torch.equal(torch.cat(model_inputs), torch.stack([legacy[i][0] for i in range(len(legacy))]))
    assert json.loads(stdout)["data_config"]["crop_mode"] == "squash"

    extra = {"data_config": {"input_size": [1, 32, 32], "mean": [0.25], "std": [0.5], "interpolation": "bilinear",
                             "crop_pct": 1.0, "crop_mode": "squash"}}  # fmt: skip
    new = save_pretrained(model, tmp_path / "new", extra=extra)
    model_inputs.clear()
    code, stdout, err = cli(capsys, "eval", "--model", new, "--data", "digits", "--json", "--val-limit", "20")
    assert code == 0, err
    first = torch.cat(model_inputs)
    shifted = build_dataset("digits", "val", 32, 1, limit=20)
    assert torch.allclose(first, torch.stack([shifted[i][0] for i in range(len(shifted))]) + 0.5, atol=1e-5)


def test_eval_predictions_csv(capsys, tmp_path):
    from minivit import save_pretrained
    from minivit.data import build_dataset
    from minivit.zoo import create_model

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, **TINY_KW).eval()
    folder = save_pretrained(model, tmp_path / "m")
    preds = tmp_path / "out" / "preds.csv"
    code, stdout, err = cli(capsys, "eval", "--model", folder, "--data", "digits", "--val-limit", "50",
                            "--num-workers", "1", "--predictions", preds)  # fmt: skip
    assert code == 0, err
    assert f"wrote {preds}" in stdout
    with open(preds, newline="") as f:
        rows = list(csv.DictReader(f))
    from minivit.data import resolve_data_config

    val = build_dataset("digits", "val", data_config=resolve_data_config(model), limit=50)  # the saved preprocessing
    assert list(rows[0]) == ["path", "label", "pred", "pred_name", "prob"] and len(rows) == len(val) == 50
    with torch.no_grad():
        logits = model(torch.stack([val[i][0] for i in range(len(val))]))
    assert [int(r["pred"]) for r in rows] == logits.argmax(1).tolist()
    assert [int(r["label"]) for r in rows] == [val[i][1] for i in range(len(val))]
    assert all(r["pred_name"] == val.classes[int(r["pred"])] and 0 < float(r["prob"]) <= 1 for r in rows)
    code, _, err = cli(capsys, "eval", "--model", folder, "--data", "digits", "--predictions", tmp_path)
    assert_one_line_error(code, err, "is a folder")


# --------------------------------------------------------------------------- flags, demo data


def test_augmentation_flags_are_timms_and_become_an_augment_config():
    from dataclasses import fields

    from minivit.cli.main import _run_options, build_parser
    from minivit.data import AugmentConfig

    base = ["train", "--model", "m", "--data", "digits", "--epochs", "1", "--output", "o"]
    a = build_parser().parse_args(base)
    assert {f.name for f in fields(AugmentConfig)} <= set(vars(a))
    assert _run_options(a).train_augment() is None
    flags = ["--augment", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--scale", "0.5,1", "--color-jitter",
             "none", "--train-interpolation", "bicubic"]  # fmt: skip
    a = build_parser().parse_args([*base, *flags])
    assert _run_options(a).train_augment() == AugmentConfig(
        aa="rand-m9-mstd0.5-inc1", reprob=0.25, scale=(0.5, 1.0), color_jitter=None, interpolation="bicubic"
    )


def test_demo_downloads_fashion_mnist_and_offline_says_it_falls_back(monkeypatch, tmp_path):
    from minivit.cli.demo import demo_data
    from minivit.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "find_fashion_mnist", lambda *a, **k: None)
    monkeypatch.setattr(fashion_mnist, "download_fashion_mnist", lambda **k: tmp_path)
    monkeypatch.delenv("MINIVIT_OFFLINE", raising=False)
    lines = []
    assert demo_data(None, lines.append) == "fashion-mnist" and lines == []
    monkeypatch.setenv("MINIVIT_OFFLINE", "1")
    assert demo_data(None, lines.append) == "digits"
    assert len(lines) == 1 and "falling back to the built-in digits" in lines[0] and "MINIVIT_DATA" in lines[0]
    assert demo_data("digits", lines.append) == "digits" and len(lines) == 1


def test_runs_recorded_before_data_configs_still_resume(capsys, tmp_path):
    from minivit.train.state import load_checkpoint, save_checkpoint

    out = tmp_path / "old"
    base = ["train", "--model", "vit_tiny_patch16_224", "--model-args", "img_size=8", "patch_size=4", "depth=1",
            "embed_dim=16", "num_heads=2", "--data", "digits", "--train-limit", "64", "--val-limit", "32",
            "--epochs", "1", "--no-progress", "--output", out]  # fmt: skip
    assert cli(capsys, *base)[0] == 0
    last = out / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    for key in ("data_config", "augmentation"):
        del state["config"][key]  # as written before these were recorded
    save_checkpoint(out / "checkpoints", state)
    code, _, err = cli(capsys, *base, "--resume")
    assert code == 0, err
    code, _, err = cli(capsys, *base, "--resume", "--augment")
    assert_one_line_error(code, err, "augment")


def test_export_prints_the_preprocessing_the_model_records(capsys, tmp_path):
    from minivit import save_pretrained
    from minivit.zoo import create_model

    model = create_model("vit_tiny_patch16_224", num_classes=3, **TINY_KW).eval()
    extra = {"data_config": {"input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5],
                             "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center"}}  # fmt: skip
    folder = save_pretrained(model, tmp_path / "m", extra=extra)
    code, stdout, err = cli(capsys, "export", "--model", folder, "--format", "safetensors", "--output", tmp_path / "x")
    assert code == 0, err
    line = stdout.strip().splitlines()[-1]
    assert "preprocessing" in line and "3x32x32 bicubic crop 0.9 mean 0.1,0.2,0.3 std 0.5,0.5,0.5" in line


def test_eval_reads_an_int8_folder_and_other_commands_refuse_it(capsys, tmp_path, monkeypatch):
    """``export --format safetensors --int8`` writes a folder ``eval`` scores as the exporter's int8 model (the
    predictions of that model, the size of its file); commands that need fp32 weights refuse it in one line."""
    from minivit import multiplex, save_pretrained
    from minivit.data import build_dataset, resolve_data_config
    from minivit.export import quantize_dynamic_int8, run_export
    from minivit.zoo import create_model

    monkeypatch.setattr("minivit.cli.commands.latency_ms", lambda *a, **k: 1.0)
    torch.manual_seed(0)
    teacher = create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, **TINY_KW).eval()
    student = multiplex(teacher, share=2, delta_rank=2, transforms=False).eval()  # relaxed sharing: int8 deltas
    folder = save_pretrained(student, tmp_path / "student")
    run_export(folder, "safetensors", tmp_path / "int8", int8=True)
    file_bytes = (tmp_path / "int8" / "model.int8.safetensors").stat().st_size
    code, stdout, err = cli(capsys, "eval", "--model", tmp_path / "int8", "--data", "digits", "--json",
                            "--val-limit", "40")
    assert code == 0, err
    report = json.loads(stdout)
    val = build_dataset("digits", "val", data_config=resolve_data_config(student), limit=40)
    with torch.no_grad():
        logits = quantize_dynamic_int8(student)(torch.stack([val[i][0] for i in range(len(val))]))
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    assert report["top1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert report["size_mb"] == round(file_bytes / 1e6, 3) and report["params"] > 0

    for argv in (["compress", "--teacher", tmp_path / "int8", "--data", "digits", "--epochs", "1", "--output",
                  tmp_path / "c"],
                 ["export", "--model", tmp_path / "int8", "--format", "onnx"],
                 ["analyze", "--teacher", folder, "--student", tmp_path / "int8", "--data", "digits",
                  "--output", tmp_path / "a"]):  # fmt: skip
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, "holds an int8 model")
        assert not (tmp_path / "c").exists() and not (tmp_path / "a").exists()
