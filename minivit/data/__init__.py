"""Datasets and loaders for training and evaluating compressed vision transformers.

Quick start::

    from minivit.data import build_loaders, default_dataset

    train_loader, val_loader, info = build_loaders(default_dataset(), img_size=32, in_chans=3, batch_size=128)

``data`` may be a built-in name or a folder:

* ``"fashion-mnist"``: Zalando's 28x28 clothing images (60k train / 10k val), read from the
  original IDX files found locally or downloaded once (see :mod:`minivit.data.fashion_mnist`).
* ``"digits"``: scikit-learn's 8x8 digits (1797 images), always available offline.
* a folder with ``train/<class>/<image>`` and ``val/<class>/<image>`` (see :mod:`minivit.data.folder`),
  or a folder holding the four Fashion-MNIST ``.gz`` files.

Every sample is ``(image, label)``: a float32 tensor ``[in_chans, H, W]`` resized to ``img_size``,
converted to ``in_chans`` channels and normalised with mean 0.5 / std 0.5 per channel (values in
``[-1, 1]``; ``dataset.mean`` and ``dataset.std`` say what was used), and an int label.
Mistakes (unknown names, broken folders, missing files) raise :class:`minivit.errors.DataError`.
"""

from minivit.data.base import ImageDataset, TensorImageDataset, stratified_first_n
from minivit.data.build import BUILTIN_DATASETS, DataInfo, build_dataset, build_loaders, default_dataset
from minivit.data.digits import DIGITS_CLASSES
from minivit.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    download_fashion_mnist,
    find_fashion_mnist,
)
from minivit.data.folder import IMAGE_EXTENSIONS, ImageFolderDataset
from minivit.data.idx import read_idx, write_idx
from minivit.data.pipeline import DEFAULT_MEAN, DEFAULT_STD, ImagePipeline, LightAugment

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "DataInfo",
    "ImageDataset",
    "ImageFolderDataset",
    "ImagePipeline",
    "LightAugment",
    "TensorImageDataset",
    "build_dataset",
    "build_loaders",
    "default_dataset",
    "download_fashion_mnist",
    "find_fashion_mnist",
    "read_idx",
    "stratified_first_n",
    "write_idx",
]
