"""Tests for minivit.data: pipeline, IDX parsing, Fashion-MNIST lookup/download, digits, folders, loaders."""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minivit.data import (
    BUILTIN_DATASETS,
    FASHION_MNIST_CLASSES,
    ImageFolderDataset,
    ImagePipeline,
    LightAugment,
    build_dataset,
    build_loaders,
    default_dataset,
    read_idx,
    stratified_first_n,
    write_idx,
)
from minivit.data import fashion_mnist as fmnist
from minivit.data.digits import load_digits_tensors
from minivit.data.idx import encode_idx, parse_idx
from minivit.data.pipeline import convert_channels, to_hw
from minivit.errors import DataError

SHARED_FMNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
FMNIST_FILES = list(fmnist.FASHION_MNIST_MD5)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No user env, no system folder, a private cache, and a network that always fails."""
    monkeypatch.delenv("MINIVIT_DATA", raising=False)
    monkeypatch.delenv("MINIVIT_OFFLINE", raising=False)
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "no-system-dir")

    def offline(url, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(fmnist, "urlopen", offline)


# ----------------------------------------------------------------------------- helpers


def tiny_fmnist_bytes(n_train: int = 30, n_val: int = 20, hw: tuple[int, int] = (6, 5)) -> dict[str, bytes]:
    """The four gzipped IDX files of a tiny random Fashion-MNIST look-alike."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_val, *hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": ((np.arange(n_val) * 3) % 10).astype(np.uint8),
    }
    return {name: gzip.compress(encode_idx(a), mtime=0) for name, a in arrays.items()}


def write_fmnist(folder: Path, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in tiny_fmnist_bytes(**kwargs).items():
        (folder / name).write_bytes(data)
    return folder


def save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def solid(colour, size=(10, 8), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def make_folder(root: Path, train: dict[str, int], val: dict[str, int], ext: str = ".png") -> Path:
    """An image folder with ``count`` solid-colour images per class and split."""
    for split, spec in (("train", train), ("val", val)):
        for k, (cls, count) in enumerate(spec.items()):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                save(root / split / cls / f"img{i}{ext}", solid((40 * k, 10 * i, 200)))
    return root


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("bad", [0, -3, True, (32,), (32, 0), "32", (32, 32, 3), 2.5])
def test_img_size_rejects_bad_values(bad):
    with pytest.raises(DataError, match="img_size"):
        to_hw(bad)


def test_img_size_accepts_int_and_pair():
    assert to_hw(32) == (32, 32)
    assert to_hw((24, 40)) == (24, 40)
    assert to_hw([24, 40]) == (24, 40)


def test_convert_channels_repeats_grey_and_reduces_rgb_like_pil():
    grey = torch.rand(2, 1, 4, 4)
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 0], rgb[:, 2])
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32)
    ours = convert_channels(torch.from_numpy(pixels).permute(2, 0, 1).float()[None], 1)[0, 0].numpy()
    assert np.abs(ours - expected).max() <= 1.0
    with pytest.raises(DataError, match="in_chans=2"):
        convert_channels(torch.rand(1, 3, 4, 4), 2)


def test_pipeline_normalises_resizes_and_converts():
    pipe = ImagePipeline(8, 3)
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    images[1] = 255
    out = pipe(images)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.full_like(out[0], -1.0))
    assert torch.allclose(out[1], torch.ones_like(out[1]))
    assert pipe.mean == (0.5, 0.5, 0.5) and pipe.std == (0.5, 0.5, 0.5)
    with pytest.raises(DataError, match="mean has 2 values"):
        ImagePipeline(8, 3, mean=(0.5, 0.5))


def test_light_augment_is_a_seeded_shift_or_flip():
    images = torch.zeros(16, 1, 28, 28)
    images[:, :, 10:18, 8:20] = 1.0  # a blob away from the borders survives any 2-pixel shift
    augment = LightAugment()
    out_a = augment(images, torch.Generator().manual_seed(3))
    out_b = augment(images, torch.Generator().manual_seed(3))
    assert out_a.shape == images.shape
    assert torch.equal(out_a, out_b)
    assert torch.allclose(out_a.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))
    assert not all(torch.equal(o, images[0]) for o in out_a)  # something moved


def test_stratified_first_n_is_balanced_sorted_and_deterministic():
    targets = np.array([0] * 50 + [1] * 30 + [2] * 5 + [0, 1, 2] * 5)
    picked = stratified_first_n(targets, 12)
    assert list(picked) == sorted(picked)
    assert np.bincount(targets[picked]).tolist() == [4, 4, 4]
    assert np.array_equal(picked, stratified_first_n(targets, 12))
    assert len(stratified_first_n(targets, 1000)) == len(targets)
    # Once a class runs out, the others fill the budget.
    assert np.bincount(targets[stratified_first_n(targets, 60)]).tolist()[2] == 10


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    path = write_idx(array, tmp_path / f"a-idx{suffix}")
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)
    assert back.flags.writeable


def test_idx_header_layout_matches_the_spec():
    raw = encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert raw[:4] == bytes([0, 0, 0x08, 3])  # magic 2051 of the image files
    assert int.from_bytes(raw[4:8], "big") == 2 and int.from_bytes(raw[8:12], "big") == 28


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"", "bad IDX magic"),
        (b"\x01\x00\x08\x01" + b"\x00" * 8, "bad IDX magic"),
        (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01x", "unknown IDX type"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "trailing bytes"),
    ],
)
def test_parse_idx_rejects_corrupt_data(raw, match):
    with pytest.raises(DataError, match=match):
        parse_idx(raw)


def test_parse_idx_checks_dimensions():
    with pytest.raises(DataError, match="expected 3-D"):
        parse_idx(encode_idx(np.zeros(4, np.uint8)), expect_ndim=3)


def test_read_idx_truncated_gzip_and_missing_file(tmp_path):
    data = gzip.compress(encode_idx(np.zeros((50, 28, 28), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_explicit_folder(tmp_path):
    folder = write_fmnist(tmp_path / "fm")
    train = build_dataset(folder, "train", (6, 5), 1)
    assert len(train) == 30 and train.classes == list(FASHION_MNIST_CLASSES) and train.num_classes == 10
    image, label = train[3]
    raw = read_idx(folder / "train-images-idx3-ubyte.gz")
    assert image.shape == (1, 6, 5) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.from_numpy(raw[3]).float() / 255 * 2 - 1, atol=1e-6)
    assert label == 3 and isinstance(label, int)
    big = build_dataset(str(folder), "val", 16, 3)
    image, _ = big[0]
    assert image.shape == (3, 16, 16) and torch.equal(image[0], image[2])
    assert image.min() >= -1 and image.max() <= 1


def test_fashion_mnist_test_alias_and_limit(tmp_path):
    folder = write_fmnist(tmp_path / "fm")
    val = build_dataset(folder, "val", 8, 1)
    test = build_dataset(folder, "TEST", 8, 1)
    assert val.targets == test.targets and len(val) == 20
    small = build_dataset(folder, "train", 8, 1, limit=10)
    assert sorted(small.targets) == list(range(10))


def test_fashion_mnist_search_order_env_subfolder_and_default(tmp_path, monkeypatch):
    assert default_dataset() == "digits"
    with pytest.raises(DataError, match="downloading it .* failed"):
        build_dataset("fashion-mnist", "train", 8, 1)
    write_fmnist(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "data"))
    assert fmnist.find_fashion_mnist() == tmp_path / "data" / "fashion-mnist"
    assert default_dataset() == "fashion-mnist"
    assert len(build_dataset("Fashion_MNIST", "train", 8, 1)) == 30


def test_fashion_mnist_found_in_system_dir_and_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", write_fmnist(tmp_path / "sys", n_train=12))
    write_fmnist(tmp_path / "cache" / "fashion-mnist", n_train=14)
    assert len(build_dataset("fashion-mnist", "train", 8, 1)) == 12  # system dir comes before the cache
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "gone")
    assert len(build_dataset("fashion-mnist", "train", 8, 1)) == 14
    assert default_dataset() == "fashion-mnist"


def serve(files: dict[str, bytes], calls: list[str]):
    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(files[url.rsplit("/", 1)[-1]])

    return fake_urlopen


def test_download_verifies_checksums_and_fills_the_cache(tmp_path, monkeypatch):
    files = tiny_fmnist_bytes()
    for name, data in files.items():
        monkeypatch.setitem(fmnist.FASHION_MNIST_MD5, name, hashlib.md5(data).hexdigest())
    calls: list[str] = []
    monkeypatch.setattr(fmnist, "urlopen", serve(files, calls))
    dataset = build_dataset("fashion-mnist", "val", 8, 1)
    assert len(dataset) == 20
    assert calls == [fmnist.FASHION_MNIST_URL + name for name in FMNIST_FILES]
    cache = tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(FMNIST_FILES)
    build_dataset("fashion-mnist", "train", 8, 1)
    assert len(calls) == 4  # found in the cache the second time


def test_download_checksum_mismatch_leaves_nothing_behind(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(fmnist, "urlopen", serve(tiny_fmnist_bytes(), calls))  # real MD5s will not match
    with pytest.raises(DataError, match="MD5") as err:
        build_dataset("fashion-mnist", "train", 8, 1)
    assert "MINIVIT_DATA" in str(err.value) and "digits" in str(err.value)
    assert len(calls) == 1
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_download_failure_explains_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        build_dataset("fashion-mnist", "train", 8, 1)
    message = str(err.value)
    assert "not found locally" in message and "network disabled in tests" in message
    assert str(tmp_path / "cache" / "fashion-mnist") in message and "MINIVIT_DATA" in message
    assert not (tmp_path / "cache" / "fashion-mnist").exists()


def test_offline_mode_never_downloads(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(fmnist, "urlopen", serve({}, calls))
    monkeypatch.setenv("MINIVIT_OFFLINE", "1")
    with pytest.raises(DataError, match="downloading is disabled"):
        build_dataset("fashion-mnist", "train", 8, 1)
    monkeypatch.delenv("MINIVIT_OFFLINE")
    with pytest.raises(DataError, match="downloading is disabled"):
        build_dataset("fashion-mnist", "train", 8, 1, download=False)
    assert calls == []


def test_incomplete_fashion_mnist_folder_names_the_missing_files(tmp_path):
    folder = write_fmnist(tmp_path / "fm")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing: t10k-labels-idx1-ubyte.gz"):
        build_dataset(folder, "train", 8, 1)


def test_uncompressed_idx_files_are_accepted(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for name, data in tiny_fmnist_bytes().items():
        (folder / name.removesuffix(".gz")).write_bytes(gzip.decompress(data))
    assert len(build_dataset(folder, "val", 8, 1)) == 20


def test_fashion_mnist_corrupt_files_raise(tmp_path):
    folder = write_fmnist(tmp_path / "fm")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="gzip"):
        build_dataset(folder, "train", 8, 1)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(np.zeros(7, np.uint8))))
    with pytest.raises(DataError, match="20 images but .* 7 labels"):
        build_dataset(folder, "val", 8, 1)
    bad_labels = np.full(20, 10, np.uint8)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(bad_labels)))
    with pytest.raises(DataError, match="out of range"):
        build_dataset(folder, "val", 8, 1)


@pytest.mark.skipif(
    not SHARED_FMNIST.is_dir(), reason=f"real Fashion-MNIST copy not present at {SHARED_FMNIST}"
)
def test_real_fashion_mnist(monkeypatch):
    train = build_dataset(SHARED_FMNIST, "train", 32, 3, train_augment=True)
    val = build_dataset(SHARED_FMNIST, "val", 28, 1)
    assert (len(train), len(val)) == (60000, 10000)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(val.labels).tolist() == [1000] * 10
    image, label = train[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    plain, _ = val[0]
    assert torch.allclose(plain[0], val.images[0, 0].float() / 127.5 - 1)
    monkeypatch.setenv("MINIVIT_DATA", str(SHARED_FMNIST))
    assert default_dataset() == "fashion-mnist"
    assert len(build_dataset("fashion-mnist", "val", 16, 1, limit=3000)) == 3000


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_disjoint_and_stratified():
    train_x, train_y = load_digits_tensors("train")
    val_x, val_y = load_digits_tensors("val")
    assert (len(train_y), len(val_y)) == (1438, 359)
    assert train_x.dtype == torch.uint8 and train_x.shape[1:] == (8, 8) and int(train_x.max()) == 255
    assert all(30 <= c <= 40 for c in torch.bincount(val_y).tolist())
    rows = {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(train_x, train_y)}
    overlap = sum(tuple(x.flatten().tolist()) + (int(y),) in rows for x, y in zip(val_x, val_y))
    assert overlap <= 2  # the digits set itself holds a few exact duplicates
    assert torch.equal(load_digits_tensors("test")[1], val_y)


def test_digits_dataset():
    dataset = build_dataset("digits", "train", 16, 3, train_augment=True)
    assert dataset.classes == [str(d) for d in range(10)] and dataset.num_classes == 10
    assert dataset.augment is None  # digits are never augmented
    image, label = dataset[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= label < 10
    assert image.min() >= -1 and image.max() <= 1
    assert build_dataset("DIGITS", "val", 8, 1, limit=50).targets.count(0) == 5


# ----------------------------------------------------------------------------- image folders


def test_image_folder_basic(tmp_path):
    root = make_folder(tmp_path / "set", {"cat": 3, "dog": 2, "emu": 2}, {"dog": 2, "cat": 1})
    train = build_dataset(root, "train", 12, 3)
    assert train.classes == ["cat", "dog", "emu"] and len(train) == 7
    assert sorted(train.targets) == [0, 0, 0, 1, 1, 2, 2]
    image, label = train[0]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32 and label == 0
    val = build_dataset(str(root), "val", (12, 20), 1)
    assert val.classes == train.classes and sorted(val.targets) == [0, 1, 1]
    assert val[0][0].shape == (1, 12, 20)


def test_image_folder_colour_values_and_grey_conversion(tmp_path):
    root = tmp_path / "set"
    save(root / "train" / "a" / "x.png", solid((255, 0, 0)))
    save(root / "train" / "b" / "y.png", solid(128, mode="L"))
    save(root / "val" / "a" / "x.png", solid((255, 0, 0)))
    rgb = build_dataset(root, "train", 6, 3)
    red, _ = rgb[0]
    assert torch.allclose(red.mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]))
    grey_as_rgb, _ = rgb[1]
    assert torch.allclose(grey_as_rgb, torch.full_like(grey_as_rgb, 128 / 127.5 - 1), atol=1e-6)
    grey = build_dataset(root, "train", 6, 1)
    assert torch.allclose(grey[0][0], torch.full((1, 6, 6), 0.299 * 2 - 1), atol=1 / 255)


def test_image_folder_rgba_palette_and_16_bit(tmp_path):
    root = tmp_path / "modes"
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 2:, 3] = 255  # left half transparent red, right half opaque red
    save(root / "train" / "rgba" / "a.png", Image.fromarray(rgba, "RGBA"))
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    save(root / "train" / "palette" / "p.png", palette)
    save(root / "train" / "palette" / "t.png", palette, transparency=1)
    deep = np.full((4, 4), 128 * 257, np.uint16)
    deep[:, 2:] = 65535
    save(root / "train" / "sixteen" / "s.png", Image.fromarray(deep))
    assert Image.open(root / "train" / "sixteen" / "s.png").mode.startswith("I")
    save(root / "val" / "rgba" / "a.png", Image.fromarray(rgba, "RGBA"))

    dataset = build_dataset(root, "train", 4, 3)
    by_name = {path.name: dataset[i][0] for i, (path, _) in enumerate(dataset.samples)}
    assert torch.allclose(by_name["a.png"][:, :, :2], torch.full((3, 4, 2), -1.0))  # transparent -> black
    assert torch.allclose(by_name["a.png"][:, :, 2:].mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(by_name["p.png"].mean(dim=(1, 2)), torch.tensor([-1.0, 1.0, -1.0]))
    assert torch.allclose(by_name["t.png"], torch.full((3, 4, 4), -1.0))  # transparent palette entry
    sixteen = by_name["s.png"]
    assert torch.allclose(
        sixteen[:, :, :2], torch.full((3, 4, 2), 128 / 255 * 2 - 1), atol=1e-3
    )  # not clipped
    assert torch.allclose(sixteen[:, :, 2:], torch.ones(3, 4, 2))
    grey = build_dataset(root, "train", 4, 1)
    assert all(image.shape == (1, 4, 4) for image, _ in (grey[i] for i in range(len(grey))))


def test_small_images_are_upscaled(tmp_path):
    root = tmp_path / "small"
    tiny = np.array([[0, 255], [255, 0]], np.uint8)
    save(root / "train" / "a" / "t.png", Image.fromarray(tiny))
    save(root / "train" / "b" / "t.png", Image.fromarray(255 - tiny))
    save(root / "val" / "a" / "t.png", Image.fromarray(tiny))
    image, _ = build_dataset(root, "train", 32, 1)[0]
    assert image.shape == (1, 32, 32)
    assert image[0, 0, 0] < -0.9 and image[0, 0, -1] > 0.9  # corners keep their colour
    assert ((image > -0.9) & (image < 0.9)).any()  # interpolated, not nearest-neighbour blocks


def test_other_formats_extensions_and_hidden_files(tmp_path):
    root = tmp_path / "formats"
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    for ext in (".JPG", ".jpeg", ".bmp", ".GIF", ".tif", ".TIFF", ".webp", ".Png"):
        save(root / "train" / "a" / f"img{ext}", picture, **({"format": "JPEG"} if ext == ".JPG" else {}))
    save(root / "train" / "b" / "nested" / "deep" / "x.png", picture)
    (root / "train" / "b" / "notes.txt").write_text("not an image")
    (root / "train" / "b" / "._x.png").write_bytes(b"macOS resource fork")
    (root / "train" / ".hidden").mkdir()
    save(root / "val" / "b" / "x.png", picture)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = build_dataset(root, "train", 7, 3)
    assert dataset.classes == ["a", "b"] and len(dataset) == 9
    assert [dataset[i][0].shape for i in range(len(dataset))] == [(3, 7, 7)] * 9


def test_non_ascii_paths(tmp_path):
    root = make_folder(tmp_path / "données ✓", {"Äpfel": 2, "日本語": 2}, {"日本語": 1})
    dataset = build_dataset(root, "train", 8, 3)
    assert dataset.classes == ["Äpfel", "日本語"]
    assert build_dataset(root, "val", 8, 3)[0][1] == 1


def test_undecodable_files_are_skipped_with_one_warning(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 3, "b": 3}, {"a": 1})
    (root / "train" / "a" / "empty.png").write_bytes(b"")
    (root / "train" / "b" / "garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
    good = (root / "train" / "b" / "img0.png").read_bytes()
    (root / "train" / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match=r"skipped 3 of 9 image files") as record:
        dataset = build_dataset(root, "train", 8, 3)
    assert len([w for w in record if "skipped" in str(w.message)]) == 1
    assert len(dataset) == 6 and sorted(p.name for p in dataset.skipped) == [
        "empty.png",
        "garbage.jpg",
        "truncated.png",
    ]


def test_no_decodable_file_raises(tmp_path):
    root = tmp_path / "bad"
    for split, cls in (("train", "a"), ("train", "b"), ("val", "a")):
        (root / split / cls).mkdir(parents=True)
        (root / split / cls / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 image files"):
        build_dataset(root, "train", 8, 3)


def test_file_breaking_after_the_scan_is_replaced(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 2, "b": 2}, {"a": 1})
    dataset = build_dataset(root, "train", 8, 3)
    broken = dataset.samples[0][0]
    broken.write_bytes(b"")
    with pytest.warns(UserWarning, match="cannot decode"):
        image, label = dataset[0]
    assert image.shape == (3, 8, 8) and label == dataset.samples[1][1]


def test_image_folder_limit_is_class_balanced(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 6, "b": 2, "c": 4}, {"a": 1})
    dataset = build_dataset(root, "train", 8, 1, limit=6)
    assert sorted(dataset.targets) == [0, 0, 1, 1, 2, 2]


def test_train_augment_for_folders_keeps_shapes(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 2, "b": 2}, {"a": 1})
    dataset = build_dataset(root, "train", (12, 16), 3, train_augment=True)
    assert dataset.augment is not None and dataset.augment.padding_mode == "reflect"
    assert dataset[0][0].shape == (3, 12, 16)


def layout(root: Path, dirs: list[str], images: list[str] = ()) -> Path:
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in images:
        save(root / f, solid((1, 2, 3)))
    return root


@pytest.mark.parametrize(
    "dirs, images, split, match",
    [
        (["val/a"], ["val/a/x.png"], "train", "has no 'train/' sub-folder"),
        (["train/a", "train/b"], ["train/a/x.png", "train/b/x.png"], "train", "has no 'val/' sub-folder"),
        (["val"], ["train/x.png"], "train", r"has no class sub-folders \(its images lie directly in it\)"),
        (["train/b", "val"], ["train/a/x.png"], "train", r"class folder\(s\) without images: .*b'"),
        (["val"], ["train/a/x.png", "val/a/x.png"], "train", "only one class"),
        (["val/zebra"], ["train/a/x.png", "train/b/x.png"], "val", "classes that train/ does not: 'zebra'"),
        (["val"], ["train/a/x.png", "train/b/x.png"], "val", "has no class sub-folders"),
    ],
)
def test_image_folder_layout_errors(tmp_path, dirs, images, split, match):
    root = layout(tmp_path / "set", dirs, images)
    with pytest.raises(DataError, match=match) as err:
        ImageFolderDataset(root, split, 8, 3)
    assert err.value.hint  # every layout error says how to fix it


def test_unknown_names_and_bad_paths(tmp_path):
    with pytest.raises(DataError) as err:
        build_dataset("cifar-100", "train", 8, 3)
    message = str(err.value)
    assert all(name in message for name in BUILTIN_DATASETS) and "train/" in message and "val/" in message
    with pytest.raises(DataError, match="no such folder"):
        build_dataset(tmp_path / "missing", "train", 8, 3)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not a folder"):
        build_dataset(tmp_path / "file.png", "train", 8, 3)
    with pytest.raises(DataError, match="has no 'train/'"):
        build_dataset(tmp_path, "train", 8, 3)
    with pytest.raises(DataError, match="dataset must be a name"):
        build_dataset("  ", "train", 8, 3)
    with pytest.raises(DataError, match="unknown split"):
        build_dataset("digits", "validation", 8, 3)
    with pytest.raises(DataError, match="limit"):
        build_dataset("digits", "train", 8, 3, limit=0)
    with pytest.raises(DataError, match="in_chans"):
        build_dataset("digits", "train", 8, 0)


def test_in_chans_that_cannot_be_produced(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 1, "b": 1}, {"a": 1})
    with pytest.raises(DataError, match="cannot convert 3-channel images to in_chans=2"):
        build_dataset(root, "train", 8, 2)
    assert build_dataset("digits", "val", 8, 2)[0][0].shape == (2, 8, 8)  # grey can be repeated


def test_path_like_name_is_a_folder_not_a_builtin(tmp_path, monkeypatch):
    make_folder(tmp_path / "digits", {"a": 1, "b": 1}, {"a": 1})
    monkeypatch.chdir(tmp_path)
    assert build_dataset("./digits", "train", 8, 3).classes == ["a", "b"]
    assert build_dataset("digits", "train", 8, 3).num_classes == 10


# ----------------------------------------------------------------------------- loaders


def first_batch(loader):
    return next(iter(loader))


def test_build_loaders_digits_seeded_order_and_info():
    train, val, info = build_loaders("digits", 16, 3, batch_size=32, seed=7, limit=(320, None))
    x, y = first_batch(train)
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert info.num_classes == 10 and info["classes"] == [str(d) for d in range(10)]
    assert (info.train_size, info.val_size) == (320, 359)
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5) and info.img_size == (16, 16)
    assert len(val.dataset) == 359 and info.to_dict()["name"] == "digits"
    again = first_batch(build_loaders("digits", 16, 3, batch_size=32, seed=7, limit=(320, None))[0])
    other = first_batch(build_loaders("digits", 16, 3, batch_size=32, seed=8, limit=(320, None))[0])
    assert torch.equal(y, again[1]) and torch.equal(x, again[0])
    assert not torch.equal(y, other[1])
    assert torch.equal(first_batch(val)[1], first_batch(val)[1])  # val is not shuffled


def test_build_loaders_augmentation_is_reproducible(tmp_path):
    folder = write_fmnist(tmp_path / "fm", n_train=64)
    batches = [
        first_batch(build_loaders(folder, 12, 1, batch_size=16, seed=3, train_augment=True)[0])[0]
        for _ in range(2)
    ]
    assert torch.equal(batches[0], batches[1])


def test_build_loaders_with_a_worker(tmp_path):
    folder = write_fmnist(tmp_path / "fm", n_train=40)
    runs = []
    for _ in range(2):
        train, _, _ = build_loaders(folder, 12, 3, batch_size=8, num_workers=1, seed=5, train_augment=True)
        runs.append(torch.cat([x for x, _ in train]))
    assert runs[0].shape == (40, 3, 12, 12) and torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 4, "num_workers": -1}])
def test_build_loaders_rejects_bad_arguments(kwargs):
    with pytest.raises(DataError):
        build_loaders("digits", 8, 1, **kwargs)
