"""Global pools on NCHWc: ReduceMean / ReduceMax / ReduceSum over H, W of a 5-D [N, CB, H, W, c]
tensor (alter_layout_nchwc makes GlobalAveragePool / GlobalMaxPool these), a tunable workload
(tile_schedules.ChainSchedule: K channel blocks per register tile).

One chain (the cost model's choice) is reduce.lower_reduce's generic kernel: one block of c
channels at a time, accumulating in the output, so each block's H * W additions wait on one
another (a chain of FP-add latency). K chains keep K blocks' accumulators in registers and add
each pixel of the K blocks in turn: K independent chains, each block's sum in the same order (the
same result).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Const, Expr, For, If, Kernel, Stmt, Store, Var,
                           nan_max, seq)

from .context import LowerCtx
from .cpu_schedule import parallel_outer
from .tile_schedules import (GPOOL_NCHWC_KIND, chain_candidates, chain_fits,
                             choose, dims, reduction_workload)

# The reductions over H, W of a 5-D tensor with a tiled kernel: their identity.
HW_REDUCTIONS = {"ReduceMean": 0.0, "ReduceSum": 0.0, "ReduceMax": float("-inf")}


def hw_chains(ctx: LowerCtx, node: Node, shape: tuple, axes: tuple, dt: DType) -> int | None:
    """Chains per tile of a float32 reduction over axes 2, 3 of a 5-D tensor on the CPU (tuned,
    or the cost model's 1: the generic kernel); None when ``node`` is not one."""
    if (ctx.gpu or node.op not in HW_REDUCTIONS or dt is not DType.float32 or len(shape) != 5
            or tuple(axes) != (2, 3)):
        return None
    regs = max(1, ctx.vector_registers // -(-shape[4] // ctx.lanes))   # chains' registers
    key = reduction_workload(GPOOL_NCHWC_KIND, ctx.target, node.op, f"x{dims(shape)}")
    sched = choose(ctx, node.name, key, chain_candidates(shape[1], regs),
                   lambda s: chain_fits(s, shape[1], regs))
    return sched.k


def lower_hw_chains(ctx: LowerCtx, node: Node, shape: tuple, chains: int) -> None:
    """y[n, b, 0, 0, :] = reduce over (h, w) of x[n, b, h, w, :], ``chains`` blocks b a tile
    (the last tile the remaining blocks)."""
    x, out = node.inputs[0], node.outputs[0]
    nb, cb, h, w, c = shape
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, (nb, cb, 1, 1, c), "y")
    op = node.op
    n, t = Var("n"), Var("t")

    def tile(b0: Expr, kk: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", DType.float32, (kk, c), "local")
        j, v, j2, v2, j3, v3, hv, wv = (Var(f"{q}{tag}") for q in (
            "j", "v", "j2", "v2", "j3", "v3", "h", "w"))
        init = For(j, kk, For(v, c, Store(acc, (j, v), Const(HW_REDUCTIONS[op], DType.float32)),
                              "vectorized"), "unrolled")
        xv = xb[n, b0 + j2, hv, wv, v2]
        upd = nan_max(acc[j2, v2], xv) if op == "ReduceMax" else acc[j2, v2] + xv
        red = For(hv, h, For(wv, w, For(j2, kk, For(v2, c, Store(acc, (j2, v2), upd),
                                                    "vectorized"), "unrolled")))
        val = acc[j3, v3] * (1.0 / max(h * w, 1)) if op == "ReduceMean" else acc[j3, v3]
        fin = For(j3, kk, For(v3, c, Store(yb, (n, b0 + j3, 0, 0, v3), val), "vectorized"),
                  "unrolled")
        return Allocate(acc, seq(init, red, fin))

    body = tile(t * chains, chains, "")
    if cb % chains:
        body = If(t < cb // chains, body, tile(t * chains, cb % chains, "r"))   # the last t
    k = Kernel(node.name, [yb, xb], For(n, nb, For(t, -(-cb // chains), body)))
    ctx.emit(parallel_outer(k, ["n", "t"], ctx, int(np.prod(shape))))
