"""Untrusted model arguments and files: --model-args / --teacher-args that break the build or the first
forward, sizes over the parameter bound (config.json too), pickled objects, NaN weights, meta tensors,
fp16 teachers, --min-lr above --lr, and temporary folders of a killed model write.

Every CLI failure: exit code 2, one stderr line starting with ``error:``, no traceback, no output folder.
docs/reliability.md lists each case with the test that checks it.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from cli_helpers import assert_one_line_error, cli
from safetensors.torch import load_file, save_file

import minivit
from minivit import CheckpointError, ConfigError, MultiplexSpec, create_model, multiplex
from minivit.io.limits import DEFAULT_MAX_PARAMS, estimate_parameters, parameter_limit

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["img_size=16", "patch_size=4", "depth=2", "embed_dim=32", "num_heads=2"]
FAST = ["--train-limit", "100", "--val-limit", "50", "--batch-size", "50", "--no-progress"]




def train(out, *model_args, extra=()):
    return ["train", "--model", "vit_tiny_patch16_224", "--model-args", *model_args, "--data", "digits",
            "--epochs", "1", "--output", out, *FAST, *extra]  # fmt: skip


def tiny_vit(**kw):
    args = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, num_classes=10)
    return create_model("vit_tiny_patch16_224", **{**args, **kw})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("inputs") / "tiny"
    minivit.save_pretrained(tiny_vit(), out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# -- --model-args that break the build or the first forward -----------------------------------------------------

BAD_MODEL_ARGS = {
    "patch_larger_than_image": (
        ["img_size=16", "patch_size=100", "depth=2", "embed_dim=32", "num_heads=2"],
        "Kernel size can't be greater than actual input size (check img_size=16 patch_size=100)",
    ),
    "negative_embed_dim": (
        ["img_size=16", "patch_size=4", "depth=2", "embed_dim=-32", "num_heads=2"],
        "negative dimension -32: [-32, 1, 4, 4] (check embed_dim=-32)",
    ),
    "heads_do_not_divide": (["img_size=16", "patch_size=4", "embed_dim=32", "num_heads=3"], "(check num_heads=3)"),
    "string_depth": (["img_size=16", "patch_size=4", "depth=two"], "--model-args img_size=16 patch_size=4 depth=two"),
    "empty_value": (["img_size=16", "depth="], "--model-args depth= has no value (write depth=<value>"),
    "unclosed_tuple": (["img_size=(32", "depth=2"], "--model-args img_size=(32 is not a valid value"),
    "repeated_key": (["depth=2", "embed_dim=32", "depth=3"], "--model-args gives depth twice (depth=3)"),
    "no_head": ([*TINY_ARGS, "num_classes=0"], "no classifier head (num_classes=0) (drop num_classes"),
    "over_the_bound": (
        ["img_size=16", "patch_size=4", "depth=1000000", "embed_dim=4096", "num_heads=2"],
        "asks for a model of 201,379,844,248,552 parameters",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_MODEL_ARGS))
def test_bad_model_args_give_one_line_naming_them(capsys, tmp_path, kind):
    args, pattern = BAD_MODEL_ARGS[kind]
    out = tmp_path / "run"
    code, _, err = cli(capsys, *train(out, *args))
    assert_one_line_error(code, err, pattern)
    assert not out.exists()


def test_teacher_args_errors_name_teacher_args(capsys, tmp_path, model_dir):
    out = tmp_path / "run"
    common = ["--data", "digits", "--epochs", "1", "--output", out]
    bad = ["compress", "--teacher", "vit_tiny_patch16_224", "--teacher-args", "img_size=16", "embed_dim=-8", *common]
    code, _, err = cli(capsys, *bad)
    assert_one_line_error(code, err, "--teacher-args img_size=16 embed_dim=-8 do not make a working")
    assert "--model-args" not in err
    code, _, err = cli(capsys, "compress", "--teacher", model_dir, "--teacher-args", "depth=2", *common)
    assert_one_line_error(code, err, "--teacher-args cannot change the saved model")
    code, _, err = cli(capsys, "compress", "--teacher", model_dir, "--teacher-args", "depth=2", "depth=3", *common)
    assert_one_line_error(code, err, "--teacher-args gives depth twice")
    assert not out.exists()


def test_min_lr_above_lr_is_refused(capsys, tmp_path):
    code, _, err = cli(capsys, *train(tmp_path / "run", *TINY_ARGS, extra=["--lr", "1e-4", "--min-lr", "1e-3"]))
    assert_one_line_error(code, err, "min_lr 0.001 is above lr 0.0001 (lower --min-lr")
    assert not (tmp_path / "run").exists()


# -- the parameter bound -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, args",
    [
        (lambda a: tiny_vit(**a), {"depth": 30}),
        (lambda a: multiplex(tiny_vit(**a), MultiplexSpec(share=2)), {"depth": 28}),
        (
            lambda a: timm.create_model(
                "swin_tiny_patch4_window7_224",
                img_size=32,
                patch_size=2,
                window_size=4,
                embed_dim=16,
                num_heads=(1, 2),
                **a,
            ),
            {"depths": (2, 26)},
        ),  # fmt: skip
    ],
    ids=["vit", "multiplexed_vit", "swin"],
)
def test_parameter_estimate_is_exact_and_allocates_nothing(build, args):
    real = sum(p.numel() for p in {id(p): p for p in build(args).parameters()}.values())
    assert estimate_parameters(build, args) == real


def test_untrusted_config_json_over_the_bound_is_refused_before_allocation(capsys, model_dir, tmp_path):
    folder = _copy(model_dir, tmp_path / "huge")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"].update(depth=10**6, embed_dim=4096)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json asks for a model of [\d,]+ parameters .* over the bound"):
        minivit.from_pretrained(folder)
    code, _, err = cli(capsys, "eval", "--model", folder, "--data", "digits")
    assert_one_line_error(code, err, f"over the bound of {DEFAULT_MAX_PARAMS:,} (")
    assert "MINIVIT_MAX_PARAMS" in err
    # a student's config (the multiplexed family) is bounded the same way
    student = tmp_path / "student"
    minivit.save_pretrained(multiplex(tiny_vit(), MultiplexSpec(share=2)), student)
    cfg = json.loads((student / "config.json").read_text())
    cfg["model_args"].update(depth=10**6, embed_dim=4096)
    (student / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="over the bound"):
        minivit.from_pretrained(student)


def test_the_bound_can_be_raised_explicitly(model_dir, monkeypatch):
    with parameter_limit(1000):
        with pytest.raises(ConfigError, match="over the bound of 1,000"):
            minivit.from_pretrained(model_dir)
    monkeypatch.setenv("MINIVIT_MAX_PARAMS", "1e3")
    with pytest.raises(ConfigError, match="over the bound of 1,000"):
        minivit.from_pretrained(model_dir)
    with parameter_limit(10**6):
        assert minivit.from_pretrained(model_dir) is not None
    monkeypatch.setenv("MINIVIT_MAX_PARAMS", "lots")
    with pytest.raises(ConfigError, match="MINIVIT_MAX_PARAMS='lots' is not a number"):
        minivit.from_pretrained(model_dir)


# -- files that are not what they claim --------------------------------------------------------------------------


def test_pickled_whole_module_is_refused_in_one_short_line(capsys, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(tiny_vit(), path)
    code, _, err = cli(capsys, "eval", "--model", path, "--data", "digits")
    assert_one_line_error(code, err, "it holds a pickled timm.models.vision_transformer.VisionTransformer")
    assert "weights_only=False" not in err and len(err) < 400
    assert "torch.save(model.state_dict(), path)" in err
    with pytest.raises(CheckpointError, match="refused for safety"):
        minivit.load_official(path, "mini_deit_tiny_patch16_224")


def test_all_nan_model_is_refused_not_evaluated(capsys, model_dir, tmp_path):
    folder = _copy(model_dir, tmp_path / "nan")
    weights = {k: torch.full_like(v, float("nan")) for k, v in load_file(folder / "model.safetensors").items()}
    save_file(weights, folder / "model.safetensors")
    code, out, err = cli(capsys, "eval", "--model", folder, "--data", "digits")
    assert_one_line_error(code, err, "has non-finite weights")
    assert "top-1" not in out
    run = tmp_path / "run"
    code, _, err = cli(capsys, "compress", "--teacher", folder, "--data", "digits", "--epochs", "1", "--output", run)
    assert_one_line_error(code, err, f"teacher {folder} has non-finite weights")
    assert not run.exists()


def test_meta_device_model_is_refused_by_save_pretrained(tmp_path):
    with torch.device("meta"):
        model = tiny_vit()
    student = multiplex(model, MultiplexSpec(share=2))  # shapes only: a meta teacher gives a meta student
    assert {p.device.type for p in student.parameters()} == {"meta"}
    with pytest.raises(ConfigError, match="no weights: .* on the meta device.*model.to_empty"):
        minivit.save_pretrained(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_fp16_teacher_gives_fp16_student():
    torch.manual_seed(0)
    teacher = tiny_vit().eval().half()
    student = multiplex(teacher, MultiplexSpec(share=1)).eval()
    assert {p.dtype for p in student.parameters()} == {torch.float16}
    x = torch.randn(2, 3, 16, 16, dtype=torch.float16)
    assert (student(x).float() - teacher(x).float()).abs().max() < 1e-2


def test_share_all_on_swin_is_one_block_per_stage_and_errors_name_the_typed_share():
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4,
                             embed_dim=16, depths=(2, 3), num_heads=(1, 2), num_classes=10)  # fmt: skip
    student = multiplex(swin, MultiplexSpec(share="all"))
    x = torch.randn(1, 3, 32, 32)
    assert student(x).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"share=2 does not divide stage 1 depth=3"):
        multiplex(swin, MultiplexSpec(share=2))


KILLED_WRITE = """
import os, signal, sys
from minivit.io import atomic_folder
with atomic_folder(sys.argv[1]) as stage:
    (stage / "model.safetensors").write_bytes(b"partial")
    print(stage, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_model_write_leaves_nothing_in_the_parent_folder(tmp_path, model_dir):
    run = _copy(model_dir, tmp_path / "parent" / "run")
    before = (run / "model.safetensors").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(run)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert Path(proc.stdout.strip()).parent == run, "an existing folder stages inside itself"
    assert list((tmp_path / "parent").iterdir()) == [run]
    assert (run / "model.safetensors").read_bytes() == before
    minivit.save_pretrained(tiny_vit(), run)  # the next write into the folder removes the dead writer's files
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.safetensors"]
