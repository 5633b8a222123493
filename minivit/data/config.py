"""How a model wants its images: the data config, resolved from the model as timm does it.

A :class:`DataConfig` holds timm's six preprocessing keys (``input_size``, ``mean``, ``std``,
``interpolation``, ``crop_pct``, ``crop_mode``). :func:`resolve_data_config` reads them from a
model's ``pretrained_cfg`` with :func:`timm.data.resolve_model_data_config`, except the input size,
which is always the model's own (a ``deit_tiny_patch16_224`` built with ``img_size=32`` takes 32 px
images whatever its ``pretrained_cfg`` says). A model about to be trained from scratch takes the
natural statistics of its data instead (:func:`default_data_config`), and
:func:`apply_data_config` writes the config used into ``model.pretrained_cfg`` so that a saved and
reloaded model resolves to exactly the preprocessing it was trained with.

:class:`AugmentConfig` holds the training augmentation options with timm's ``train.py`` defaults;
the command line builds its flags from its fields (each has a ``help`` in its metadata).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from minivit.errors import DataError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
"""Interpolations a data config may name (PIL's filters, as timm spells them)."""
CROP_MODES = ("center", "squash", "border")
"""timm's eval crop modes: keep the aspect ratio and crop the centre, squash, or pad borders."""
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
"""The keys of :meth:`DataConfig.to_dict`, as in timm's ``pretrained_cfg``."""

GREY_MEAN = 0.5
"""Mean of the built-in grey datasets when a model is trained on them from scratch."""
GREY_STD = 0.5
"""Std of the built-in grey datasets when a model is trained on them from scratch."""


def _floats(value: Any, what: str) -> tuple[float, ...]:
    try:
        values = (float(value),) if isinstance(value, int | float) else tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a number or a list of numbers, got {value!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise DataError(f"{what} must hold finite numbers, got {value!r}")
    return values


@dataclass(frozen=True)
class DataConfig:
    """The preprocessing a model expects (timm's ``data_config``), validated.

    ``input_size`` is ``(channels, height, width)``; ``mean``/``std`` hold one value per channel
    (a scalar or a single value is broadcast). ``crop_pct`` is the eval crop fraction: images are
    resized to ``size / crop_pct`` and the centre ``size`` is kept (``crop_mode="squash"`` resizes
    both sides, ``"center"`` keeps the aspect ratio, ``"border"`` pads instead of cropping).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"

    def __post_init__(self):
        size = self.input_size
        if (
            not isinstance(size, tuple | list)
            or len(size) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise DataError(
                f"input_size must be (channels, height, width) of positive ints, got {size!r}",
                hint="e.g. input_size=(3, 224, 224)",
            )
        object.__setattr__(self, "input_size", tuple(size))
        chans = size[0]
        for name in ("mean", "std"):
            values = _floats(getattr(self, name), name)
            if len(values) == 1:
                values = values * chans
            if len(values) != chans:
                raise DataError(
                    f"{name} has {len(values)} values but the input has {chans} channels",
                    hint="give one value per channel, or a single value for all",
                )
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise DataError(f"std values must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(
                f"unknown interpolation {self.interpolation!r}", hint=f"use one of {', '.join(INTERPOLATIONS)}"
            )
        crop = self.crop_pct
        if isinstance(crop, bool) or not isinstance(crop, int | float) or not 0 < crop <= 1:
            raise DataError(f"crop_pct must be a number in (0, 1], got {crop!r}", hint="e.g. 0.875, or 1 for no crop")
        object.__setattr__(self, "crop_pct", float(crop))
        if self.crop_mode not in CROP_MODES:
            raise DataError(f"unknown crop_mode {self.crop_mode!r}", hint=f"use one of {', '.join(CROP_MODES)}")

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def img_size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.input_size[1], self.input_size[2]

    def replace(self, **changes: Any) -> DataConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """timm's ``data_config`` dict: ``timm.data.create_transform(**cfg.to_dict())`` works."""
        return {name: getattr(self, name) for name in DATA_CONFIG_KEYS}

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_dict` with lists instead of tuples (for ``config.json``)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a dict with timm's keys (other keys, e.g. the rest of a ``pretrained_cfg``, are ignored)."""
        if not isinstance(data, dict):
            raise DataError(f"a data config must be a JSON object, got {type(data).__name__}")
        missing = [k for k in DATA_CONFIG_KEYS if k not in data]
        if missing:
            raise DataError(f"data config lacks {', '.join(missing)}", hint="re-save the model")
        values = {k: data[k] for k in DATA_CONFIG_KEYS}
        if isinstance(values["input_size"], list):
            values["input_size"] = tuple(values["input_size"])
        return cls(**values)


def legacy_data_config(img_size: int | tuple[int, int], in_chans: int) -> DataConfig:
    """The preprocessing of ``build_dataset(data, split, img_size, in_chans)``: squash the whole
    image to ``img_size`` (bilinear), mean 0.5 / std 0.5 per channel."""
    from minivit.data.pipeline import check_in_chans, to_hw

    return DataConfig(
        input_size=(check_in_chans(in_chans), *to_hw(img_size)),
        mean=(GREY_MEAN,),
        std=(GREY_STD,),
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="squash",
    )


def model_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """``(in_chans, height, width)`` the model takes, read from its patch embedding; None if unknown."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    proj = getattr(embed, "proj", None)
    chans = getattr(proj, "in_channels", None) or getattr(model, "in_chans", None)
    if size is None or chans is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(chans), int(height), int(width)


def _override_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - set(DATA_CONFIG_KEYS)
    if unknown:
        raise DataError(
            f"unknown data config option(s): {', '.join(sorted(unknown))}",
            hint=f"the options are {', '.join(DATA_CONFIG_KEYS)}",
        )
    return {k: v for k, v in overrides.items() if v is not None}


def resolve_data_config(model: nn.Module, **overrides: Any) -> DataConfig:
    """The preprocessing ``model`` expects, as :func:`timm.data.resolve_model_data_config` resolves it.

    The input size is the model's own (its patch embedding's ``img_size`` and channels), not the
    one its ``pretrained_cfg`` was published with. When the ``pretrained_cfg``'s mean/std do not fit
    the model's channels (an ImageNet config on a 1-channel model, which cannot have been trained
    with it), mean 0.5 / std 0.5 are used. Keyword ``overrides`` (any of :data:`DATA_CONFIG_KEYS`,
    ``None`` meaning "not given") win over everything.
    """
    from timm.data import resolve_model_data_config

    overrides = _override_keys(overrides)
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    own = model_input_size(model)
    if own is not None:
        pretrained_cfg["input_size"] = own
    resolved = resolve_model_data_config(model, pretrained_cfg=pretrained_cfg)
    resolved["input_size"] = tuple(overrides.get("input_size", resolved["input_size"]))
    chans = resolved["input_size"][0]
    for name, fallback in (("mean", GREY_MEAN), ("std", GREY_STD)):
        if len(_floats(resolved[name], name)) not in (1, chans):
            resolved[name] = (fallback,)
    resolved.update(overrides)
    return DataConfig.from_dict(resolved)


def default_data_config(kind: str, input_size: tuple[int, int, int], **overrides: Any) -> DataConfig:
    """The preprocessing for a model trained from scratch on data of ``kind``.

    ``kind`` is ``"fashion-mnist"`` or ``"digits"`` (small centred grey images: squash the whole
    image, bilinear, mean 0.5 / std 0.5) or ``"folder"`` (photographs: timm's ImageNet defaults,
    bicubic resize and a centre crop at ``crop_pct`` 0.875, ImageNet mean/std; a 1-channel model
    gets mean 0.5 / std 0.5). Keyword ``overrides`` win.
    """
    overrides = _override_keys(overrides)
    chans = int(input_size[0])
    if kind in ("fashion-mnist", "digits") or chans != 3:
        base = {"mean": (GREY_MEAN,), "std": (GREY_STD,)}
    else:
        base = {}
    if kind in ("fashion-mnist", "digits"):
        base.update(interpolation="bilinear", crop_pct=1.0, crop_mode="squash")
    return DataConfig(input_size=tuple(input_size), **{**base, **overrides})


def apply_data_config(model: nn.Module, config: DataConfig) -> nn.Module:
    """Record ``config`` in ``model.pretrained_cfg`` (a new dict; other keys are kept), so that
    :func:`timm.data.resolve_model_data_config` and :func:`resolve_data_config` return it.

    Call it on a model trained from scratch before saving it, on a student with its teacher's
    config, and on a model loaded from a folder whose ``config.json`` holds a ``data_config``.
    """
    merged = {**dict(getattr(model, "pretrained_cfg", None) or {}), **config.to_dict()}
    model.pretrained_cfg = merged
    if hasattr(model, "default_cfg"):
        try:
            model.default_cfg = merged
        except AttributeError:  # a read-only property aliasing pretrained_cfg
            pass
    return model


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, with the defaults of timm's ``train.py``.

    Image folders get timm's ImageNet training transform (:func:`timm.data.create_transform` with
    ``is_training=True``): a random resized crop (``scale``, ``ratio``), a horizontal flip
    (``hflip``), then AutoAugment/RandAugment (``aa``) or colour jitter, and random erasing
    (``reprob``). The in-memory built-in sets (Fashion-MNIST, digits) use the light batched
    augmentation instead (a flip with probability ``hflip``, a small shift) plus random erasing.
    """

    aa: str | None = field(
        default=None,
        metadata=_help("AutoAugment/RandAugment policy as timm spells it, e.g. rand-m9-mstd0.5-inc1 or original"),
    )
    reprob: float = field(default=0.0, metadata=_help("random erasing probability (DeiT uses 0.25)"))
    remode: str = field(default="pixel", metadata=_help("random erasing fill: const, rand or pixel"))
    recount: int = field(default=1, metadata=_help("random erasing regions per image"))
    scale: tuple[float, float] = field(
        default=(0.08, 1.0), metadata=_help("random resized crop area range, as fractions of the image")
    )
    ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3), metadata=_help("random resized crop aspect ratio range"))
    hflip: float = field(default=0.5, metadata=_help("horizontal flip probability"))
    color_jitter: float | None = field(
        default=0.4, metadata=_help("colour jitter strength (brightness, contrast, saturation); off while aa is set")
    )
    interpolation: str = field(
        default="random", metadata=_help("training resize interpolation: random (bilinear or bicubic) or a filter")
    )

    def __post_init__(self):
        for name, low, high in (("reprob", 0.0, 1.0), ("hflip", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise DataError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        for name in ("scale", "ratio"):
            pair = _floats(getattr(self, name), name)
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise DataError(f"{name} must be two positive numbers, low <= high, got {getattr(self, name)!r}")
            object.__setattr__(self, name, pair)
        if self.scale[1] > 1:
            raise DataError(f"scale is a fraction of the image area, at most 1, got {self.scale}")
        if self.color_jitter is not None and (isinstance(self.color_jitter, bool) or self.color_jitter < 0):
            raise DataError(f"color_jitter must be a number >= 0 or None, got {self.color_jitter!r}")
        if self.remode not in ("const", "rand", "pixel"):
            raise DataError(f"unknown remode {self.remode!r}", hint="use const, rand or pixel")
        if isinstance(self.recount, bool) or not isinstance(self.recount, int) or self.recount < 1:
            raise DataError(f"recount must be a positive int, got {self.recount!r}")
        if self.interpolation not in ("random", *INTERPOLATIONS):
            raise DataError(f"unknown interpolation {self.interpolation!r}", hint="use random, bilinear or bicubic")
        if self.aa is not None:
            _check_aa(self.aa)

    def replace(self, **changes: Any) -> AugmentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """``{field: help}`` for building command-line flags."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _check_aa(policy: str) -> None:
    """Fail early, with a hint, on an augmentation policy timm cannot parse."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    params = {"translate_const": 100, "img_mean": (124, 116, 104)}
    try:
        if policy.startswith("rand"):
            rand_augment_transform(policy, dict(params))
        elif policy.startswith("augmix"):
            augment_and_mix_transform(policy, dict(params))
        else:
            auto_augment_transform(policy, dict(params))
    except Exception as err:  # timm raises AssertionError, KeyError or ValueError on a bad string
        raise DataError(
            f"unknown augmentation policy {policy!r} ({type(err).__name__}: {err})",
            hint="e.g. rand-m9-mstd0.5-inc1 (RandAugment), original or v0 (AutoAugment), augmix-m5-w4-d2",
        ) from None
