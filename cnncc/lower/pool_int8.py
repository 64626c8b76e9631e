"""com.microsoft QLinearAdd, QLinearGlobalAveragePool (ir/ops/quant.py) and QLinearAveragePool
(ir/ops/quant_pool.py) on 8-bit values.

QLinearAdd: an elementwise map (numpy broadcasting; scales and zero points may be run-time
scalars) computing what the reference does, in float32: round_half_even(((a - a_zp) * a_scale
+ (b - b_zp) * b_scale) / c_scale) + c_zp, saturated to the 8-bit type.
QLinearGlobalAveragePool (NCHW, or NHWC with channels_last=1): the exact int32 sum of
(x - x_zp) over the spatial axes, then round_half_even(float32(sum) * (x_scale / (y_scale *
HW))) + y_zp, saturated (one rounding of the multiplier: within one step of the reference,
which averages the dequantized values in float64; onnxruntime computes it this way).
QLinearAveragePool (NCHW): per output, the exact int32 sum of (x - x_zp) over the window's
positions inside the input (pads hold the zero point: 0 once subtracted), then
round_half_even(float32(sum) * float32(x_scale / (y_scale * count))) + y_zp, saturated, count
the float op's divisor (count_include_pad); within one step of the reference (float32 sum and
division) for the same reason.
"""
from __future__ import annotations

from math import prod

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Call, Cast, Cmp, Const, Expr, F32, For, Kernel,
                           Select, Stmt, Store, Var, seq)
from cnncc.ir.ops.quant import int_range
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import parallel_outer
from .elementwise import emit_map
from .gemm_int8 import constant
from .nn import average_counts

I32 = DType.int32


def saturate(v: Expr, dtype: DType) -> Expr:
    """float32 v clamped to ``dtype``'s range and converted (v already integral)."""
    lo, hi = int_range(dtype.np)
    return Cast(dtype, v.max(Const(float(lo), F32)).min(Const(float(hi), F32)))


def lower_qlinear_add(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    out = node.outputs[0]
    rank = g.types[out].rank
    ins = list(node.inputs) + [""] * (8 - len(node.inputs))
    names = [i for i in ins if i]
    shapes = [g.types[i].shape if k in (0, 3) else (1,) * rank for k, i in enumerate(ins) if i]
    present = [bool(i) for i in ins]
    out_dt = g.types[out].dtype

    def add(*vals: Expr) -> Expr:
        it = iter(vals)
        v = [next(it) if p else None for p in present]

        def deq(x: Expr, s: Expr, z: Expr | None) -> Expr:
            d = Cast(I32, x) if z is None else Cast(I32, x) - Cast(I32, z)
            return Cast(F32, d) * s
        total = deq(v[0], v[1], v[2]) + deq(v[3], v[4], v[5])
        r = Call("round", (total / v[6],), F32)
        if v[7] is not None:
            r = r + Cast(F32, Cast(I32, v[7]))
        return saturate(r, out_dt)
    emit_map(ctx, node.name, out, names, add, shapes)


def lower_qlinear_gap(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    xs = g.types[x].shape
    last = op_context(g, node)["channels_last"]
    n, c = xs[0], xs[-1] if last else xs[1]
    hw = prod(xs[1:-1]) if last else prod(xs[2:])
    consts = [constant(ctx, node, i, what) for i, what in
              ((1, "x_scale"), (2, "x_zero_point"), (3, "y_scale"), (4, "y_zero_point"))]
    if any(v is None for v in consts):
        raise unsupported(node, "scales and zero points are required")
    x_s, x_zp, y_s, y_zp = (np.asarray(v).reshape(-1)[0] for v in consts)
    mult = np.float32(np.float64(x_s) / (np.float64(y_s) * hw))
    xb = ctx.value(x, (n, hw, c) if last else (n, c, hw), "x")
    yb = ctx.value(out, (n, c), "y")
    acc = Buffer("acc", I32, (1,), "local")
    ni, ci, j = Var("n"), Var("c"), Var("j")
    xv = Cast(I32, xb[(ni, j, ci) if last else (ni, ci, j)])
    s = acc[0] - Const(int(x_zp) * hw, I32)
    v = Call("round", (Cast(F32, s) * Const(float(mult), F32),), F32) + Const(float(y_zp), F32)
    body = For(ni, n, For(ci, c, Allocate(acc, seq(
        Store(acc, (0,), Const(0, I32)), For(j, hw, Store(acc, (0,), acc[0] + xv)),
        Store(yb, (ni, ci), saturate(v, g.types[out].dtype))))))
    ctx.emit(parallel_outer(Kernel(node.name, [yb, xb], body), ["n", "c"], ctx, n * c * hw))


def lower_qlinear_average_pool(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    oc_ = op_context(g, node)
    if oc_["channels_last"]:
        raise unsupported(node, "channels_last=1 runs on the reference target only")
    x, out = node.inputs[0], node.outputs[0]
    xs, osh = g.types[x].shape, g.types[out].shape
    nd = len(xs) - 2
    win = resolve_window(oc_, xs, oc_["kernel_shape"], bool(oc_["ceil_mode"]))
    x_s, y_s = (np.float64(constant(ctx, node, i, w).reshape(-1)[0])
                for i, w in ((1, "x_scale"), (3, "y_scale")))
    x_zp, y_zp = (0 if v is None else int(v.reshape(-1)[0]) for v in
                  (constant(ctx, node, i, w) for i, w in ((2, "x_zero_point"),
                                                          (4, "y_zero_point"))))
    count = average_counts(win, xs, oc_["count_include_pad"] == 1)
    mult = ctx.const((x_s / (y_s * np.maximum(count, 1))).astype(np.float32), "m")
    xb, yb = ctx.value(x, bname="x"), ctx.value(out, bname="y")
    acc = Buffer("acc", I32, (1,), "local")
    nv, cv = Var("n"), Var("c")
    ov, kv = [Var(f"o{d}") for d in range(nd)], [Var(f"k{d}") for d in range(nd)]
    pos = [ov[d] * win.strides[d] + kv[d] * win.dilations[d] - win.begin(d) for d in range(nd)]
    inside = None
    for d, p in enumerate(pos):
        ok = And(Cmp("ge", p, Const(0)), Cmp("lt", p, Const(xs[2 + d])))
        inside = ok if inside is None else And(inside, ok)
    xv = xb[(nv, cv) + tuple(p.max(0).min(xs[2 + d] - 1) for d, p in enumerate(pos))]
    term = Select(inside, Cast(I32, xv) - Const(x_zp, I32), Const(0, I32))
    red: Stmt = Store(acc, (0,), acc[0] + term)
    for d in reversed(range(nd)):
        red = For(kv[d], win.kernel[d], red, "unrolled" if win.kernel[d] <= 4 else "serial")
    v = Call("round", (Cast(F32, acc[0]) * mult[tuple(ov)],), F32) + Const(float(y_zp), F32)
    body: Stmt = Allocate(acc, seq(Store(acc, (0,), Const(0, I32)), red,
                                   Store(yb, (nv, cv) + tuple(ov), saturate(v, g.types[out].dtype))))
    for d in reversed(range(nd)):
        body = For(ov[d], osh[2 + d], body)
    k = Kernel(node.name, [yb, xb, mult], For(nv, xs[0], For(cv, xs[1], body)))
    ctx.emit(parallel_outer(k, ["n", "c"], ctx, prod(osh) * prod(win.kernel)))


QUANT_POOL_RULES = {"QLinearAdd": lower_qlinear_add,
                    "QLinearGlobalAveragePool": lower_qlinear_gap,
                    "QLinearAveragePool": lower_qlinear_average_pool}
