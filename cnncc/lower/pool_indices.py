"""MaxPool for any element type and with the optional Indices output: a direct scan of each
window (taps outside the input skipped), tracking the first maximum's flat index."""
from __future__ import annotations

from math import prod

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Cmp, Const, For, If, Kernel, Or, Stmt,
                           Store, Var, nan_max, seq)
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import parallel_outer


def _lowest(dt: DType) -> Const:
    if dt.is_float:
        return Const(float("-inf"), dt)
    if dt is DType.bool:
        return Const(False, dt)
    return Const(int(np.iinfo(dt.np).min), dt)


def lower_max_pool_scan(ctx: LowerCtx, node: Node) -> None:
    """Y = max over each window (numpy's NaN-propagating maximum); Indices = flat index over
    (N, C, spatial) of the first strictly greatest element, spatial part row or column major
    by storage_order."""
    g = ctx.graph
    octx = op_context(g, node)
    x, out = node.inputs[0], node.outputs[0]
    dt = g.types[x].dtype
    if dt is DType.bool or dt is DType.float16:
        raise unsupported(node, f"element type {dt}")
    xs = g.types[x].shape
    nd = len(xs) - 2
    win = resolve_window(octx, xs, octx["kernel_shape"], bool(octx["ceil_mode"]))
    oshape = xs[:2] + tuple(win.out)
    spatial = xs[2:]
    if octx["storage_order"] == 1:
        steps = [prod(spatial[:a]) for a in range(nd)]
    else:
        steps = [prod(spatial[a + 1:]) for a in range(nd)]
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, oshape, "y")
    ind = node.outputs[1] if len(node.outputs) > 1 and node.outputs[1] else None
    ib = ctx.value(ind, oshape, "ind") if ind else None
    n, c = Var("n"), Var("c")
    ov = [Var(f"o{d}") for d in range(nd)]
    kv = [Var(f"k{d}") for d in range(nd)]
    acc = Buffer("acc", dt, (2,), "local")          # [0] the max, [1] the indexed best
    arg = Buffer("arg", DType.int64, (2,), "local")  # [0] flat index, [1] found flag
    coords = [o * win.strides[d] - win.begin(d) + k * win.dilations[d]
              for d, (o, k) in enumerate(zip(ov, kv))]
    valid = None
    for p, sz in zip(coords, spatial):
        ok = And(Cmp("ge", p, Const(0)), Cmp("lt", p, Const(sz)))
        valid = ok if valid is None else And(valid, ok)
    v = xb[(n, c) + tuple(coords)]
    flat = (n * xs[1] + c) * prod(spatial)
    for p, s in zip(coords, steps):
        flat = flat + p * s
    better = Or(Cmp("eq", arg[1], Const(0)), Cmp("gt", v, acc[1]))
    upd: Stmt = If(valid, seq(
        Store(acc, (0,), nan_max(acc[0], v)),
        If(better, seq(Store(acc, (1,), v), Store(arg, (0,), flat),
                       Store(arg, (1,), Const(1))))))
    for d in reversed(range(nd)):
        upd = For(kv[d], win.kernel[d], upd)
    yi = (n, c) + tuple(ov)
    body: Stmt = Allocate(acc, Allocate(arg, seq(
        Store(acc, (0,), _lowest(dt)), Store(acc, (1,), _lowest(dt)),
        Store(arg, (0,), Const(0)), Store(arg, (1,), Const(0)), upd,
        Store(yb, yi, acc[0]), Store(ib, yi, arg[0]) if ib is not None else None)))
    for d in reversed(range(nd)):
        body = For(ov[d], oshape[2 + d], body)
    body = For(n, xs[0], For(c, xs[1], body))
    params = [yb, xb] + ([ib] if ib is not None else [])
    k = Kernel(node.name, params, body)
    work = int(np.prod(oshape)) * int(np.prod(win.kernel))
    ctx.emit(parallel_outer(k, ["n", "c"], ctx, work))



