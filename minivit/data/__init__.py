"""Datasets and loaders for training and evaluating compressed vision transformers.

Preprocessing comes from the model, as in timm::

    from minivit.data import AugmentConfig, build_loaders, resolve_data_config

    config = resolve_data_config(teacher)           # input size, mean, std, interpolation, crop
    train_loader, val_loader, info = build_loaders(
        "path/to/folder", data_config=config, augment=AugmentConfig(aa="rand-m9-mstd0.5-inc1"),
        batch_size=128, num_workers=2,
    )

``data`` may be a built-in name or a folder:

* ``"fashion-mnist"``: Zalando's 28x28 clothing images (60k train / 10k val), read from the
  original IDX files found locally or downloaded once (see :mod:`minivit.data.fashion_mnist`).
* ``"digits"``: scikit-learn's 8x8 digits (1797 images), always available offline.
* a folder with ``train/<class>/<image>`` and ``val/<class>/<image>`` (see :mod:`minivit.data.folder`),
  or a folder holding the four Fashion-MNIST ``.gz`` files.

Every sample is ``(image, label)``: a float32 tensor ``[in_chans, H, W]`` and an int label.
Image folders go through timm's transforms for the data config (:mod:`minivit.data.transforms`);
the in-memory sets resize, crop and normalise the same way batch-wise (:mod:`minivit.data.pipeline`).
Without a data config (``build_loaders(data, img_size, in_chans, ...)``) images are squashed to
``img_size`` and normalised with mean 0.5 / std 0.5. A model trained from scratch takes
:func:`default_data_config` of its data, and :func:`apply_data_config` records the config in
the model so that a saved model resolves to it again.
Mistakes (unknown names, broken folders, missing files) raise :class:`minivit.errors.DataError`.
"""

from minivit.data.base import ImageDataset, TensorImageDataset, stratified_first_n
from minivit.data.build import (
    BUILTIN_DATASETS,
    DataInfo,
    build_dataset,
    build_loaders,
    dataset_kind,
    default_dataset,
)
from minivit.data.config import (
    DATA_CONFIG_KEYS,
    AugmentConfig,
    DataConfig,
    apply_data_config,
    default_data_config,
    legacy_data_config,
    model_input_size,
    resolve_data_config,
)
from minivit.data.digits import DIGITS_CLASSES
from minivit.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    download_fashion_mnist,
    fetch_fashion_mnist,
    find_fashion_mnist,
)
from minivit.data.folder import IMAGE_EXTENSIONS, VERIFY_MAX_FILES, ImageFolderDataset, scan_image_folder
from minivit.data.idx import read_idx, write_idx
from minivit.data.pipeline import DEFAULT_MEAN, DEFAULT_STD, ImagePipeline, LightAugment
from minivit.data.predictions import PREDICTION_COLUMNS, prediction_rows, write_predictions
from minivit.data.transforms import create_image_transform

__all__ = [
    "BUILTIN_DATASETS",
    "DATA_CONFIG_KEYS",
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "PREDICTION_COLUMNS",
    "VERIFY_MAX_FILES",
    "AugmentConfig",
    "DataConfig",
    "DataInfo",
    "ImageDataset",
    "ImageFolderDataset",
    "ImagePipeline",
    "LightAugment",
    "TensorImageDataset",
    "apply_data_config",
    "build_dataset",
    "build_loaders",
    "create_image_transform",
    "dataset_kind",
    "default_data_config",
    "default_dataset",
    "download_fashion_mnist",
    "fetch_fashion_mnist",
    "find_fashion_mnist",
    "legacy_data_config",
    "model_input_size",
    "prediction_rows",
    "read_idx",
    "resolve_data_config",
    "scan_image_folder",
    "stratified_first_n",
    "write_idx",
    "write_predictions",
]
