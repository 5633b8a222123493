"""The `minivit` command line: help, one-line errors, train -> compress -> eval, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, cli

from minivit.budget import RECIPE_DISTILL
from minivit.cli.commands import parse_model_args, parse_value
from minivit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
MINIVIT = [sys.executable, "-m", "minivit.cli.main"]
TINY_ARGS = ["img_size=8", "patch_size=2", "depth=2", "embed_dim=32", "num_heads=2", "mlp_ratio=2"]
FAST = ["--batch-size", "64", "--train-limit", "320", "--val-limit", "100", "--no-progress"]
RECIPE_ALPHA = RECIPE_DISTILL["alpha"]  # what compress --recipe frontier distils with unless --alpha is given




@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "vit_small_patch16_224", "--model-args", *TINY_ARGS, "--data", "digits",
              "--epochs", "2", "--lr", "3e-3", "--output", str(out), *FAST])  # fmt: skip
    assert exc.value.code == 0
    return out


def test_parse_values():
    assert parse_value("32") == 32 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("(32, 48)") == (32, 48) and parse_value("[1,2]") == (1, 2) and parse_value("avg") == "avg"
    assert parse_value("None") is None
    assert parse_model_args(["img_size=32", "qkv_bias=False"]) == {"img_size": 32, "qkv_bias": False}


@pytest.mark.parametrize("command", [[], ["train"], ["compress"], ["eval"], ["demo"]])
def test_help(capsys, command):
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0 and "usage: minivit" in out


def test_console_script_and_one_line_error_without_traceback(tmp_path):
    exe = Path(sys.executable).parent / "minivit"
    cmd = [str(exe)] if exe.exists() else MINIVIT
    r = subprocess.run(
        [*cmd, "eval", "--model", str(tmp_path / "nope"), "--data", "digits"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr


def test_train_compress_eval_end_to_end(capsys, teacher_dir, tmp_path):
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "report.json", "checkpoints/last.pt"):
        assert (teacher_dir / name).exists(), name
    report = json.loads((teacher_dir / "report.json").read_text())
    assert report["model"]["params"] > 0 and 0 <= report["val"]["top1"] <= 100
    out = tmp_path / "student"
    code, stdout, err = cli(capsys, "compress", "--teacher", teacher_dir, "--share", "all", "--data", "digits",
                            "--epochs", "1", "--output", out, *FAST)  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["compression"]["params_ratio"] > 1.3
    hardware = report["hardware"]  # where it ran: cuda:0 (NAME) when a GPU is visible
    assert hardware["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    assert (hardware["world_size"], hardware["mixed_precision"]) == (1, "no")
    assert report["teacher"]["top1"] == pytest.approx(
        json.loads((teacher_dir / "report.json").read_text())["val"]["top1"]
    )
    assert {"train_kd", "train_attn", "train_hidden"} <= set(
        json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    )
    code, stdout, err = cli(capsys, "eval", "--model", out, "--data", "digits", "--val-limit", "100", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["top1"] == pytest.approx(report["val"]["top1"]) and r["params"] == report["model"]["params"]
    assert r["device"] == "cpu"
    if torch.cuda.is_available():  # the same figures from the GPU
        code, stdout, err = cli(capsys, "eval", "--model", out, "--data", "digits", "--val-limit", "100", "--json",
                                "--device", "cuda")  # fmt: skip
        assert code == 0, err
        g = json.loads(stdout)
        assert g["device"].startswith("cuda") and abs(g["top1"] - r["top1"]) <= 1.0 and g["params"] == r["params"]
    else:
        code, _, err = cli(capsys, "eval", "--model", out, "--data", "digits", "--device", "cuda")
        assert_one_line_error(code, err, "no GPU is visible")
    code, _, err = cli(capsys, "eval", "--model", out, "--data", "digits", "--device", "mps")
    assert_one_line_error(code, err, "only cpu and cuda")
    # a training checkpoint works as a teacher / model too
    code, stdout, err = cli(capsys, "eval", "--model", teacher_dir / "checkpoints" / "best.pt", "--data", "digits")
    assert code == 0 and "top-1" in stdout, err


def test_cached_teacher_logits(capsys, teacher_dir, tmp_path):
    out = tmp_path / "cached"
    code, _, err = cli(capsys, "compress", "--teacher", teacher_dir, "--distill", "logits", "--cache-teacher-logits",
                       "--data", "digits", "--epochs", "1", "--output", out, *FAST)  # fmt: skip
    assert code == 0, err
    assert torch.load(out / "checkpoints" / "teacher_logits.pt")["logits"].shape == (320, 10)
    code, _, err = cli(capsys, "compress", "--teacher", teacher_dir, "--cache-teacher-logits", "--data", "digits",
                       "--epochs", "1", "--output", tmp_path / "x", *FAST)  # fmt: skip
    assert_one_line_error(code, err, "--distill logits only")
    assert not (tmp_path / "x").exists()


def _png_folder(root: Path, classes=("a", "b")):
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), color=40 * i).save(root / split / c / f"{i}.png")
    return root


def test_bad_input_gives_one_line_and_leaves_nothing(capsys, tmp_path, teacher_dir):
    out = tmp_path / "out"
    train = ["train", "--model", "vit_small_patch16_224", "--model-args", *TINY_ARGS, "--output", out]
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    cases = [
        ([*train, "--data", tmp_path / "missing", "--epochs", "1"], "missing"),
        ([*train, "--data", tmp_path / "empty", "--epochs", "1"], ""),
        ([*train, "--data", "digits", "--epochs", "0"], "--epochs"),
        ([*train, "--data", "digits", "--epochs", "-3"], "--epochs"),
        ([*train, "--data", "digits", "--epochs", "1", "--lr", "-1"], "lr"),
        (["train", "--model", "no_such_model", "--data", "digits", "--epochs", "1", "--output", out], "unknown model"),
        ([*train[:4], "depth", "--data", "digits", "--epochs", "1", "--output", out], "key=value"),
        (
            [
                "compress",
                "--teacher",
                teacher_dir,
                "--data",
                _png_folder(tmp_path / "two"),
                "--epochs",
                "1",
                "--output",
                out,
            ],
            "10 classes but the data has 2",
        ),  # fmt: skip
        (
            [
                "compress",
                "--teacher",
                teacher_dir,
                "--share",
                "3",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--output",
                out,
            ],
            "share=3",
        ),  # fmt: skip
        (
            [
                "compress",
                "--teacher",
                teacher_dir,
                "--distill",
                "logits,bogus",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--output",
                out,
            ],
            "bogus",
        ),  # fmt: skip
        (["eval", "--model", tmp_path / "nope", "--data", "digits"], "not found"),
        (["train"], "required"),
        (["frobnicate"], "invalid choice"),
    ]
    for argv, pattern in cases:
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, pattern)
        assert not out.exists(), argv


def test_existing_run_resume_and_changed_config(capsys, teacher_dir, tmp_path):
    out = tmp_path / "s"
    base = ["compress", "--teacher", teacher_dir, "--distill", "logits", "--data", "digits", "--output", out, *FAST]
    assert cli(capsys, *base, "--epochs", "1")[0] == 0
    code, _, err = cli(capsys, *base, "--epochs", "1")
    assert_one_line_error(code, err, "already holds a run")
    code, _, err = cli(capsys, *base, "--epochs", "2", "--resume")
    assert_one_line_error(code, err, "different configuration (epochs: 1 -> 2")
    code, out_text, err = cli(capsys, *base, "--epochs", "2", "--resume", "--force")
    assert code == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def _final(folder: Path) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


def test_kill_9_then_resume_matches_an_uninterrupted_run(teacher_dir, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = ["compress", "--teacher", str(teacher_dir), "--share", "2", "--data", "digits", "--epochs", "2",
            "--checkpoint-every", "2", "--seed", "1", *FAST]  # fmt: skip
    ref = tmp_path / "ref"
    subprocess.run([*MINIVIT, *args, "--output", str(ref)], check=True, env=env, capture_output=True, cwd=ROOT)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*MINIVIT, *args, "--output", str(cut)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = cut / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no checkpoint was written before the kill"
    assert not (cut / "report.json").exists()
    r = subprocess.run([*MINIVIT, *args, "--output", str(cut), "--resume"], env=env, capture_output=True, text=True,
                       cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    a, b = _final(ref), _final(cut)
    assert (a["val_top1"], a["val_loss"]) == (b["val_top1"], b["val_loss"])
    # the epoch's mean loss is summed in another order across the cut: exact on a CPU, float32 rounding on a GPU
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6 if torch.cuda.is_available() else 1e-9)


# --------------------------------------------------------------------------- options from the configs


def _parse(*argv):
    from minivit.cli.main import build_parser

    return build_parser().parse_args([str(a) for a in argv])


COMPRESS = ["compress", "--teacher", "t", "--data", "digits", "--epochs", "1", "--output", "o"]


def test_every_config_field_has_a_flag_with_the_fields_default():
    from dataclasses import fields

    from minivit.cli.options import from_args
    from minivit.distill import DistillConfig
    from minivit.spec import MultiplexSpec
    from minivit.train import TrainConfig

    a = _parse(*COMPRESS)
    for cls in (TrainConfig, MultiplexSpec, DistillConfig):
        hidden = {f.name for f in fields(cls) if f.name == "extra" or f.metadata.get("cli") is False}
        assert {f.name for f in fields(cls)} - hidden <= set(vars(a)), cls.__name__
        assert from_args(cls, a) == cls(epochs=1) if cls is TrainConfig else from_args(cls, a) == cls()


def test_flags_become_config_objects():
    from minivit.cli.options import from_args
    from minivit.distill import DistillConfig
    from minivit.spec import MultiplexSpec
    from minivit.train import TrainConfig

    a = _parse(*COMPRESS, "--share", "2,2,6,2", "--no-transforms", "--shared-norms", "--delta-rank", "3",
               "--no-delta-bias", "--init", "mean", "--distill", "logits,hidden", "--beta", "0.5",
               "--layers-student", "1,3", "--layers-teacher", "0,3", "--num-relation-heads", "2", "--no-progress",
               "--clip-grad", "1", "--mixed-precision", "bf16")  # fmt: skip
    spec = from_args(MultiplexSpec, a)
    assert spec == MultiplexSpec(share=(2, 2, 6, 2), transforms=False, separate_norms=False, init="mean", delta_rank=3,
                                 delta_bias=False)
    d = from_args(DistillConfig, a)
    assert d.distill == ("logits", "hidden") and d.attn_weight == 0 and d.beta == 0.5
    assert (d.student_layers, d.teacher_layers, d.num_relation_heads) == ((1, 3), (0, 3), 2)
    t = from_args(TrainConfig, a)
    assert (t.progress, t.clip_grad, t.mixed_precision, t.epochs) == (False, 1.0, "bf16", 1)
    assert from_args(MultiplexSpec, _parse(*COMPRESS, "--share", "all")).share == "all"
    assert _parse(*COMPRESS, "--mlp-transform").mlp_transform is True
    assert _parse(*COMPRESS, "--no-mlp-transform").mlp_transform is False
    assert _parse(*COMPRESS).mlp_transform is None


def test_commands_receive_the_config_objects(capsys, monkeypatch):
    from minivit.cli import commands
    from minivit.distill import DistillConfig
    from minivit.spec import MultiplexSpec
    from minivit.train import TrainConfig

    seen = {}

    def fake(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(commands, "run_compress", fake)
    cli(capsys, *COMPRESS, "--share", "all", "--gamma", "2", "--cache-teacher-logits", "--distill", "logits")
    assert seen["args"][:3] == ("t", "digits", "o") and isinstance(seen["args"][3], TrainConfig)
    kw = seen["kwargs"]
    assert kw["spec"] == MultiplexSpec(share="all")
    assert kw["distill"] == DistillConfig(distill="logits", gamma=2.0, cache_teacher_logits=True)
    # the typed flags the recipe would set go along, so run_compress knows alpha was not chosen (the recipe's)
    assert "alpha" not in kw["given"] and kw["recipe"] is None and kw["budget"] is None
    cli(capsys, *COMPRESS, "--alpha", "0.3", "--delta-rank", "2")
    assert {"alpha", "delta_rank"} <= seen["kwargs"]["given"]


def test_no_abbreviated_options(capsys):
    train = ["train", "--model", "vit_small_patch16_224", "--data", "digits", "--output", "o"]
    code, _, err = cli(capsys, *train, "--epochs", "1", "--checkpoint-ev", "2")  # not --checkpoint-every
    assert_one_line_error(code, err, "unrecognized arguments: --checkpoint")
    code, _, err = cli(capsys, *train, "--epoch", "1")
    assert_one_line_error(code, err, "--epoch")
    code, _, err = cli(capsys, "--deb", "eval", "--model", "m", "--data", "digits")
    assert_one_line_error(code, err, "--deb")


def test_bad_config_values_give_one_line(capsys, tmp_path):
    out = tmp_path / "o"
    base = ["compress", "--teacher", tmp_path / "missing", "--data", "digits", "--epochs", "1", "--output", out]
    for extra, pattern in [
        (["--share", "0"], "--share"),
        (["--share", "two"], "--share"),
        (["--delta-rank", "-1"], "--delta-rank"),
        (["--layers-student", "1,x"], "bad layer list"),
        (["--alpha", "2"], "alpha"),
        (["--hidden-loss", "gram"], "--hidden-loss"),
        (["--distill", "logits", "--alpha", "1", "--temperature", "0"], "temperature"),
    ]:
        code, _, err = cli(capsys, *base, *extra)
        assert_one_line_error(code, err, pattern)
        assert not out.exists()


# --------------------------------------------------------------------------- unexpected errors


def _broken_eval(monkeypatch):
    from minivit.cli import commands

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(commands, "run_eval", boom)


def test_an_unexpected_error_is_one_line_with_exit_1(capsys, monkeypatch):
    _broken_eval(monkeypatch)
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    code, _, err = cli(capsys, "eval", "--model", "m", "--data", "digits")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "RuntimeError: boom second line" in lines[0] and "--debug" in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["flag", "flag after the command", "environment"])
def test_debug_shows_the_traceback(capsys, monkeypatch, how):
    _broken_eval(monkeypatch)
    argv = ["eval", "--model", "m", "--data", "digits"]
    if how == "flag":
        argv = ["--debug", *argv]
    elif how == "flag after the command":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("MINIVIT_DEBUG", "1")
    code, _, err = cli(capsys, *argv)
    assert code == 1 and "Traceback" in err and "boom" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error: RuntimeError")


def test_debug_keeps_exit_2_for_bad_input(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIVIT_DEBUG", "1")
    code, _, err = cli(capsys, "eval", "--model", tmp_path / "nope", "--data", "digits")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


# --------------------------------------------------------------------------- resume of an older run folder


def test_resume_of_a_run_recorded_without_the_newer_options(capsys, teacher_dir, tmp_path):
    from minivit.train.state import load_checkpoint, save_checkpoint

    out = tmp_path / "old"
    base = ["compress", "--teacher", teacher_dir, "--distill", "logits", "--data", "digits", "--output", out,
            "--epochs", "1", *FAST]  # fmt: skip
    assert cli(capsys, *base)[0] == 0
    last = out / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    for key in ("irpe", "irpe_ratio", "mlp_transform", "delta_rank", "num_relation_heads"):
        del state["config"][key]  # as written before these options existed
    save_checkpoint(out / "checkpoints", state)
    code, _, err = cli(capsys, *base, "--resume")
    assert code == 0, err
    code, _, err = cli(capsys, *base, "--resume", "--delta-rank", "1")
    assert_one_line_error(code, err, "delta_rank: 0 -> 1")
    code, _, err = cli(capsys, *base, "--resume", "--temperature", "2")
    assert_one_line_error(code, err, "temperature: 1.0 -> 2.0")


def test_resume_of_a_run_made_before_recipes_takes_recipe_exact(capsys, teacher_dir, tmp_path):
    """A compress folder written before --recipe existed was built from its flags as given: it resumes with
    --recipe exact; resuming it with the default recipe (another student) names the difference."""
    from minivit.train.state import load_checkpoint, save_checkpoint

    out = tmp_path / "old"
    base = ["compress", "--teacher", teacher_dir, "--distill", "logits", "--data", "digits", "--output", out,
            "--epochs", "1", "--recipe", "exact", *FAST]  # fmt: skip
    assert cli(capsys, *base)[0] == 0
    last = out / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["config"]["recipe"], state["config"]["asked_share"]  # as written before recipes
    save_checkpoint(out / "checkpoints", state)
    code, _, err = cli(capsys, *base[:-len(FAST) - 2], *FAST, "--resume")  # the default recipe
    assert_one_line_error(code, err, "recipe: 'exact' -> 'frontier'")
    code, _, err = cli(capsys, *base, "--resume")
    assert code == 0, err


def test_python_keyword_forms_of_the_commands():
    from minivit.cli.commands import RunOptions, compress_configs, run_options, run_train
    from minivit.distill import DistillConfig
    from minivit.spec import MultiplexSpec
    from minivit.train import TrainConfig

    spec, distill = compress_configs(None, ("logits",), share=4, beta=0, cache_logits=True, hidden_loss="projection")
    assert spec == MultiplexSpec(share=4)
    assert distill == DistillConfig(distill="logits", beta=0, cache_teacher_logits=True, hidden_loss="projection")
    spec, distill = compress_configs(MultiplexSpec(share=2), DistillConfig(alpha=0.5), separate_norms=False)
    assert spec == MultiplexSpec(share=2, separate_norms=False) and distill.alpha == 0.5
    options = {"resume": True, "train_limit": 10, "share": 2}
    assert run_options(RunOptions(force=True), options) == RunOptions(resume=True, force=True, train_limit=10)
    assert options == {"share": 2}  # left for the configs
    with pytest.raises(TypeError, match="shares"):
        run_train("vit_small_patch16_224", "digits", "o", TrainConfig(), shares=2)


def test_compress_recipe_flags(capsys, monkeypatch):
    from minivit.cli import commands
    from minivit.spec import MultiplexSpec

    seen = {}
    resolve = commands._compress_recipe

    def resolved(spec, distill, recipe, budget, options, given):  # what run_compress builds, then stop
        seen["spec"], seen["distill"], seen["recipe"] = resolve(spec, distill, recipe, budget, options, given)
        seen["budget"] = budget
        raise SystemExit(0)

    monkeypatch.setattr(commands, "_compress_recipe", resolved)
    assert cli(capsys, *COMPRESS, "--share", "4")[0] == 0
    assert seen["recipe"] == "frontier" and seen["spec"] == MultiplexSpec(share=4)
    assert cli(capsys, *COMPRESS, "--share", "4", "--delta-rank", "0")[0] == 0  # a layout flag: built as given
    assert seen["recipe"] == "exact" and seen["spec"] == MultiplexSpec(share=4, delta_rank=0)
    assert cli(capsys, *COMPRESS, "--delta-rank", "2", "--no-delta-bias")[0] == 0
    assert seen["recipe"] == "exact" and seen["spec"] == MultiplexSpec(delta_rank=2, delta_bias=False)
    assert cli(capsys, *COMPRESS, "--init", "mean", "--recipe", "exact")[0] == 0
    assert seen["recipe"] == "exact" and seen["spec"] == MultiplexSpec(init="mean")
    # the budget picks the rank, as documented
    assert cli(capsys, *COMPRESS, "--budget", "0.3", "--delta-rank", "2")[0] == 0
    assert seen["recipe"] == "frontier" and seen["budget"] == 0.3
    code, _, err = cli(capsys, *COMPRESS, "--recipe", "frontier", "--delta-rank", "2")
    assert_one_line_error(code, err, "--delta-rank: the frontier recipe picks these itself")
    # the frontier recipe distils with hard-label mixing unless --alpha is given; exact keeps the paper's 0
    assert cli(capsys, *COMPRESS)[0] == 0
    assert seen["distill"].alpha == RECIPE_ALPHA
    assert cli(capsys, *COMPRESS, "--alpha", "0")[0] == 0
    assert seen["distill"].alpha == 0.0
    assert cli(capsys, *COMPRESS, "--recipe", "exact")[0] == 0
    assert seen["distill"].alpha == 0.0


def test_run_compress_applies_the_recipe_distillation_field_by_field():
    from minivit.cli.commands import recipe_distill
    from minivit.distill import DistillConfig

    assert recipe_distill(DistillConfig(beta=0), "frontier", set()) == DistillConfig(beta=0, alpha=RECIPE_ALPHA)
    assert recipe_distill(DistillConfig(alpha=0.2), "frontier", {"alpha"}).alpha == 0.2
    assert recipe_distill(DistillConfig(), "exact", set()).alpha == 0.0


def test_run_compress_given_marks_the_fields_a_caller_chose():
    """A whole DistillConfig is used as it is; with ``given`` (the CLI's typed flags) its other fields are
    defaults the recipe fills in."""
    from minivit.cli.commands import _compress_recipe
    from minivit.distill import DistillConfig
    from minivit.errors import ConfigError
    from minivit.spec import MultiplexSpec

    spec, distill, recipe = _compress_recipe(MultiplexSpec(), DistillConfig(), None, None, {}, None)
    assert (recipe, distill.alpha) == ("frontier", 0.0)  # whole: kept
    spec, distill, recipe = _compress_recipe(MultiplexSpec(), DistillConfig(), None, None, {}, set())
    assert (recipe, distill.alpha) == ("frontier", RECIPE_ALPHA)  # nothing typed: the recipe's
    spec, distill, recipe = _compress_recipe(MultiplexSpec(), DistillConfig(alpha=0.3), None, None, {}, {"alpha"})
    assert distill.alpha == 0.3
    spec, distill, recipe = _compress_recipe(MultiplexSpec(delta_rank=2), DistillConfig(), None, None, {},
                                             {"delta_rank"})  # fmt: skip
    assert (recipe, distill.alpha) == ("exact", 0.0)  # a layout flag: built as given, the paper's loss
    with pytest.raises(ConfigError, match="picks these itself"):
        _compress_recipe(MultiplexSpec(delta_rank=2), DistillConfig(), "frontier", None, {}, {"delta_rank"})


def test_compress_default_builds_the_frontier_recipe(capsys, teacher_dir, tmp_path):
    import minivit
    from minivit.budget import recipe
    from minivit.measure import tensor_bytes

    out, exact = tmp_path / "recipe", tmp_path / "exact"
    code, stdout, err = cli(capsys, "compress", "--teacher", teacher_dir, "--share", "2", "--data", "digits",
                            "--epochs", "1", "--output", out, *FAST)  # fmt: skip
    assert code == 0, err
    assert "recipe frontier, the bytes of share 2: share" in stdout
    teacher = minivit.from_pretrained(teacher_dir)
    planned = recipe(teacher, 2).spec
    config = json.loads((out / "report.json").read_text())["config"]
    assert {k: config[k] for k in ("share", "delta_rank", "init", "transforms", "alpha")} == {
        "share": planned.share, "delta_rank": planned.delta_rank, "init": planned.init, "transforms": False,
        "alpha": RECIPE_ALPHA}
    code, _, err = cli(capsys, "compress", "--teacher", teacher_dir, "--share", "2", "--recipe", "exact", "--data",
                       "digits", "--epochs", "1", "--output", exact, *FAST)  # fmt: skip
    assert code == 0, err
    config = json.loads((exact / "report.json").read_text())["config"]
    assert (config["share"], config["delta_rank"], config["transforms"], config["alpha"]) == (2, 0, True, 0.0)
    student, plain = minivit.from_pretrained(out), minivit.from_pretrained(exact)
    assert tensor_bytes(student) <= tensor_bytes(plain)
