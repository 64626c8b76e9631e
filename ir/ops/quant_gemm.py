"""com.microsoft QGemm: what onnxruntime's QOperator format writes for a quantized Gemm, and what
cnncc/passes/fuse_quantized_ops.py makes of a DQ -> Gemm / MatMul -> Q chain.

    acc = (A' - a_zero_point) @ (B' - b_zero_point) + C       (A', B' transposed as transA/B say)
    Y   = saturate(round_half_even(acc * alpha * a_scale * b_scale / y_scale) + y_zero_point)
          or, without y_scale, the float32 acc * alpha * a_scale * b_scale

A is 8-bit [M, K] with per-tensor scale and zero point; B 8-bit [K, N] ([N, K] with transB)
with per-tensor or per-column (N) scale and zero point; C int32 (quantized at
alpha * a_scale * b_scale, zero point 0), a scalar, [N] or [M, N]. The accumulation is exact
(float64 holds these sums); the requantization follows QLinearMatMul (ir/ops/quant.py).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import TensorType
from .quant import MS_DOMAIN, QUANT_TYPES, int_matmul, requantize
from .registry import Attr, OpContext, OpDef, broadcast_shapes, register


def _infer_qgemm(ctx: OpContext) -> list[TensorType]:
    a, b = ctx.type(0), ctx.type(3)
    for what, t in (("A", a), ("B", b)):
        ctx.check(t.dtype in QUANT_TYPES, f"{what} is {t.dtype}; expected uint8 or int8")
        ctx.check(t.rank == 2, f"{what} must be 2-D, got {list(t.shape)}")
    ctx.check(ctx["transA"] in (0, 1) and ctx["transB"] in (0, 1), "transA/transB must be 0 or 1")
    m, k = a.shape[::-1] if ctx["transA"] else a.shape
    kb, n = b.shape[::-1] if ctx["transB"] else b.shape
    ctx.check(k == kb, f"inner dimensions differ: A {list(a.shape)}, B {list(b.shape)} "
              f"(transA={ctx['transA']}, transB={ctx['transB']})")
    for i, what, dts, size in ((1, "a_scale", (DType.float32,), 1),
                               (2, "a_zero_point", (a.dtype,), 1),
                               (4, "b_scale", (DType.float32,), n),
                               (5, "b_zero_point", (b.dtype,), n)):
        if i in (2, 5) and not ctx.has(i):
            continue
        t = ctx.type(i)
        ctx.check(t.dtype in dts, f"{what} is {t.dtype}; expected {dts[0]}")
        ctx.check(t.size == 1 or t.shape == (size,),
                  f"{what} has shape {list(t.shape)}: expected a scalar" +
                  (f" or [{size}]" if size > 1 else ""))
    if ctx.has(6):
        c = ctx.type(6)
        ctx.check(c.dtype is DType.int32, f"C is {c.dtype}; expected int32")
        ctx.check(broadcast_shapes(ctx, c.shape, (m, n)) == (m, n),
                  f"C {list(c.shape)} does not broadcast to [{m}, {n}]")
    if not ctx.has(7):
        return [TensorType(DType.float32, (m, n))]
    ctx.check(ctx.type(7).dtype is DType.float32 and ctx.type(7).size == 1,
              "y_scale must be a float32 scalar")
    out = ctx.type(8).dtype if ctx.has(8) else DType.uint8
    ctx.check(out in QUANT_TYPES and (not ctx.has(8) or ctx.type(8).size == 1),
              "y_zero_point must be a uint8 or int8 scalar")
    return [TensorType(out, (m, n))]


def _qgemm_ref(ctx: OpContext, a, a_s, a_zp, b, b_s, b_zp, c=None, y_s=None, y_zp=None):
    a = a.T if ctx["transA"] else a
    b = b.T if ctx["transB"] else b
    acc = int_matmul(a, b, a_zp, b_zp)
    if c is not None:
        acc = acc + c.astype(np.float64)
    mult = np.float32(ctx["alpha"]) * np.float32(a_s.reshape(-1)[0]) \
        * b_s.astype(np.float32).reshape(-1)
    if y_s is None:
        return (acc * mult).astype(np.float32)
    zp = np.zeros((), np.uint8) if y_zp is None else y_zp.reshape(())
    return requantize(acc, (mult / np.float32(y_s.reshape(-1)[0])).astype(np.float32), zp)


register(OpDef("QGemm", infer=_infer_qgemm, reference=_qgemm_ref, inputs=(6, 9),
               attrs={"alpha": Attr("float", 1.0), "transA": Attr("int", 0),
                      "transB": Attr("int", 0)}, domain=MS_DOMAIN,
               doc="quantized Gemm: int32 (A - a_zp)(B - b_zp) + C, requantized to y's type "
                   "(float32 without y_scale)"))
