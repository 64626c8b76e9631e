"""Pointwise (1x1, stride 1, unpadded) convs in NCHW: vectorized along the output pixels.

For these the input pixels a tile reads are contiguous, so the tile is CR output channels x PV
consecutive pixels (PV = 1 or 2 vectors): per input channel one or two input vector loads, CR
weight broadcasts, CR * PV / lanes FMAs; the epilogue stores whole vectors along each output
channel's row (no scatter, which dominates when the reduction is short, e.g. 16 channels); a
residual is loaded as whole vectors at the stores' indices and added before the activation.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType
from cnncc.ir.loop import Allocate, Buffer, Const, Expr, F32, For, If, Kernel, Stmt, Store, Var, seq

from .context import LowerCtx


def is_pointwise(win, ks, npix: int, lanes: int) -> bool:
    return (all(k == 1 for k in ks) and all(s == 1 for s in win.strides)
            and not any(win.pads) and npix >= lanes)


def pointwise(ctx: LowerCtx, node, x: str, wv: np.ndarray, bias: np.ndarray, groups: int,
              act, out: str, residual: str | None = None) -> None:
    from .cpu_schedule import parallel_outer

    g = ctx.graph
    lanes = ctx.lanes
    oc, icg = wv.shape[0], wv.shape[1]
    ocg = oc // groups
    xs = g.types[x].shape
    npix = int(np.prod(xs[2:]))
    pv = 2 * lanes if npix >= 2 * lanes else lanes
    regs = ctx.vector_registers
    cr = max(1, min(ocg, (regs - pv // lanes - 1) // (pv // lanes)))
    cb = -(-ocg // cr)
    wp = np.zeros((groups, cb * cr, icg), np.float32)
    wp[:, :ocg] = wv.reshape(groups, ocg, icg)
    wp = np.ascontiguousarray(wp.reshape(groups, cb, cr, icg).transpose(0, 1, 3, 2))
    bp = np.zeros((groups, cb * cr), np.float32)
    bp[:, :ocg] = bias.reshape(groups, ocg)
    wbuf, bbuf = ctx.const(wp, "w"), ctx.const(bp, "b")
    xb = ctx.value(x, (xs[0], xs[1], npix), "x")
    yb = ctx.value(out, (xs[0], oc, npix), "y")
    zb = ctx.value(residual, (xs[0], oc, npix), "z") if residual else None
    n, gv, c, p = Var("n"), Var("g"), Var("cb"), Var("pb")

    def tile(crr: int, p0: Expr, pvv: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", DType.float32, (crr, pvv), "local")
        r, v, r2, v2, r3, v3, ic = (Var(f"{q}{tag}") for q in
                                    ("r", "v", "r2", "v2", "r3", "v3", "ic"))
        init = For(r, crr, For(v, pvv, Store(acc, (r, v), Const(0.0, F32)), "vectorized"),
                   "unrolled")
        upd = Store(acc, (r2, v2), acc[r2, v2] + xb[n, gv * icg + ic, p0 + v2]
                    * wbuf[gv, c, ic, r2])
        red = For(ic, icg, For(r2, crr, For(v2, pvv, upd, "vectorized"), "unrolled"))
        val = acc[r3, v3] + bbuf[gv, c * cr + r3]
        yi = (n, gv * ocg + c * cr + r3, p0 + v3)
        if zb is not None:
            val = val + zb[yi]
        if act is not None:
            val = act(val)
        epi = For(r3, crr, For(v3, pvv, Store(yb, yi, val), "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    pfull, prest = divmod(npix, pv)
    cfull, crest = divmod(ocg, cr)

    def by_pixels(crr: int, tag: str) -> Stmt:
        body: Stmt = tile(crr, p * pv, pv, tag)
        if prest:
            body = If(p < pfull, body, tile(crr, Const(npix - prest), prest, tag + "p"))
        return body

    body = by_pixels(cr, "")
    if crest:
        body = If(c < cfull, body, by_pixels(crest, "c"))
    body = For(n, xs[0], For(gv, groups, For(c, cb, For(p, pfull + (prest > 0), body))))
    k = Kernel(node.name, [yb, xb, wbuf, bbuf] + ([zb] if zb is not None else []), body)
    work = xs[0] * oc * npix * icg
    ctx.emit(parallel_outer(k, ["n", "g", "cb", "pb"], ctx, work))
