"""Normalizations: InstanceNormalization and LayerNormalization (per-row statistics in a local
accumulator, two passes for a stable variance, a vectorized final pass), and LRN (a window sum
over channels, vectorized along the spatial axis)."""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Call, Cmp, And, Const, Expr, F32, For, Kernel,
                           Select, Store, Var, loop_nest, seq)

from .conv import _parallel_outer
from .context import LowerCtx, const_input, op_context, unsupported
from .cpu_schedule import schedule_map


def _normalize_rows(ctx: LowerCtx, name: str, xb: Buffer, yb: Buffer, rows: int, width: int,
                    eps: float, scale, shift) -> None:
    """y[i, j] = (x[i, j] - mean_i) / sqrt(var_i + eps) * scale(i, j) + shift(i, j)."""
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
        For(j3, width, Store(yb, (i, j3), (xb[i, j3] - acc[0]) * acc[1] * scale(i, j3)
                             + shift(i, j3)), "vectorized" if width >= ctx.lanes else "serial"))
    k = Kernel(name, [yb, xb] + _extra_bufs(scale, shift), For(i, rows, Allocate(acc, body)))
    ctx.emit(_parallel_outer(k, ["i"], ctx.threads, rows * width * 4))


def _extra_bufs(*fns) -> list:
    return [b for f in fns for b in getattr(f, "bufs", [])]


def _per(buf: Buffer, index):
    def f(i: Expr, j: Expr) -> Expr:
        return buf[index(i, j)]
    f.bufs = [buf]
    return f


def lower_instance_norm(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    if g.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 is lowered")
    shape = g.types[x].shape
    n, c = shape[0], shape[1]
    hw = int(np.prod(shape[2:]))
    eps = op_context(g, node).attrs["epsilon"]
    sb = ctx.value(node.inputs[1], (c,), "scale")
    bb = ctx.value(node.inputs[2], (c,), "bias")
    _normalize_rows(ctx, node.name, ctx.value(x, (n * c, hw), "x"),
                    ctx.value(out, (n * c, hw), "y"), n * c, hw, eps,
                    _per(sb, lambda i, j: (i % c,)), _per(bb, lambda i, j: (i % c,)))


def lower_layer_norm(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x = node.inputs[0]
    if len([o for o in node.outputs if o]) > 1:
        raise unsupported(node, "the Mean/InvStdDev outputs")
    if g.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 is lowered")
    shape = g.types[x].shape
    at = op_context(g, node).attrs
    axis = at["axis"] % len(shape)
    rows, width = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
    scale = const_input(g, node, 1, "Scale").astype(np.float32)
    bias = const_input(g, node, 2, "B") if len(node.inputs) > 2 and node.inputs[2] else None
    bias = np.zeros((), np.float32) if bias is None else bias.astype(np.float32)
    sb = ctx.const(np.broadcast_to(scale, shape[axis:]).reshape(-1), "scale")
    bb = ctx.const(np.broadcast_to(bias, shape[axis:]).reshape(-1), "bias")
    _normalize_rows(ctx, node.name, ctx.value(x, (rows, width), "x"),
                    ctx.value(node.outputs[0], (rows, width), "y"), rows, width, at["epsilon"],
                    _per(sb, lambda i, j: (j,)), _per(bb, lambda i, j: (j,)))


def lower_lrn(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    if g.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 is lowered")
    shape = g.types[x].shape
    n, c = shape[0], shape[1]
    hw = int(np.prod(shape[2:]))
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
    ctx.emit(schedule_map(k, ctx.lanes, ctx.threads, n * c * hw * size))
