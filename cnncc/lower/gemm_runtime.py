"""Gemm whose B or C is a run-time value (or whose type is float64): a loop nest over the
output accumulating alpha * A' B' in place, vectorized along the columns, then + beta * C."""
from __future__ import annotations

import numpy as np

from cnncc.ir import Node
from cnncc.ir.loop import Const, For, Kernel, Store, Var, loop_nest, seq

from .context import LowerCtx, op_context
from .cpu_schedule import schedule_map


def lower_gemm_runtime(ctx: LowerCtx, node: Node, act=None, out: str | None = None) -> None:
    g = ctx.graph
    at = op_context(g, node).attrs
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    out = out or node.outputs[0]
    m, n = g.types[out].shape
    dt = g.types[out].dtype
    ta, tb = bool(at["transA"]), bool(at["transB"])
    k_dim = g.types[a].shape[0 if ta else 1]
    ab = ctx.value(a, bname="a")
    bb = ctx.value(b, bname="b")
    yb = ctx.value(out, (m, n), "y")
    params = [yb, ab, bb]
    cb = None
    if c is not None:
        cs = g.types[c].shape
        cs2 = ((1,) * (2 - len(cs)) + tuple(cs))[-2:]
        cb = ctx.value(c, cs2, "c")
        params.append(cb)
    alpha, beta = float(at["alpha"]), float(at["beta"])

    def body(i: Var, j: Var):
        kk = Var("kk")
        av = ab[kk, i] if ta else ab[i, kk]
        bv = bb[j, kk] if tb else bb[kk, j]
        val = yb[i, j] * alpha if alpha != 1.0 else yb[i, j]
        if cb is not None:
            ci = (i if cb.shape[0] != 1 else Const(0), j if cb.shape[1] != 1 else Const(0))
            val = val + cb[ci] * beta
        if act is not None:
            val = act(val)
        return seq(Store(yb, (i, j), Const(0.0, dt)),
                   For(kk, k_dim, Store(yb, (i, j), yb[i, j] + av * bv)),
                   Store(yb, (i, j), val))

    k = Kernel(node.name, params, loop_nest([("m", m), ("n", n)], body))
    ctx.emit(schedule_map(k, ctx, int(np.prod((m, n, k_dim)))))
