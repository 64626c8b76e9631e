"""cnncc's own ops (ir/ops/catalogue.py) as ONNX model-local functions of the ``cnncc`` domain.

An exported model calls ``cnncc.LocallyConnected2d`` / ``cnncc.TiledConv2d`` / ``cnncc.Maxout``
with the op's attributes; the model carries one FunctionProto per op whose body uses standard
ONNX ops only, so any ONNX runtime runs the file. The importer (frontend/onnx.py) maps these
calls back to the native ops instead of inlining them.

Bodies (attributes referenced from the call, ``@name``):
  unshared convs: the input patches by a Conv whose weight is the identity of C*KH*KW reshaped
    to [C*KH*KW, C, KH, KW] (strides, pads, dilations = @...), P [N, C*KH*KW, OH, OW]; the
    filters of every position, W itself (locally connected) or W gathered at
    [i % TH, j % TW] (tiled); then Einsum("nkhw,hwok->nohw") and the bias.
  Maxout: Reshape X [N, C, ...] to [N, C/@pieces, @pieces, ...], ReduceMax over axis 2.
Every call passes a bias (the exporter writes zeros for a layer without one; the importer drops
an all-zero bias again).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cnncc.ir import OP_TABLE
from cnncc.ir.ops.catalogue import CNNCC_OPS, DOMAIN

DOMAIN_VERSION = 1
# Inputs each function declares (a bias is always passed).
FUNCTION_INPUTS = {"LocallyConnected2d": ("X", "W", "B"), "TiledConv2d": ("X", "W", "B"),
                   "Maxout": ("X",)}
# The attributes a call passes: the op's own (strides, pads, dilations; pieces).
FUNCTION_ATTRS = {op: tuple(OP_TABLE[op].attrs) for op in CNNCC_OPS}


class _Body:
    """Nodes of a function body with fresh value names."""

    def __init__(self):
        self.nodes: list[Any] = []
        self._n = 0

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper
        self._n += 1
        out = f"t{self._n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def ints(self, *values: int) -> str:
        from onnx import helper, numpy_helper
        self._n += 1
        out = f"c{self._n}"
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(
            np.asarray(values, np.int64), out)))
        return out

    def ref(self, op: str, inputs: list[str], refs: dict[str, tuple[int, str]]) -> str:
        """A node whose attributes come from the call: ``refs`` maps each attribute name to
        (AttributeProto type, the call's attribute it takes)."""
        from onnx import AttributeProto
        out = self.op(op, *inputs)
        for name, (kind, source) in refs.items():
            self.nodes[-1].attribute.append(AttributeProto(name=name, ref_attr_name=source,
                                                           type=kind))
        return out


def _patches(b: _Body, x: str, w: str) -> str:
    """P [N, C*KH*KW, OH, OW]: the input under every kernel tap, by an identity-weight Conv."""
    from onnx import AttributeProto, TensorProto, helper
    shw = b.op("Shape", w)
    ck = b.op("ReduceProd", b.op("Slice", shw, b.ints(3), b.ints(6)), keepdims=1)
    zeros = b.op("ConstantOfShape", b.op("Concat", ck, ck, axis=0),
                 value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    eye = b.op("EyeLike", zeros)
    eye4 = b.op("Reshape", eye, b.op("Concat", ck, b.op("Slice", shw, b.ints(3), b.ints(6)),
                                     axis=0))
    return b.ref("Conv", [x, eye4], {k: (AttributeProto.INTS, k)
                                     for k in FUNCTION_ATTRS["LocallyConnected2d"]})


def _unshared_body(b: _Body, tiled: bool) -> str:
    p = _patches(b, "X", "W")
    w = "W"
    if tiled:
        shw, shp = b.op("Shape", "W"), b.op("Shape", p)
        zero, one = b.op("Squeeze", b.ints(0)), b.op("Squeeze", b.ints(1))
        idx = []
        for axis in (0, 1):
            extent = b.op("Squeeze", b.op("Slice", shp, b.ints(2 + axis), b.ints(3 + axis)))
            tiles = b.op("Slice", shw, b.ints(axis), b.ints(axis + 1))
            idx.append(b.op("Mod", b.op("Range", zero, extent, one), tiles))
        rows = b.op("Mul", b.op("Unsqueeze", idx[0], b.ints(1)),
                    b.op("Slice", shw, b.ints(1), b.ints(2)))
        sel = b.op("Add", rows, b.op("Unsqueeze", idx[1], b.ints(0)))       # [OH, OW]
        flat = b.op("Reshape", "W", b.op("Concat", b.ints(-1), b.op("Slice", shw, b.ints(2),
                                                                     b.ints(6)), axis=0))
        w = b.op("Gather", flat, sel, axis=0)                 # [OH, OW, OC, C, KH, KW]
    wr = b.op("Reshape", w, b.ints(0, 0, 0, -1))
    y = b.op("Einsum", p, wr, equation="nkhw,hwok->nohw")
    bias = b.op("Unsqueeze", "B", b.ints(1, 2)) if tiled else "B"
    return b.op("Add", y, bias)


def _maxout_body(b: _Body) -> str:
    from onnx import AttributeProto
    pieces = b.op("Unsqueeze", b.ref("Constant", [], {"value_int": (AttributeProto.INT,
                                                                     "pieces")}), b.ints(0))
    shx = b.op("Shape", "X")
    shape = b.op("Concat", b.op("Slice", shx, b.ints(0), b.ints(1)), b.ints(-1), pieces,
                 b.op("Slice", shx, b.ints(2), b.ints(1 << 62)), axis=0)
    return b.op("ReduceMax", b.op("Reshape", "X", shape), b.ints(2), keepdims=0)


def function_proto(op: str, opset: int) -> Any:
    """The FunctionProto of cnncc op ``op`` (bodies in ONNX opset ``opset``)."""
    from onnx import helper
    b = _Body()
    y = _maxout_body(b) if op == "Maxout" else _unshared_body(b, op == "TiledConv2d")
    b.nodes.append(helper.make_node("Identity", [y], ["Y"]))
    return helper.make_function(DOMAIN, op, list(FUNCTION_INPUTS[op]), ["Y"], b.nodes,
                                [helper.make_opsetid("", opset)],
                                attributes=list(FUNCTION_ATTRS[op]),
                                doc_string=f"cnncc {op} (ir/ops/catalogue.py) in standard ops")


def used_functions(ops: set[str], opset: int) -> list[Any]:
    """FunctionProtos of the cnncc ops among ``ops`` (in CNNCC_OPS order)."""
    return [function_proto(op, opset) for op in CNNCC_OPS if op in ops]


__all__ = ["DOMAIN", "DOMAIN_VERSION", "FUNCTION_INPUTS", "FUNCTION_ATTRS", "function_proto",
           "used_functions"]
