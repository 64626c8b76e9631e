"""GPU schedules of Conv (1D/2D/3D, groups, dilation, strides, asymmetric pads, fused
activation).

General convs are an implicit GEMM per group (gpu_gemm.tiled_product): for group g,
Y[n, g OCg + oc, p] = act(bias + sum_r W[g, oc, r] X[n, g ICg + ic(r), window(p, r)]) with
rows = output channels, columns = q = n P + p (the batch folded into the output pixels, P per
image) and the reduction r = (ic, kernel taps) flattened. Grid: (groups, OC tiles, pixel
tiles) on blockIdx (z, y, x). The weights are packed at compile time as [G, K, OCp] (zero
padded to whole tiles: their shared tile loads are unguarded and coalesced along the output
channels); the input tile gathers its window elements straight from the unpadded input
(consecutive threads -> consecutive output pixels -> consecutive input columns at stride 1),
pads and tile edges read as 0 through clamped loads + select, so no padded copy of the input
is made. Each thread keeps TM x TN outputs in registers; the epilogue adds the bias and applies
the activation before the single store (consecutive threads: consecutive pixels of a row).

Depthwise convs (one input and one output channel per group) have no reuse across output
channels: one block per (image, channel, pixel tile), each thread R output pixels strided by
the block size (coalesced), the window unrolled, weights read once per tap into a register,
accumulators in registers, no shared memory.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Const, Expr, F32, For, If, Kernel, Let, Select,
                           Stmt, Store, Var, seq)
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, op_context
from .conv import lower_conv
from .gpu_gemm import cdiv, choose_tiling, packed, tiled_product
from .gpu_schedule import block_threads

Act = Callable[[Expr], Expr] | None


def lower_conv_gpu(ctx: LowerCtx, node: Node, act: Act = None, out: str | None = None) -> None:
    """Conv for the CUDA target: implicit-GEMM tiles, or the depthwise schedule. Run-time
    weights and non-float32 convs take the generic rule (its parallel loops become the grid)."""
    g = ctx.graph
    out = out or node.outputs[0]
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if any(g.types[v].dtype is not DType.float32 for v in (x, w, out)) or \
            any(v not in g.params for v in (w, b) if v):
        return lower_conv(ctx, node, act, out)
    wv = g.params[w].astype(np.float32)
    oc, icg = wv.shape[0], wv.shape[1]
    bias = np.zeros(oc, np.float32) if b is None else g.params[b].astype(np.float32)
    octx = op_context(g, node)
    win = resolve_window(octx, g.types[x].shape, wv.shape[2:])
    groups = octx["group"]
    if icg == 1 and oc == groups:
        return _depthwise(ctx, node, x, wv, bias, win, act, out)
    return _implicit_gemm(ctx, node, x, wv, bias, win, groups, act, out)


def _unflatten(q: Expr, dims: tuple) -> list:
    """Row-major coordinates of flat index ``q`` (q may run past the end: the first
    coordinate then exceeds its dim)."""
    coords, rest = [], q
    for d in reversed(range(len(dims))):
        if d == 0:
            coords.append(rest)
        else:
            coords.append(rest % dims[d])
            rest = rest // dims[d]
    return coords[::-1]


def _window_load(xb: Buffer, lead: tuple, pos: list, sizes: tuple, low: list,
                 high: list, extra=None) -> Expr:
    """xb[lead + pos] with every position checked against [0, size): outside (a pad, or a
    tile edge) the value is 0 and the load is clamped into the input. ``low`` / ``high`` say
    which bounds can fail; ``extra`` is an additional validity condition."""
    cond = extra
    idx = []
    for p, size, lo, hi in zip(pos, sizes, low, high):
        if lo:
            c = p >= 0
            cond = c if cond is None else And(cond, c)
            p2 = p.max(0)
        else:
            p2 = p
        if hi:
            c = p < size
            cond = c if cond is None else And(cond, c)
            p2 = p2.min(size - 1)
        idx.append(p2)
    v = xb[tuple(lead) + tuple(idx)]
    return v if cond is None else Select(cond, v, Const(0.0, F32))


def _implicit_gemm(ctx: LowerCtx, node: Node, x: str, wv: np.ndarray, bias: np.ndarray,
                   win, groups: int, act: Act, out: str) -> None:
    g = ctx.graph
    xs = g.types[x].shape
    osh = g.types[out].shape
    batch, nd = xs[0], len(xs) - 2
    oc, icg = wv.shape[0], wv.shape[1]
    ocg = oc // groups
    ks = tuple(wv.shape[2:])
    taps = int(np.prod(ks))
    k = icg * taps
    osp = tuple(osh[2:])
    npix = int(np.prod(osp))
    nq = batch * npix
    t = choose_tiling(ocg, nq, k, groups)
    kp = cdiv(k, t.bk) * t.bk
    ocp = cdiv(ocg, t.bm) * t.bm
    wg = wv.reshape(groups, ocg, k)
    wp = np.stack([packed(wg[i].T, kp, ocp) for i in range(groups)])
    bp = np.stack([packed(bias.reshape(groups, 1, ocg)[i], 1, ocp)[0] for i in range(groups)])
    wbuf, bbuf = ctx.const(wp, "w"), ctx.const(bp, "bias")
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, (batch, oc, npix), "y")
    st, dl = win.strides, win.dilations
    begin = [win.begin(d) for d in range(nd)]
    q_pad = nq % t.bn != 0
    # Which window bounds can fail: a pad on that side, or the pixel tile's padded tail.
    low = [begin[d] > 0 for d in range(nd)]
    high = [(osp[d] - 1) * st[d] + (ks[d] - 1) * dl[d] - begin[d] >= xs[2 + d] or q_pad
            for d in range(nd)]

    def load_a(zz, mi, ki):
        return wbuf[zz, ki, mi]

    def load_b(zz, qi, ki):
        if batch > 1:
            nb, p = qi // npix, qi % npix
            nb = nb.min(batch - 1) if q_pad else nb
        else:
            nb, p = Const(0), qi
        kc = _unflatten(ki, (icg,) + ks)
        ic = kc[0].min(icg - 1) if k % t.bk else kc[0]
        o = _unflatten(p, osp)
        pos = [o[d] * st[d] + kc[1 + d] * dl[d] - begin[d] for d in range(nd)]
        chan = zz * icg + ic if groups > 1 else ic
        extra = ki < k if k % t.bk else None
        return _window_load(xb, (nb, chan), pos, xs[2:], low, high, extra)

    def epilogue(zz, mi, qi, v):
        val = v + bbuf[zz, mi]
        if act is not None:
            val = act(val)
        nb, p = (qi // npix, qi % npix) if batch > 1 else (Const(0), qi)
        return Store(yb, (nb, zz * ocg + mi if groups > 1 else mi, p), val)

    ctx.emit(tiled_product(node.name, [yb, xb, wbuf, bbuf], t, ocg, nq, k, groups, load_a,
                           False, load_b, False, epilogue))


def _depthwise(ctx: LowerCtx, node: Node, x: str, wv: np.ndarray, bias: np.ndarray, win,
               act: Act, out: str) -> None:
    g = ctx.graph
    xs = g.types[x].shape
    osh = g.types[out].shape
    batch, chans, nd = xs[0], xs[1], len(xs) - 2
    ks = tuple(wv.shape[2:])
    osp = tuple(osh[2:])
    npix = int(np.prod(osp))
    reps = 4 if npix >= 4096 else 2 if npix >= 1024 else 1
    nt = block_threads(cdiv(npix, reps))
    tile = nt * reps
    wbuf = ctx.const(wv.reshape((chans,) + ks), "w")
    bbuf = ctx.const(bias, "bias")
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, (batch, chans, npix), "y")
    st, dl = win.strides, win.dilations
    begin = [win.begin(d) for d in range(nd)]
    tail = npix % tile != 0
    low = [begin[d] > 0 for d in range(nd)]
    high = [(osp[d] - 1) * st[d] + (ks[d] - 1) * dl[d] - begin[d] >= xs[2 + d] or tail
            for d in range(nd)]
    n, c, pb, tv = Var("n"), Var("c"), Var("pb"), Var("t")
    acc = Buffer("acc", F32, (reps,), "local")
    r0, r1, r2 = Var("r0"), Var("r1"), Var("r2")
    kv = [Var(f"k{d}") for d in range(nd)]
    wt = Var("wt", F32)
    nn = n if batch > 1 else Const(0)

    def pix(r: Expr) -> Expr:
        return pb * tile + tv + r * nt

    o = _unflatten(pix(r1), osp)
    pos = [o[d] * st[d] + kv[d] * dl[d] - begin[d] for d in range(nd)]
    xv = _window_load(xb, (nn, c), pos, xs[2:], low, high)
    red: Stmt = Let(wt, wbuf[(c,) + tuple(kv)],
                    For(r1, reps, Store(acc, (r1,), acc[r1] + xv * wt), "unrolled"))
    for d in reversed(range(nd)):
        red = For(kv[d], ks[d], red, "unrolled" if ks[d] <= 7 else "serial")
    val = acc[r2] if act is None else act(acc[r2])
    st_: Stmt = Store(yb, (nn, c, pix(r2)), val)
    if tail:
        st_ = If(pix(r2) < npix, st_)
    body: Stmt = For(tv, nt, Allocate(acc, seq(
        For(r0, reps, Store(acc, (r0,), bbuf[c]), "unrolled"), red,
        For(r2, reps, st_, "unrolled"))), "gpu_thread")
    body = For(c, chans, For(pb, cdiv(npix, tile), body, "gpu_block"), "gpu_block")
    if batch > 1:
        body = For(n, batch, body, "gpu_block")
    ctx.emit(Kernel(node.name, [yb, xb, wbuf, bbuf], body))
