"""Preprocessing resolved from the model as timm does it: data configs, transforms, fast tensor path."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

import minivit
from minivit.data import (
    AugmentConfig,
    DataConfig,
    ImagePipeline,
    apply_data_config,
    build_dataset,
    build_loaders,
    create_image_transform,
    default_data_config,
    model_input_size,
    resolve_data_config,
    write_idx,
)
from minivit.errors import DataError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def photo(hw: tuple[int, int], seed: int) -> Image.Image:
    """A smooth colour image (gradients plus a blob), so resampling differences stay small."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : hw[0], 0 : hw[1]] / max(hw)
    channels = [np.sin(3 * x + rng.uniform(0, 6)) * np.cos(2 * y + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))


def photo_folder(root, sizes=((300, 260), (180, 240), (224, 224), (97, 331))):
    paths = []
    for split in ("train", "val"):
        for k, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i, hw in enumerate(sizes):
                path = root / split / cls / f"{i}.jpg"
                photo(hw, 10 * k + i).save(path, quality=90)
                paths.append(path)
    return root


def test_data_config_validates_and_round_trips():
    cfg = DataConfig(input_size=(1, 28, 28), mean=0.5, std=(0.5,), crop_pct=1, crop_mode="squash")
    assert cfg.mean == (0.5,) and cfg.crop_pct == 1.0 and cfg.img_size == (28, 28) and cfg.in_chans == 1
    assert DataConfig.from_dict(cfg.to_json()) == cfg
    assert DataConfig.from_dict({**cfg.to_dict(), "url": "x", "num_classes": 3}) == cfg  # a pretrained_cfg
    for bad, match in [
        ({"input_size": (3, 224)}, "input_size"),
        ({"mean": (0.1, 0.2)}, "mean has 2 values"),
        ({"std": (0.0,)}, "std values must be positive"),
        ({"interpolation": "cubic"}, "unknown interpolation"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"crop_mode": "middle"}, "unknown crop_mode"),
    ]:
        with pytest.raises(DataError, match=match):
            DataConfig(**bad)
    with pytest.raises(DataError, match="lacks"):
        DataConfig.from_dict({"mean": [0.5]})


def test_augment_config_defaults_are_timms_and_checked():
    aug = AugmentConfig()
    assert (aug.scale, aug.hflip, aug.color_jitter, aug.reprob, aug.aa) == ((0.08, 1.0), 0.5, 0.4, 0.0, None)
    assert all(AugmentConfig.field_help().values())  # every field documents itself for the CLI
    assert AugmentConfig(aa="rand-m9-mstd0.5-inc1", reprob=0.25).aa.startswith("rand")
    for bad, match in [
        ({"aa": "sometimes-m9"}, "unknown augmentation policy"),
        ({"reprob": 2}, "reprob"),
        ({"scale": (0.5, 0.1)}, "scale"),
        ({"ratio": (1.0,)}, "ratio"),
        ({"remode": "noise"}, "remode"),
    ]:
        with pytest.raises(DataError, match=match):
            AugmentConfig(**bad)


def test_resolve_uses_pretrained_cfg_but_the_models_own_input_size():
    teacher = timm.create_model("deit_tiny_patch16_224", num_classes=2)
    cfg = resolve_data_config(teacher)
    expected = timm.data.resolve_model_data_config(teacher)
    assert cfg.to_dict() == {**expected, "mean": tuple(expected["mean"]), "std": tuple(expected["std"])}
    assert (cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct) == (*IMAGENET, "bicubic", 0.9)
    small = timm.create_model("deit_tiny_patch16_224", num_classes=2, img_size=32)
    assert resolve_data_config(small).input_size == (3, 32, 32) == model_input_size(small)
    grey = timm.create_model("deit_tiny_patch16_224", num_classes=2, img_size=32, in_chans=1)
    assert resolve_data_config(grey).mean == (0.5,)  # ImageNet RGB statistics cannot fit one channel
    assert resolve_data_config(teacher, crop_pct=1.0, interpolation=None).crop_pct == 1.0
    with pytest.raises(DataError, match="unknown data config option"):
        resolve_data_config(teacher, crop=0.9)


def test_a_student_and_a_scratch_model_carry_their_data_config():
    teacher = timm.create_model("deit_tiny_patch16_224", num_classes=2, depth=2)
    student = minivit.multiplex(teacher, share=2)
    apply_data_config(student, resolve_data_config(teacher))  # a student inherits its teacher's config
    assert resolve_data_config(student) == resolve_data_config(teacher)
    scratch = timm.create_model("vit_tiny_patch16_224", img_size=32, in_chans=1, num_classes=10, depth=1)
    cfg = default_data_config("fashion-mnist", model_input_size(scratch))
    assert (cfg.mean, cfg.crop_mode, cfg.crop_pct) == ((0.5,), "squash", 1.0)
    apply_data_config(scratch, cfg)
    resolved = timm.data.resolve_model_data_config(scratch)  # timm itself now gives the training statistics
    assert resolved["mean"] == (0.5,) and resolved["crop_mode"] == "squash" and resolved["input_size"] == (1, 32, 32)
    assert resolve_data_config(scratch) == cfg
    folder_cfg = default_data_config("folder", (3, 64, 64))
    assert (folder_cfg.mean, folder_cfg.std, folder_cfg.interpolation) == (*IMAGENET, "bicubic")


def test_deit_teacher_and_student_receive_exactly_timms_eval_tensors(tmp_path):
    """The tensors the models see on an image folder are those of timm's eval transform for the model."""
    root = photo_folder(tmp_path / "photos")
    teacher = timm.create_model("deit_tiny_patch16_224", num_classes=2, depth=2).eval()
    student = minivit.multiplex(teacher, share=2).eval()
    apply_data_config(student, resolve_data_config(teacher))
    reference = timm.data.create_transform(**timm.data.resolve_model_data_config(teacher))
    val = build_dataset(root, "val", data_config=resolve_data_config(teacher))
    expected = torch.stack([reference(Image.open(path).convert("RGB")) for path, _ in val.samples])
    for model in (teacher, student):
        seen: list[torch.Tensor] = []
        handle = model.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0].clone()))
        with torch.no_grad():
            for x, _ in DataLoader(build_dataset(root, "val", data_config=resolve_data_config(model)), batch_size=3):
                model(x)
        handle.remove()
        assert torch.equal(torch.cat(seen), expected)
    assert expected.shape == (8, 3, 224, 224)


def test_train_transform_is_timms_and_seeded(tmp_path):
    root = photo_folder(tmp_path / "photos")
    cfg = DataConfig(input_size=(3, 32, 32))
    aug = AugmentConfig(aa="rand-m9-mstd0.5-inc1", reprob=0.5)
    names = [type(t).__name__ for t in create_image_transform(cfg, aug).transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert "RandomErasing" in names
    train = build_dataset(root, "train", data_config=cfg, augment=aug)
    train.set_augment_seed(4)
    first = train.__getitems__([0, 1, 2])
    train.set_augment_seed(4)
    state = torch.random.get_rng_state()
    again = train.__getitems__([0, 1, 2])
    assert torch.equal(torch.random.get_rng_state(), state)  # the training loop's RNG is untouched
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], train.__getitems__([0])[0][0])  # the stream moves on
    loaders = [build_loaders(root, data_config=cfg, augment=aug, batch_size=4, seed=1, num_workers=w) for w in (0, 1)]
    batches = [next(iter(train_loader))[0] for train_loader, _, _ in loaders]
    assert batches[0].shape == (4, 3, 32, 32) and loaders[0][2].data_config == cfg


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
@pytest.mark.parametrize("hw", [(28, 28), (28, 20), (20, 29), (64, 50)])
def test_tensor_fast_path_matches_timms_geometry(mode, hw):
    cfg = DataConfig(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=0.9, crop_mode=mode)
    image = np.array(photo(hw, 3))
    ref = create_image_transform(cfg)(Image.fromarray(image))
    ours = ImagePipeline.from_config(cfg)(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
    assert ours.shape == ref.shape and (ours - ref).abs().max() < 0.02  # PIL rounds to 8 bits


def test_grey_builtin_set_for_an_imagenet_model_is_replicated_then_normalised():
    cfg = DataConfig(input_size=(3, 16, 16), crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
    data = build_dataset("digits", "val", data_config=cfg, limit=20)
    image, _ = data[0]
    raw = data.images[0, 0].float() / 255
    plain = torch.nn.functional.interpolate(raw[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
    for c, (m, s) in enumerate(zip(*IMAGENET)):
        assert torch.allclose(image[c], (plain.clamp(0, 1) - m) / s, atol=1e-5)
    assert data.data_config == cfg and data.mean == IMAGENET[0]
    assert data.sample_id(3) == f"val/{int(data.source_index[3])}"


def test_builtin_set_with_augment_config_is_seeded_and_erases(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(16) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.arange(4).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(array, tmp_path / name)
    cfg = default_data_config("fashion-mnist", (1, 16, 16))
    aug = AugmentConfig(reprob=1.0, remode="const", hflip=0.0)
    train = build_dataset(tmp_path, "train", data_config=cfg, augment=aug)
    assert train.augment is not None and not train.augment.flip and train.pipeline.erasing is not None
    train.set_augment_seed(0)
    a = torch.stack([x for x, _ in train.__getitems__(list(range(8)))])
    train.set_augment_seed(0)
    b = torch.stack([x for x, _ in train.__getitems__(list(range(8)))])
    assert torch.equal(a, b) and (a == 0).any()  # const erasing writes zeros
    assert build_dataset("digits", "train", data_config=cfg, augment=aug).pipeline.erasing is None  # never augmented
    with pytest.raises(DataError, match="either data_config or img_size"):
        build_dataset("digits", "val", 16, 1, data_config=cfg)
