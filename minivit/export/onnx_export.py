"""ONNX export that keeps multiplexed weights shared, verified with onnxruntime.

:func:`export_onnx` tries ``torch.onnx.export(dynamo=True)`` first and falls back to the TorchScript
exporter (``dynamo=False``) when it fails, or when its graph cannot be made to keep shared weights
shared or to match PyTorch. Either graph goes through :func:`~minivit.export.onnx_graph.share_weights`
(fold per-call-site weight transposes into one initializer, merge identical initializers by content,
strip per-node stack traces), is checked against the model's own unique tensor bytes, run in
onnxruntime on random inputs (two batch sizes when the batch axis is dynamic) and only then renamed
into place.

:func:`export_onnx_int8` writes a dynamically quantised int8 ONNX file with onnxruntime's own
quantiser (``onnxruntime.quantization.quantize_dynamic``) on the fp32 graph: PyTorch cannot export
its dynamically quantised ``Linear`` modules to ONNX. A weight shared by ``k`` layers is one
initializer, so it is quantised once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ConfigError, MinivitError
from ..measure import tensor_bytes
from ._io import (
    EXPORTERS,
    ExportJob,
    eval_mode,
    export_job,
    first_line,
    flat_outputs,
    quiet,
    raise_if_disk_failure,
    random_input,
)
from .onnx_graph import default_opset, share_weights, weight_stats

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXTERNAL_DATA_BYTES = 1_800_000_000
"""Above this many bytes of weights the file keeps them in ``<name>.data`` (protobuf's 2 GB limit)."""
SHARING_SLACK = 1.05, 64 * 1024
"""An ONNX file keeps weights shared when its unique weight bytes are at most ``a * model + b``."""


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def verify_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    input_size: tuple[int, int, int, int],
    batches: tuple[int, ...] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch on the same random inputs.

    ``batches`` are the batch sizes tried (default: ``input_size[0]``). Returns ``max_abs_diff``
    (over all outputs and batches), ``max_abs_ref`` (the largest PyTorch output magnitude, to put the
    difference in scale) and ``batches``.
    """
    batches = tuple(batches or (input_size[0],))
    sess = _ort_session(Path(path))
    name = sess.get_inputs()[0].name
    diff, ref_max = 0.0, 0.0
    with eval_mode(model):
        for i, b in enumerate(batches):
            x = random_input(model, (b, *input_size[1:]), seed=seed + i)
            refs = [r.detach().float().cpu().numpy() for r in flat_outputs(model(x))]
            outs = sess.run(None, {name: x.cpu().numpy()})
            if len(outs) != len(refs) or any(o.shape != r.shape for o, r in zip(outs, refs)):
                raise MinivitError(
                    f"onnxruntime returned shapes {[o.shape for o in outs]} for batch {b}, "
                    f"PyTorch {[r.shape for r in refs]}",
                    "export with dynamic_batch=True to run other batch sizes",
                )
            for o, r in zip(outs, refs):
                d = float(np.abs(o.astype(np.float64) - r).max()) if r.size else 0.0
                diff = d if np.isnan(d) else max(diff, d)
                ref_max = max(ref_max, float(np.abs(r).max()) if r.size else 0.0)
    return {"max_abs_diff": diff, "max_abs_ref": ref_max, "batches": list(batches)}


def _export_raw(model: nn.Module, x: torch.Tensor, raw: Path, exporter: str, opset: int | None, dynamic: bool):
    """Run one torch exporter into ``raw`` and return the loaded ``ModelProto``."""
    big = tensor_bytes(model, persistent_only=False) > EXTERNAL_DATA_BYTES
    kw: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with quiet():
        if exporter == "dynamo":
            kw.update(dynamo=True, external_data=big, optimize=True, verbose=False)
            if dynamic:
                kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            torch.onnx.export(model, (x,), str(raw), **kw)
        else:
            kw.update(dynamo=False, do_constant_folding=True)
            if dynamic:
                kw["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
            torch.onnx.export(model, (x,), str(raw), **kw)
    return onnx.load(str(raw))


def save_onnx(proto: onnx.ModelProto, file: Path) -> list[Path]:
    """Save ``proto`` to ``file`` (weights in ``file.data`` when too big for one protobuf); returns the files."""
    nbytes = weight_stats(proto)["initializer_bytes"]
    file.parent.mkdir(parents=True, exist_ok=True)
    if nbytes > EXTERNAL_DATA_BYTES:
        data = file.with_name(file.name + ".data")
        onnx.save_model(
            proto,
            str(file),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        return [data, file]
    onnx.save_model(proto, str(file))
    return [file]


def _add_metadata(proto: onnx.ModelProto, model: nn.Module, exporter: str) -> None:
    import json

    from .. import __version__
    from ..io import model_config

    props = {"minivit.version": __version__, "minivit.exporter": f"torch.onnx ({exporter})"}
    try:
        props["minivit.config"] = json.dumps(model_config(model))
    except (MinivitError, TypeError, ValueError):
        pass
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def _export_one(job: ExportJob, x, exporter: str, opset, dynamic: bool, verify: bool, tolerance, metadata):
    """One exporter's graph, weights shared, checked and verified, staged in ``job.tmp/<exporter>/``."""
    model, size = job.model, job.size
    proto = _export_raw(model, x, job.staged(f"raw-{exporter}", "model.onnx"), exporter, opset, dynamic)
    passes = share_weights(proto, metadata=metadata)
    _add_metadata(proto, model, exporter)
    stats = weight_stats(proto)
    out = job.staged(exporter, job.target.name)
    files = save_onnx(proto, out)
    with quiet():
        onnx.checker.check_model(str(out))
    ref_bytes = tensor_bytes(model, persistent_only=False)
    a, b = SHARING_SLACK
    onnx_weight_bytes = stats["unique_initializer_bytes"] + stats["constant_bytes"]
    result: dict[str, Any] = {
        "format": "onnx",
        "exporter": exporter,
        "opset": default_opset(proto),
        "input_size": list(size),
        "dynamic_batch": dynamic,
        **stats,
        **passes,
        "model_tensor_bytes": ref_bytes,
        "weights_shared": onnx_weight_bytes <= a * ref_bytes + b,
        "_files": files,
    }
    if verify:
        result.update(verify_onnx(out, model, size, job.batches(dynamic)))
        job.check(result["max_abs_diff"], result["max_abs_ref"], tolerance, "onnxruntime output",
                  "try the other exporter (exporter='torchscript' or 'dynamo') or another opset")  # fmt: skip
    return result


def _check_options(exporter: str, opset: object) -> None:
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}", f"use one of {', '.join(EXPORTERS)}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"opset must be an integer >= 7, got {opset!r}", "e.g. 17, or None for the default")


def _first_that_shares(job: ExportJob, order: list[str], **kw) -> tuple[dict[str, Any], list[str]]:
    """Try the exporters in ``order``; the first whose graph keeps weights shared wins, else the smallest.

    Returns the chosen result and why the exporters before it were not used.
    """
    failures: list[str] = []
    candidates: list[dict[str, Any]] = []
    x = random_input(job.model, job.size)
    for name in order:
        try:
            result = _export_one(job, x, name, **kw)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - exporters raise anything; we report and fall back
            raise_if_disk_failure(e, job.target)
            failures.append(f"{name}: {first_line(e)}")
            continue
        candidates.append(result)
        if result["weights_shared"]:
            break
        failures.append(f"{name}: weights duplicated in the graph")
    if not candidates:
        hint = "see minivit.export docs; try another opset or exporter"
        if len(order) == 1 and failures and "MinivitError" in failures[0]:
            hint = failures[0].split(": ", 2)[-1]
        raise MinivitError(f"ONNX export failed ({'; '.join(failures)})", hint)
    best = next((c for c in candidates if c["weights_shared"]), None)
    best = best or min(candidates, key=lambda c: c["unique_initializer_bytes"] + c["constant_bytes"])
    return best, failures


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, ...] | int | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    verify: bool = True,
    *,
    exporter: str = "auto",
    tolerance: float = 1e-3,
    keep_metadata: bool = False,
    merge_deltas: bool = True,
) -> dict[str, Any]:
    """Export ``model`` to an ONNX file at ``path`` whose shared weights stay shared.

    Args:
        model: any traceable ``nn.Module`` taking one image batch (a minivit or timm model); exported in
            eval mode (its mode is restored afterwards), on its own device and dtype.
        path: the ``.onnx`` file to write (parent folders are created). Written atomically: staged
            next to the target, verified, then renamed; on any failure nothing is left behind.
        input_size: ``(batch, channels, height, width)``; also ``(C, H, W)``, ``(H, W)`` or ``S``
            (batch 1). Default: inferred from ``model.patch_embed``.
        opset: ONNX opset version (default: the exporter's).
        dynamic_batch: make the batch axis symbolic (``"batch"``); verified with two batch sizes.
        verify: run the file in onnxruntime and compare with PyTorch; raise :class:`MinivitError` if
            the largest difference exceeds ``tolerance * max(1, max |logit|)``.
        exporter: ``"auto"`` (dynamo, then TorchScript), ``"dynamo"`` or ``"torchscript"``.
        tolerance: relative verification tolerance (see ``verify``).
        keep_metadata: keep per-node stack traces and doc strings (larger file).
        merge_deltas: a relaxed-sharing student's deltas are written as the merge ``W_shared + up @ down`` on the
            stored factors (:func:`minivit.core.delta.merge_in_graph`): the file keeps the factors and
            onnxruntime, which folds constant subgraphs when it loads a model, runs one product per map. (The
            dynamo exporter folds that merge into per-layer weights itself; ``auto`` then keeps the
            TorchScript exporter's graph, which shares them.) ``False``: the deltas as separate products.

    Returns a summary: ``path``, ``bytes``, ``mb``, ``exporter``, ``opset``, ``input_size``,
    ``dynamic_batch``, ``num_initializers``, ``unique_initializers``, ``initializer_bytes``,
    ``unique_initializer_bytes``, ``constant_bytes``, ``num_nodes``, ``folded_transposes``,
    ``deduplicated``, ``model_tensor_bytes`` (the PyTorch model's distinct tensors), ``weights_shared``
    (the file holds no more weight bytes than the model, i.e. no per-layer copies), ``files``,
    ``fallback_reason`` (why dynamo was not used, or ``None``) and, with ``verify``, ``max_abs_diff``,
    ``max_abs_ref`` and ``batches``.
    """
    _check_options(exporter, opset)
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if merge_deltas:
        from ..core.delta import merge_in_graph

        model = merge_in_graph(model)
    with export_job(model, path, "ONNX", input_size) as job:
        best, failures = _first_that_shares(
            job, order, opset=opset, dynamic=dynamic_batch, verify=verify, tolerance=tolerance, metadata=keep_metadata
        )
        best.update(job.write(best.pop("_files")))
    best["fallback_reason"] = "; ".join(failures) if best["exporter"] != order[0] else None
    return _ordered(best)


_FIRST_KEYS = ("format", "path", "bytes", "mb", "exporter", "opset", "max_abs_diff")


def _ordered(d: dict[str, Any]) -> dict[str, Any]:
    return {**{k: d[k] for k in _FIRST_KEYS if k in d}, **{k: v for k, v in d.items() if k not in _FIRST_KEYS}}


def quantize_onnx_file(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = False) -> dict[str, Any]:
    """Dynamically quantise the MatMul/Gemm weights of an fp32 ONNX file to int8 with onnxruntime.

    Activations are quantised on the fly at run time (``DynamicQuantizeLinear`` + ``MatMulInteger``).
    ``dst`` is written directly (use :func:`export_onnx_int8` for an atomic, verified export). Returns
    the weight statistics of the quantised graph.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantiser logs advice through the root logger
    try:
        with quiet():
            quantize_dynamic(
                Path(src),
                Path(dst),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
            )
    finally:
        logger.setLevel(level)
    return weight_stats(str(dst))


def export_onnx_int8(
    model: nn.Module, path: str | os.PathLike, input_size=None, *, per_channel: bool = False, **onnx_options
) -> dict[str, Any]:
    """Export ``model`` to fp32 ONNX (:func:`export_onnx` with ``onnx_options``: ``opset``, ``dynamic_batch``,
    ``verify``, ``exporter``), then quantise its Linear weights to int8.

    Quantisation is onnxruntime's dynamic int8 (weights int8, activations quantised per batch at run
    time). With ``verify`` the int8 file is run in onnxruntime against the fp32 *PyTorch* model; the
    difference is the quantisation error (reported, not checked). Returns :func:`export_onnx`'s
    summary for the int8 file plus ``fp32_bytes`` (the intermediate fp32 file) and ``int8: True``.
    """
    with export_job(model, path, "ONNX", input_size) as job:
        fp32 = export_onnx(job.model, job.staged("fp32", job.target.name), job.size, merge_deltas=False,
                           **onnx_options)  # (int8: each factor is quantised as its own product)
        if len(fp32["files"]) > 1:
            raise MinivitError("int8 quantisation of ONNX files over 2 GB is not supported", "use --format torchscript")
        staged = job.staged("int8", job.target.name)
        try:
            stats = quantize_onnx_file(fp32["path"], staged, per_channel=per_channel)
        except Exception as e:  # noqa: BLE001 - the quantiser raises many types
            raise_if_disk_failure(e, job.target)
            raise MinivitError(f"onnxruntime int8 quantisation failed: {first_line(e)}", "export fp32 ONNX") from None
        result: dict[str, Any] = {k: v for k, v in fp32.items() if k not in ("max_abs_diff", "max_abs_ref", "batches")}
        result.update(stats)
        result.update(
            int8=True,
            quantizer="onnxruntime.quantization.quantize_dynamic (QInt8)",
            per_channel=per_channel,
            fp32_bytes=fp32["bytes"],
            fp32_max_abs_diff=fp32.get("max_abs_diff"),
        )
        if onnx_options.get("verify", True):
            result.update(_verify_int8(staged, job, onnx_options.get("dynamic_batch", True)))
        result.update(job.write([staged]))
    return _ordered(result)


def _verify_int8(staged: Path, job: ExportJob, dynamic_batch: bool) -> dict[str, Any]:
    try:
        check = verify_onnx(staged, job.model, job.size, job.batches(dynamic_batch))
    except MinivitError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise MinivitError(f"the int8 ONNX file does not run: {first_line(e)}", "export fp32 ONNX") from None
    if not np.isfinite(check["max_abs_diff"]):
        raise MinivitError("the int8 ONNX model produces non-finite outputs", "export fp32 ONNX instead")
    return check
