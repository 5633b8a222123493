"""One writer per output folder: two real processes on one --output, a stale lock of a killed process,
--resume against a live writer, and export into another run's folder.

docs/reliability.md lists each case with the test that checks it.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, cli

from minivit.cli.main import main
from minivit.io import LOCK_NAME, OutputInUse, lock_output

ROOT = Path(__file__).resolve().parents[1]
MINIVIT = [sys.executable, "-m", "minivit.cli.main"]
TINY = ["--model", "vit_tiny_patch16_224", "--model-args", "img_size=16", "patch_size=4", "depth=2",
        "embed_dim=32", "num_heads=2"]  # fmt: skip
FAST = ["--train-limit", "100", "--val-limit", "50", "--batch-size", "50", "--no-progress"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
HOLD = """
import sys
from minivit.io import lock_output
with lock_output(sys.argv[1], "minivit train"):
    print("held", flush=True)
    sys.stdin.read()
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock locks are POSIX only")




def train_args(out, epochs=1):
    return ["train", *TINY, "--data", "digits", "--epochs", str(epochs), "--output", str(out), *FAST]


def holder_process(folder):
    """A second real process holding the lock of ``folder`` until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("locks") / "run"
    with pytest.raises(SystemExit) as exc:
        main(train_args(out))
    assert exc.value.code == 0
    return out


def test_lock_in_one_process_refuses_a_second_holder_and_cleans_up(tmp_path):
    folder = tmp_path / "new" / "run"
    with lock_output(folder, "minivit train"):
        assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(OutputInUse, match=rf"being written by another minivit run \(pid {os.getpid()}: minivit"):
            with lock_output(folder):
                pass
    assert not (tmp_path / "new").exists(), "folders the lock created and nothing filled are removed"
    (tmp_path / "kept").mkdir()
    with lock_output(tmp_path / "kept"):
        (tmp_path / "kept" / "report.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["report.json"]


def test_a_second_writer_and_a_resume_are_refused_while_a_run_holds_the_folder(capsys, run_dir):
    proc = holder_process(run_dir)
    try:
        code, _, err = cli(capsys, *train_args(run_dir), "--resume")
        assert_one_line_error(code, err, f"being written by another minivit run (pid {proc.pid}: minivit train)")
        code, _, err = cli(capsys, *train_args(run_dir), "--force")
        assert_one_line_error(code, err, "wait for it to finish, or choose another --output")
        code, _, err = cli(capsys, "export", "--model", run_dir, "--format", "safetensors", "--output", run_dir)
        assert_one_line_error(code, err, f"pid {proc.pid}")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert not (run_dir / LOCK_NAME).exists()


def test_analyze_and_demo_refuse_a_folder_another_run_is_writing(capsys, run_dir, tmp_path):
    out = tmp_path / "analysis"
    proc = holder_process(out)
    try:
        code, _, err = cli(capsys, "analyze", "--teacher", run_dir, "--student", run_dir, "--data", "digits",
                           "--output", out)  # fmt: skip
        assert_one_line_error(code, err, f"being written by another minivit run (pid {proc.pid}")
        code, _, err = cli(capsys, "demo", "--data", "digits", "--output", out)
        assert_one_line_error(code, err, f"pid {proc.pid}")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert not out.exists(), "nothing written by the refused runs"


def test_a_stale_lock_of_a_killed_process_is_taken_over(capsys, tmp_path):
    out = tmp_path / "run"
    proc = holder_process(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (out / LOCK_NAME).read_text().split()[0] == str(proc.pid), "the killed holder's lock file is still there"
    code, outp, err = cli(capsys, *train_args(out))
    assert code == 0, err
    assert "done: val top-1" in outp
    assert not (out / LOCK_NAME).exists()
    assert (out / "report.json").exists()


def test_two_runs_started_together_on_one_output(tmp_path):
    """Two real CLI processes: one writes the run, the other is refused with one line; the run is whole."""
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [*MINIVIT, *train_args(out), "--seed", str(seed)],
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    results = [(p.returncode, *o) for p, o in zip(procs, outputs)]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    (_, _, err), (_, stdout, _) = sorted(results, key=lambda r: r[0], reverse=True)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "being written by another minivit run" in lines[0] or "already holds a run" in lines[0], lines[0]
    report = json.loads((out / "report.json").read_text())
    winner = 1 if results[0][0] == 0 else 2
    assert report["config"]["seed"] == winner, "report.json belongs to the run that finished"
    assert f"{report['val']['top1']:.2f}" in stdout
    assert not (out / LOCK_NAME).exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o644}, modes


def test_export_refuses_another_runs_folder_unless_forced(capsys, run_dir, tmp_path):
    other = tmp_path / "other"
    code, _, err = cli(capsys, *train_args(other, 1), "--seed", "3")
    assert code == 0, err
    before = {n: (other / n).read_bytes() for n in ("model.safetensors", "config.json", "report.json")}
    for fmt in ("safetensors", "torchscript"):
        code, _, err = cli(capsys, "export", "--model", run_dir, "--format", fmt, "--output", other, "--no-verify")
        assert_one_line_error(code, err, f"--output {other} holds another model or run")
        assert "pass --force" in err
    assert {n: (other / n).read_bytes() for n in before} == before
    code, out, err = cli(capsys, "export", "--model", run_dir, "--format", "safetensors", "--output", other, "--force")
    assert code == 0, err
    assert (other / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    # the model's own folder and fresh folders are fine
    code, _, err = cli(capsys, "export", "--model", run_dir, "--format", "torchscript", "--no-verify")
    assert code == 0, err
    assert (run_dir / "export" / "model.torchscript.pt").exists() and not (run_dir / "export" / LOCK_NAME).exists()
