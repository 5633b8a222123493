"""minivit.io.atomic: one writer for files and folders; full disks, permissions and stale temp files."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from minivit.errors import CheckpointError, MinivitError, WriteError
from minivit.io import TEMP_PREFIX, atomic_folder, atomic_write, clean_stale, failure_cause
from minivit.train.state import load_checkpoint, save_checkpoint


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs Linux and mount(8)")
    folder = tmp_path / "disk"
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip() or r.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith((TEMP_PREFIX, ".")))


def test_files_are_0644_whatever_the_umask(tmp_path, umask_077):
    atomic_write(tmp_path / "a" / "report.json", '{"x": 1}\n')
    atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "a" / "c.pt", lambda f: torch.save({"w": torch.ones(2)}, f))
    for name in ("report.json", "b.bin", "c.pt"):
        assert mode(tmp_path / "a" / name) == 0o644, name
    assert mode(tmp_path / "a") == 0o755
    assert (tmp_path / "a" / "report.json").read_text() == '{"x": 1}\n'
    assert torch.load(tmp_path / "a" / "c.pt", weights_only=True)["w"].sum() == 2
    save_checkpoint(tmp_path / "ckpt", {"epoch": 1}, best=True)
    assert mode(tmp_path / "ckpt" / "last.pt") == mode(tmp_path / "ckpt" / "best.pt") == 0o644


def test_folder_new_is_renamed_into_place_existing_gets_files_in_order(tmp_path, umask_077):
    target = tmp_path / "out" / "model"
    with atomic_folder(target) as stage:
        (stage / "model.safetensors").write_bytes(b"w1")
        (stage / "config.json").write_text("{}")
        assert stage.parent == target.parent and stage.name.startswith(TEMP_PREFIX)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert mode(target) == 0o755 and mode(target / "config.json") == mode(target / "model.safetensors") == 0o644
    (target / "notes.txt").write_text("kept")
    with atomic_folder(target, last=("config.json",)) as stage:
        (stage / "config.json").write_text('{"v": 2}')
        (stage / "model.safetensors").write_bytes(b"w2")
    assert (target / "model.safetensors").read_bytes() == b"w2" and (target / "notes.txt").read_text() == "kept"
    assert list(tmp_path.joinpath("out").iterdir()) == [target]


def test_a_failure_inside_a_folder_write_leaves_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(WriteError, match=r"cannot write .*model: no space left on the device \(free some space"):
        with atomic_folder(target) as stage:
            (stage / "config.json").write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_injected_errors_name_the_cause_and_what_was_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic_write(path, "old\n")
    for err, cause in [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "RuntimeError"),
    ]:

        def write(f, err=err):
            f.write(b"partial")
            raise err

        with pytest.raises(WriteError, match=f"{cause}.*; the previous version is intact") as info:
            atomic_write(path, write)
        assert "\n" not in str(info.value)
        assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_causes_are_read_from_errno_text_and_chained_errors():
    assert failure_cause(OSError(errno.EDQUOT, "Disk quota exceeded")) == "no space left on the device"
    safetensors_msg = "Error while serializing: I/O error: No space left on device (os error 28)"
    assert failure_cause(Exception(safetensors_msg)) == "no space left on the device"
    try:
        try:
            raise OSError(errno.EACCES, "Permission denied")
        except OSError as inner:
            raise RuntimeError("file write failed") from inner
    except RuntimeError as outer:
        assert failure_cause(outer) == "permission denied"
    assert failure_cause(ValueError("odd\nsecond line")) == "ValueError: odd"


def test_stale_temp_files_of_dead_writers_are_cleaned_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_file = tmp_path / f"{TEMP_PREFIX}{dead.pid}-last.pt-abcd1234"
    stale_dir = tmp_path / f"{TEMP_PREFIX}{dead.pid}-model-x1y2"
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-model.onnx-zz"
    legacy = tmp_path / ".last.pt.abc123.tmp"
    unrelated = [tmp_path / ".hidden.tmp", tmp_path / "notes.txt", tmp_path / f"{TEMP_PREFIX}x-y"]
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    for p in (live, legacy, *unrelated):
        p.write_bytes(b"x")
    removed = clean_stale(tmp_path, [".last.pt.*.tmp"])
    assert sorted(removed) == sorted([stale_file, stale_dir, legacy])
    assert sorted(tmp_path.iterdir()) == sorted([live, *unrelated])
    # every writer cleans the folder it writes into
    stale_file.write_bytes(b"half")
    atomic_write(tmp_path / "report.json", "{}")
    assert not stale_file.exists() and live.exists()


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny_disk):
    folder = tiny_disk / "checkpoints"
    save_checkpoint(folder, {"epoch": 1, "w": torch.zeros(1000)})
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(folder, {"epoch": 2, "w": torch.randn(200_000)})  # 800 KB on a 256 KiB disk
    message = str(info.value)
    assert "\n" not in message
    assert "no space left on the device; the previous version is intact (free some space" in message, message
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]


def test_full_disk_during_a_safetensors_write_leaves_nothing(tiny_disk):
    target = tiny_disk / "model"
    with pytest.raises(WriteError, match=r"model: no space left on the device \(free some space") as info:
        with atomic_folder(target) as stage:
            save_file({"w": torch.randn(200_000)}, str(stage / "model.safetensors"))
    assert isinstance(info.value, MinivitError) and "\n" not in str(info.value)
    assert list(tiny_disk.iterdir()) == []


def test_read_only_file_system(tiny_disk):
    atomic_write(tiny_disk / "report.json", "{}")
    r = subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
    with pytest.raises(WriteError, match="read-only file system; the previous version is intact"):
        atomic_write(tiny_disk / "report.json", "{new}")
    assert (tiny_disk / "report.json").read_text() == "{}"


def tiny_model():
    import minivit

    torch.manual_seed(0)
    return minivit.create_model("vit_small_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64,
                                num_heads=2, num_classes=10).eval()  # fmt: skip  (about 0.4 MB of weights)


@pytest.mark.filterwarnings("ignore")
def test_full_disk_during_exports_is_one_line_and_leaves_nothing(tiny_disk):
    from minivit.export import export_onnx, export_safetensors, export_torchscript

    model = tiny_model()
    with pytest.raises(WriteError, match=r"model\.pt: no space left on the device \(free some space"):
        export_torchscript(model, tiny_disk / "model.pt")
    with pytest.raises(WriteError, match=r"model\.onnx: no space left on the device \(free some space"):
        export_onnx(model, tiny_disk / "model.onnx", exporter="torchscript")
    with pytest.raises(MinivitError, match="no space left on the device") as info:
        export_safetensors(model, tiny_disk / "model")
    assert "\n" not in str(info.value)
    assert list(tiny_disk.iterdir()) == []
