"""Export a Graph to ONNX: every op of the IR is an ONNX op in its newest-opset form, so this is a
direct mapping (node -> NodeProto, params -> initializers, types -> value_info).

The opset is the newest ONNX one that onnxruntime (the test oracle) also runs, and the IR version
is one it accepts. Graphs holding compiler-internal ops (after layout passes) are not exportable.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .ir import CompileError, DType, Graph, OP_TABLE
from .ir.ops.catalogue import CNNCC_OPS, DOMAIN
from .ir.ops.registry import OpContext
from .ir.ops.spatial import resolve_window
from .onnx_functions import DOMAIN_VERSION, FUNCTION_ATTRS, used_functions

# onnxruntime 1.31 runs ONNX opsets up to 26 and model IR versions up to 13 (onnx 1.23 writes 14).
ORT_MAX_OPSET = 26
IR_VERSION = 10
# Protobuf messages are limited to 2 GiB: above this many weight bytes, weights go to a side file.
EXTERNAL_DATA_BYTES = 1 << 30

_ATTR_TYPES = {"int": "INT", "float": "FLOAT", "str": "STRING", "ints": "INTS",
               "floats": "FLOATS", "strs": "STRINGS", "tensor": "TENSOR", "graph": "GRAPH"}


def default_opset() -> int:
    import onnx
    return min(onnx.defs.onnx_opset_version(), ORT_MAX_OPSET)


def _attribute(op: str, key: str, value: Any, opset: int) -> Any:
    from onnx import AttributeProto, helper, numpy_helper

    spec = OP_TABLE[op].attrs.get(key) if op in OP_TABLE else None
    kind = spec.kind if spec is not None else None
    if kind is None:           # not in the schema: infer from the Python value
        if isinstance(value, Graph):
            kind = "graph"
        elif isinstance(value, np.ndarray):
            kind = "tensor"
    if kind == "tensor":
        return helper.make_attribute(key, numpy_helper.from_array(np.asarray(value)))
    if kind == "graph":
        return helper.make_attribute(key, graph_proto(value, opset))
    if kind == "int":
        value = int(value)
    elif kind == "float":
        value = float(value)
    elif kind in ("ints", "floats", "strs"):
        conv = {"ints": int, "floats": float, "strs": str}[kind]
        value = [conv(v) for v in value]
    attr_type = getattr(AttributeProto, _ATTR_TYPES[kind]) if kind else None
    return helper.make_attribute(key, value, attr_type=attr_type)


def _value_info(name: str, graph: Graph) -> Any:
    from onnx import helper
    t = graph.types[name]
    return helper.make_tensor_value_info(name, t.dtype.to_onnx(), list(t.shape))


def graph_proto(graph: Graph, opset: int | None = None) -> Any:
    """The GraphProto of ``graph`` (weights as initializers, every value typed)."""
    import onnx
    from onnx import helper

    opset = opset or default_opset()
    bad = sorted({n.op for n in graph.nodes if not onnx.defs.has(n.op) and n.op not in CNNCC_OPS})
    if bad:
        raise CompileError(f"graph '{graph.name}' cannot be exported to ONNX: ops {bad} are not "
                           "ONNX ops (export before compiler-internal passes)")
    nodes, zero_biases = [], {}
    for n in graph.nodes:
        if n.op in CNNCC_OPS:
            nodes.append(_function_call(graph, n, zero_biases))
            continue
        attrs = [_attribute(n.op, k, v, opset) for k, v in sorted(n.attrs.items())]
        node = helper.make_node(n.op, list(n.inputs), list(n.outputs), name=n.name)
        node.attribute.extend(attrs)
        nodes.append(node)
    boundary = set(graph.inputs) | set(graph.outputs) | set(graph.params)
    inner = [o for n in graph.nodes for o in n.outputs
             if o and o not in boundary and o in graph.types]
    proto = helper.make_graph(
        nodes, graph.name,
        inputs=[_value_info(n, graph) for n in graph.inputs],
        outputs=[_value_info(n, graph) for n in graph.outputs],
        value_info=[_value_info(n, graph) for n in inner])
    for name, value in list(graph.params.items()) + list(zero_biases.items()):
        _add_initializer(proto, name, value)
    return proto


def _function_call(graph: Graph, n: Any, zero_biases: dict[str, np.ndarray]) -> Any:
    """A call of the cnncc-domain function of ``n`` (onnx_functions.py), with every attribute
    the function references written explicitly, and a zero bias when the layer has none."""
    from onnx import helper
    types = [graph.types[i] if i else None for i in n.inputs]
    ctx = OpContext(n, OP_TABLE[n.op], types, [None] * len(types))
    inputs = list(n.inputs)
    values = dict(ctx.attrs)
    if n.op in ("LocallyConnected2d", "TiledConv2d"):
        win = resolve_window(ctx, types[0].shape, types[1].shape[4:])
        values = {"strides": list(win.strides), "pads": list(win.pads),
                  "dilations": list(win.dilations)}
        if len(inputs) < 3 or not inputs[2]:
            out = graph.types[n.outputs[0]].shape
            name = graph.fresh_name(n.name + ".zero_bias")
            zero_biases[name] = np.zeros(out[1:] if n.op == "LocallyConnected2d" else out[1:2],
                                         types[1].dtype.np)
            inputs = inputs[:2] + [name]
    return helper.make_node(n.op, inputs, list(n.outputs), name=n.name, domain=DOMAIN,
                            **{k: values[k] for k in FUNCTION_ATTRS[n.op]})


def _add_initializer(proto: Any, name: str, value: np.ndarray) -> None:
    """Append ``value`` as an initializer, copying the bytes once (weights can be 100s of MB)."""
    dtype = DType.from_numpy(value.dtype)        # only element types ONNX has
    tensor = proto.initializer.add()
    tensor.name = name
    tensor.data_type = dtype.to_onnx()
    tensor.dims.extend(int(d) for d in value.shape)
    tensor.raw_data = np.require(value, value.dtype.newbyteorder("<"), "C").tobytes()


def to_onnx(graph: Graph, opset: int | None = None) -> Any:
    """``graph`` as an onnx.ModelProto (opset ``opset`` or the newest onnxruntime runs)."""
    from onnx import helper

    from . import __version__

    opset = opset or default_opset()
    used = {n.op for n in graph.nodes if n.op in CNNCC_OPS}
    imports = [helper.make_opsetid("", opset)]
    if used:
        imports.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model = helper.make_model(graph_proto(graph, opset), producer_name="cnncc",
                              producer_version=__version__, opset_imports=imports,
                              functions=used_functions(used, opset))
    model.ir_version = IR_VERSION
    return model


def save_onnx(graph: Graph, path: str | os.PathLike, opset: int | None = None) -> Any:
    """Write ``graph`` to ``path`` as ONNX (weights beyond 1 GiB go to ``<path>.data``);
    returns the ModelProto."""
    import onnx

    model = to_onnx(graph, opset)
    path = os.fspath(path)
    big = sum(v.nbytes for v in graph.params.values()) > EXTERNAL_DATA_BYTES
    if big:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, path)
    return model


__all__ = ["to_onnx", "save_onnx", "graph_proto", "default_opset", "ORT_MAX_OPSET", "IR_VERSION"]
