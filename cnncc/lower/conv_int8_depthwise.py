"""Depthwise quantized convs on blocked 8-bit activations (QConvNCHWc with one input channel
per output channel; cnncc/passes/alter_layout_int8.py).

The input [N, CB, H, W, c] bytes is read as bytes and widened to int32 in registers: per
output row, a tile of R pixels x c channels (R int32 accumulator vectors, R from the Target's
vector registers), each tap one weight vector of c channels multiplied into the R pixels'
widened input vectors. The window's padding reads the input zero point zx from a zero-point
padded copy (a contiguous row copy; none when the conv does not pad), and since
sum (x - zx) w = sum x w - zx sum w the bias absorbs zx * sum w at compile time. The epilogue
(conv_int8.py) requantizes each accumulator vector and stores the c bytes of a pixel at once.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Allocate, Buffer, Cast, Const, Expr, For, Kernel, Stmt, Store, Var, seq

from .context import LowerCtx
from .cpu_schedule import parallel_outer
from .layout_nchwc import padded_blocked

I32 = DType.int32


def depthwise_blocked(ctx: LowerCtx, node: Node, wz: np.ndarray, bias: np.ndarray,
                      mult: np.ndarray, win, residual: str | None, epilogue) -> None:
    """``wz`` [C, KH * KW] int32 weights minus their zero point, ``bias`` [C] int64, ``mult``
    [C] float32 requantization multipliers, ``epilogue(acc, mult, z)`` as in conv_int8.py."""
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    x_zp = int(g.params[node.inputs[2]].reshape(-1)[0])
    nb, cb, h, w, c = g.types[x].shape
    ks = tuple(g.types[node.inputs[3]].shape[2:])
    oshape = g.types[out].shape
    oh, ow = oshape[2:4]
    ch = wz.shape[0]
    xp = padded_blocked(ctx, node.name, ctx.value(x, bname="x"), (win.begin(0), win.begin(1)),
                        (win.end(0), win.end(1)), fill=x_zp)

    def blocked(v: np.ndarray, dtype) -> np.ndarray:
        """[C, ...] -> [CB, ..., c], the padding channels 0."""
        p = np.zeros((cb * c,) + v.shape[1:], dtype)
        p[:ch] = v
        return np.ascontiguousarray(np.moveaxis(p.reshape((cb, c) + v.shape[1:]), 1, -1))
    wbuf = ctx.const(blocked(wz.reshape((ch,) + ks), np.int32), "w")
    total = bias.astype(np.int64) - x_zp * wz.astype(np.int64).sum(axis=1)
    bbuf = ctx.const(blocked(total, np.int32), "b")
    mbuf = ctx.const(blocked(mult, np.float32), "m")
    ybuf = ctx.value(out, bname="y")
    zbuf = ctx.value(residual, bname="z") if residual else None
    (sh, sw), (dh, dw) = win.strides, win.dilations
    n, b, r = Var("n"), Var("cb"), Var("r")
    r_tile = min(ow, max(1, ctx.vector_registers // 2))

    def tile(ow0: Expr, rr: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", I32, (rr, c), "local")
        i, j, kh, kw = Var(f"i{tag}"), Var(f"j{tag}"), Var(f"kh{tag}"), Var(f"kw{tag}")
        init = For(i, rr, For(j, c, Store(acc, (i, j), bbuf[b, j]), "vectorized"), "unrolled")
        upd = [For(j, c, Store(acc, (k, j), acc[k, j] + Cast(I32, xp[
            n, b, r * sh + kh * dh, (ow0 + k) * sw + kw * dw, j]) * wbuf[b, kh, kw, j]),
            "vectorized") for k in range(rr)]
        red = For(kh, ks[0], For(kw, ks[1], seq(*upd), "unrolled"), "unrolled")
        e = Var(f"e{tag}")
        yi = (n, b, r, ow0 + e, j)
        epi = For(e, rr, For(j, c, Store(ybuf, yi, epilogue(
            acc[e, j], mbuf[b, j], zbuf[yi] if zbuf is not None else None)), "vectorized"),
            "unrolled")
        return Allocate(acc, seq(init, red, epi))

    full, rest = divmod(ow, r_tile)
    t = Var("t")
    body: Stmt = For(t, full, tile(t * r_tile, r_tile, ""))
    if rest:
        body = seq(body, tile(Const(ow - rest), rest, "t"))
    k = Kernel(node.name, [ybuf, xp, wbuf, bbuf, mbuf] + ([zbuf] if zbuf is not None else []),
               For(n, nb, For(b, cb, For(r, oh, body))))
    ctx.emit(parallel_outer(k, ["n", "cb", "r"], ctx, int(np.prod(oshape)) * int(np.prod(ks))))
