"""ONNX graph post-passes that keep shared weights shared, and weight statistics of an ONNX file.

A weight-multiplexed model runs one shared block ``k`` times, so its exported graph is unrolled: the
block's nodes appear ``k`` times, all reading the *same* initializers. Exporters do not always keep it
that way. The dynamo exporter's optimiser constant-folds small weight transposes (``W.T`` of a Linear
whose weight is below its folding size limit) once *per call site*, writing ``k`` identical copies of
the weight; other exporters may inline per-call constants too. The passes here undo that:

* :func:`bypass_initializer_identities`: readers of ``Identity(initializer)`` nodes (the TorchScript
  exporter's way of reusing a weight) read the initializer directly;
* :func:`fold_initializer_transposes`: a ``Transpose`` whose input is an initializer becomes one
  pre-transposed initializer (``name.T``), shared by every consumer; the original is dropped when
  nothing else reads it. The file holds the same bytes and the graph no longer transposes at run
  time (which also lets ``onnxruntime.quantization`` see the MatMul weights as initializers);
* :func:`deduplicate_initializers`: initializers with identical dtype, shape and bytes are merged
  into one (content hash), and every reader is pointed at the kept one;
* :func:`strip_metadata`: drops per-node doc strings and metadata (the dynamo exporter stores a
  Python stack trace per node, about 8% of a small model's file).

:func:`weight_stats` counts initializers (all and unique by content) and their bytes, plus the
tensors stored in ``Constant`` nodes, which is how tests and benchmarks check that sharing survived.

Merging by content also merges tensors that are merely *equal* (two LayerNorms both at their
initial ones, say). That is exact for inference: the graph computes the same function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

LARGE_CONSTANT_BYTES = 1024
"""``Constant`` node tensors of at least this many bytes count as weights in :func:`weight_stats`."""


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


def _rename_inputs(graph: GraphProto, mapping: dict[str, str]) -> None:
    """Point every node input (subgraphs included) and graph output named in ``mapping`` at its new name."""
    if not mapping:
        return
    for node in iter_nodes(graph):
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
    for out in graph.output:
        if out.name in mapping:
            out.name = mapping[out.name]


def _used_names(graph: GraphProto) -> set[str]:
    used = {name for node in iter_nodes(graph) for name in node.input}
    used.update(o.name for o in graph.output)
    return used


def remove_unused_initializers(model: ModelProto) -> int:
    """Drop initializers that no node (or graph output) reads; returns how many were removed."""
    graph = model.graph
    used = _used_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    removed = len(graph.initializer) - len(keep)
    if removed:
        kept_names = {t.name for t in keep}
        dropped = {t.name for t in graph.initializer} - kept_names
        del graph.initializer[:]
        graph.initializer.extend(keep)
        inputs = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(inputs)
    return removed


def _tensor_bytes(t: TensorProto) -> bytes:
    return numpy_helper.to_array(t).tobytes()


def _tensor_key(t: TensorProto) -> tuple[int, tuple[int, ...], str]:
    return (t.data_type, tuple(t.dims), hashlib.sha256(_tensor_bytes(t)).hexdigest())


def _is_generated(name: str) -> bool:
    """Names an exporter made up (``val_12``, ``onnx::MatMul_950``), as opposed to parameter names."""
    return name.startswith(("val_", "onnx::", "_")) or "." not in name


def deduplicate_initializers(model: ModelProto) -> int:
    """Merge initializers with identical dtype, shape and content; returns how many were removed.

    The kept copy is the first one that carries a parameter name (``blocks.0.shared.attn.qkv.weight``)
    rather than an exporter-generated one. Initializers that are also graph inputs (models exported
    with ``keep_initializers_as_inputs``) are left alone: a caller may override them.
    """
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    groups: dict[tuple, list[TensorProto]] = {}
    for t in graph.initializer:
        if t.name in graph_inputs or t.data_location == TensorProto.EXTERNAL:
            continue
        groups.setdefault(_tensor_key(t), []).append(t)
    mapping: dict[str, str] = {}
    for tensors in groups.values():
        if len(tensors) < 2:
            continue
        keep = min(tensors, key=lambda t: _is_generated(t.name))
        for t in tensors:
            if t is not keep:
                mapping[t.name] = keep.name
    _rename_inputs(graph, mapping)
    remove_unused_initializers(model)
    return len(mapping)


def bypass_initializer_identities(model: ModelProto) -> int:
    """Remove ``Identity`` nodes that merely forward an initializer; returns how many were removed.

    The TorchScript exporter routes the second and later uses of a shared weight through such a node
    (``Identity(onnx::MatMul_821)``). Readers are pointed at the initializer itself, so every use of a
    shared weight is visibly the same tensor (which ``onnxruntime.quantization`` needs to quantise
    all of them, and only once).
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    mapping: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.domain in ("", "ai.onnx")
            and node.input[0] in inits
            and node.output[0] not in outputs
        ):
            mapping[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if mapping:
        del graph.node[:]
        graph.node.extend(keep)
        _rename_inputs(graph, mapping)
        vi = [v for v in graph.value_info if v.name not in mapping]
        del graph.value_info[:]
        graph.value_info.extend(vi)
    return len(mapping)


def fold_initializer_transposes(model: ModelProto) -> int:
    """Replace ``Transpose(initializer)`` nodes by pre-transposed initializers; returns nodes removed.

    All transposes of one initializer with the same permutation share one new initializer,
    ``<name>.T`` (``<name>.T<perm>`` for non-default permutations), so a weight used by ``k`` layers
    stays one tensor. The original initializer is removed when nothing else reads it.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    new_inits: dict[str, TensorProto] = {}
    mapping: dict[str, str] = {}
    keep_nodes = []
    for node in graph.node:
        src = node.input[0] if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") else None
        if (
            src is None
            or src not in inits
            or src in graph_inputs
            or node.output[0] in graph_outputs
            or inits[src].data_location == TensorProto.EXTERNAL
        ):
            keep_nodes.append(node)
            continue
        array = numpy_helper.to_array(inits[src])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        default = list(range(array.ndim))[::-1]
        perm = perm or default
        name = f"{src}.T" if perm == default else f"{src}.T{''.join(map(str, perm))}"
        if name not in new_inits:
            new_inits[name] = numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)), name)
        mapping[node.output[0]] = name
    if not mapping:
        return 0
    del graph.node[:]
    graph.node.extend(keep_nodes)
    graph.initializer.extend(new_inits.values())
    _rename_inputs(graph, mapping)
    # value_info entries of the removed node outputs would now describe nothing
    vi = [v for v in graph.value_info if v.name not in mapping]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    remove_unused_initializers(model)
    return len(mapping)


def strip_metadata(model: ModelProto) -> None:
    """Remove per-node doc strings and metadata properties (stack traces, source locations)."""
    model.graph.doc_string = ""
    for node in iter_nodes(model.graph):
        node.doc_string = ""
        del node.metadata_props[:]
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        del value.metadata_props[:]
    for t in model.graph.initializer:
        del t.metadata_props[:]


def share_weights(model: ModelProto, metadata: bool = False) -> dict[str, int]:
    """Run the passes above in order (``metadata=False`` also strips node metadata).

    Returns ``{"bypassed_identities": i, "folded_transposes": t, "deduplicated": d}``.
    """
    bypassed = bypass_initializer_identities(model)
    folded = fold_initializer_transposes(model)
    deduped = deduplicate_initializers(model)
    if not metadata:
        strip_metadata(model)
    return {"bypassed_identities": bypassed, "folded_transposes": folded, "deduplicated": deduped}


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
