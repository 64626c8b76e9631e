"""What every int8 conv kernel (CPU: conv_int8.py, GPU: gpu_conv_int8.py) needs from a
QLinearConv / QConv / QConvNCHWc node: its constants (weights minus their zero point, int32
bias, per-channel multiplier) and the fused epilogue, one definition for both targets.

The epilogue requantizes in float32: round_half_even(float(acc) * (x_scale * w_scale /
y_scale)) + y_zero_point, saturated (acc = the exact int32 sum, bias included); with a
residual R: round_half_even(((y - y_zp) * y_scale + (R - r_zp) * r_scale) / s_scale) + s_zp,
saturated; ReLU: max with the output zero point (ReLU6: and min with 6 quantized).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Call, Cast, Const, Expr, F32
from cnncc.ir.ops.quant import int_range, quantize
from cnncc.ir.ops.quant_blocked import weights_minus_zero_point
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, op_context
from .quant import requantized

I32 = DType.int32


@dataclass
class QConvParts:
    """A quantized conv's constants and epilogue (``epilogue(acc, multiplier, residual)``)."""

    x: str                      # the input value (blocked for QConvNCHWc with in_layout NCHWc)
    out: str
    residual: str | None
    wq: np.ndarray              # the weights as stored [OC, IC/G, k...]
    wz: np.ndarray              # int32 w - w_zero_point
    bias: np.ndarray            # int64 [OC] (zeros without one)
    mult: np.ndarray            # float32 [OC]: x_scale * w_scale / y_scale
    x_zp: int
    groups: int
    win: object                 # resolve_window's result over the unblocked input shape
    xs: tuple                   # the unblocked input shape
    epilogue: Callable[[Expr, Expr, Expr | None], Expr]

    @property
    def oc(self) -> int:
        return self.wq.shape[0]

    @property
    def icg(self) -> int:
        return self.wq.shape[1]

    @property
    def ocg(self) -> int:
        return self.oc // self.groups


def qconv_parts(ctx: LowerCtx, node: Node) -> QConvParts:
    g = ctx.graph
    oc_ = op_context(g, node)

    def const(i: int, what: str) -> np.ndarray:
        return oc_.const(i, what)

    def scalar(i: int, what: str):
        return const(i, what).reshape(-1)[0]
    x, out = node.inputs[0], node.outputs[0]
    wq = const(3, "the weight")
    x_scale = np.float32(scalar(1, "x_scale"))
    x_zp = int(scalar(2, "x_zero_point"))
    w_scale = const(4, "w_scale").astype(np.float32).reshape(-1)
    w_zp = const(5, "w_zero_point").astype(np.int32).reshape(-1)
    y_scale = np.float32(scalar(6, "y_scale"))
    y_zp = scalar(7, "y_zero_point")
    has_bias = len(node.inputs) > 8 and node.inputs[8]
    oc, icg = wq.shape[0], wq.shape[1]
    bias = const(8, "the bias").astype(np.int64) if has_bias else np.zeros(oc, np.int64)
    residual = node.inputs[9] if len(node.inputs) > 9 and node.inputs[9] else None
    relu = node.op in ("QConv", "QConvNCHWc") and oc_["relu"]
    out_dt = g.types[out].dtype
    groups = oc_["group"]
    xs = g.types[x].shape
    if node.op == "QConvNCHWc" and oc_["in_layout"] == "NCHWc":
        xs = (xs[0], icg * groups) + tuple(xs[2:-1])
    win = resolve_window(oc_, xs, wq.shape[2:])
    lo, hi = int_range(out_dt.np)
    f = lambda v: Const(float(v), F32)                                   # noqa: E731
    if residual:
        r_scale = np.float32(scalar(10, "r_scale"))
        r_zp = int(scalar(11, "r_zero_point"))
        s_scale = np.float32(scalar(12, "s_scale"))
        out_zp = int(scalar(13, "s_zero_point"))
        ylo, yhi = int_range(np.asarray(y_zp).dtype)
    else:
        out_zp = int(y_zp)
    if relu:
        lo = max(lo, out_zp)
        if oc_["relu_max"] > 0:
            out_scale = s_scale if residual else y_scale
            hi = min(hi, int(quantize(np.float32(oc_["relu_max"]), out_scale, out_zp, out_dt.np)))

    def epilogue(acc: Expr, mch: Expr, z: Expr | None) -> Expr:
        if z is None:
            return requantized(Cast(F32, acc) * mch, out_zp, out_dt, lo, hi)
        v = Call("round", (Cast(F32, acc) * mch,), F32) + f(int(y_zp))
        v = v.max(f(ylo)).min(f(yhi))          # the conv's own quantized output, then the add
        deq = (v - f(int(y_zp))) * f(y_scale) + Cast(F32, Cast(I32, z) - Const(r_zp, I32)) \
            * f(r_scale)
        return requantized(deq / f(s_scale), out_zp, out_dt, lo, hi)

    mult = (x_scale * np.broadcast_to(w_scale, (oc,)).astype(np.float32)
            / y_scale).astype(np.float32)
    return QConvParts(x, out, residual, wq, weights_minus_zero_point(wq, w_zp), bias, mult,
                      x_zp, groups, win, xs, epilogue)
