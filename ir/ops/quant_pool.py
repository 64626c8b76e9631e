"""com.microsoft QLinearAveragePool: what onnxruntime's QOperator format writes for a quantized
AveragePool, and what cnncc/passes/fuse_quantized_ops.py makes of DQ -> AveragePool -> Q.

    Y = Q(AveragePool(DQ(X)))       (x_scale, x_zero_point -> y_scale, y_zero_point, per tensor)

with AveragePool's windows, pads, ceil_mode and count_include_pad exactly as the float op
(ir/ops/pool.py, whose shape inference and reference this reuses); channels_last=1 reads and
writes NHWC. The pads hold 0.0 in the float domain, i.e. the zero point.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.node import Node
from cnncc.ir.types import TensorType
from .quant import MS_DOMAIN, QUANT_TYPES, dequantize, quantize
from .registry import OP_TABLE, Attr, OpContext, OpDef, register
from .spatial import WINDOW_ATTRS


def float_pool_context(ctx: OpContext, shape: tuple) -> OpContext:
    """The AveragePool context of the same window attributes over a float32 NCHW input."""
    attrs = {k: v for k, v in ctx.node.attrs.items() if k != "channels_last"}
    node = Node("AveragePool", ctx.node.inputs[:1], ctx.node.outputs[:1], attrs, ctx.node.name)
    return OpContext(node, OP_TABLE["AveragePool"], [TensorType(DType.float32, shape)], [None])


def nchw_shape(shape: tuple, channels_last: int) -> tuple:
    return (shape[0], shape[-1]) + tuple(shape[1:-1]) if channels_last else tuple(shape)


def _infer(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    ctx.check(x.dtype in QUANT_TYPES, f"X is {x.dtype}; expected uint8 or int8")
    ctx.check(x.rank >= 3, f"X must have rank >= 3, got {list(x.shape)}")
    last = ctx["channels_last"]
    ctx.check(last in (0, 1), "channels_last must be 0 or 1")
    for i, what, dts in ((1, "x_scale", (DType.float32,)), (2, "x_zero_point", (x.dtype,)),
                         (3, "y_scale", (DType.float32,)), (4, "y_zero_point", (x.dtype,))):
        if i in (2, 4) and not ctx.has(i):
            continue
        t = ctx.type(i)
        ctx.check(t.dtype in dts and t.size == 1, f"{what} must be a {dts[0]} scalar")
    out = OP_TABLE["AveragePool"].infer(float_pool_context(ctx, nchw_shape(x.shape, last)))[0]
    shape = out.shape
    if last:
        shape = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return [TensorType(x.dtype, shape)]


def _reference(ctx: OpContext, x, x_s, x_zp=None, y_s=None, y_zp=None):
    last = ctx["channels_last"]
    xf = dequantize(x, x_s.reshape(()), 0 if x_zp is None else x_zp.reshape(()))
    if last:
        xf = np.moveaxis(xf, -1, 1)
    y = OP_TABLE["AveragePool"].reference(float_pool_context(ctx, xf.shape), xf)
    if last:
        y = np.moveaxis(y, 1, -1)
    zp = np.zeros((), x.dtype) if y_zp is None else y_zp.reshape(())
    return quantize(y, y_s.reshape(()), zp, x.dtype)


register(OpDef("QLinearAveragePool", infer=_infer, reference=_reference, inputs=(4, 5),
               attrs={**WINDOW_ATTRS, "ceil_mode": Attr("int", 0),
                      "count_include_pad": Attr("int", 0), "channels_last": Attr("int", 0)},
               domain=MS_DOMAIN, doc="Y = Q(AveragePool(DQ(X))), per-tensor scales"))
