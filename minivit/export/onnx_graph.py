"""Keep shared weights shared in an exported ONNX graph, with the ONNX tools; weight statistics.

A weight-multiplexed model runs one shared block ``k`` times, so its exported graph is unrolled: the
block's nodes appear ``k`` times, all reading the *same* initializers. Exporters do not always keep it
that way: the TorchScript exporter reads the second and later uses through ``Identity`` nodes, the dynamo
exporter without its optimiser leaves one ``Transpose(W)`` per call site, and a constant folder (the
dynamo exporter's own, or ``onnxscript.optimizer.optimize``) turns each of those into a pre-transposed
copy *per call site*: ``k`` copies of the weight in the file.

:func:`share_weights` runs existing passes, in this order (``onnx_ir`` and ``onnxscript`` ship with
``torch.onnx``'s dynamo exporter):

1. ``onnx_ir.passes.common.IdentityEliminationPass``: readers of ``Identity(initializer)`` read it directly;
2. ``onnxscript``'s constant folder restricted to ``Transpose`` nodes whose input is an initializer (any
   size): the graph no longer transposes weights at run time, which also lets
   ``onnxruntime.quantization`` see every MatMul weight as an initializer;
3. ``onnx_ir``'s ``DeduplicateInitializersPass`` (no size limit): identical initializers (same dtype,
   shape and bytes), such as the per-call-site copies of step 2, become one; then
   ``RemoveUnusedNodesPass`` drops what nothing reads (the untransposed originals);
4. ``ClearMetadataAndDocStringPass`` unless ``metadata=True``: the dynamo exporter stores a Python stack
   trace per node, most of a small model's file.

What each tool did to the file (MB = 10^6 bytes) of a share-12 student of a 12-layer DeiT-S-shaped
ViT (3 heads, 32x32 input, random weights; ``benchmarks/export_sizes.py --tools``, torch 2.14, onnx
1.23, onnxscript 0.7, onnxruntime 1.32)::

                                             width 192 (1.985 MB of tensors)  width 48 (0.165 MB)
    exporter                                  dynamo  no-opt  torchscript     dynamo  no-opt  torchscript
    raw export                                 2.797   4.009     2.134         1.380   2.188     0.314
    onnxscript.optimizer.optimize              2.788   2.797     2.115         1.375   1.380     0.703
      ... with size limits lifted              2.788  22.258    21.585         1.375   2.189     1.517
    onnxruntime graph optimisation             2.067   2.074     2.090         0.653   0.254     0.270
    onnx_ir dedup + identity + clear           2.054   2.100     2.136         0.233   0.279     0.315
    onnxoptimizer 0.4.2 (same four passes)     2.034   2.078     2.132         0.213   0.258     0.311
    share_weights (steps 1-4)                  2.053   2.096     2.132         0.232   0.276     0.311
    the former hand-written passes             2.047   2.091     2.133         0.226   0.270     0.313

(``no-opt``: the dynamo exporter with ``optimize=False``.) The optimiser alone makes the per-call-site
copies (1.38 MB for 0.165 MB of tensors, 22 MB with its size limits lifted); onnx_ir's deduplication
undoes them; the restricted folding additionally removes every run-time weight ``Transpose`` (48 in the
no-opt graph) at no cost in size. ``onnx_ir`` also writes a ``value_info`` for every intermediate
value, which :func:`share_weights` drops again (keeping the exporter's own), the only step done by hand.
onnxruntime's offline optimisation (``SessionOptions.optimized_model_filepath``) writes a graph tied to
its version and hardware and keeps duplicate small initializers, so it is not used for the file.
``onnxoptimizer`` (``eliminate_identity``, ``eliminate_duplicate_initializer``,
``eliminate_unused_initializer``, ``eliminate_deadend``) shares as well, but folds no weight transpose
(all 85 ``Transpose`` nodes stay in the no-opt graph) and is one more dependency, so it is not used. Merging
by content also merges tensors that are merely *equal* (two LayerNorms both at their initial ones, say),
which is exact for inference. What stays written here is :func:`weight_stats`, the measurement tests and
benchmarks use to check that sharing survived.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import onnx
import onnx_ir as ir
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper
from onnx_ir.passes.common import (
    ClearMetadataAndDocStringPass,
    DeduplicateInitializersPass,
    IdentityEliminationPass,
    RemoveUnusedNodesPass,
)
from onnxscript.optimizer import fold_constants

LARGE_CONSTANT_BYTES = 1024
"""``Constant`` node tensors of at least this many bytes count as weights in :func:`weight_stats`."""
_NO_LIMIT = 1 << 62


def _subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def iter_nodes(graph: GraphProto) -> Iterator[NodeProto]:
    """Every node of ``graph`` and of its subgraphs (``If``/``Loop``/``Scan`` bodies), depth first."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from iter_nodes(sub)


def _tensor_key(t: TensorProto) -> tuple[int, tuple[int, ...], str]:
    return (t.data_type, tuple(t.dims), hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest())


def _count(model: ir.Model, op_type: str) -> int:
    return sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == op_type)


def _weight_transpose(node: ir.Node) -> bool:
    """Fold exactly the ``Transpose`` nodes that read an initializer (a weight), whatever its size."""
    return node.op_type == "Transpose" and node.domain in ("", "ai.onnx") and node.inputs[0].is_initializer()


def share_weights(model: ModelProto, metadata: bool = False) -> dict[str, int]:
    """Make every use of a shared weight read one initializer, in place (steps 1-4 above).

    Returns ``{"bypassed_identities": i, "folded_transposes": t, "deduplicated": d}``: the ``Identity``
    nodes removed, the weight ``Transpose`` nodes folded and the initializers merged into another.
    """
    described = {v.name for v in model.graph.value_info}
    m = ir.serde.deserialize_model(model)
    identities, transposes = _count(m, "Identity"), _count(m, "Transpose")
    IdentityEliminationPass()(m)
    bypassed = identities - _count(m, "Identity")
    fold_constants(m, input_size_limit=_NO_LIMIT, output_size_limit=_NO_LIMIT,
                   should_fold=lambda n: _weight_transpose(n) or False)  # fmt: skip
    RemoveUnusedNodesPass()(m)
    before = len(m.graph.initializers)
    DeduplicateInitializersPass(size_limit=_NO_LIMIT)(m)
    deduplicated = before - len(m.graph.initializers)
    RemoveUnusedNodesPass()(m)
    if not metadata:
        ClearMetadataAndDocStringPass()(m)
    model.CopyFrom(ir.serde.serialize_model(m))
    # onnx_ir writes a value_info (type and shape) for every intermediate value; keep the exporter's only
    kept = [v for v in model.graph.value_info if v.name in described]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return {"bypassed_identities": bypassed, "folded_transposes": transposes - _count(m, "Transpose"),
            "deduplicated": deduplicated}  # fmt: skip


def weight_stats(model: ModelProto | str) -> dict[str, int]:
    """Initializer counts and bytes of an ONNX model (a ``ModelProto`` or a path).

    Returns ``num_initializers``, ``unique_initializers`` (by content), ``initializer_bytes``,
    ``unique_initializer_bytes``, ``constant_bytes`` (tensors of at least ``LARGE_CONSTANT_BYTES``
    held in ``Constant`` nodes) and ``num_nodes``.
    """
    if not isinstance(model, ModelProto):
        model = onnx.load(str(model))
    total = 0
    unique: dict[tuple, int] = {}
    for t in model.graph.initializer:
        n = numpy_helper.to_array(t).nbytes
        total += n
        unique[_tensor_key(t)] = n
    const = 0
    for node in iter_nodes(model.graph):
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == AttributeProto.TENSOR:
                    n = numpy_helper.to_array(a.t).nbytes
                    const += n if n >= LARGE_CONSTANT_BYTES else 0
    return {
        "num_initializers": len(model.graph.initializer),
        "unique_initializers": len(unique),
        "initializer_bytes": total,
        "unique_initializer_bytes": sum(unique.values()),
        "constant_bytes": const,
        "num_nodes": sum(1 for _ in iter_nodes(model.graph)),
    }


def default_opset(model: ModelProto) -> int | None:
    """The model's opset version for the default ONNX domain."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
