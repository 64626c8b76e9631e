"""Gemm whose B or C is a run-time value (or whose type is float64), and the register tiles of
every float32 product with a run-time matrix (this Gemm and nn's batched MatMul).

Float32 products on the CPU run in register tiles (a GemmSchedule: the cost model's
tile_schedules.gemm_default, or a tuned one of the tunable workload "gemm_rt") of ROWS rows x
VECTORS vectors of columns: per k,
ROWS broadcasts of A and VECTORS loads of B's row k (read as it is: no packing, B changes every
call), ROWS * VECTORS accumulators; the last columns and rows in narrower tiles; the batch,
column-block and row-block loops fused into one parallel loop. Float64 and the GPU take the
generic nest: a loop over the outputs accumulating alpha * A' B' in place, the columns
vectorized (cpu_schedule.schedule_map), then + beta * C. Each output's sum runs over k in the
same order in every schedule (the same result)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Const, Expr, F32, For, If, Kernel, Stmt, Store,
                           Var, loop_nest, seq)

from .context import LowerCtx, op_context
from .cpu_schedule import parallel_outer, schedule_map
from .tile_schedules import (GemmSchedule, choose, gemm_fits, gemm_rt_candidates,
                             gemm_rt_workload)


def runtime_tile(ctx: LowerCtx, node: Node, batch: tuple, m: int, n: int, k_dim: int,
                 trans: tuple[bool, bool], dt: DType) -> GemmSchedule | None:
    """The register tile of a float32 product with a run-time matrix on the CPU (tuned or the
    cost model's); None for the generic nest (float64, the GPU)."""
    if ctx.gpu or dt is not F32:
        return None
    lanes, regs = ctx.lanes, ctx.vector_registers
    key = gemm_rt_workload(ctx.target, batch, m, k_dim, n, *trans)
    return choose(ctx, node.name, key, gemm_rt_candidates(m, n, lanes, regs),
                  lambda s: gemm_fits(s, m, n, lanes, regs))


def emit_runtime_tiles(ctx: LowerCtx, name: str, params: list[Buffer], batch: tuple, m: int,
                       n: int, k_dim: int, sched: GemmSchedule,
                       a_at: Callable, b_at: Callable, finish: Callable) -> None:
    """out[b.., i, j] = finish(b.., i, j, sum_k a_at(b.., i, k) * b_at(b.., k, j)) in tiles of
    ``sched``; ``params[0]`` is the output [batch.., m, n]."""
    yb = params[0]
    bvs = [Var(f"b{d}") for d in range(len(batch))]
    vt, rt = sched.vectors * ctx.lanes, sched.rows
    jb, mb = Var("jb"), Var("mb")

    def tile(m0: Expr, rr: int, n0: Expr, cw: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", F32, (rr, cw), "local")
        r, v, r2, v2, r3, v3, kk = (Var(f"{p}{tag}") for p in (
            "r", "v", "r2", "v2", "r3", "v3", "kk"))
        init = For(r, rr, For(v, cw, Store(acc, (r, v), Const(0.0, F32)), "vectorized"),
                   "unrolled")
        upd = Store(acc, (r2, v2), acc[r2, v2] + a_at(bvs, m0 + r2, kk) * b_at(bvs, kk, n0 + v2))
        red = For(kk, k_dim, For(r2, rr, For(v2, cw, upd, "vectorized"), "unrolled"))
        epi = For(r3, rr, For(v3, cw, Store(yb, tuple(bvs) + (m0 + r3, n0 + v3), finish(
            bvs, m0 + r3, n0 + v3, acc[r3, v3])), "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    def rows(n0: Expr, cw: int, tag: str) -> Stmt:
        body = tile(mb * rt, rt, n0, cw, tag)
        if m % rt:                      # the last mb: the remaining rows
            body = If(mb < m // rt, body, tile(mb * rt, m % rt, n0, cw, tag + "t"))
        return body

    body = rows(jb * vt, vt, "")
    if n % vt:                          # the last jb: the remaining columns
        body = If(jb < n // vt, body, rows(jb * vt, n % vt, "c"))
    body = For(jb, -(-n // vt), For(mb, -(-m // rt), body))
    for v, e in reversed(list(zip(bvs, batch))):
        body = For(v, e, body)
    work = int(np.prod(batch + (m, n, k_dim)))
    ctx.emit(parallel_outer(Kernel(name, params, body), [v.name for v in bvs] + ["jb", "mb"],
                            ctx, work))


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

    def finish(i: Expr, j: Expr, s: Expr) -> Expr:
        val = s * alpha if alpha != 1.0 else s
        if cb is not None:
            ci = (i if cb.shape[0] != 1 else Const(0), j if cb.shape[1] != 1 else Const(0))
            val = val + cb[ci] * beta
        return act(val) if act is not None else val

    sched = runtime_tile(ctx, node, (), m, n, k_dim, (ta, tb), dt)
    if sched is not None:
        return emit_runtime_tiles(
            ctx, node.name, params, (), m, n, k_dim, sched,
            lambda _, i, kk: ab[kk, i] if ta else ab[i, kk],
            lambda _, kk, j: bb[j, kk] if tb else bb[kk, j],
            lambda _, i, j, s: finish(i, j, s))

    def body(i: Var, j: Var):
        kk = Var("kk")
        av = ab[kk, i] if ta else ab[i, kk]
        bv = bb[j, kk] if tb else bb[kk, j]
        return seq(Store(yb, (i, j), Const(0.0, dt)),
                   For(kk, k_dim, Store(yb, (i, j), yb[i, j] + av * bv)),
                   Store(yb, (i, j), finish(i, j, yb[i, j])))

    k = Kernel(node.name, params, loop_nest([("m", m), ("n", n)], body))
    ctx.emit(schedule_map(k, ctx, int(np.prod((m, n, k_dim)))))
