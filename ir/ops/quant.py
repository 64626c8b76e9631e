"""Quantized ops: the QDQ pair (QuantizeLinear, DequantizeLinear) and the QOperator ops
(QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, and com.microsoft's QLinearAdd and
QLinearGlobalAveragePool), with numpy references exactly as ONNX defines them.

Quantize: y = saturate(round_half_even(x / scale) + zero_point), the division in float32 (what
onnxruntime computes); NaN quantizes to the zero point. Dequantize: y = (x - zero_point) * scale,
the difference exact in int32, one float32 rounding. Scales and zero points are per tensor (a
scalar) or per channel (1-D along ``axis``); blocked quantization (``block_size``) is refused.
The integer convs and matmuls subtract the zero points first (so padding reads the zero point)
and accumulate exactly (float64 holds every sum of up to 2^37 8-bit products); the QLinear ops
requantize as ONNX's reference does: acc * float32(x_scale * w_scale / y_scale) + y_zero_point,
rounded half to even and saturated. QLinearAdd / QLinearGlobalAveragePool are
Q(DQ(a) + DQ(b)) and Q(mean(DQ(x))) over the spatial axes.
"""
from __future__ import annotations

from math import prod

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import TensorType
from .conv import accumulate_columns, check_group
from .registry import Attr, OpContext, OpDef, broadcast_shapes, normalize_axis, register
from .spatial import WINDOW_ATTRS, kernel_from_attr, pad_spatial, resolve_window

QUANT_TYPES = (DType.uint8, DType.int8)
QDQ_TYPES = QUANT_TYPES + (DType.uint16, DType.int16)      # QuantizeLinear / DequantizeLinear
MS_DOMAIN = "com.microsoft"


def int_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def per_axis(value: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A scale or zero point broadcastable against a tensor of ``rank``: a scalar as is, a
    1-D array along ``axis``."""
    value = np.asarray(value)
    if value.ndim == 0 or value.size == 1 and rank == 0:
        return value.reshape(())
    shape = [1] * rank
    shape[axis] = value.size
    return value.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point, dtype: np.dtype) -> np.ndarray:
    """saturate(round_half_even(x / scale) + zero_point) in ``dtype`` (scale, zero point
    already broadcastable against x); NaN gives the zero point."""
    q = np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32)).astype(np.float64)
    q = np.where(np.isnan(q), 0.0, q) + np.asarray(zero_point, np.float64)
    lo, hi = int_range(dtype)
    return np.clip(q, lo, hi).astype(dtype)


def dequantize(x: np.ndarray, scale: np.ndarray, zero_point) -> np.ndarray:
    diff = x.astype(np.int32) - np.asarray(zero_point, np.int32)
    return (diff.astype(np.float32) * np.asarray(scale, np.float32)).astype(np.float32)


def _check_param(ctx: OpContext, i: int, what: str, rank: int, axis: int, dim: int | None,
                 dtypes: tuple, size_along_axis: int) -> None:
    """Input i (a scale or zero point) is a scalar or, with ``dim`` given, 1-D of the size
    of axis ``axis``."""
    t = ctx.type(i)
    ctx.check(t.dtype in dtypes, f"{what} is {t.dtype}; expected {' or '.join(map(str, dtypes))}")
    if t.rank == 0 or t.shape == (1,):
        return
    ctx.check(t.rank == 1 and dim is not None and t.shape[0] == size_along_axis,
              f"{what} has shape {list(t.shape)}: expected a scalar" +
              (f" or [{size_along_axis}] (one per channel along axis {axis})"
               if dim is not None else ""))


def _qdq_axis(ctx: OpContext, rank: int) -> int:
    """The quantization axis; ignored (0) when the scale is per tensor, as ONNX says."""
    ctx.check(ctx["block_size"] == 0, "blocked quantization (block_size > 0) is not supported")
    if ctx.type(1).rank == 0 or ctx.type(1).shape == (1,):
        return 0
    return normalize_axis(ctx, ctx["axis"], max(rank, 1))


def _infer_quantize(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    ctx.check(x.dtype is DType.float32, f"input x is {x.dtype}; cnncc quantizes float32")
    ctx.check(ctx["saturate"] == 1, "saturate=0 only applies to float8 outputs")
    axis = _qdq_axis(ctx, x.rank)
    size = x.shape[axis] if x.rank else 1
    _check_param(ctx, 1, "y_scale", x.rank, axis, x.rank, (DType.float32,), size)
    out = DType.uint8
    if ctx["output_dtype"]:
        out = DType.from_onnx(ctx["output_dtype"])
    if ctx.has(2):
        zp = ctx.type(2).dtype
        ctx.check(not ctx["output_dtype"] or zp == out,
                  f"output_dtype {out} differs from the zero point's type {zp}")
        out = zp
        _check_param(ctx, 2, "y_zero_point", x.rank, axis, x.rank, QDQ_TYPES, size)
    ctx.check(out in QDQ_TYPES, f"quantizing to {out} is not supported (uint8, int8, uint16, "
              "int16)")
    return [TensorType(out, x.shape)]


def _quantize_ref(ctx: OpContext, x, scale, zp=None):
    axis = _qdq_axis(ctx, x.ndim)
    dtype = zp.dtype if zp is not None else (
        DType.from_onnx(ctx["output_dtype"]).np if ctx["output_dtype"] else np.dtype(np.uint8))
    return quantize(x, per_axis(scale, x.ndim, axis),
                    0 if zp is None else per_axis(zp, x.ndim, axis), dtype)


_QDQ_ATTRS = {"axis": Attr("int", 1), "block_size": Attr("int", 0),
              "output_dtype": Attr("int", 0), "precision": Attr("int", 0)}

register(OpDef("QuantizeLinear", infer=_infer_quantize, reference=_quantize_ref, inputs=(2, 3),
               attrs={**_QDQ_ATTRS, "saturate": Attr("int", 1)},
               doc="y = saturate(round(x / scale) + zero_point), per tensor or per axis"))


def _infer_dequantize(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    ctx.check(x.dtype in QDQ_TYPES + (DType.int32,),
              f"input x is {x.dtype}; expected uint8, int8, uint16, int16 or int32")
    axis = _qdq_axis(ctx, x.rank)
    size = x.shape[axis] if x.rank else 1
    _check_param(ctx, 1, "x_scale", x.rank, axis, x.rank, (DType.float32,), size)
    if ctx.has(2):
        _check_param(ctx, 2, "x_zero_point", x.rank, axis, x.rank, (x.dtype,), size)
    ctx.check(ctx["output_dtype"] in (0, 1), "DequantizeLinear: output_dtype must be float32")
    return [TensorType(DType.float32, x.shape)]


def _dequantize_ref(ctx: OpContext, x, scale, zp=None):
    axis = _qdq_axis(ctx, x.ndim)
    return dequantize(x, per_axis(scale, x.ndim, axis),
                      0 if zp is None else per_axis(zp, x.ndim, axis))


register(OpDef("DequantizeLinear", infer=_infer_dequantize, reference=_dequantize_ref,
               inputs=(2, 3), attrs=dict(_QDQ_ATTRS),
               doc="y = (x - zero_point) * scale, per tensor or per axis"))


# ---- integer convolution and matrix products ------------------------------------------------

def int_conv(ctx: OpContext, x: np.ndarray, w: np.ndarray, x_zp, w_zp) -> np.ndarray:
    """Exact sum of (x - x_zp) * (w - w_zp) over each window (w_zp scalar or per output
    channel), as float64 (exact for these sizes)."""
    win = resolve_window(ctx, x.shape, w.shape[2:])
    group = ctx["group"]
    xs = x.astype(np.float64) - float(np.asarray(x_zp).reshape(-1)[0] if x_zp is not None else 0)
    ws = w.astype(np.float64)
    if w_zp is not None:
        ws = ws - per_axis(np.asarray(w_zp, np.float64), w.ndim, 0)
    n, c = x.shape[:2]
    m = w.shape[0]
    xp = pad_spatial(xs, win)
    wg = ws.reshape(group, m // group, c // group, -1)
    y = np.zeros((n, group, m // group, prod(win.out)), np.float64)
    accumulate_columns(y, wg, xp, win, group)
    return y.reshape((n, m) + win.out)


def _infer_int_conv(ctx: OpContext, xi: int, wi: int, xzi: int, wzi: int,
                    bi: int | None) -> tuple[TensorType, TensorType]:
    x, w = ctx.type(xi), ctx.type(wi)
    ctx.check(x.dtype in QUANT_TYPES, f"input x is {x.dtype}; expected uint8 or int8")
    ctx.check(w.dtype in QUANT_TYPES, f"weight w is {w.dtype}; expected uint8 or int8")
    ctx.check(x.rank >= 3 and w.rank == x.rank,
              f"x {list(x.shape)} and w {list(w.shape)} must have the same rank >= 3")
    check_group(ctx, x.shape[1], w.shape, ctx["group"])
    kernel = kernel_from_attr(ctx, x.rank - 2, w.shape[2:])
    win = resolve_window(ctx, x.shape, kernel)
    if ctx.has(xzi):
        _check_param(ctx, xzi, "x_zero_point", x.rank, 1, None, (x.dtype,), 1)
    if ctx.has(wzi):
        _check_param(ctx, wzi, "w_zero_point", w.rank, 0, 0, (w.dtype,), w.shape[0])
    if bi is not None and ctx.has(bi):
        b = ctx.type(bi)
        ctx.check(b.dtype is DType.int32 and b.shape == (w.shape[0],),
                  f"bias B is {b.dtype} {list(b.shape)}; expected int32 [{w.shape[0]}]")
    return x, TensorType(x.dtype, (x.shape[0], w.shape[0]) + win.out)


def _infer_conv_integer(ctx: OpContext) -> list[TensorType]:
    _, y = _infer_int_conv(ctx, 0, 1, 2, 3, None)
    return [TensorType(DType.int32, y.shape)]


def _conv_integer_ref(ctx: OpContext, x, w, x_zp=None, w_zp=None):
    return int_conv(ctx, x, w, x_zp, w_zp).astype(np.int32)


_CONV_ATTRS = {**WINDOW_ATTRS, "group": Attr("int", 1)}
register(OpDef("ConvInteger", infer=_infer_conv_integer, reference=_conv_integer_ref,
               inputs=(2, 4), attrs=dict(_CONV_ATTRS),
               doc="int32 sum of (x - x_zero_point) * (w - w_zero_point)"))


def requantize(acc: np.ndarray, multiplier: np.ndarray, y_zp: np.ndarray) -> np.ndarray:
    """ONNX's QLinear requantization: rint(saturate(acc * multiplier + y_zp)) in y_zp's type
    (multiplier float32, the product in float64 as ONNX's reference computes it)."""
    r = acc.astype(np.int32).astype(np.float64) * multiplier.astype(np.float32) \
        + np.asarray(y_zp, np.float64)
    lo, hi = int_range(y_zp.dtype)
    return np.rint(np.clip(r, lo, hi)).astype(y_zp.dtype)


def _infer_qlinear_conv(ctx: OpContext) -> list[TensorType]:
    x, y = _infer_int_conv(ctx, 0, 3, 2, 5, 8)
    m = ctx.type(3).shape[0]
    _check_param(ctx, 1, "x_scale", x.rank, 1, None, (DType.float32,), 1)
    _check_param(ctx, 4, "w_scale", x.rank, 0, 0, (DType.float32,), m)
    _check_param(ctx, 6, "y_scale", x.rank, 1, None, (DType.float32,), 1)
    zp = ctx.type(7)
    ctx.check(zp.dtype in QUANT_TYPES, f"y_zero_point is {zp.dtype}; expected uint8 or int8")
    _check_param(ctx, 7, "y_zero_point", x.rank, 1, None, (zp.dtype,), 1)
    return [TensorType(zp.dtype, y.shape)]


def _qlinear_conv_ref(ctx: OpContext, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp,
                      b=None):
    acc = int_conv(ctx, x, w, x_zp, w_zp)
    if b is not None:
        acc = acc + b.astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
    mult = per_axis(np.float32(x_scale.reshape(-1)[0]) * w_scale.astype(np.float32).reshape(-1)
                    / np.float32(y_scale.reshape(-1)[0]), x.ndim, 1)
    return requantize(acc, mult, y_zp.reshape(()))


register(OpDef("QLinearConv", infer=_infer_qlinear_conv, reference=_qlinear_conv_ref,
               inputs=(8, 9), attrs=dict(_CONV_ATTRS),
               doc="quantized conv: int32 accumulation, bias, requantization to y's type"))


def _infer_int_matmul(ctx: OpContext, ai: int, bi: int, azi: int | None,
                      bzi: int | None) -> tuple[TensorType, tuple]:
    a, b = ctx.type(ai), ctx.type(bi)
    for what, t in (("A", a), ("B", b)):
        ctx.check(t.dtype in QUANT_TYPES, f"{what} is {t.dtype}; expected uint8 or int8")
    ctx.check(a.rank >= 2 and b.rank >= 2,
              f"A {list(a.shape)} and B {list(b.shape)} must have rank >= 2")
    ctx.check(a.shape[-1] == b.shape[-2],
              f"inner dimensions differ: {list(a.shape)} @ {list(b.shape)}")
    batch = broadcast_shapes(ctx, a.shape[:-2], b.shape[:-2])
    if azi is not None and ctx.has(azi):
        _check_param(ctx, azi, "a_zero_point", a.rank, 0, None, (a.dtype,), 1)
    if bzi is not None and ctx.has(bzi):
        _check_param(ctx, bzi, "b_zero_point", b.rank, b.rank - 1, 0, (b.dtype,), b.shape[-1])
    return a, batch + (a.shape[-2], b.shape[-1])


def int_matmul(a: np.ndarray, b: np.ndarray, a_zp, b_zp) -> np.ndarray:
    aa = a.astype(np.float64) - (float(np.asarray(a_zp).reshape(-1)[0]) if a_zp is not None else 0)
    bb = b.astype(np.float64)
    if b_zp is not None:
        bb = bb - np.asarray(b_zp, np.float64).reshape(-1)     # scalar or one per column
    return aa @ bb


def _infer_matmul_integer(ctx: OpContext) -> list[TensorType]:
    _, shape = _infer_int_matmul(ctx, 0, 1, 2, 3)
    return [TensorType(DType.int32, shape)]


register(OpDef("MatMulInteger", infer=_infer_matmul_integer, inputs=(2, 4),
               reference=lambda ctx, a, b, a_zp=None, b_zp=None:
               int_matmul(a, b, a_zp, b_zp).astype(np.int32),
               doc="int32 (A - a_zero_point) @ (B - b_zero_point)"))


def _infer_qlinear_matmul(ctx: OpContext) -> list[TensorType]:
    a, shape = _infer_int_matmul(ctx, 0, 3, 2, 5)
    n = ctx.type(3).shape[-1]
    _check_param(ctx, 1, "a_scale", a.rank, 0, None, (DType.float32,), 1)
    _check_param(ctx, 4, "b_scale", 2, 1, 0, (DType.float32,), n)
    _check_param(ctx, 6, "y_scale", a.rank, 0, None, (DType.float32,), 1)
    zp = ctx.type(7)
    ctx.check(zp.dtype in QUANT_TYPES, f"y_zero_point is {zp.dtype}; expected uint8 or int8")
    return [TensorType(zp.dtype, shape)]


def _qlinear_matmul_ref(ctx: OpContext, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
    acc = int_matmul(a, b, a_zp, b_zp)
    mult = (np.float32(a_scale.reshape(-1)[0]) * b_scale.astype(np.float32).reshape(-1)
            / np.float32(y_scale.reshape(-1)[0]))
    return requantize(acc, mult, y_zp.reshape(()))


register(OpDef("QLinearMatMul", infer=_infer_qlinear_matmul, reference=_qlinear_matmul_ref,
               inputs=(8, 8), doc="quantized matmul with requantization to y's type"))


# ---- com.microsoft ops that onnxruntime's QOperator format writes ----------------------------

def _scalar(ctx: OpContext, i: int, what: str, dtypes: tuple) -> None:
    _check_param(ctx, i, what, 0, 0, None, dtypes, 1)


def _infer_qlinear_add(ctx: OpContext) -> list[TensorType]:
    a, b = ctx.type(0), ctx.type(3)
    ctx.check(a.dtype in QUANT_TYPES and b.dtype == a.dtype,
              f"A is {a.dtype} and B {b.dtype}; expected both uint8 or both int8")
    for i, what in ((1, "A_scale"), (4, "B_scale"), (6, "C_scale")):
        _scalar(ctx, i, what, (DType.float32,))
    for i, what in ((2, "A_zero_point"), (5, "B_zero_point"), (7, "C_zero_point")):
        if ctx.has(i):
            _scalar(ctx, i, what, (a.dtype,))
    return [TensorType(a.dtype, broadcast_shapes(ctx, a.shape, b.shape))]


def _zp(z, dtype) -> np.ndarray:
    return np.zeros((), dtype) if z is None else z.reshape(())


def _qlinear_add_ref(ctx: OpContext, a, a_s, a_zp, b, b_s, b_zp=None, c_s=None, c_zp=None):
    s = dequantize(a, a_s.reshape(()), _zp(a_zp, a.dtype)) \
        + dequantize(b, b_s.reshape(()), _zp(b_zp, b.dtype))
    return quantize(s, c_s.reshape(()), _zp(c_zp, a.dtype), a.dtype)


register(OpDef("QLinearAdd", infer=_infer_qlinear_add, reference=_qlinear_add_ref,
               inputs=(7, 8), domain=MS_DOMAIN, doc="C = Q(DQ(A) + DQ(B))"))


def _infer_qlinear_gap(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    ctx.check(x.dtype in QUANT_TYPES, f"X is {x.dtype}; expected uint8 or int8")
    ctx.check(x.rank >= 3, f"X must have rank >= 3, got {list(x.shape)}")
    ctx.check(ctx["channels_last"] in (0, 1), "channels_last must be 0 or 1")
    for i, what in ((1, "x_scale"), (3, "y_scale")):
        _scalar(ctx, i, what, (DType.float32,))
    for i, what in ((2, "x_zero_point"), (4, "y_zero_point")):
        _scalar(ctx, i, what, (x.dtype,))
    if ctx["channels_last"]:
        shape = (x.shape[0],) + (1,) * (x.rank - 2) + (x.shape[-1],)
    else:
        shape = x.shape[:2] + (1,) * (x.rank - 2)
    return [TensorType(x.dtype, shape)]


def _qlinear_gap_ref(ctx: OpContext, x, x_s, x_zp, y_s, y_zp):
    axes = tuple(range(1, x.ndim - 1)) if ctx["channels_last"] else tuple(range(2, x.ndim))
    mean = dequantize(x, x_s.reshape(()), x_zp.reshape(())).astype(np.float64) \
        .mean(axis=axes, keepdims=True).astype(np.float32)
    return quantize(mean, y_s.reshape(()), y_zp.reshape(()), x.dtype)


register(OpDef("QLinearGlobalAveragePool", infer=_infer_qlinear_gap, reference=_qlinear_gap_ref,
               inputs=(5, 5), attrs={"channels_last": Attr("int", 0)}, domain=MS_DOMAIN,
               doc="Y = Q(mean over the spatial axes of DQ(X))"))


# ---- the fused quantized conv (made by cnncc/passes/fuse_quantized.py) -----------------------

def _infer_qconv(ctx: OpContext) -> list[TensorType]:
    y = _infer_qlinear_conv(ctx)[0]
    ctx.check(ctx["relu"] in (0, 1), f"relu must be 0 or 1, got {ctx['relu']}")
    ctx.check(ctx["relu_max"] >= 0, f"relu_max must be >= 0, got {ctx['relu_max']}")
    if not ctx.has(9):
        return [y]
    r = ctx.type(9)
    ctx.check(r.shape == y.shape and r.dtype in QUANT_TYPES,
              f"residual R is {r.dtype} {list(r.shape)}; expected a quantized {list(y.shape)}")
    for i, what in ((10, "r_scale"), (12, "s_scale")):
        _scalar(ctx, i, what, (DType.float32,))
    _scalar(ctx, 11, "r_zero_point", (r.dtype,))
    s = ctx.type(13)
    ctx.check(s.dtype in QUANT_TYPES, f"s_zero_point is {s.dtype}; expected uint8 or int8")
    return [TensorType(s.dtype, y.shape)]


def _qconv_ref(ctx: OpContext, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b=None,
               r=None, r_scale=None, r_zp=None, s_scale=None, s_zp=None):
    y = _qlinear_conv_ref(ctx, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b)
    zp, scale = y_zp.reshape(()), y_scale.reshape(())
    if r is not None:
        total = dequantize(y, y_scale.reshape(()), zp) \
            + dequantize(r, r_scale.reshape(()), r_zp.reshape(()))
        zp, scale = s_zp.reshape(()), s_scale.reshape(())
        y = quantize(total, scale, zp, zp.dtype)
    if ctx["relu"]:
        y = np.maximum(y, zp)
        if ctx["relu_max"] > 0:
            y = np.minimum(y, quantize(np.float32(ctx["relu_max"]), scale, zp, zp.dtype))
    return y


register(OpDef("QConv", infer=_infer_qconv, reference=_qconv_ref, inputs=(8, 14),
               attrs={**_CONV_ATTRS, "relu": Attr("int", 0), "relu_max": Attr("float", 0.0)},
               doc="QLinearConv (inputs 0-8) + optional quantized residual R (inputs 9-11) "
                   "added as Q(DQ(y) + DQ(R)) at scale/zero point inputs 12-13, then "
                   "optionally ReLU (max with the output zero point; with relu_max > 0 also min with "
                   "Q(relu_max): Clip(0, relu_max))"))
