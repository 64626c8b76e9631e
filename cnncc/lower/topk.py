"""TopK: per slice along the axis, an insertion into the k output slots (kept sorted) of each
element in index order; equal values keep index order and NaN ranks last, as the reference's
stable argsort."""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Cmp, Const, Expr, For, If, Kernel, Or, Store,
                           Var, seq)

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import parallel_outer


def lower_topk(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, vals, inds = node.inputs[0], node.outputs[0], node.outputs[1]
    dt = g.types[x].dtype
    if dt is DType.bool or dt is DType.float16:
        raise unsupported(node, f"element type {dt}")
    at = op_context(g, node).attrs
    shape = g.types[x].shape
    axis = at["axis"] % len(shape)
    k = g.types[vals].shape[axis]
    outer, red = int(np.prod(shape[:axis])), shape[axis]
    inner = int(np.prod(shape[axis + 1:]))
    xb = ctx.value(x, (outer, red, inner), "x")
    yb = ctx.value(vals, (outer, k, inner), "vals")
    params = [yb, xb]
    ib = None
    if inds:
        ib = ctx.value(inds, (outer, k, inner), "inds")
        params.append(ib)
    largest = bool(at["largest"])
    # The k slots of one slice live in local arrays and are copied out at the end: swapping
    # through the output buffers themselves was miscompiled by LLVM 22's loop vectorizer once
    # it unrolled small slices and vectorized across them (a masked load of the index output
    # moved after the masked store it must precede: TopK of 5x6 along axis 0 gave a repeated
    # index in ~40% of random inputs).
    sv = Buffer("sv", dt, (max(k, 1),), "local")
    si = Buffer("si", DType.int64, (max(k, 1),), "local")
    cand = Buffer("cand", dt, (2,), "local")           # [0] candidate, [1] swap scratch
    cidx = Buffer("cidx", DType.int64, (3,), "local")  # [2]: 1 once the candidate went in
    o, i, r, j, c = Var("o"), Var("i"), Var("r"), Var("j"), Var("c")

    def better(v: Expr, s: Expr) -> Expr:
        b = Cmp("gt" if largest else "lt", v, s)
        if dt.is_float:                                # NaN ranks after every number
            b = Or(b, And(Cmp("ne", s, s), Cmp("eq", v, v)))
        return b

    slot_v, slot_i = sv[j], si[j]
    swap = seq(Store(cand, (1,), slot_v), Store(cidx, (1,), slot_i),
               Store(sv, (j,), cand[0]), Store(si, (j,), cidx[0]),
               Store(cand, (0,), cand[1]), Store(cidx, (0,), cidx[1]),
               Store(cidx, (2,), Const(1)))
    # Slots 0..r-1 are filled and sorted: the candidate goes before the first slot it beats,
    # every later filled slot moves down one, slot r (if < k) takes the last one.
    go = Or(Cmp("eq", j, r), And(Cmp("lt", j, r), Or(Cmp("ne", cidx[2], Const(0)),
                                                      better(cand[0], slot_v))))
    insert = For(j, k, If(go, swap))
    scan = For(r, red, seq(Store(cand, (0,), xb[o, r, i]), Store(cidx, (0,), r),
                           Store(cidx, (2,), Const(0)), insert))
    out = [Store(yb, (o, c, i), sv[c])] + ([Store(ib, (o, c, i), si[c])] if inds else [])
    body = Allocate(sv, Allocate(si, Allocate(cand, Allocate(cidx, seq(
        scan, For(c, k, seq(*out)))))))
    kern = Kernel(node.name, params, For(o, outer, For(i, inner, body)))
    ctx.emit(parallel_outer(kern, ["o"], ctx, outer * inner * red * max(k, 1)))
