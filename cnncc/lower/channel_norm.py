"""ChannelLayerNorm (ir/ops/channel_norm.py): LayerNorm over the channels at every pixel.

The map is viewed as [N, CB, P, b] (blocked NCHWc: b = the block; NCHW: CB = C, b = 1). Per pixel
(pixels in parallel): a vector of b partial sums over the channel blocks (vectorized over the
block's lanes; padding lanes masked out), summed into the mean; the same for the squared
deviations (two passes: a stable variance); then y = (x - mean) rstd Scale + B, one vector store
per block (Scale and B packed blocked, zero in the padding lanes, so those lanes are 0).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Call, Cmp, Const, F32, For, Kernel, Select, Store,
                           Var, seq)

from .context import LowerCtx, const_input, op_context, unsupported
from .cpu_schedule import parallel_outer


def lower_channel_layer_norm(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    a = op_context(g, node).attrs
    x, out = node.inputs[0], node.outputs[0]
    if g.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 is lowered")
    shape = g.types[x].shape
    blk = a["block"]
    if blk:
        nb, cb, c, pix = shape[0], shape[1], a["channels"], int(np.prod(shape[2:-1]))
    else:
        nb, cb, c, pix, blk = shape[0], shape[1], shape[1], int(np.prod(shape[2:])), 1
    view = (nb, cb, pix, blk)
    xb, yb = ctx.value(x, view, "x"), ctx.value(out, view, "y")
    packed = []
    for i in (1, 2):
        v = np.zeros(cb * blk, np.float32)
        v[:c] = np.asarray(const_input(g, node, i, "Scale / B"), np.float32).reshape(-1)
        packed.append(ctx.const(v.reshape(cb, blk), "sb"[i - 1]))
    sc, bi = packed
    acc = Buffer("acc", DType.float32, (blk,), "local")
    st = Buffer("st", DType.float32, (2,), "local")
    n, p = Var("n"), Var("p")
    kind = "vectorized" if blk > 1 and blk % ctx.lanes == 0 else "serial"

    def lanes(name: str, body) -> For:
        v = Var(name)
        return For(v, blk, body(v), kind)

    def masked(b: Var, ln: Var, e):
        if cb * blk == c:
            return e
        return Select(Cmp("lt", b * blk + ln, Const(c)), e, Const(0.0, F32))

    def reduce_into(k: int, term) -> list:
        """acc = sum over blocks of term(b, ln); st[k] = the sum of acc's lanes."""
        b1, b2 = Var(f"b{k}"), Var(f"r{k}")
        return [lanes(f"z{k}", lambda ln: Store(acc, (ln,), Const(0.0, F32))),
                For(b1, cb, lanes(f"ln{k}", lambda ln: Store(acc, (ln,), acc[ln] + masked(
                    b1, ln, term(b1, ln))))),
                Store(st, (k,), Const(0.0, F32)),
                For(b2, blk, Store(st, (k,), st[k] + acc[b2]))]

    d = lambda b, ln: xb[n, b, p, ln] - st[0]                            # noqa: E731
    bo = Var("bo")
    body = seq(
        *reduce_into(0, lambda b, ln: xb[n, b, p, ln]),
        Store(st, (0,), st[0] * (1.0 / c)),
        *reduce_into(1, lambda b, ln: d(b, ln) * d(b, ln)),
        Store(st, (1,), Const(1.0, F32) / Call("sqrt", (st[1] * (1.0 / c) + a["epsilon"],),
                                               F32)),
        For(bo, cb, lanes("lo", lambda ln: Store(yb, (n, bo, p, ln),
                                                d(bo, ln) * st[1] * sc[bo, ln] + bi[bo, ln]))))
    nest = For(n, nb, For(p, pix, Allocate(acc, Allocate(st, body))))
    k = Kernel(node.name, [yb, xb, sc, bi], nest)
    ctx.emit(parallel_outer(k, ["n", "p"], ctx, nb * pix * cb * blk * 3))
