"""Input-pipeline figures for image folders: start-up time and memory at scale, images/s vs the model step.

1. Start-up: writes ``--files`` small JPEGs (``--classes`` classes, one shared 64x48 picture, so
   the folder is quick to make) and times building the train split in a fresh process, with its
   peak RSS (``resource.getrusage``) before and after. Nothing is decoded beyond one sample.
2. Throughput: writes ``--photos`` JPEGs of ``--photo-size`` (ImageNet-like 500x375) and measures
   images/s of timm's training transform at 224 px (random resized crop, flip, colour jitter) through
   a ``DataLoader`` with 0 and 2 workers, against a deit_tiny_patch16_224 forward + backward +
   AdamW step at batch ``--batch``.

    python benchmarks/input_pipeline.py                       # 100k files
    python benchmarks/input_pipeline.py --files 20000 --json out.json

Measured once (2 CPU cores shared with other jobs, load average 6-10, so rates are low and noisy;
``--files 100000 --photos 256 --batch 64``): the 100k-file train split was built in 0.8 s, peak RSS
936.9 MB before (importing torch and timm) and 968.4 MB after; timm's training transform at 224 px
ran at 42.3 images/s with 0 workers and 67.3 images/s with 2; a deit_tiny step took 6.1 images/s.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

STARTUP_PROBE = r"""
import resource, sys, time
from minivit.data import AugmentConfig, DataConfig, ImageFolderDataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
dataset = ImageFolderDataset(sys.argv[1], "train", data_config=DataConfig(), augment=AugmentConfig())
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(dataset), seconds, before / 1024, after / 1024)
"""


def jpeg_bytes(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(6 * x + rng.uniform(0, 6)) * np.cos(4 * y + rng.uniform(0, 6)) for _ in range(3)]
    pixels = ((np.stack(channels, -1) + 1) * 127.5 + rng.normal(0, 8, (height, width, 3))).clip(0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_folder(root: Path, files: int, classes: int, make) -> None:
    for split, count in (("train", files), ("val", max(classes, files // 50))):
        for c in range(classes):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(c, count, classes):
                (folder / f"img{i:07d}.jpg").write_bytes(make(i))


def startup(files: int, classes: int, tmp: Path) -> dict:
    root = tmp / "scale"
    small = jpeg_bytes(48, 64, 0)
    start = time.perf_counter()
    write_folder(root, files, classes, lambda i: small)
    written = time.perf_counter() - start
    out = subprocess.run(
        [sys.executable, "-c", STARTUP_PROBE, str(root)], capture_output=True, text=True, check=True
    ).stdout.split()
    return {
        "files": int(out[0]),
        "write_s": round(written, 1),
        "startup_s": round(float(out[1]), 2),
        "rss_before_mb": round(float(out[2]), 1),
        "rss_after_mb": round(float(out[3]), 1),
    }


def loader_rate(root: Path, workers: int, batch: int, epochs: int = 2) -> float:
    import torch

    from minivit.data import AugmentConfig, DataConfig, build_loaders

    train, _, _ = build_loaders(
        root, data_config=DataConfig(), augment=AugmentConfig(), batch_size=batch, num_workers=workers, seed=0
    )
    rate = 0.0
    for _ in range(epochs):  # the first epoch pays for starting the workers
        start, seen = time.perf_counter(), 0
        for x, _ in train:
            seen += len(x)
        rate = seen / (time.perf_counter() - start)
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 224, 224)
    return rate


def model_rate(batch: int, steps: int = 3) -> float:
    import timm
    import torch

    model = timm.create_model("deit_tiny_patch16_224", num_classes=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="train files of the start-up folder")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--photos", type=int, default=512, help="train JPEGs of the throughput folder")
    parser.add_argument("--photo-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    figures: dict = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="minivit-input-") as tmp:
        figures["startup"] = startup(args.files, args.classes, Path(tmp))
        print(f"start-up: {figures['startup']}", flush=True)
        photos = Path(tmp) / "photos"
        write_folder(photos, args.photos, args.classes, lambda i: jpeg_bytes(*args.photo_size, i))
        for workers in (0, 2):
            rate = loader_rate(photos, workers, args.batch)
            figures[f"pipeline_images_per_s_{workers}_workers"] = round(rate, 1)
            print(f"input pipeline, {workers} workers: {rate:.1f} images/s", flush=True)
    figures["model_step_images_per_s"] = round(model_rate(args.batch), 1)
    print(f"deit_tiny forward+backward+AdamW, batch {args.batch}: {figures['model_step_images_per_s']} images/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
