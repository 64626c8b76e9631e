"""Depthwise quantized convs on blocked 8-bit activations (QConvNCHWc with one input channel
per output channel; cnncc/passes/alter_layout_int8.py).

The input [N, CB, H, W, c] bytes is read in place (no padded copy) and widened to int32 in
registers: per output row, a tile of R pixels x c channels (R int32 accumulator vectors, R from
the Target's vector registers), each tap one weight vector of c channels multiplied into the R
pixels' widened input vectors; where the Target multiplies int16 pairs (AVX2, AVX-512BW), two
kw taps at once: the two pixels' bytes interleaved and one vpmaddwd with the taps' weights as
an int16 pair (dot2_pair). Only the taps inside the image are summed: the rows whose
window leaves the image (top and bottom) and the border columns (``row_tiles``) are tiles of
their own with their valid taps unrolled. Since sum over the valid taps of (x - zx) w = sum x w
- zx sum w, each tile's accumulators start from the bias minus zx x the sum of its valid taps'
weights (a compile-time vector per combination of row and column taps): the pads contribute
(zx - zx) w = 0, as ONNX defines. The epilogue (conv_int8.py) requantizes each accumulator
vector and stores the c bytes of a pixel at once.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import PAIR_DOT, Allocate, Buffer, Call, Cast, Cmp, Const, Expr, For, If, \
    Kernel, Stmt, Store, Var, seq

from .context import LowerCtx
from .cpu_schedule import parallel_outer
from .layout_nchwc import row_tiles, valid_taps

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
    xin = ctx.value(x, bname="x")
    (sh, sw), (dh, dw) = win.strides, win.dilations
    pt, pl = win.begin(0), win.begin(1)
    w3 = wz.reshape((ch,) + ks).astype(np.int64)

    def blocked(v: np.ndarray, dtype) -> np.ndarray:
        """[C, ...] -> [CB, ..., c], the padding channels 0."""
        p = np.zeros((cb * c,) + v.shape[1:], dtype)
        p[:ch] = v
        return np.ascontiguousarray(np.moveaxis(p.reshape((cb, c) + v.shape[1:]), 1, -1))
    wbuf = ctx.const(blocked(w3, np.int32), "w")
    # Two kw taps at once (dot2_pair: one vpmaddwd) where the Target multiplies int16 pairs:
    # each tile's kw taps are paired in order, an odd last one goes alone.
    t = ctx.target
    paired = t is not None and not ctx.gpu and c == ctx.lanes and (
        ("avx2" in t.flags and c == 8) or ("avx512bw" in t.flags and c == 16))
    col_sets = dict.fromkeys(tuple(valid_taps(w, ks[1], sw, dw, pl, p)) for p in range(ow))
    pairs = {pr: k for k, pr in enumerate(dict.fromkeys(
        cols[i:i + 2] for cols in col_sets for i in range(0, len(cols) - 1, 2)))} \
        if paired else {}
    if pairs:
        words = np.stack([(w3[:, :, k0] & 0xFFFF) | (w3[:, :, k1] << 16) for k0, k1 in pairs],
                         -1)
        pbuf = ctx.const(blocked(words.astype(np.uint32).view(np.int32), np.int32), "wp")
    mbuf = ctx.const(blocked(mult, np.float32), "m")
    # The accumulators' start per (kh taps, kw taps) of a tile: bias - zx * sum of those taps.
    taps = [tuple(valid_taps(h, ks[0], sh, dh, pt, o)) for o in range(oh)]
    kinds = [(rows, cols) for rows in dict.fromkeys(taps) for cols in col_sets]
    starts = {kind: k for k, kind in enumerate(kinds)}
    bbuf = ctx.const(np.stack([blocked(bias - x_zp * w3[:, list(rows)][:, :, list(cols)].sum(
        axis=(1, 2)), np.int32) for rows, cols in kinds]), "b")
    ybuf = ctx.value(out, bname="y")
    zbuf = ctx.value(residual, bname="z") if residual else None
    n, b, r = Var("n"), Var("cb"), Var("r")
    # Beside the accumulators the paired update keeps about 10 vector registers (a pair's and a
    # single tap's weights, two loaded pixels, their interleave, widened form and product, room
    # for the scheduler): 8 pixels spilled accumulators with 16 registers (AVX2: 0.5% slower
    # than one tap at a time, 6 pixels 1.4% faster), 16 pixels fit in 32 (14: 2% slower).
    regs = ctx.vector_registers
    r_tile = min(ow, max(1, min(regs // 2, regs - 10) if pairs else regs // 2))

    def tile(rows: tuple, ow0: Expr, rr: int, cols: list[int], tag: str) -> Stmt:
        """rr pixels of row r from column ow0, with the kh taps ``rows`` and kw taps ``cols``."""
        acc = Buffer(f"acc{tag}", I32, (rr, c), "local")
        i, j = Var(f"i{tag}"), Var(f"j{tag}")
        first = starts[rows, tuple(cols)]
        init = For(i, rr, For(j, c, Store(acc, (i, j), bbuf[first, b, j]), "vectorized"),
                   "unrolled")
        def x_at(k: int, kh: int, kw: int) -> Expr:
            return xin[n, b, r * sh + (kh * dh - pt), (ow0 + k) * sw + (kw * dw - pl), j]
        groups = [tuple(cols[q:q + 2]) if pairs else tuple(cols[q:q + 1])
                  for q in range(0, len(cols), 2 if pairs else 1)]
        upd = [For(j, c, Store(acc, (k, j), Call(PAIR_DOT, (
            acc[k, j], x_at(k, kh, g[0]), x_at(k, kh, g[1]), pbuf[b, kh, pairs[g], j]), I32)
            if len(g) == 2 else acc[k, j] + Cast(I32, x_at(k, kh, g[0])) * wbuf[b, kh, g[0], j]),
            "vectorized") for kh in rows for g in groups for k in range(rr)]
        e = Var(f"e{tag}")
        yi = (n, b, r, ow0 + e, j)
        epi = For(e, rr, For(j, c, Store(ybuf, yi, epilogue(
            acc[e, j], mbuf[b, j], zbuf[yi] if zbuf is not None else None)), "vectorized"),
            "unrolled")
        return Allocate(acc, seq(init, *upd, epi))

    def row(rows: tuple, tag: str) -> Stmt:
        """The statements of an output row whose window has the kh taps ``rows``."""
        return seq(*row_tiles(lambda ow0, rr, cols, t: tile(rows, ow0, rr, cols, tag + t),
                              Var(f"t{tag}"), w, ks[1], sw, dw, pl, ow, r_tile))
    # Rows with every kh tap inside share one body; each border row gets its own branch.
    border = [o for o in range(oh) if len(taps[o]) < ks[0]]
    last = border.pop() if len(border) == oh else None
    body: Stmt = row(taps[last], f"_r{last}") if last is not None else row(tuple(range(ks[0])),
                                                                           "")
    for o in reversed(border):
        body = If(Cmp("eq", r, Const(o)), row(taps[o], f"_r{o}"), body)
    k = Kernel(node.name, [ybuf, xin, wbuf, bbuf, mbuf] + ([pbuf] if pairs else [])
               + ([zbuf] if zbuf is not None else []),
               For(n, nb, For(b, cb, For(r, oh, body))))
    ctx.emit(parallel_outer(k, ["n", "cb", "r"], ctx, int(np.prod(oshape)) * int(np.prod(ks))))
