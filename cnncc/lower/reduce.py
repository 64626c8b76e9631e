"""The Reduce* family: accumulate directly in the output (so the innermost kept axis can be
vectorized), reduced axes as inner loops, a finalize step (mean, sqrt, log)."""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (And, Call, Const, F32, For, Kernel, Or, Select, Store, Var, nan_max,
                           nan_min, seq)
from cnncc.ir.ops.reduce import reduce_axes

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import schedule_map
from .reduce_tiles import hw_chains, lower_hw_chains

_INIT = {"ReduceSum": 0.0, "ReduceMean": 0.0, "ReduceMax": float("-inf"),
         "ReduceLogSumExp": float("-inf"),
         "ReduceMin": float("inf"), "ReduceProd": 1.0, "ReduceL1": 0.0, "ReduceL2": 0.0,
         "ReduceSumSquare": 0.0, "ReduceLogSum": 0.0}
REDUCE_OPS = tuple(_INIT)


def lower_reduce(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    dt = g.types[x].dtype
    op = node.op
    if not (dt in (DType.float32, DType.float64)
            or (dt.is_int and op in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                                     "ReduceSumSquare", "ReduceL1"))
            or (dt is DType.bool and op in ("ReduceMax", "ReduceMin"))):
        raise unsupported(node, f"element type {dt} is not lowered for {op}")
    shape = g.types[x].shape
    axes = reduce_axes(op_context(g, node), len(shape))
    if axes is None:
        from .tensor import emit_copy
        return emit_copy(ctx, node.name, x, out)
    chains = hw_chains(ctx, node, shape, axes, dt)
    if chains is not None and chains > 1:       # a global pool on NCHWc, tuned (reduce_tiles)
        return lower_hw_chains(ctx, node, shape, chains)
    kshape = tuple(1 if a in axes else d for a, d in enumerate(shape))
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, kshape, "y")
    count = int(np.prod([shape[a] for a in axes]))
    ovars = [Var(f"i{a}") for a in range(len(shape))]
    rvars = {a: Var(f"r{a}") for a in axes}
    oidx = tuple(Const(0) if a in axes else v for a, v in enumerate(ovars))
    xidx = tuple(rvars[a] if a in axes else v for a, v in enumerate(ovars))
    xv, acc = xb[xidx], yb[oidx]
    if dt is DType.bool:
        upd_bool = Or(acc, xv) if op == "ReduceMax" else And(acc, xv)
    upd = {"ReduceMax": lambda: upd_bool if dt is DType.bool else nan_max(acc, xv),
           "ReduceMin": lambda: upd_bool if dt is DType.bool else nan_min(acc, xv),
           "ReduceProd": lambda: acc * xv,
           "ReduceL1": lambda: acc + (Call("abs", (xv,), dt) if dt.is_float else
                                      Select(xv < Const(0, dt), -xv, xv)),
           "ReduceL2": lambda: acc + xv * xv, "ReduceSumSquare": lambda: acc + xv * xv}.get(
        op, lambda: acc + xv)()
    red = Store(yb, oidx, upd)
    for a in reversed(axes):
        red = For(rvars[a], shape[a], red)
    fin = {"ReduceMean": lambda: acc * (1.0 / max(count, 1)),
           "ReduceL2": lambda: Call("sqrt", (acc,), dt),
           "ReduceLogSum": lambda: Call("log", (acc,), dt)}.get(op)
    body = seq(Store(yb, oidx, _init(op, dt)), red,
               Store(yb, oidx, fin()) if fin else None)
    if op == "ReduceLogSumExp":
        body = _log_sum_exp(yb, oidx, xv, axes, rvars, shape, dt)
    kept = [a for a in range(len(shape)) if a not in axes]
    for a in reversed(kept):
        body = For(ovars[a], shape[a], body)
    if not kept:
        body = For(Var("one"), 1, body)
    k = Kernel(node.name, [yb, xb], body)
    ctx.emit(schedule_map(k, ctx, int(np.prod(shape))))


def _init(op: str, dt: DType) -> Const:
    """The reduction's identity in ``dt`` (the type's extreme values for integer max/min)."""
    v = _INIT[op]
    if dt is DType.bool:
        return Const(op == "ReduceMin", DType.bool)
    if dt.is_int:
        info = np.iinfo(dt.np)
        v = info.min if v == float("-inf") else info.max if v == float("inf") else int(v)
        return Const(int(v), dt)
    return Const(v, dt)


def _log_sum_exp(yb, oidx, xv, axes, rvars, shape, dt=F32):
    """m = max (in the output), s = sum exp(x - m) (local), y = log(s) + m; a non-finite max
    (all -inf, or +inf) shifts by 0 instead, as the reference."""
    from cnncc.ir.loop import Allocate, Buffer, Cmp, Select

    acc = Buffer("lse", dt, (1,), "local")
    m = yb[oidx]
    red1: object = Store(yb, oidx, nan_max(m, xv))
    red2: object = Store(acc, (0,), acc[0] + Call("exp", (xv - m,), dt))
    for a in reversed(axes):
        red1 = For(rvars[a], shape[a], red1)
        red2 = For(Var(f"{rvars[a].name}b"), shape[a], red2)
    red2 = _rename(red2, {rvars[a].name: Var(f"{rvars[a].name}b") for a in axes})
    finite = Cmp("lt", Call("abs", (m,), dt), Const(float("inf"), dt))
    shift = Select(finite, m, Const(0.0, dt))
    return seq(Store(yb, oidx, Const(float("-inf"), dt)), red1,
               Store(yb, oidx, shift),
               Allocate(acc, seq(Store(acc, (0,), Const(0.0, dt)), red2,
                                 Store(yb, oidx, Call("log", (acc[0],), dt) + m))))


def _rename(stmt, mapping):
    from cnncc.ir.loop_walk import substitute_stmt
    return substitute_stmt(stmt, mapping)


def lower_arg(ctx: LowerCtx, node: Node) -> None:
    """ArgMax / ArgMin (int64 indices) and Hardmax (one-hot of the first maximum)."""
    from cnncc.ir.loop import Allocate, Buffer, Cmp, If, Or, And, Select

    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    dt = g.types[x].dtype
    if dt not in (DType.float32, DType.float64) and not dt.is_int:
        raise unsupported(node, f"element type {dt} is not lowered")
    shape = g.types[x].shape
    at = op_context(g, node).attrs
    axis = at.get("axis", -1)
    axis = axis + len(shape) if axis < 0 else axis
    outer, red = int(np.prod(shape[:axis])), shape[axis]
    inner = int(np.prod(shape[axis + 1:]))
    xb = ctx.value(x, (outer, red, inner), "x")
    hard = node.op == "Hardmax"
    yb = ctx.value(out, (outer, red, inner) if hard else (outer, inner), "y")
    best = Buffer("best", dt, (1,), "local")
    arg = Buffer("arg", DType.int64, (1,), "local")
    o, i, r, r2 = Var("o"), Var("i"), Var("r"), Var("r2")
    v, b = xb[o, r, i], best[0]
    last = bool(at.get("select_last_index", 0))
    if node.op == "ArgMin":
        better = Cmp("le" if last else "lt", v, b)
    else:
        better = Cmp("ge" if last else "gt", v, b)
    # numpy: the first NaN wins (and stays).
    better = Or(better, And(Cmp("ne", v, v), Cmp("eq", b, b)))
    scan = For(r, red, If(Or(Cmp("eq", r, Const(0)), And(better, Cmp("eq", b, b))), seq(
        Store(best, (0,), v), Store(arg, (0,), r))))
    if hard:
        fin = For(r2, red, Store(yb, (o, r2, i), Select(Cmp("eq", r2, arg[0]), Const(1, dt),
                                                         Const(0, dt))))
    else:
        fin = Store(yb, (o, i), arg[0])
    body = Allocate(best, Allocate(arg, seq(scan, fin)))
    k = Kernel(node.name, [yb, xb], For(o, outer, For(i, inner, body)))
    from .cpu_schedule import parallel_outer
    ctx.emit(parallel_outer(k, ["o"], ctx, outer * red * inner))
