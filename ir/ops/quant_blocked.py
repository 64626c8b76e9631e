"""QConvNCHWc: the fused quantized conv (QConv, ir/ops/quant.py) on blocked 8-bit activations
(made by cnncc/passes/alter_layout_int8.py; internal op).

With Xb the NCHW{c}c form of X (ir/ops/layout.py: Xb[n, cb, h, w, j] = X[n, cb*c + j, h, w]):

    QConvNCHWc(Xb, <QConv inputs 1-8>, Rb?, <QConv inputs 10-13>; QConv attrs, block,
               in_layout)  =  block(QConv(X, ..., R, ...))

X is read in plain NCHW when in_layout = "NCHW" (a stem reading the quantized network input).
The residual R, when present, is blocked like the output. As for the float blocked ops, the
padding lanes of the output are unspecified by the kernels (every consumer ignores them: a
conv has zero weights for them, FromNCHWc drops them); the reference gives 0 there.

    ShiftBytes(X)  =  X + 128 as uint8 (X int8), X - 128 as int8 (X uint8): the top bit of each
                      byte flipped. A quantized value keeps its meaning when its zero point
                      moves by the same 128, so inside a blocked region int8 activations are
                      held as uint8 (zero point + 128) and converted by ShiftBytes at the
                      region's edges only.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.node import Node
from cnncc.ir.types import TensorType
from .layout import LAYOUTS, blocked_shape, from_blocked, to_blocked
from .quant import QUANT_TYPES
from .registry import OP_TABLE, Attr, OpContext, OpDef, register, run_reference


def shifted_zero_point(x_dtype: DType, x_zp: int) -> int:
    """The input zero point once int8 inputs are shifted to uint8 (the dot4 kernels' bytes)."""
    return x_zp + (128 if x_dtype is DType.int8 else 0)


def toggled_type(dtype: DType) -> DType:
    """The 8-bit type ShiftBytes turns ``dtype`` into (int8 <-> uint8)."""
    return DType.uint8 if dtype is DType.int8 else DType.int8


def toggled_zero_point(zp: np.ndarray) -> np.ndarray:
    """An 8-bit zero point (any shape) for the values ShiftBytes made of its tensor."""
    shift = 128 if zp.dtype == np.int8 else -128
    return (zp.astype(np.int32) + shift).astype(toggled_type(DType.from_numpy(zp.dtype)).np)


def signed_zero_point(x_dtype: DType, x_zp: int) -> int:
    """The input zero point once uint8 inputs are shifted to int8 (x - 128: the signed bytes
    of the GPU's __dp4a kernels)."""
    return x_zp - (128 if x_dtype is DType.uint8 else 0)


def weights_minus_zero_point(wq: np.ndarray, w_zp: np.ndarray) -> np.ndarray:
    """int32 w - w_zero_point (per tensor, or per output channel along axis 0)."""
    w_zp = w_zp.astype(np.int32).reshape(-1)
    return wq.astype(np.int32) - (w_zp.reshape((-1,) + (1,) * (wq.ndim - 1)) if w_zp.size > 1
                                  else w_zp[0])


def compensation(wz: np.ndarray, zx: int) -> np.ndarray:
    """zx * sum of each output channel's weights (int64): what the bias absorbs."""
    return zx * wz.reshape(wz.shape[0], -1).astype(np.int64).sum(axis=1)


def dot4_fits(wz: np.ndarray, icg: int, ocg: int, bias: np.ndarray, zx: int) -> bool:
    """Whether a conv's weights (minus their zero point) run on the 4-channel byte dot products
    (cnncc/lower/conv_int8_dot.py): at least 3 input and 8 output channels per group, weights
    within int8, and the bias still an int32 once it absorbs zx * sum w."""
    if icg < 3 or ocg < 8 or wz.min() < -128 or wz.max() > 127:
        return False
    total = bias - compensation(wz, zx)
    return not (total.min(initial=0) < -2**31 or total.max(initial=0) >= 2**31)


def qconv_of(node: Node) -> Node:
    """The NCHW QConv that a QConvNCHWc node computes, blocked."""
    attrs = {k: v for k, v in node.attrs.items() if k not in ("block", "in_layout")}
    return Node("QConv", list(node.inputs), list(node.outputs), attrs, node.name)


def _unblocked(ctx: OpContext, i: int, what: str, channels: int) -> TensorType:
    t, block = ctx.type(i), ctx["block"]
    ctx.check(t.rank == 5 and t.shape[-1] == block and t.shape[1] == -(-channels // block),
              f"{what} must be {channels} channels in NCHW{block}c [N, {-(-channels // block)}"
              f", H, W, {block}], got shape {list(t.shape)}")
    return TensorType(t.dtype, (t.shape[0], channels) + tuple(t.shape[2:-1]))


def _infer(ctx: OpContext) -> list[TensorType]:
    block = ctx["block"]
    ctx.check(block in (4, 8, 16, 32), f"block must be 4, 8, 16 or 32, got {block}")
    ctx.check(ctx["in_layout"] in LAYOUTS,
              f"in_layout must be one of {LAYOUTS}, got '{ctx['in_layout']}'")
    w = ctx.type(3)
    ctx.check(w.rank == 4, f"QConvNCHWc is 2-D: W must be [OC, IC/group, KH, KW], got shape "
              f"{list(w.shape)}")
    ic, oc = w.shape[1] * ctx["group"], w.shape[0]
    types = list(ctx.types)
    if ctx["in_layout"] == "NCHWc":
        types[0] = _unblocked(ctx, 0, "X", ic)
    if ctx.has(9):
        types[9] = _unblocked(ctx, 9, "the residual R", oc)
    ctx.check(types[0].dtype in QUANT_TYPES, f"X is {types[0].dtype}; expected uint8 or int8")
    plain = qconv_of(ctx.node)
    (y,) = OP_TABLE["QConv"].infer(OpContext(plain, OP_TABLE["QConv"], types, ctx.consts))
    return [TensorType(y.dtype, blocked_shape(y.shape, block))]


def _reference(ctx: OpContext, x, *rest):
    w = rest[2]
    ic, oc = w.shape[1] * ctx["group"], w.shape[0]
    if ctx["in_layout"] == "NCHWc":
        x = from_blocked(x, ic)
    args = [x] + list(rest)
    if len(args) > 9 and args[9] is not None:
        args[9] = from_blocked(args[9], oc)
    (y,) = run_reference(qconv_of(ctx.node), args)
    return to_blocked(y, ctx["block"])


register(OpDef("QConvNCHWc", infer=_infer, reference=_reference, inputs=(8, 14),
               attrs={**OP_TABLE["QConv"].attrs, "block": Attr("int"),
                      "in_layout": Attr("str", "NCHWc")},
               doc="QConv on NCHW{c}c 8-bit activations (internal op of alter_layout_int8)."))


def _infer_shift(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    ctx.check(x.dtype in QUANT_TYPES, f"X is {x.dtype}; expected uint8 or int8")
    return [TensorType(toggled_type(x.dtype), x.shape)]


def _shift_reference(ctx: OpContext, x):
    return (x.view(np.uint8) ^ np.uint8(0x80)).view(toggled_type(DType.from_numpy(x.dtype)).np)


register(OpDef("ShiftBytes", infer=_infer_shift, reference=_shift_reference,
               doc="int8 x -> uint8 x + 128, uint8 x -> int8 x - 128 (internal op of "
                   "alter_layout_int8: the edges of a blocked region holding int8 as uint8)."))
