"""Image-folder scanning at scale: every folder entered once, clear errors, lazy decoding."""

from __future__ import annotations

import errno
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minivit.data import ImageFolderDataset, build_dataset, scan_image_folder
from minivit.data import scan as scan_module
from minivit.errors import DataError

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def make(root: Path, spec: dict[str, dict[str, int]]) -> Path:
    for split, classes in spec.items():
        for k, (cls, count) in enumerate(classes.items()):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (6, 5), (40 * k, 10 * i, 100)).save(root / split / cls / f"{i}.png")
    return root


def counts(dataset) -> list[int]:
    return np.bincount(dataset.samples.labels, minlength=len(dataset.classes)).tolist()


@pytest.mark.parametrize(
    "links",
    [
        {"train/a/self": "."},
        {"train/a/up": ".."},
        {"train/a/self": ".", "train/a/again": "."},
        {"train/a/sub/self": "..", "train/a/sub/loop": "../sub"},
        {"train/a/other": "../b"},
    ],
)
def test_symlink_loops_are_entered_once_and_reported(tmp_path, links):
    root = make(tmp_path / "set", {"train": {"a": 3, "b": 2}, "val": {"a": 1}})
    (root / "train" / "a" / "sub").mkdir()
    for link, target in links.items():
        os.symlink(target, root / link)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match=r"skipped \d+ folder link\(s\) .* already scanned") as record:
        dataset = ImageFolderDataset(root, "train", 8, 3)
    assert time.perf_counter() - start < 5
    assert counts(dataset) == [3, 2]  # a's images once, b's images labelled b
    assert len([w for w in record if "folder link" in str(w.message)]) == 1


def test_a_link_to_a_fresh_folder_is_followed(tmp_path):
    root = make(tmp_path / "set", {"train": {"a": 1, "b": 1}, "val": {"a": 1}})
    extra = make(tmp_path / "extra", {"x": {"pics": 2}})
    os.symlink(extra / "x" / "pics", root / "train" / "a" / "more")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = ImageFolderDataset(root, "train", 8, 3)
    assert counts(dataset) == [3, 1]


def test_unreadable_folder_is_a_permission_error_not_an_empty_class(tmp_path, monkeypatch):
    root = make(tmp_path / "set", {"train": {"a": 1, "b": 1}, "val": {"a": 1}})
    real = os.scandir

    def denied(path="."):
        if os.fspath(path).endswith(os.path.join("train", "b")):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(scan_module.os, "scandir", denied)
    with pytest.raises(DataError, match=r"cannot read '.*train/b': permission denied") as err:
        scan_image_folder(root, "train")
    assert "chmod" in err.value.hint


@pytest.mark.skipif(AS_ROOT, reason="root reads any file whatever its mode, so chmod cannot make one unreadable")
def test_chmod_unreadable_folder_and_file(tmp_path):
    root = make(tmp_path / "set", {"train": {"a": 2, "b": 1}, "val": {"a": 1}})
    (root / "train" / "a" / "0.png").chmod(0)
    with pytest.warns(UserWarning, match=r"1 cannot be read \(permission denied\)"):
        ImageFolderDataset(root, "train", 8, 3)
    (root / "train" / "b").chmod(0)
    try:
        with pytest.raises(DataError, match="permission denied"):
            ImageFolderDataset(root, "train", 8, 3)
    finally:
        (root / "train" / "b").chmod(0o755)


def test_unreadable_file_is_reported_as_such(tmp_path, monkeypatch):
    root = make(tmp_path / "set", {"train": {"a": 2, "b": 1}, "val": {"a": 1}})
    from minivit.data import folder

    real = folder.Image.open

    def guarded(path, *args, **kwargs):
        if str(path).endswith(os.path.join("a", "0.png")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folder.Image, "open", guarded)
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 .* 1 cannot be read \(permission denied\)"):
        verified = ImageFolderDataset(root, "train", 8, 3)
    assert [p.name for p in verified.skipped] == ["0.png"]
    with pytest.warns(UserWarning, match=r"cannot read .*\(permission denied\)"):
        lazy = ImageFolderDataset(root, "train", 8, 3, verify=False)  # met when checking the first sample
    assert list(lazy.broken.values()) == ["permission denied"]


def test_too_long_name_says_so(tmp_path):
    with pytest.raises(DataError, match="name too long") as err:
        build_dataset(tmp_path / ("x" * 300), "train", 8, 3)
    assert "255" in err.value.hint


def test_lazy_folder_decodes_nothing_up_front_and_skips_broken_files_once(tmp_path, monkeypatch):
    root = make(tmp_path / "set", {"train": {"a": 3, "b": 3}, "val": {"a": 1}})
    for name in ("x.jpg", "y.png"):
        (root / "train" / "a" / name).write_bytes(b"broken")
    from minivit.data import folder

    opened = []
    real = folder.Image.open
    monkeypatch.setattr(folder.Image, "open", lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    dataset = ImageFolderDataset(root, "train", 8, 3, verify=False)
    assert len(opened) == 1 and len(dataset) == 8  # only the first sample, as a check
    with pytest.warns(UserWarning) as record:
        images = [dataset[i] for i in range(len(dataset))]
    assert len(record) == 1 and "cannot decode" in str(record[0].message)
    assert len(dataset.broken) == 2 and all(x.shape == (3, 8, 8) for x, _ in images)
    assert [label for _, label in images] == [0] * 3 + [1] * 5  # broken ones replaced by the next good sample


def test_small_folders_are_verified_large_ones_are_not(tmp_path, monkeypatch):
    root = make(tmp_path / "set", {"train": {"a": 3, "b": 3}, "val": {"a": 1}})
    (root / "train" / "a" / "bad.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 1 of 7"):
        assert len(ImageFolderDataset(root, "train", 8, 3)) == 6
    from minivit.data import folder

    monkeypatch.setattr(folder, "VERIFY_MAX_FILES", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ImageFolderDataset(root, "train", 8, 3)) == 7


def test_samples_are_compact_and_behave_like_a_list(tmp_path):
    root = make(tmp_path / "set", {"train": {"a": 3, "b": 2}, "val": {"a": 1}})
    dataset = ImageFolderDataset(root, "train", 8, 3, limit=4)
    path, label = dataset.samples[-1]
    assert isinstance(path, Path) and path.is_file() and label == 1
    assert [p.name for p, _ in dataset.samples] == ["0.png", "1.png", "0.png", "1.png"]
    assert dataset.samples[1:3] == [dataset.samples[1], dataset.samples[2]]
    assert dataset.sample_id(0) == str(root / "train" / "a" / "0.png")
    with pytest.raises(IndexError):
        dataset.samples[4]
