"""Data movement: copies, Concat, Transpose, Pad, Slice."""
from __future__ import annotations

import numpy as np

from cnncc.ir import Node
from cnncc.ir.loop import And, Cmp, Const, Expr, Kernel, Select, Store, loop_nest, wrap

from .context import LowerCtx, const_input, op_context, unsupported
from .cpu_schedule import schedule_map


def emit_copy(ctx: LowerCtx, name: str, src: str, dst: str, output: int | None = None) -> None:
    """dst = src (flat); with ``output`` the destination is that graph output slot."""
    n = ctx.graph.types[dst].size
    sb = ctx.value(src, (n,), "src")
    db = ctx.value(dst, (n,), "dst")
    if output is not None:
        ctx.binding[id(db)] = ("output", output)
    k = Kernel(name, [db, sb], loop_nest([("i", n)], lambda i: Store(db, (i,), sb[i])))
    ctx.emit(schedule_map(k, ctx, n))


def lower_concat(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    out = node.outputs[0]
    shape = g.types[out].shape
    axis = op_context(g, node).attrs["axis"]
    axis = axis + len(shape) if axis < 0 else axis
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    total = shape[axis] * inner
    off = 0
    for k, x in enumerate(node.inputs):
        n = g.types[x].shape[axis] * inner
        if n == 0:
            continue
        xb = ctx.value(x, (outer, n), "x")
        yb = ctx.value(out, (outer, total), "y")
        kern = Kernel(f"{node.name}_{k}", [yb, xb], loop_nest(
            [("o", outer), ("j", n)], lambda o, j, off=off: Store(yb, (o, j + off), xb[o, j])))
        ctx.emit(schedule_map(kern, ctx, outer * n))
        off += n


def lower_transpose(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    rank = g.types[x].rank
    perm = op_context(g, node).attrs["perm"] or list(reversed(range(rank)))
    oshape = g.types[out].shape
    xb, yb = ctx.value(x, bname="x"), ctx.value(out, bname="y")

    def body(*vs):
        idx = [None] * rank
        for o_axis, i_axis in enumerate(perm):
            idx[i_axis] = vs[o_axis]
        return Store(yb, vs, xb[tuple(idx)])

    k = Kernel(node.name, [yb, xb], loop_nest([(f"i{d}", s) for d, s in enumerate(oshape)],
                                             body))
    ctx.emit(schedule_map(k, ctx, int(np.prod(oshape))))


def _in_range(e: Expr, n: int) -> Expr:
    return And(Cmp("ge", e, Const(0)), Cmp("lt", e, Const(n)))


def lower_pad(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    xs, oshape = g.types[x].shape, g.types[out].shape
    rank = len(xs)
    mode = op_context(g, node).attrs["mode"]
    pads = const_input(g, node, 1, "pads").astype(np.int64).tolist()
    cname = node.inputs[2] if len(node.inputs) > 2 else ""
    cval = None if not cname or cname not in g.params else g.params[cname]
    axes = const_input(g, node, 3, "axes") if len(node.inputs) > 3 else None
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a
                                                    for a in axes.tolist()]
    begin = [0] * rank
    for k, a in enumerate(axes):
        begin[a] = pads[k]
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise unsupported(node, f"mode {mode}")
    dt = g.types[x].dtype
    fill = Const(0 if cval is None or cval.size == 0 else cval.reshape(-1)[0].item(), dt)
    xb, yb = ctx.value(x, bname="x"), ctx.value(out, bname="y")
    params = [yb, xb]
    if cname and cval is None and g.types[cname].size == 1:     # a run-time scalar
        cb = ctx.value(cname, (1,), "cval")
        params.append(cb)
        fill = cb[0]

    def body(*vs):
        src, ok = [], None
        for v, b, n in zip(vs, begin, xs):
            i = v - b if b else v
            if mode == "reflect" and n > 1:
                i = Select(i < 0, -i, i)
                i = Select(i >= n, wrap(2 * (n - 1)) - i, i)
            if mode == "wrap" and (b or oshape[len(src)] != n):
                i = i % n                           # floor modulo: periodic both ways
            i = i.max(Const(0)).min(Const(n - 1)) if (b or oshape[len(src)] != n) else i
            if mode == "constant" and (b or oshape[len(src)] != n):
                c = _in_range(v - b, n)
                ok = c if ok is None else And(ok, c)
            src.append(i)
        val = xb[tuple(src)]
        return Store(yb, vs, val if ok is None else Select(ok, val, fill))

    k = Kernel(node.name, params, loop_nest([(f"i{d}", s) for d, s in enumerate(oshape)],
                                           body))
    ctx.emit(schedule_map(k, ctx, int(np.prod(oshape))))


def lower_slice(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    xs, oshape = g.types[x].shape, g.types[out].shape
    rank = len(xs)
    starts = const_input(g, node, 1, "starts").tolist()
    ends = const_input(g, node, 2, "ends").tolist()
    axes = const_input(g, node, 3, "axes") if len(node.inputs) > 3 and node.inputs[3] else None
    steps = const_input(g, node, 4, "steps") if len(node.inputs) > 4 and node.inputs[4] \
        else None
    axes = list(range(len(starts))) if axes is None else [a + rank if a < 0 else a
                                                          for a in axes.tolist()]
    steps = [1] * len(starts) if steps is None else steps.tolist()
    first, step = [0] * rank, [1] * rank
    for a, s, e, st in zip(axes, starts, ends, steps):
        n = xs[a]
        s = s + n if s < 0 else s
        s = min(max(s, 0), n - 1 if st < 0 else n)
        first[a], step[a] = s, st
    xb, yb = ctx.value(x, bname="x"), ctx.value(out, bname="y")
    k = Kernel(node.name, [yb, xb], loop_nest(
        [(f"i{d}", s) for d, s in enumerate(oshape)],
        lambda *vs: Store(yb, vs, xb[tuple(v * st + f for v, st, f in zip(vs, step, first))])))
    ctx.emit(schedule_map(k, ctx, int(np.prod(oshape))))
