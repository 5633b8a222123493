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

from minivit.cli.commands import parse_model_args, parse_value
from minivit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
MINIVIT = [sys.executable, "-m", "minivit.cli.main"]
TINY_ARGS = ["img_size=8", "patch_size=2", "depth=2", "embed_dim=32", "num_heads=2", "mlp_ratio=2"]
FAST = ["--batch-size", "64", "--train-limit", "320", "--val-limit", "100", "--no-progress"]


def cli(capsys, *argv):
    """Run ``minivit argv`` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, pattern=""):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert pattern.lower() in lines[0].lower(), lines[0]


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
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
