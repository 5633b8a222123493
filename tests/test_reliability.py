"""Reliability cases not covered elsewhere: corrupted model folders, code-carrying pickles, bad config.json,
read-only output, SIGTERM mid-run, NaN/inf inputs, images smaller than a patch, negative epochs.

Every CLI failure must be: exit code 2, one stderr line starting with ``error:``, no traceback, and no
half-written output folder. docs/reliability.md maps each case to the test covering it.
"""

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
from PIL import Image
from safetensors.torch import load_file, save_file

import minivit
from minivit import CheckpointError, ConfigError
from minivit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
MINIVIT = [sys.executable, "-m", "minivit.cli.main"]
TINY = ["--model", "vit_tiny_patch16_224", "--model-args", "img_size=16", "patch_size=4", "depth=2",
        "embed_dim=32", "num_heads=2"]  # fmt: skip
FAST = ["--train-limit", "200", "--val-limit", "100", "--no-progress"]




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny trained model folder (model.safetensors + config.json) made through the CLI."""
    out = tmp_path_factory.mktemp("rel") / "tiny"
    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--data", "digits", "--epochs", "1", "--output", str(out), *FAST])
    assert exc.value.code == 0
    return out


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _eval(capsys, folder, tmp_path):
    return cli(capsys, "eval", "--model", folder, "--data", "digits", "--val-limit", "20")


# -- corrupted checkpoints ---------------------------------------------------------------------------------------


def _truncate(folder):
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _random_bytes(folder):
    (folder / "model.safetensors").write_bytes(os.urandom(4096))


def _wrong_dtype(folder):
    sd = load_file(str(folder / "model.safetensors"))
    save_file({k: v.to(torch.int32) for k, v in sd.items()}, str(folder / "model.safetensors"))


def _wrong_shapes(folder):
    sd = load_file(str(folder / "model.safetensors"))
    sd["pos_embed"] = torch.zeros(1, 3, 7)
    save_file(sd, str(folder / "model.safetensors"))


CORRUPTIONS = {
    "truncated": (_truncate, "corrupted or truncated"),
    "random_bytes": (_random_bytes, "corrupted or truncated"),
    "wrong_dtype": (_wrong_dtype, "non-floating"),
    "wrong_shapes": (_wrong_shapes, "shape mismatch"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_model_folder_is_refused_by_api_and_cli(capsys, model_dir, tmp_path, kind):
    corrupt, pattern = CORRUPTIONS[kind]
    folder = corrupt_folder = _copy_model(model_dir, tmp_path / kind)
    corrupt(corrupt_folder)
    with pytest.raises(CheckpointError, match=pattern):
        minivit.from_pretrained(folder)
    code, _, err = _eval(capsys, folder, tmp_path)
    assert_one_line_error(code, err, pattern)


# -- code-carrying pickles ---------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refused for safety"):
        minivit.load_official(path, "mini_deit_tiny_patch16_224")
    assert not marker.exists()


# -- config.json with missing, extra or ill-typed fields ---------------------------------------------------------


def _edit_config(folder, edit):
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


CONFIG_EDITS = {
    "missing_family": (lambda c: c.pop("family"), "no 'family' field"),
    "missing_name": (lambda c: c.pop("name"), "'name' must be a model name"),
    "extra_model_arg": (
        lambda c: c["model_args"].update(bogus_field=1),
        "does not describe a valid model: bad arguments",
    ),
    "ill_typed_model_args": (lambda c: c.update(model_args=[1, 2]), "'model_args' must be an object"),
    "ill_typed_depth": (lambda c: c["model_args"].update(depth="two"), "does not describe a valid model"),
    "ill_typed_name": (lambda c: c.update(name=42), "'name' must be a model name"),
    "unknown_family": (lambda c: c.update(family="resnet"), "unknown model family"),
    "not_an_object": (None, "must hold a JSON object"),
    "not_json": (None, "not valid JSON"),
}


@pytest.mark.parametrize("kind", sorted(CONFIG_EDITS))
def test_bad_config_json_gives_one_line(capsys, model_dir, tmp_path, kind):
    edit, pattern = CONFIG_EDITS[kind]
    folder = _copy_model(model_dir, tmp_path / kind)
    if kind == "not_an_object":
        (folder / "config.json").write_text("[1, 2, 3]")
    elif kind == "not_json":
        (folder / "config.json").write_text('{"family": "timm", ')
    else:
        _edit_config(folder, edit)
    with pytest.raises(ConfigError if kind not in ("not_an_object", "not_json") else CheckpointError, match=pattern):
        minivit.from_pretrained(folder)
    code, _, err = _eval(capsys, folder, tmp_path)
    assert_one_line_error(code, err, pattern)


def test_extra_top_level_config_fields_are_ignored(model_dir, tmp_path):
    folder = _copy_model(model_dir, tmp_path / "extra")
    _edit_config(folder, lambda c: c.update(comment="added by hand", trained_on="digits"))
    model = minivit.from_pretrained(folder)
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 10)  # digits: one channel


# -- read-only output directory ----------------------------------------------------------------------------------


def test_read_only_output_directory(capsys, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root (or similar): permissions are not enforced, the folder stays writable")
        out = parent / "run"
        code, _, err = cli(capsys, "train", *TINY, "--data", "digits", "--epochs", "1", "--output", out, *FAST)
        assert_one_line_error(code, err, "permission denied")
        assert not out.exists()
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


# -- SIGTERM during a run ----------------------------------------------------------------------------------------


def test_sigterm_keeps_the_last_checkpoint_and_resume_finishes(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    args = ["train", *TINY, "--data", "digits", "--epochs", "3", "--batch-size", "32", "--checkpoint-every", "2",
            "--seed", "1", "--output", str(out), *FAST]  # fmt: skip
    proc = subprocess.Popen([*MINIVIT, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert last.exists(), "no checkpoint was written before SIGTERM"
    assert proc.returncode != 0, "the run finished before SIGTERM arrived"
    assert b"Traceback" not in stderr
    assert not (out / "report.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] >= 0
    # a kill in the middle of a write may leave a hidden temp file; it is never read and the next save removes it
    assert all(p.name.startswith(".") for p in (out / "checkpoints").iterdir() if p.name not in ("last.pt", "best.pt"))
    r = subprocess.run([*MINIVIT, *args, "--resume"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    assert (out / "report.json").exists() and (out / "model.safetensors").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) in (["last.pt"], ["best.pt", "last.pt"])


def test_temp_files_of_a_killed_checkpoint_write_are_cleaned_by_the_next_save(tmp_path):
    from minivit.train.state import load_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, {"epoch": 1})
    (folder / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # what SIGTERM/SIGKILL mid-write leaves
    (folder / ".best.pt.link").write_bytes(b"x")
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1  # the stale file does not affect loading
    save_checkpoint(folder, {"epoch": 2}, best=True)
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]


# -- NaN / inf inputs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_give_non_finite_outputs(value):
    torch.manual_seed(0)
    model = minivit.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=32,
                                 num_heads=2, num_classes=10).eval()  # fmt: skip
    x = torch.zeros(2, 3, 16, 16)
    x[0, 0, 0, 0] = value
    with torch.no_grad():
        y = model(x)
    assert not torch.isfinite(y[0]).all()  # documented: no silent clamping, the forward propagates NaN/inf
    assert torch.isfinite(y[1]).all()  # samples are independent: the clean one is unaffected


def test_non_finite_inputs_stop_training_with_a_clear_message(tmp_path):
    from minivit.distill.objective import SupervisedObjective
    from minivit.train import TrainConfig, TrainingError, fit

    class Poisoned(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return torch.full((3, 16, 16), float("nan")), i % 10

    model = minivit.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=32,
                                 num_heads=2, num_classes=10)  # fmt: skip
    with pytest.raises(TrainingError, match="loss is not finite at epoch 1, step 1.*last good checkpoint"):
        fit(
            SupervisedObjective(model), Poisoned(), Poisoned(), TrainConfig(epochs=1, batch_size=32), tmp_path, log=None
        )


# -- images smaller than a patch ---------------------------------------------------------------------------------


def test_images_smaller_than_a_patch_in_a_non_ascii_folder_train(capsys, tmp_path):
    root = tmp_path / "données ✓" / "图像"
    for split in ("train", "val"):
        for c, colour in (("dunkel", 20), ("明るい", 230)):
            (root / split / c).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (2, 3), color=(colour, colour - i, colour)).save(root / split / c / f"{i}.png")
    out = tmp_path / "sortie ✓"
    code, _, err = cli(capsys, "train", *TINY, "--data", root, "--epochs", "1", "--batch-size", "8",
                       "--output", out, "--no-progress")  # fmt: skip
    assert code == 0, err
    assert (out / "model.safetensors").exists()


# -- negative epochs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", ["-1", "0", "two"])
def test_bad_epochs_are_refused(capsys, tmp_path, epochs):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", *TINY, "--data", "digits", "--epochs", epochs, "--output", out, *FAST)
    assert_one_line_error(code, err, "--epochs")
    assert not out.exists()


def test_read_only_output_directory_simulated_for_root(capsys, tmp_path, monkeypatch):
    """The same case with the permission error injected, so that it is also checked where root ignores chmod."""
    import errno
    import pathlib
    import tempfile

    parent = tmp_path / "ro"
    parent.mkdir()
    real_mkdir, real_mkdtemp, real_makedirs = pathlib.Path.mkdir, tempfile.mkdtemp, os.makedirs

    def denied(path):
        if Path(path).resolve().is_relative_to(parent.resolve()):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def mkdir(self, *a, **kw):
        denied(self)
        return real_mkdir(self, *a, **kw)

    def mkdtemp(*a, dir=None, **kw):
        denied(dir or tempfile.gettempdir())
        return real_mkdtemp(*a, dir=dir, **kw)

    def makedirs(name, *a, **kw):
        denied(name)
        return real_makedirs(name, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(os, "makedirs", makedirs)
    out = parent / "run"
    code, _, err = cli(capsys, "train", *TINY, "--data", "digits", "--epochs", "1", "--output", out, *FAST)
    assert_one_line_error(code, err, "permission denied (make the folder writable or choose another --output)")
    assert list(parent.iterdir()) == []
