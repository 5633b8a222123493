"""Deployment export of (weight-multiplexed) vision transformers: ONNX, TorchScript, safetensors, int8.

The point of weight multiplexing is a smaller deployed model, so the exporters make sure the shared
weights *stay* shared on disk:

* :func:`export_onnx`: ``torch.onnx.export`` (dynamo, falling back to TorchScript), then the ONNX
  tools' own passes (onnx_ir, onnxscript) that fold weight transposes and merge identical
  initializers (:mod:`minivit.export.onnx_graph`); a single-layer student's file is several times
  smaller than its teacher's. Verified in onnxruntime (max abs difference reported), written atomically.
* :func:`export_onnx_int8`: the same graph, dynamically quantised to int8 by onnxruntime.
* :func:`export_torchscript` (``torch.jit.trace``, reloaded and verified) and
  :func:`export_safetensors` (``minivit.save_pretrained``; with ``int8=True`` the dynamic-int8 weights as plain
  tensors, :mod:`minivit.export.int8`, loaded back by :func:`load_int8_safetensors`; :func:`int8_bytes` and
  :func:`safetensors_bytes` give the files' sizes without writing them).
* :func:`export_job` / :class:`ExportJob`: the validate -> stage -> verify -> commit steps every exporter
  shares (sizes in MB = 10^6 bytes, :mod:`minivit.measure`).
* :func:`quantize_dynamic_int8`: ``torch.ao`` dynamic int8 Linear layers, each shared Linear once;
  :func:`size_report`: teacher -> student -> int8 sizes and ratios.
* :func:`run_export` / :func:`add_export_arguments` / :func:`export_from_args`: the ``minivit export``
  command (model folder in, file out, summary dict back).

Example::

    import minivit
    from minivit.export import export_onnx

    student = minivit.multiplex("deit_small_patch16_224", share=12)
    info = export_onnx(student, "student.onnx")   # input size from the model, dynamic batch
    print(info["mb"], info["unique_initializers"], info["max_abs_diff"])

Every failure raises :class:`minivit.errors.MinivitError` (or a subclass) with a one-line message
and a hint, and leaves no partial file behind.

Names are imported on first use, so ``import minivit.export`` (and the CLI's argument parser) does not
need ``onnx`` / ``onnxruntime`` installed; only the ONNX exporters do (``pip install 'minivit[export]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_NAMES = {
    "EXPORTERS": "._io",
    "ExportJob": "._io",
    "export_job": "._io",
    "export_onnx": ".onnx_export",
    "export_onnx_int8": ".onnx_export",
    "quantize_onnx_file": ".onnx_export",
    "verify_onnx": ".onnx_export",
    "share_weights": ".onnx_graph",
    "weight_stats": ".onnx_graph",
    "quantize_dynamic_int8": ".quantize",
    "size_report": ".quantize",
    "state_dict_bytes": ".quantize",
    "FORMATS": ".run",
    "add_export_arguments": ".run",
    "default_output": ".run",
    "export_from_args": ".run",
    "format_summary": ".run",
    "run_export": ".run",
    "export_safetensors": ".safetensors",
    "int8_bytes": ".int8",
    "int8_tensors": ".int8",
    "load_int8_safetensors": ".int8",
    "safetensors_bytes": ".int8",
    "export_torchscript": ".torchscript",
    "is_quantized": ".torchscript",
}

__all__ = [
    "EXPORTERS",
    "ExportJob",
    "FORMATS",
    "add_export_arguments",
    "default_output",
    "export_from_args",
    "export_job",
    "export_onnx",
    "export_onnx_int8",
    "export_safetensors",
    "export_torchscript",
    "format_summary",
    "int8_bytes",
    "int8_tensors",
    "is_quantized",
    "load_int8_safetensors",
    "quantize_dynamic_int8",
    "quantize_onnx_file",
    "run_export",
    "safetensors_bytes",
    "share_weights",
    "size_report",
    "state_dict_bytes",
    "verify_onnx",
    "weight_stats",
]

if TYPE_CHECKING:
    from ._io import EXPORTERS, ExportJob, export_job
    from .int8 import int8_bytes, int8_tensors, load_int8_safetensors, safetensors_bytes
    from .onnx_export import export_onnx, export_onnx_int8, quantize_onnx_file, verify_onnx
    from .onnx_graph import share_weights, weight_stats
    from .quantize import quantize_dynamic_int8, size_report, state_dict_bytes
    from .run import FORMATS, add_export_arguments, default_output, export_from_args, format_summary, run_export
    from .safetensors import export_safetensors
    from .torchscript import export_torchscript, is_quantized


__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
