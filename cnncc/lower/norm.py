"""Normalizations: InstanceNormalization and LayerNormalization (per-row statistics in a local
accumulator, two passes for a stable variance, a vectorized final pass), and LRN (a window sum
over channels, vectorized along the spatial axis)."""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Call, Cmp, And, Const, Expr, F32, For, Kernel,
                           Select, Store, Var, loop_nest, seq)

from .cpu_schedule import parallel_outer
from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import schedule_map


def _normalize_rows(ctx: LowerCtx, name: str, xb: Buffer, yb: Buffer, rows: int, width: int,
                    eps: float, scale, shift, stats: tuple = (None, None)) -> None:
    """y[i, j] = (x[i, j] - mean_i) / sqrt(var_i + eps) * scale(i, j) + shift(i, j);
    ``stats``: optional (rows,) buffers receiving mean_i and 1 / sqrt(var_i + eps)."""
    acc = Buffer("stat", DType.float32, (2,), "local")
    i, j1, j2, j3 = Var("i"), Var("j1"), Var("j2"), Var("j3")
    d = xb[i, j2] - acc[0]
    body = seq(
        Store(acc, (0,), Const(0.0, F32)),
        For(j1, width, Store(acc, (0,), acc[0] + xb[i, j1])),
        Store(acc, (0,), acc[0] * (1.0 / width)),
        Store(acc, (1,), Const(0.0, F32)),
        For(j2, width, Store(acc, (1,), acc[1] + d * d)),
        Store(acc, (1,), Const(1.0, F32) / Call("sqrt", (acc[1] * (1.0 / width) + eps,), F32)),
        [Store(b, (i,), acc[k]) for k, b in enumerate(stats) if b is not None],
        For(j3, width, Store(yb, (i, j3), (xb[i, j3] - acc[0]) * acc[1] * scale(i, j3)
                             + shift(i, j3)), "vectorized" if width >= ctx.lanes else "serial"))
    params = [yb, xb] + _extra_bufs(scale, shift) + [b for b in stats if b is not None]
    k = Kernel(name, params, For(i, rows, Allocate(acc, body)))
    ctx.emit(parallel_outer(k, ["i"], ctx, rows * width * 4))


def _extra_bufs(*fns) -> list:
    return [b for f in fns for b in getattr(f, "bufs", [])]


def _per(buf: Buffer, index):
    def f(i: Expr, j: Expr) -> Expr:
        return buf[index(i, j)]
    f.bufs = [buf]
    return f


def _nchw_float32(ctx: LowerCtx, node: Node) -> tuple[str, str, int, int, int]:
    """(input, output, N, C, product of the spatial dims) of a float32 NC... op."""
    x, out = node.inputs[0], node.outputs[0]
    if ctx.graph.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 is lowered")
    shape = ctx.graph.types[x].shape
    return x, out, shape[0], shape[1], int(np.prod(shape[2:]))


def lower_instance_norm(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out, n, c, hw = _nchw_float32(ctx, node)
    eps = op_context(g, node).attrs["epsilon"]
    sb = ctx.value(node.inputs[1], (c,), "scale")
    bb = ctx.value(node.inputs[2], (c,), "bias")
    _normalize_rows(ctx, node.name, ctx.value(x, (n * c, hw), "x"),
                    ctx.value(out, (n * c, hw), "y"), n * c, hw, eps,
                    _per(sb, lambda i, j: (i % c,)), _per(bb, lambda i, j: (i % c,)))


def lower_layer_norm(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x = node.inputs[0]
    outs = list(node.outputs) + [""] * (3 - len(node.outputs))
    if any(o and g.types[o].dtype is not DType.float32 for o in outs):
        raise unsupported(node, "only float32 is lowered")
    if g.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 is lowered")
    shape = g.types[x].shape
    at = op_context(g, node).attrs
    axis = at["axis"] % len(shape)
    rows, width = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
    sb = _row_param(ctx, node, 1, shape[axis:], 1.0, "scale")
    bb = _row_param(ctx, node, 2, shape[axis:], 0.0, "bias")
    stats = tuple(ctx.value(o, (rows,), f"stat{k}") if o else None
                  for k, o in enumerate(outs[1:3]))
    _normalize_rows(ctx, node.name, ctx.value(x, (rows, width), "x"),
                    ctx.value(node.outputs[0], (rows, width), "y"), rows, width, at["epsilon"],
                    _per(sb, lambda i, j: (j,)), _per(bb, lambda i, j: (j,)), stats)


def _row_param(ctx: LowerCtx, node: Node, i: int, norm_shape: tuple, default: float,
               name: str) -> Buffer:
    """Scale/B of LayerNormalization as a flat [width] buffer: a constant is broadcast at
    compile time; a run-time input must already have the full normalized shape."""
    g = ctx.graph
    width = int(np.prod(norm_shape))
    v = node.inputs[i] if len(node.inputs) > i else ""
    if not v:
        return ctx.const(np.full(width, default, np.float32), name)
    if v in g.params:
        return ctx.const(np.broadcast_to(g.params[v].astype(np.float32), norm_shape)
                         .reshape(-1), name)
    if g.types[v].size != width:
        raise unsupported(node, f"a run-time {name} must have the full normalized shape")
    return ctx.value(v, (width,), name)


def lower_lrn(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out, n, c, hw = _nchw_float32(ctx, node)
    at = op_context(g, node).attrs
    size = at["size"]
    before = (size - 1) // 2
    xb, yb = ctx.value(x, (n, c, hw), "x"), ctx.value(out, (n, c, hw), "y")

    def body(ni, ci, p):
        s: Expr = Const(0.0, F32)
        for k in range(size):
            cc = ci + (k - before)
            ok = And(Cmp("ge", cc, Const(0)), Cmp("lt", cc, Const(c)))
            v = xb[ni, cc.max(Const(0)).min(Const(c - 1)), p]
            s = s + Select(ok, v * v, Const(0.0, F32))
        base = s * (at["alpha"] / size) + at["bias"]
        return Store(yb, (ni, ci, p), xb[ni, ci, p] * Call("pow", (base, Const(
            -at["beta"], F32)), F32))

    k = Kernel(node.name, [yb, xb], loop_nest([("n", n), ("c", c), ("p", hw)], body))
    ctx.emit(schedule_map(k, ctx, n * c * hw * size))
