"""May a model compiled for batch 1 run a batch of N images as N single runs?

Running the batch-1 program once per image gives N single runs by construction; the question is
whether that is what the model means at batch N (ONNX semantics). It is not when the graph mixes
images: a Reshape that folds the batch into features, a Concat/Reduce/Softmax/Slice along axis 0,
a compiled batch other than 1. ``batch_refusal`` answers by probing: the graph's shapes are
inferred again with the inputs' batch dim set to 2 and to 3 (Shape/Size evaluated at the probe
batch, as the ONNX graph would see them), and every value computed from an input must keep the
batch as its leading axis (its batch-1 shape with dim 0 replaced by the probe batch). Ops that
keep shapes while mixing along an axis (Softmax over axis 0, ...) are checked by their axis.

Blind spot: the ONNX importer folds Shape(x) into constants at batch 1, so a graph that uses
its batch size as a number (x / Shape(x)[0]) looks like a per-image graph here.
"""
from __future__ import annotations

import numpy as np

from .errors import CompileError
from .graph import Graph, Node
from .ops.registry import infer_node, resolve_attrs, get_op, run_reference
from .types import TensorType

PROBE_BATCHES = (2, 3)
# Ops whose output has the input's shape but whose values mix along ``axis`` (or ``axes``).
_AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "GatherElements",
             "ScatterElements", "TopK", "ArgMax", "ArgMin", "Concat", "Split", "Gather"}
_FROM_AXIS_OPS = {"LayerNormalization", "Flatten"}       # act on axes [axis, rank)
_AXES_OPS = {"MeanVarianceNormalization"}


def batch_refusal(graph: Graph) -> str | None:
    """None when every input and output has batch 1 as its leading dim and no node mixes images;
    otherwise why a batch of other size would not be N independent single runs."""
    for name in graph.inputs:
        shape = graph.types[name].shape
        if not shape or shape[0] != 1:
            return (f"input '{name}' has shape {list(shape)}: only a model compiled for batch 1 "
                    "runs other batch sizes")
    for probe in PROBE_BATCHES:
        reason = _probe(graph, probe)
        if reason:
            return reason
    return None


def _probe(graph: Graph, n: int) -> str | None:
    types = dict(graph.types)
    consts = dict(graph.params)
    batched = set(graph.inputs)
    for name in graph.inputs:
        t = graph.types[name]
        types[name] = TensorType(t.dtype, (n,) + t.shape[1:])
    for node in graph.nodes:
        carries = [i for i in node.inputs if i in batched]
        if node.op in ("Shape", "Size") or not carries:
            reason = _evaluate(node, types, consts)
            if reason:
                return reason
            continue
        where = f"node '{node.name}' ({node.op})"
        reason = _axis_reason(node, types, carries)
        if reason:
            return f"{where} {reason}"
        try:
            out_types = _per_image_reshape(node, graph, n) or infer_node(node, types, consts)
        except CompileError as e:
            return f"{where} cannot take a batch of {n}: {e}"
        for out, t in zip(node.outputs, out_types):
            if not out:
                continue
            one = graph.types[out].shape
            want = (n,) + one[1:] if one and one[0] == 1 else None
            if want is None or t.shape != want:
                return (f"{where} mixes the images of a batch: its output '{out}' has shape "
                        f"{list(one)} at batch 1 and {list(t.shape)} at batch {n}")
            types[out] = t
            batched.add(out)
    for name in graph.outputs:
        if name not in batched:
            return f"output '{name}' does not depend on the inputs (it has no batch axis)"
    return None


def _per_image_reshape(node: Node, graph: Graph, n: int) -> list[TensorType] | None:
    """A Reshape from batch 1 to batch 1 reshapes each image on its own: its target shape was
    usually computed from Shape(x) (``x.view(x.size(0), -1)``), which the ONNX importer folded
    into a constant at batch 1, so the constant's leading 1 stands for the batch."""
    if node.op != "Reshape":
        return None
    before, after = graph.types[node.inputs[0]], graph.types[node.outputs[0]]
    if not before.shape or not after.shape or before.shape[0] != 1 or after.shape[0] != 1:
        return None
    return [TensorType(after.dtype, (n,) + after.shape[1:])]


def _evaluate(node: Node, types: dict, consts: dict) -> str | None:
    """Compute a node that sees no batched value (or only a batched value's shape) as a constant
    at the probe batch."""
    args = []
    for i in node.inputs:
        if not i:
            args.append(None)
        elif i in consts:
            args.append(consts[i])
        elif node.op in ("Shape", "Size"):
            args.append(np.empty(types[i].shape, types[i].dtype.np))
        else:
            return f"node '{node.name}' ({node.op}): input '{i}' is neither batched nor known"
    try:
        results = run_reference(node, args)
        for out, t in zip(node.outputs, infer_node(node, types, consts)):
            if out:
                types[out] = t
    except (CompileError, ValueError, TypeError, IndexError) as e:
        return f"node '{node.name}' ({node.op}) cannot be evaluated at another batch: {e}"
    for out, value in zip(node.outputs, results):
        if out:
            consts[out] = np.asarray(value)
    return None


def _axis_reason(node: Node, types: dict, carries: list[str]) -> str | None:
    if node.op not in _AXIS_OPS | _FROM_AXIS_OPS | _AXES_OPS:
        return None
    attrs = resolve_attrs(get_op(node.op), node)
    rank = types[carries[0]].rank
    if node.op in _AXES_OPS:
        axes = [a % rank for a in attrs.get("axes") or range(rank)]
        mixes = 0 in axes
    else:
        axis = int(attrs.get("axis", 0)) % max(rank, 1)
        mixes = axis == 0
    if node.op == "Gather" and node.inputs[0] not in carries:
        mixes = True            # indices computed from the images: their batch axis moves
    return "works along the batch axis (axis 0)" if mixes else None
