"""Turn decoded images into model-ready tensors, batch-wise (the fast path of the in-memory sets).

The in-memory datasets (Fashion-MNIST, digits) hold ``uint8`` tensors ``[B, C, H, W]`` and hand
whole batches to one :class:`ImagePipeline`, which

1. converts the channels to the model's ``in_chans`` (grey is repeated, RGB becomes grey by
   ITU-R 601-2 luminance, the weights PIL uses for mode ``"L"``),
2. resizes and crops as timm's eval transform does for the data config (``crop_mode`` "squash":
   both sides to ``size / crop_pct``; "center": the short side, keeping the aspect ratio; "border":
   the long side, padding with the mean colour; then the centre ``size`` is kept) with bilinear,
   bicubic or nearest interpolation (anti-aliased when shrinking),
3. optionally applies a light augmentation (:class:`LightAugment`),
4. normalises with the data config's per-channel mean and std (a grey image for a 3-channel
   model is repeated, then normalised per channel).

Built from ``img_size`` and ``in_chans`` alone it squashes the whole image (bilinear) and uses
mean 0.5 / std 0.5, so pixels land in ``[-1, 1]``. Working on whole batches with torch ops keeps
28x28 sets fast on CPU: one ``F.interpolate`` call per batch, no PIL round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from minivit.errors import DataError

if TYPE_CHECKING:
    from minivit.data.config import DataConfig

DEFAULT_MEAN = 0.5
"""Per-channel mean of ``ImagePipeline(img_size, in_chans)`` (no data config given)."""
DEFAULT_STD = 0.5
"""Per-channel std of ``ImagePipeline(img_size, in_chans)`` (no data config given)."""
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""RGB -> grey weights (ITU-R 601-2 luma), identical to PIL's ``convert("L")``."""

ImgSize = int | tuple[int, int] | Sequence[int]


def to_hw(img_size: ImgSize) -> tuple[int, int]:
    """Return ``img_size`` as a ``(height, width)`` tuple of positive ints.

    Raises:
        DataError: when ``img_size`` is not a positive int or a pair of positive ints.
    """
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        hw: tuple = (img_size, img_size)
    elif isinstance(img_size, Sequence) and not isinstance(img_size, str) and len(img_size) == 2:
        hw = tuple(img_size)
    else:
        hw = ()
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise DataError(
            f"img_size must be a positive int or a (height, width) pair, got {img_size!r}",
            hint="e.g. img_size=32 or img_size=(32, 48)",
        )
    return int(hw[0]), int(hw[1])


def check_in_chans(in_chans: int) -> int:
    """Validate the number of model input channels."""
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise DataError(f"in_chans must be a positive int, got {in_chans!r}", hint="use 1 (grey) or 3 (RGB)")
    return in_chans


def per_channel(value: float | Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    """Broadcast a scalar mean/std to ``in_chans`` values, or check a sequence has that length."""
    values = (float(value),) * in_chans if isinstance(value, int | float) else tuple(map(float, value))
    if len(values) != in_chans:
        raise DataError(f"{what} has {len(values)} values but in_chans is {in_chans}", hint="give one per channel")
    if what == "std" and any(v <= 0 for v in values):
        raise DataError(f"std values must be positive, got {values}")
    return values


def convert_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert float images ``[..., C, H, W]`` to ``in_chans`` channels.

    Grey (C=1) is repeated to any channel count; RGB (C=3) becomes grey by luminance. Other
    combinations have no sensible meaning and raise :class:`DataError`.
    """
    channels = images.shape[-3]
    if channels == in_chans:
        return images
    if channels == 1:
        return images.expand(*images.shape[:-3], in_chans, *images.shape[-2:])
    if channels == 3 and in_chans == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(3, 1, 1)
        return (images * weights).sum(dim=-3, keepdim=True)
    raise DataError(
        f"cannot convert {channels}-channel images to in_chans={in_chans}",
        hint="use in_chans=1 (grey) or in_chans=3 (RGB)",
    )


@dataclass(frozen=True)
class LightAugment:
    """A cheap training augmentation: random horizontal flip and random crop with padding.

    The crop is the classic "pad then crop back" shift (as for CIFAR/Fashion-MNIST): the image is
    padded by ``pad_fraction`` of its smaller side on every border (2 pixels at 28x28) and a
    random window of the original size is cut out. It runs on whole batches, in ``[0, 1]`` pixel
    space before normalisation, so ``padding_mode="constant"`` pads with black.

    Randomness comes from ``generator`` when given, else from torch's global RNG.
    """

    flip: bool = True
    pad_fraction: float = 1 / 14
    padding_mode: str = "constant"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, _, height, width = images.shape
        if self.flip:
            flip = torch.rand(batch, generator=generator) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        pad = max(1, round(min(height, width) * self.pad_fraction)) if self.pad_fraction > 0 else 0
        if self.padding_mode != "constant":
            pad = min(pad, height - 1, width - 1)  # reflect/replicate need pad < size
        if pad > 0:
            padded = F.pad(images, (pad, pad, pad, pad), mode=self.padding_mode)
            dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
            dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
            rows = (dy.view(-1, 1) + torch.arange(height)).view(batch, 1, height, 1)
            cols = (dx.view(-1, 1) + torch.arange(width)).view(batch, 1, 1, width)
            index = torch.arange(batch).view(batch, 1, 1, 1)
            channel = torch.arange(images.shape[1]).view(1, -1, 1, 1)
            images = padded[index, channel, rows, cols]
        return images


_TENSOR_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def eval_geometry(
    height: int, width: int, img_size: tuple[int, int], crop_pct: float, crop_mode: str
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Where timm's eval transform puts an ``height x width`` image: the resize size and the crop.

    Returns ``((resize_h, resize_w), (top, left, pad_bottom, pad_right))``: resize to the first
    pair, then cut ``img_size`` starting at ``(top, left)``, where negative offsets mean padding
    (``pad_bottom``/``pad_right`` pad the other side), as torchvision's ``CenterCrop`` and timm's
    ``CenterCropOrPad`` do.
    """
    target_h, target_w = img_size
    scale_h, scale_w = math.floor(target_h / crop_pct), math.floor(target_w / crop_pct)
    if crop_mode == "squash":
        size = (scale_h, scale_w)
    elif crop_mode == "center" and scale_h == scale_w:  # torchvision Resize(int): the short side
        short, long = min(height, width), max(height, width)
        other = int(scale_h * long / short)
        size = (scale_h, other) if height <= width else (other, scale_h)
    else:  # timm ResizeKeepRatio: shortest edge ("center") or longest edge ("border")
        ratios = (height / scale_h, width / scale_w)
        ratio = max(ratios) if crop_mode == "border" else min(ratios)
        size = (round(height / ratio), round(width / ratio))
    pads = [0, 0, 0, 0]
    offsets = []
    for axis, (have, want) in enumerate(zip(size, img_size)):
        if want > have:
            pads[axis], pads[2 + axis] = (want - have) // 2, (want - have + 1) // 2
            offsets.append(-pads[axis])
        else:
            offsets.append(int(round((have - want) / 2.0)))
    return size, (offsets[0], offsets[1], pads[2], pads[3])


class ImagePipeline:
    """Channels, resize and crop, optional augmentation and normalisation for batches of images.

    Args:
        img_size: target size, an int (square) or ``(height, width)``.
        in_chans: number of output channels.
        mean, std: normalisation, a scalar for every channel or one value per channel.
        augment: optional training augmentation applied after resizing.
        interpolation: "bilinear", "bicubic" or "nearest" (other PIL filters fall back to bicubic).
        crop_pct, crop_mode: the eval crop, as in timm (see :func:`eval_geometry`).
        erasing: optional batch transform applied last, after normalisation (timm's
            ``RandomErasing``); it draws from Python's ``random`` (the dataset seeds it).
    """

    def __init__(
        self,
        img_size: ImgSize,
        in_chans: int,
        mean: float | Sequence[float] = DEFAULT_MEAN,
        std: float | Sequence[float] = DEFAULT_STD,
        augment: LightAugment | None = None,
        *,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
        crop_mode: str = "squash",
        erasing=None,
    ):
        self.img_size = to_hw(img_size)
        self.in_chans = check_in_chans(in_chans)
        self.mean = per_channel(mean, self.in_chans, "mean")
        self.std = per_channel(std, self.in_chans, "std")
        self.augment = augment
        self.interpolation = interpolation
        self.crop_pct, self.crop_mode = crop_pct, crop_mode
        self.erasing = erasing
        # (x - mean) / std as one fused x * scale + shift, which also broadcasts grey to in_chans.
        self._scale = 1.0 / torch.tensor(self.std).view(1, -1, 1, 1)
        self._shift = -torch.tensor(self.mean).view(1, -1, 1, 1) * self._scale

    @classmethod
    def from_config(cls, config: DataConfig, augment: LightAugment | None = None, erasing=None) -> ImagePipeline:
        """The pipeline that preprocesses as ``config`` says (see :class:`~minivit.data.config.DataConfig`)."""
        return cls(
            config.img_size,
            config.in_chans,
            config.mean,
            config.std,
            augment,
            interpolation=config.interpolation,
            crop_pct=config.crop_pct,
            crop_mode=config.crop_mode,
            erasing=erasing,
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Map ``[B, C, H, W]`` uint8 (0..255) or float (0..1) images to normalised float32.

        Work happens on as few pixels as possible: RGB is reduced to grey before resizing, grey
        is repeated to ``in_chans`` only by the final normalisation, and the augmentation runs
        at the source or the target resolution, whichever is smaller.
        """
        if images.dtype == torch.uint8:
            images = images.to(torch.float32).div_(255.0)
        else:
            images = images.to(torch.float32)
        if images.shape[1] not in (1, self.in_chans):
            images = convert_channels(images, self.in_chans)
        augment_first = images.shape[-2] * images.shape[-1] <= self.img_size[0] * self.img_size[1]
        if self.augment is not None and augment_first:
            images = self.augment(images, generator)
        images = self._resize(images)
        if self.augment is not None and not augment_first:
            images = self.augment(images, generator)
        images = torch.addcmul(self._shift, images, self._scale)
        return self.erasing(images) if self.erasing is not None else images

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        size, (top, left, pad_bottom, pad_right) = eval_geometry(
            height, width, self.img_size, self.crop_pct, self.crop_mode
        )
        if size != (height, width):
            mode = _TENSOR_MODES.get(self.interpolation, "bicubic")
            shrink = size[0] < height or size[1] < width
            images = F.interpolate(
                images,
                size=size,
                mode=mode,
                **({} if mode == "nearest" else {"align_corners": False, "antialias": shrink}),
            ).clamp_(0.0, 1.0)
        if top < 0 or left < 0:
            fill = [round(255 * m) / 255 for m in self.mean] if images.shape[1] == self.in_chans else None
            images = _pad(images, -left, pad_right, -top, pad_bottom, fill)
            top, left = max(top, 0), max(left, 0)
        return images[..., top : top + self.img_size[0], left : left + self.img_size[1]]

    def __repr__(self) -> str:
        return (
            f"ImagePipeline(img_size={self.img_size}, in_chans={self.in_chans}, mean={self.mean}, "
            f"std={self.std}, interpolation={self.interpolation!r}, crop_pct={self.crop_pct}, "
            f"crop_mode={self.crop_mode!r}, augment={self.augment})"
        )


def _pad(images: torch.Tensor, left: int, right: int, top: int, bottom: int, fill) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` with a per-channel colour (black when ``fill`` is None)."""
    padded = F.pad(images, (max(left, 0), max(right, 0), max(top, 0), max(bottom, 0)))
    if fill is not None:
        mask = torch.ones_like(images[:1, :1])
        mask = F.pad(mask, (max(left, 0), max(right, 0), max(top, 0), max(bottom, 0))) == 0
        colour = torch.tensor(fill, dtype=images.dtype).view(1, -1, 1, 1)
        padded = torch.where(mask, colour, padded)
    return padded
