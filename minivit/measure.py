"""What a model costs: distinct parameters, bytes and MB, FLOPs, latency, and the input size it takes.

One definition of each, used by the CLI, the training reports, ``analysis`` and ``export``:

* :func:`count_parameters`: distinct parameters; a tensor shared by several layers (weight
  multiplexing) counts once; the int8 weights of dynamically quantised Linears count too.
* :func:`tensor_bytes` / :func:`to_mb`: bytes of the distinct tensors; **MB is 10^6 bytes** everywhere
  in minivit (reports, summaries, the README tables), not MiB.
* :func:`flops`: floating-point operations of one forward pass (``torch.utils.flop_counter``).
* :func:`latency_ms`: median wall time of one forward pass.
* :func:`infer_input_size` / :func:`normalize_input_size`: ``(batch, channels, height, width)`` a model
  was built for, read from ``patch_embed`` or ``pretrained_cfg["input_size"]``.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError

MB = 1_000_000
"""Bytes in a megabyte (SI), the unit of every ``mb`` / ``size_mb`` figure minivit reports."""


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters: a shared tensor counts once; dynamically quantised (int8) Linears count their weights."""
    from torch.ao.nn.quantized import Linear as QuantizedLinear  # dynamic int8 Linear derives from it

    seen = {id(p): p.numel() for p in model.parameters()}
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            weight, bias = m.weight(), m.bias()
            seen[id(m)] = weight.numel() + (bias.numel() if bias is not None else 0)
    return sum(seen.values())


def tensor_bytes(model: nn.Module, persistent_only: bool = True) -> int:
    """Bytes of the model's distinct tensors (a tensor shared by several modules counts once).

    ``persistent_only``: parameters and persistent buffers, i.e. what ``model.safetensors`` stores.
    Otherwise every buffer too (index tables), i.e. what a traced graph (ONNX) holds.
    """
    if persistent_only:
        tensors = [t for t in model.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)]
    else:
        tensors = [*model.parameters(), *model.buffers()]
    seen = {(t.data_ptr() or id(t), t.numel(), t.dtype): t.numel() * t.element_size() for t in tensors}
    return sum(seen.values())


def to_mb(nbytes: int | float) -> float:
    """Bytes to MB (10^6 bytes), rounded to 3 decimals."""
    return round(nbytes / MB, 3)


def size_mb(model: nn.Module) -> float:
    """MB (10^6 bytes) of the distinct parameters and persistent buffers, as stored; for a dynamic-int8 model,
    the size of the ``model.int8.safetensors`` it is stored in (:func:`minivit.export.int8_bytes`: its packed
    int8 weights count too)."""
    from .export.torchscript import is_quantized

    if is_quantized(model):
        from .export.int8 import int8_bytes

        return to_mb(int8_bytes(model))
    return to_mb(tensor_bytes(model))


def _example(model: nn.Module, input_shape: tuple[int, ...], random: bool) -> torch.Tensor:
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    make = torch.randn if random else torch.zeros
    return make(*input_shape, device=device, dtype=dtype)


@torch.no_grad()
def flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one forward pass on ``input_shape`` (a multiply-add is 2), eval mode."""
    x = _example(model, input_shape, random=False)
    was = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was)
    return int(counter.get_total_flops())


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], runs: int = 30, warmup: int = 5) -> float:
    """Median wall time (ms) of one forward pass on a batch of ``input_shape`` (eval mode, model's device)."""
    x = _example(model, input_shape, random=True)
    cuda = x.device.type == "cuda"
    was_training = model.training
    model.eval()
    times = []
    try:
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def infer_input_size(model: nn.Module, batch: int = 1) -> tuple[int, int, int, int]:
    """``(batch, channels, height, width)`` the model was built for.

    Read from ``patch_embed.img_size`` and the patch projection's input channels (timm ViT, DeiT,
    Swin and the multiplexed models); failing that, from ``pretrained_cfg["input_size"]``.
    """
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    proj = getattr(pe, "proj", None)
    chans = getattr(proj, "in_channels", None) or getattr(pe, "in_chans", None)
    if img_size is not None and chans is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        return (batch, int(chans), int(h), int(w))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(cfg, dict) and len(cfg.get("input_size", ())) == 3:
        c, h, w = cfg["input_size"]
        return (batch, int(c), int(h), int(w))
    raise ConfigError(
        f"cannot infer the input size of a {type(model).__name__}",
        "pass input_size=(batch, channels, height, width) (CLI: --input-size H W)",
    )


def normalize_input_size(input_size: object, model: nn.Module) -> tuple[int, int, int, int]:
    """Accept ``None`` (inferred), ``S``, ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``; return 4 positive ints.

    Missing channels come from the model (3 when it does not say).
    """
    if input_size is None:
        return infer_input_size(model)
    size = (input_size,) if isinstance(input_size, int) else tuple(input_size)  # type: ignore[arg-type]
    if not size or len(size) > 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ConfigError(
            f"input_size must be 1 to 4 positive integers, got {input_size!r}", "e.g. (1, 3, 224, 224) or (224, 224)"
        )
    if len(size) == 4:
        return size  # type: ignore[return-value]
    if len(size) == 3:
        return (1, *size)  # type: ignore[return-value]
    try:
        chans = infer_input_size(model)[1]
    except ConfigError:
        chans = 3
    h, w = (size[0], size[0]) if len(size) == 1 else size
    return (1, chans, h, w)
