"""The Reduce* family: accumulate directly in the output (so the innermost kept axis can be
vectorized), reduced axes as inner loops, a finalize step (mean, sqrt, log)."""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Call, Const, F32, For, Kernel, Store, Var, seq
from cnncc.ir.ops.reduce import reduce_axes

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import schedule_map

_INIT = {"ReduceSum": 0.0, "ReduceMean": 0.0, "ReduceMax": float("-inf"),
         "ReduceMin": float("inf"), "ReduceProd": 1.0, "ReduceL1": 0.0, "ReduceL2": 0.0,
         "ReduceSumSquare": 0.0, "ReduceLogSum": 0.0}
REDUCE_OPS = tuple(_INIT)


def lower_reduce(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    if g.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 is lowered")
    shape = g.types[x].shape
    axes = reduce_axes(op_context(g, node), len(shape))
    if axes is None:
        from .tensor import emit_copy
        return emit_copy(ctx, node.name, x, out)
    kshape = tuple(1 if a in axes else d for a, d in enumerate(shape))
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, kshape, "y")
    op = node.op
    count = int(np.prod([shape[a] for a in axes]))
    ovars = [Var(f"i{a}") for a in range(len(shape))]
    rvars = {a: Var(f"r{a}") for a in axes}
    oidx = tuple(Const(0) if a in axes else v for a, v in enumerate(ovars))
    xidx = tuple(rvars[a] if a in axes else v for a, v in enumerate(ovars))
    xv, acc = xb[xidx], yb[oidx]
    upd = {"ReduceMax": lambda: xv.max(acc), "ReduceMin": lambda: xv.min(acc),
           "ReduceProd": lambda: acc * xv, "ReduceL1": lambda: acc + Call("abs", (xv,), F32),
           "ReduceL2": lambda: acc + xv * xv, "ReduceSumSquare": lambda: acc + xv * xv}.get(
        op, lambda: acc + xv)()
    red = Store(yb, oidx, upd)
    for a in reversed(axes):
        red = For(rvars[a], shape[a], red)
    fin = {"ReduceMean": lambda: acc * (1.0 / max(count, 1)),
           "ReduceL2": lambda: Call("sqrt", (acc,), F32),
           "ReduceLogSum": lambda: Call("log", (acc,), F32)}.get(op)
    body = seq(Store(yb, oidx, Const(_INIT[op], F32)), red,
               Store(yb, oidx, fin()) if fin else None)
    kept = [a for a in range(len(shape)) if a not in axes]
    for a in reversed(kept):
        body = For(ovars[a], shape[a], body)
    if not kept:
        body = For(Var("one"), 1, body)
    k = Kernel(node.name, [yb, xb], body)
    ctx.emit(schedule_map(k, ctx.lanes, ctx.threads, int(np.prod(shape))))
