"""``minivit export``: one entry point from a saved model folder to a deployable file.

:func:`run_export` loads a folder written by :func:`minivit.save_pretrained`, infers the input size
from the model, exports it in the requested format (optionally int8) and returns a summary dict.
:func:`add_export_arguments` declares the command-line options and :func:`export_from_args` runs
them, so wiring the sub-command is::

    p = subparsers.add_parser("export", help="export a model to ONNX / TorchScript / safetensors")
    add_export_arguments(p)
    p.set_defaults(func=lambda args: print(format_summary(export_from_args(args))))

Default output paths live in ``<model_dir>/export/``: ``model.onnx``, ``model.int8.onnx``,
``model.torchscript.pt``, ``model.int8.torchscript.pt``, ``safetensors/`` and ``safetensors-int8/``. An
``--output`` that is an existing folder receives the default file name.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from ..core.delta import fold_deltas as fold
from ..core.delta import has_deltas
from ..errors import ConfigError
from ..measure import normalize_input_size, to_mb
from ._io import EXPORTERS, random_input
from .quantize import quantize_dynamic_int8, state_dict_bytes
from .safetensors import export_safetensors
from .torchscript import export_torchscript

FORMATS = ("onnx", "torchscript", "safetensors")
DEFAULT_NAMES = {
    ("onnx", False): "model.onnx",
    ("onnx", True): "model.int8.onnx",
    ("torchscript", False): "model.torchscript.pt",
    ("torchscript", True): "model.int8.torchscript.pt",
    ("safetensors", False): "safetensors",
    ("safetensors", True): "safetensors-int8",
}


def default_output(model_dir: str | os.PathLike, fmt: str, int8: bool = False) -> Path:
    """Where :func:`run_export` writes when no output is given: ``<model_dir>/export/<name>``."""
    return Path(model_dir) / "export" / DEFAULT_NAMES[(fmt, int8)]


def _check_format(fmt: str, int8: bool) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def run_export(
    model_dir: str | os.PathLike,
    fmt: str,
    output: str | os.PathLike | None = None,
    int8: bool = False,
    input_size: tuple[int, ...] | int | None = None,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    verify: bool = True,
    exporter: str = "auto",
    per_channel: bool = False,
    fold_deltas: bool = False,
) -> dict[str, Any]:
    """Export the model saved in ``model_dir`` as ``fmt`` (``onnx``, ``torchscript`` or ``safetensors``).

    Args:
        model_dir: a folder with ``config.json`` + ``model.safetensors`` (:func:`minivit.save_pretrained`).
        fmt: the output format.
        output: the file (folder for safetensors) to write; default :func:`default_output`. An existing
            folder receives the default file name.
        int8: dynamic int8 quantisation of the Linear layers: ``torch.ao`` for TorchScript,
            onnxruntime's quantiser on the fp32 graph for ONNX.
        input_size: ``(B, C, H, W)``, ``(C, H, W)``, ``(H, W)`` or ``S``; default inferred from the model.
        opset, dynamic_batch, exporter: ONNX options (see :func:`~minivit.export.export_onnx`).
        verify: compare the written file with the PyTorch model (onnxruntime / reloaded TorchScript).
        per_channel: per-output-channel int8 scales.
        fold_deltas: ONNX and TorchScript: export the inference copy whose relaxed-sharing deltas are
            folded into full per-layer weights (:func:`minivit.fold_deltas`): each layer's corrected maps are
            stored in full (about the teacher's bytes for them) and the factors are left out, for runtimes
            that do not fold constants. With ``int8`` TorchScript the model is quantised first and then
            folded (the int8 factors and shared weight summed and quantised again per layer), so it runs one
            int8 product per map.
            Default: the file keeps the factors; fp32 ONNX writes their merge into the graph, which
            onnxruntime folds when it loads the model (one product per map), TorchScript runs the factors.

    Returns ``format``, ``int8``, ``model_dir``, ``path``, ``files``, ``bytes``, ``mb``,
    ``source_bytes`` / ``source_mb`` (the fp32 ``model.safetensors``), ``size_ratio`` (source / output),
    ``input_size``, ``max_abs_diff`` (``None`` when not verified) and the exporter's own keys.
    Raises :class:`~minivit.errors.CheckpointError` for a missing or broken model folder and
    :class:`~minivit.errors.ConfigError` for an unknown format.
    """
    from ..io import WEIGHTS_NAME, check_float_model, from_pretrained
    from ..io.limits import check_finite

    _check_format(fmt, int8)
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}", f"use one of {', '.join(EXPORTERS)}")
    model_dir = Path(model_dir)
    model = check_finite(check_float_model(from_pretrained(model_dir), model_dir, "exported again"), str(model_dir))
    fold_int8 = fold_deltas and fmt == "torchscript" and int8  # folded after quantising (int8 weights per layer)
    if fold_deltas:
        _check_foldable(model, fmt)
        model = model if fold_int8 else fold(model, keep_factors=False)
    out = Path(output) if output is not None else default_output(model_dir, fmt, int8)
    if fmt != "safetensors" and out.is_dir():
        out = out / DEFAULT_NAMES[(fmt, int8)]
    size = normalize_input_size(input_size, model) if fmt != "safetensors" else None
    if fmt == "onnx":
        onnx_kw = dict(opset=opset, dynamic_batch=dynamic_batch, verify=verify, exporter=exporter)
        summary = _export_onnx(model, out, size, int8, per_channel, onnx_kw)
    elif fmt == "torchscript":
        summary = _export_torchscript(model, out, size, int8, per_channel, verify, fold_int8)
    else:
        summary = export_safetensors(model, out, int8=int8, per_channel=per_channel)
    source = (model_dir / WEIGHTS_NAME).stat().st_size
    summary = {
        "format": fmt,
        "int8": int8,
        "model_dir": str(model_dir),
        **summary,
        "source_bytes": source,
        "source_mb": to_mb(source),
        "size_ratio": round(source / summary["bytes"], 3),
        "input_size": list(size) if size else None,
    }
    summary.setdefault("max_abs_diff", None)
    summary.setdefault("files", [summary["path"]])
    return summary


def _check_foldable(model, fmt: str) -> None:
    if fmt == "safetensors":
        raise ConfigError("--fold-deltas applies to onnx and torchscript, not safetensors",
                          "drop --fold-deltas (safetensors keeps the factors) or use --format onnx")
    if not has_deltas(model):
        raise ConfigError("--fold-deltas: this model has no relaxed-sharing deltas to fold", "drop --fold-deltas")


def _export_onnx(model, out: Path, size, int8: bool, per_channel: bool, kw: dict[str, Any]) -> dict[str, Any]:
    try:
        from .onnx_export import export_onnx, export_onnx_int8
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs the onnx, onnxruntime and onnxscript packages ({e})", "pip install 'minivit[export]'"
        ) from None
    if int8:
        return export_onnx_int8(model, out, size, per_channel=per_channel, **kw)
    return export_onnx(model, out, size, **kw)


def _export_torchscript(model, out: Path, size, int8: bool, per_channel: bool, verify: bool,
                        fold_int8: bool = False) -> dict[str, Any]:
    if not int8:
        return export_torchscript(model, out, size, verify=verify)
    qmodel = quantize_dynamic_int8(model, per_channel=per_channel)
    if fold_int8:  # each layer's int8 factors and shared weight summed and quantised again: one int8 product per map
        qmodel = fold(qmodel, keep_factors=False)
    summary = export_torchscript(qmodel, out, size, verify=verify)
    summary.update(state_dict_bytes=state_dict_bytes(qmodel), fp32_state_dict_bytes=state_dict_bytes(model))
    if verify:
        with torch.no_grad():
            x = random_input(model, size, seed=7)
            summary["max_abs_diff_vs_fp32"] = float((qmodel(x) - model(x)).abs().max())
    return summary


def _input_size_arg(values: list[int]) -> tuple[int, ...]:
    if len(values) > 4:
        raise ConfigError(f"--input-size takes 1 to 4 integers, got {len(values)}", "e.g. --input-size 224 224")
    return tuple(values)


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``minivit export`` options to ``parser`` (returned for chaining).

    ``--model DIR`` (required), ``--format {onnx,torchscript,safetensors}`` (default onnx), ``--int8``,
    ``--output PATH``, ``--input-size [B C] H W``, ``--opset N``, ``--static-batch``, ``--no-verify``,
    ``--exporter {auto,dynamo,torchscript}``, ``--per-channel``, ``--fold-deltas``.
    """
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder written by save_pretrained")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="output format (default: onnx)")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the Linear layers")
    parser.add_argument("--output", metavar="PATH", help="output file (folder for safetensors); default DIR/export/")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="S, H W, C H W or B C H W (default: the model's own image size)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--static-batch", action="store_true", help="ONNX: fixed batch size instead of dynamic")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime / reload comparison")
    parser.add_argument("--exporter", default="auto", choices=EXPORTERS, help="ONNX exporter (default: auto)")
    parser.add_argument("--per-channel", action="store_true", help="int8: one scale per output channel")
    parser.add_argument(
        "--fold-deltas", action="store_true",
        help="onnx / torchscript (with --int8 too): store relaxed-sharing deltas folded into full per-layer weights "
        "(a larger file, for runtimes that do not fold constants); default: the factors (fp32 ONNX writes their "
        "merge, which onnxruntime folds at load)",
    )  # fmt: skip
    return parser


def export_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`run_export` with the options parsed from :func:`add_export_arguments`."""
    return run_export(
        args.model,
        args.format,
        args.output,
        int8=args.int8,
        input_size=_input_size_arg(args.input_size) if args.input_size else None,
        opset=args.opset,
        dynamic_batch=not args.static_batch,
        verify=not args.no_verify,
        exporter=args.exporter,
        per_channel=args.per_channel,
        fold_deltas=args.fold_deltas,
    )


def format_summary(summary: dict[str, Any]) -> str:
    """A few human-readable lines for the CLI."""
    kind = summary["format"] + (" int8" if summary.get("int8") else "")
    lines = [f"exported {kind}: {summary['path']} ({summary['mb']:.2f} MB)"]
    lines.append(
        f"  source model.safetensors {summary['source_mb']:.2f} MB -> {summary['mb']:.2f} MB "
        f"(x{summary['size_ratio']:.2f} smaller)"
    )
    if summary.get("exporter"):
        lines.append(
            f"  exporter {summary['exporter']}, opset {summary.get('opset')}, "
            f"{summary.get('unique_initializers')} weight tensors"
            + (f" (fell back: {summary['fallback_reason']})" if summary.get("fallback_reason") else "")
        )
    if summary.get("max_abs_diff") is not None:
        what = "int8 vs fp32 PyTorch" if summary.get("int8") and summary["format"] == "onnx" else "vs PyTorch"
        lines.append(f"  max abs diff {what}: {summary['max_abs_diff']:.3g}")
    if summary.get("max_abs_diff_vs_fp32") is not None:
        lines.append(f"  int8 vs fp32 max abs diff: {summary['max_abs_diff_vs_fp32']:.3g}")
    return "\n".join(lines)
