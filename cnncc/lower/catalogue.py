"""LocallyConnected2d, TiledConv2d and Maxout (ir/ops/catalogue.py).

Unshared convolutions (locally connected, tiled) are weight-bound: a locally connected layer
reads every weight once per image, so its kernel streams the weights as fast as memory
delivers them. The weights are packed at compile time as [S, OCB, C, KH, KW, VT] (S filter
sets: OH*OW for locally connected, TH*TW for tiled; VT output channels, zero-padded), so the
filters of one output position are one contiguous run. Locally connected: each task is one
output position and a block of VT output channels: VT accumulators (1..4 vectors: registers),
one broadcast input scalar times one weight vector per FMA, then the bias and the single store.
Tiled: the positions of one row whose columns are equal modulo TW share a filter set, so a task
holds R of them x VT channels in registers (R from the Target's vector registers) and loads each
weight vector once for the R positions, as a convolution's register tile does. Rows (and
column phases) run in parallel; on a GPU every (position, channel block) is a thread.

Maxout views X as [N, C/P, P, S] and takes the max of the P pieces per element, vectorized
along the spatial axis S (in passes of 16 pieces when there are more).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Const, Expr, F32, For, If, Kernel, Stmt, Store,
                           Var, nan_max, seq)
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, const_input, op_context, unsupported
from .conv import padded_input
from .cpu_schedule import parallel_outer, schedule_map

# Accumulator vectors per task: enough independent FMA chains to hide latency while the
# weights stream, few enough that a task of a narrow layer is not mostly padding.
MAX_ACC_VECTORS = 4
# Maxout pieces reduced by one expression (more pieces: one more pass per block).
MAXOUT_BLOCK = 16


def channel_block(ctx: LowerCtx, oc: int) -> int:
    """VT: output channels per task, a whole number of the Target's vectors."""
    lanes = ctx.lanes
    return lanes * max(1, min(MAX_ACC_VECTORS, -(-oc // lanes)))


def pack_unshared(w: np.ndarray, vt: int) -> np.ndarray:
    """[S1, S2, OC, C, KH, KW] -> [S1 * S2, OCB, C, KH, KW, VT] (output channels zero-padded)."""
    s1, s2, oc, c, kh, kw = w.shape
    ocb = -(-oc // vt)
    wp = np.zeros((s1 * s2, ocb * vt, c, kh, kw), np.float32)
    wp[:, :oc] = w.reshape(s1 * s2, oc, c, kh, kw)
    return np.ascontiguousarray(wp.reshape(s1 * s2, ocb, vt, c, kh, kw)
                                .transpose(0, 1, 3, 4, 5, 2))


def lower_unshared_conv(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    if any(g.types[v].dtype is not DType.float32 for v in (x, node.inputs[1], out)):
        raise unsupported(node, "only float32 is lowered")
    w = const_input(g, node, 1, "the weight")
    bias = const_input(g, node, 2, "the bias") if len(node.inputs) > 2 and node.inputs[2] \
        else None
    octx = op_context(g, node)
    xs = g.types[x].shape
    win = resolve_window(octx, xs, w.shape[4:])
    n_img, oc, oh, ow = g.types[out].shape
    local = node.op == "LocallyConnected2d"
    th, tw = w.shape[:2]
    c, kh, kw = w.shape[3:]
    vt = channel_block(ctx, oc)
    ocb = -(-oc // vt)
    wbuf = ctx.const(pack_unshared(w.astype(np.float32), vt), "w")
    # Bias per (filter set, channel): [OH*OW, OCB*VT] for locally connected, [1, OCB*VT] tiled.
    if local:
        bp = np.zeros((oh * ow, ocb * vt), np.float32)
        if bias is not None:
            bp[:, :oc] = bias.astype(np.float32).reshape(oc, oh * ow).T
    else:
        bp = np.zeros((1, ocb * vt), np.float32)
        if bias is not None:
            bp[0, :oc] = bias.astype(np.float32)
    bbuf = ctx.const(bp, "b")
    xp = padded_input(ctx, node, x, [win.begin(0), win.begin(1)], [win.end(0), win.end(1)])
    ybuf = ctx.value(out, bname="y")
    (sh, sw), (dh, dw) = win.strides, win.dilations
    # Output columns j = b + P * q by phase b: a tiled conv's positions of one row and phase
    # share one filter set (P = TW), a locally connected layer's do not (P = 1).
    phases = 1 if local else tw
    q_full, rem = ow // phases, ow % phases
    n, i, b, ob = Var("n"), Var("i"), Var("b"), Var("ob")
    ci, u, v = Var("ci"), Var("u"), Var("v")

    def tile(q0: Expr, rr: int, tag: str) -> Stmt:
        """rr consecutive positions (of one phase) x VT channels in registers."""
        acc = Buffer(f"acc{tag}", DType.float32, (rr, vt), "local")
        r, t, r1, t1, r2, t2 = (Var(f"{p_}{tag}") for p_ in ("r", "t", "r1", "t1", "r2", "t2"))

        def col(rv: Expr) -> Expr:
            return b + (q0 + rv) * phases

        def sel(rv: Expr) -> Expr:
            return i * ow + col(rv) if local else (i % th) * tw + b

        init = For(r, rr, For(t, vt, Store(acc, (r, t), Const(0.0, F32)), "vectorized"),
                   "unrolled")
        xv = xp[n, ci, i * sh + u * dh, col(r1) * sw + v * dw]
        fma = Store(acc, (r1, t1), acc[r1, t1] + xv * wbuf[sel(r1), ob, ci, u, v, t1])
        red = For(ci, c, For(u, kh, For(v, kw, For(r1, rr, For(t1, vt, fma, "vectorized"),
                                                   "unrolled"))))
        store: Stmt = Store(ybuf, (n, ob * vt + t2, i, col(r2)),
                            acc[r2, t2] + bbuf[sel(r2) if local else 0, ob * vt + t2])
        if oc % vt:
            store = If(ob * vt + t2 < oc, store, masked=True)   # acc and bias are padded
        epi = For(r2, rr, For(t2, vt, store, "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    q = Var("q")
    if ctx.gpu:      # one position per thread, the whole band the grid
        inner: Stmt = For(q, -(-ow // phases), If(b + q * phases < ow, tile(q, 1, "")))
        band = ["n", "i", "b", "ob", "q"]
    else:
        # A tiled conv's tile: R positions x VT channels of accumulators, the VT weight
        # vectors loaded once per tap for all R, in the Target's registers. A locally connected
        # layer's positions share no weights: one position per task reads one contiguous run
        # of them (R interleaved weight streams measured slower).
        regs, nv = ctx.vector_registers, vt // ctx.lanes
        rr = 1 if local else max(1, min(q_full or 1, (regs - nv - 2) // nv))
        qb = Var("qb")
        inner = seq(For(qb, q_full // rr, tile(qb * rr, rr, "")),
                    tile(Const(q_full - q_full % rr), q_full % rr, "t") if q_full % rr
                    else None,
                    If(b < rem, tile(Const(q_full), 1, "r")) if rem else None)
        band = ["n", "i", "b"]
    body = For(n, n_img, For(i, oh, For(b, phases, For(ob, ocb, inner))))
    k = Kernel(node.name, [ybuf, xp, wbuf, bbuf], body)
    work = n_img * oh * ow * ocb * vt * c * kh * kw
    ctx.emit(parallel_outer(k, band, ctx, work))


def lower_maxout(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    dt = g.types[x].dtype
    if dt not in (DType.float32, DType.float64):
        raise unsupported(node, f"element type {dt} is not lowered")
    pieces = op_context(g, node)["pieces"]
    xs = g.types[x].shape
    spatial = int(np.prod(xs[2:], dtype=np.int64))
    groups = xs[1] // pieces
    xb = ctx.value(x, (xs[0], groups, pieces, spatial), "x")
    yb = ctx.value(out, (xs[0], groups, spatial), "y")
    n, ch, s = Var("n"), Var("ch"), Var("s")
    # One elementwise pass per block of pieces: the max of a block is one expression, a pass
    # after the first also takes the max with what the previous passes stored.
    for start in range(0, pieces, MAXOUT_BLOCK):
        val = yb[n, ch, s] if start else None
        for p in range(start, min(start + MAXOUT_BLOCK, pieces)):
            val = xb[n, ch, p, s] if val is None else nan_max(val, xb[n, ch, p, s])
        k = Kernel(node.name, [yb, xb], For(n, xs[0], For(ch, groups, For(
            s, spatial, Store(yb, (n, ch, s), val)))))
        ctx.emit(schedule_map(k, ctx, xs[0] * groups * spatial * (1 + min(MAXOUT_BLOCK,
                                                                           pieces - start))))
