"""QuantizeLinear, DequantizeLinear and ShiftBytes as elementwise kernels (the ops' reference
semantics, ir/ops/quant.py, ir/ops/quant_blocked.py): per-tensor or per-axis scales and zero
points (constants or run-time values) are loads of small broadcast buffers.

Quantize: round-half-even(x / scale) (llvm.roundeven), NaN -> 0, + zero point, clamped to the
output type's range in float32 (every value of that range is exact in float32), converted.
Dequantize: (int32(x) - int32(zero point)) converted to float32, times the scale.
ShiftBytes: int32(x) + 128 (int8 -> uint8) or - 128 (uint8 -> int8), converted back to 8 bits.
"""
from __future__ import annotations

from cnncc.ir import DType, Node
from cnncc.ir.loop import Call, Cast, Cmp, Const, Expr, F32, Select
from cnncc.ir.ops.quant import QDQ_TYPES, int_range

from .context import LowerCtx, op_context, unsupported
from .elementwise import emit_map

I32 = DType.int32


def _param_shapes(ctx: LowerCtx, node: Node) -> list:
    """Shapes the x, scale and zero point inputs are viewed with (scale and zero point
    broadcast along the quantization axis)."""
    g = ctx.graph
    x = g.types[node.inputs[0]]
    scale = g.types[node.inputs[1]]
    oc = op_context(g, node)
    if scale.size == 1:
        pshape = (1,) * x.rank
    else:
        axis = oc["axis"] % x.rank
        pshape = tuple(d if a == axis else 1 for a, d in enumerate(x.shape))
    return [x.shape] + [pshape for i in node.inputs[1:] if i]


def requantized(scaled: Expr, zero_point: int, dtype: DType, lo: int | None = None,
                hi: int | None = None) -> Expr:
    """round_half_even(scaled) + zero_point clamped to [lo, hi] (default: ``dtype``'s range) as
    ``dtype``, for float32 ``scaled`` of any magnitude. Clamped in float32 to [lo - zero_point,
    hi - zero_point] before rounding (integer bounds: the same as clamping after), rounded to
    int32 (one vcvtps2dq), the zero point added in int32; the clamp to ``dtype``'s range again
    in int32 is what LLVM folds into the saturating packs (vpackssdw, vpackuswb) that narrow
    the result, so a vector costs 5-6 instructions and its share of the packs."""
    tlo, thi = int_range(dtype.np)
    lo, hi = tlo if lo is None else lo, thi if hi is None else hi
    zero_point = int(zero_point)        # a numpy int8 would wrap in lo - zero_point
    v = scaled.max(Const(float(lo - zero_point), F32)).min(Const(float(hi - zero_point), F32))
    q = Cast(I32, Call("round", (v,), F32))
    if zero_point:
        q = q + Const(zero_point, I32)
    return Cast(dtype, q.max(Const(tlo, I32)).min(Const(thi, I32)))


def lower_quantize(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    out_dt = g.types[node.outputs[0]].dtype
    lo, hi = int_range(out_dt.np)
    inputs = [i for i in node.inputs if i]

    def q(x: Expr, s: Expr, z: Expr | None = None) -> Expr:
        r = Call("round", (x / s,), F32)
        r = Select(Cmp("ne", r, r), Const(0.0, F32), r)           # NaN -> the zero point
        if z is not None:
            r = r + Cast(F32, z)
        return Cast(out_dt, r.max(Const(float(lo), F32)).min(Const(float(hi), F32)))
    emit_map(ctx, node.name, node.outputs[0], inputs, q, _param_shapes(ctx, node))


def lower_dequantize(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    if g.types[node.inputs[0]].dtype not in QDQ_TYPES + (I32,):
        raise unsupported(node, f"element type {g.types[node.inputs[0]].dtype}")
    inputs = [i for i in node.inputs if i]

    def dq(x: Expr, s: Expr, z: Expr | None = None) -> Expr:
        d = Cast(I32, x) if z is None else Cast(I32, x) - Cast(I32, z)
        return Cast(F32, d) * s
    emit_map(ctx, node.name, node.outputs[0], inputs, dq, _param_shapes(ctx, node))


def lower_shift_bytes(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    out_dt = g.types[node.outputs[0]].dtype
    shift = 128 if out_dt is DType.uint8 else -128
    emit_map(ctx, node.name, node.outputs[0], [node.inputs[0]],
             lambda x: Cast(out_dt, Cast(I32, x) + Const(shift, I32)))


QUANT_RULES = {"QuantizeLinear": lower_quantize, "DequantizeLinear": lower_dequantize,
               "ShiftBytes": lower_shift_bytes}
