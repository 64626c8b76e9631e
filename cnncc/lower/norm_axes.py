"""LpNormalization and MeanVarianceNormalization: per slice of the kept axes, reductions over
the normalized axes in float64 local accumulators (the references compute in float64), then a
pass writing the normalized values."""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Allocate, Buffer, Call, Cast, Cmp, Const, Expr, For, Kernel, Select, \
    Stmt, Store, Var, seq

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import parallel_outer

F64 = DType.float64


def _nest(axes: list[int], shape: tuple, tag: str, body: Callable[[dict], Stmt]) -> Stmt:
    """Loops over ``axes`` (fresh vars named by ``tag``) around ``body(vars by axis)``."""
    vs = {a: Var(f"{tag}{a}") for a in axes}
    s = body(vs)
    for a in reversed(axes):
        s = For(vs[a], shape[a], s)
    return s


def _lower_axes(ctx: LowerCtx, node: Node, axes: list[int], passes) -> None:
    """One kernel: per slice of the kept axes, ``passes(acc, over, store, count)`` gives the
    statements; ``over(tag, fn)`` loops over the normalized axes calling ``fn(x as float64,
    index)``, ``store(index, value)`` writes y."""
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    dt = g.types[x].dtype
    if dt not in (DType.float32, DType.float64):
        raise unsupported(node, f"element type {dt} is not lowered")
    shape = g.types[x].shape
    kept = [a for a in range(len(shape)) if a not in axes]
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, bname="y")
    kv = {a: Var(f"o{a}") for a in kept}
    acc = Buffer("acc", F64, (2,), "local")
    count = int(np.prod([shape[a] for a in axes]))

    def over(tag: str, fn: Callable[[Expr, tuple], Stmt]) -> Stmt:
        def inner(rv: dict) -> Stmt:
            idx = tuple(kv[a] if a in kv else rv[a] for a in range(len(shape)))
            xv = xb[idx]
            return fn(Cast(F64, xv) if dt is not F64 else xv, idx)
        return _nest(axes, shape, tag, inner)

    def store(idx: tuple, v: Expr) -> Stmt:
        return Store(yb, idx, Cast(dt, v) if dt is not F64 else v)

    body: Stmt = Allocate(acc, seq(*passes(acc, over, store, count)))
    for a in reversed(kept):
        body = For(kv[a], shape[a], body)
    if not kept:
        body = For(Var("one"), 1, body)
    k = Kernel(node.name, [yb, xb], body)
    names = [kv[a].name for a in kept[:1]]
    work = int(np.prod(shape)) * 3
    ctx.emit(parallel_outer(k, names, ctx, work) if names else k)


def lower_lp_norm(ctx: LowerCtx, node: Node) -> None:
    """y = x / ||x||_p along one axis (an all-zero slice stays zero)."""
    at = op_context(ctx.graph, node).attrs
    rank = ctx.graph.types[node.inputs[0]].rank
    p = at["p"]

    def passes(acc, over, store, count):
        zero = Const(0.0, F64)

        def add(v, _):
            return Store(acc, (0,), acc[0] + (v * v if p == 2 else Call("abs", (v,), F64)))
        norm = Call("sqrt", (acc[0],), F64) if p == 2 else acc[0]
        return [Store(acc, (0,), zero), over("r", add), Store(acc, (1,), norm),
                over("w", lambda v, idx: store(idx, Select(Cmp("ne", acc[1], zero),
                                                           v / acc[1], zero)))]
    _lower_axes(ctx, node, [at["axis"] % rank], passes)


def lower_mvn(ctx: LowerCtx, node: Node) -> None:
    """y = (x - mean) / (std + 1e-9) over the given axes."""
    at = op_context(ctx.graph, node).attrs
    rank = ctx.graph.types[node.inputs[0]].rank
    axes = sorted({a % rank for a in at["axes"]})

    def passes(acc, over, store, count):
        zero = Const(0.0, F64)
        inv = 1.0 / max(count, 1)
        mean = acc[0]
        return [Store(acc, (0,), zero),
                over("r", lambda v, _: Store(acc, (0,), acc[0] + v)),
                Store(acc, (0,), acc[0] * inv), Store(acc, (1,), zero),
                over("s", lambda v, _: Store(acc, (1,), acc[1] + (v - mean) * (v - mean))),
                Store(acc, (1,), Call("sqrt", (acc[1] * inv,), F64) + 1e-9),
                over("w", lambda v, idx: store(idx, (v - mean) / acc[1]))]
    _lower_axes(ctx, node, axes, passes)
