"""Conv (1D/2D/3D, groups, dilation, asymmetric pads) with an optional fused epilogue: a
residual (a value of the output's shape added before the activation) and an activation; the
FusedConv op (ir/ops/fused.py) carries both.

Schedule (CPU): the input is first copied into a zero-padded scratch buffer when the conv pads.
General convs: weights packed once as [G, OCb, ICg, K..., VT] (VT = 1 or 2 vectors of output
channels, zero-padded); each task computes R output pixels of a row x VT output channels in a
local accumulator (R unrolled x VT vectorized: registers), broadcasting one input scalar per
pixel into an FMA with a weight vector, then adds the bias and the residual (loaded at the index
of the store), applies the activation and stores: through a local [channel, pixel] tile, one row
of R pixels per channel (see conv_general: NCHW planes 4 KiB apart alias in L1).
Depthwise convs (one input channel per group) are vectorized along the output row instead.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.ops.fused import activation_node, conv_node
from cnncc.ir.loop import (Allocate, And, Buffer, Cmp, Const, Expr, F32, For, If, Kernel, Let,
                           Stmt, Store, Var, seq)
from cnncc.ir.ops.spatial import resolve_window
from cnncc.ir.schedule import Schedule

from .context import LowerCtx, const_input, op_context, unsupported
from .conv_pointwise import is_pointwise, pointwise
from .cpu_schedule import parallel_outer
# The expression table of the elementwise ops: the fused activation is the same math.
from cnncc.ir.ops.activation_exprs import unary_expr

Act = Callable[[Expr], Expr] | None
# General registers a direct conv's reduction loop needs besides its pixels' input bases: the
# tap counter, the tap's offset, the input, weight and offset-table pointers and the bound.
REDUCTION_GPRS = 6


def base_registers(ctx: LowerCtx) -> int:
    """Pixels a direct conv's register tile may hold for its general registers: each keeps
    its own input base through the reduction (a tile may cross output rows), and bases beyond
    the registers spill and reload every tap (ResNet-18 at opt 0, AVX-512 on Zen 4: 14 pixels
    a tile 47.3 ms, 11: 35.7, 10: 34.4, 9: 34.4). GPU kernels: no limit."""
    if ctx.target is None:
        return 1 << 30
    return max(1, ctx.target.general_registers - REDUCTION_GPRS)


def padded_input(ctx: LowerCtx, node: Node, x: str, begin: list, end: list,
                 fill: float = 0.0, phases: int = 1, dtype: DType = DType.float32) -> Buffer:
    """``x`` (of element type ``dtype``) copied into a scratch buffer padded (with ``fill``) on
    its spatial dims.

    ``phases`` > 1 de-interleaves the last axis: element w of a padded row is stored at
    [w % phases, w // phases], so a stride-``phases`` window reads contiguous vectors
    (see ``window_index``).
    """
    shape = ctx.graph.types[x].shape
    nd = len(begin)
    if not any(begin) and not any(end) and phases == 1:
        return ctx.value(x, bname="x")
    pshape = shape[:2] + tuple(s + b + e for s, b, e in zip(shape[2:], begin, end))
    if phases > 1:
        pshape = pshape[:-1] + (phases, -(-pshape[-1] // phases))
    xp = ctx.temp(dtype, pshape, "xp")
    xin = ctx.value(x, bname="x")
    # One pass, row by row: pad rows are filled, interior rows get left fill + a contiguous
    # (vectorized) copy + right fill; the buffer is written exactly once.
    n, c = Var("n"), Var("c")
    rows = [Var(f"r{d}") for d in range(nd - 1)]
    width, bl = shape[-1], begin[-1]
    wfull = pshape[-1] * phases if phases > 1 else pshape[-1]

    def at(w: Expr) -> tuple:
        tail = (w % phases, w // phases) if phases > 1 else (w,)
        return (n, c) + tuple(rows) + tail

    fv = Const(fill, dtype)
    fl, w, fr, fa = Var("fl"), Var("w"), Var("fr"), Var("fa")
    src = (n, c) + tuple(r - b for r, b in zip(rows, begin)) + (w,)
    interior = seq(For(fl, bl, Store(xp, at(fl), fv)),
                   For(w, width, Store(xp, at(w + bl), xin[src])),
                   For(fr, wfull - bl - width, Store(xp, at(fr + (bl + width)), fv)))
    cond = None
    for r, b, sz in zip(rows, begin, shape[2:]):
        ok = And(Cmp("ge", r, Const(b)), Cmp("lt", r, Const(b + sz)))
        cond = ok if cond is None else And(cond, ok)
    body: Stmt = interior if cond is None else If(cond, interior,
                                                  For(fa, wfull, Store(xp, at(fa), fv)))
    for r, sz in reversed(list(zip(rows, pshape[2:]))):
        body = For(r, sz, body)
    sch = Schedule(Kernel(f"{node.name}_pad", [xp, xin], For(n, shape[0], For(c, shape[1],
                                                                              body))))
    for name, ext in (("w", width), ("fa", wfull if cond is not None else 0),
                      ("fr", wfull - bl - width)):
        if ext >= ctx.lanes:
            sch.vectorize(sch.split(name, ctx.lanes, mode="tail")[1])
    work = int(np.prod(pshape))
    ctx.emit(parallel_outer(sch.kernel, ["n", "c"] + [r.name for r in rows], ctx, work))
    return xp


def window_index(rows: list, pos: Expr, kw: Expr, stride: int, dil: int, phases: int) -> tuple:
    """Index into a padded input (from ``padded_input``) of output column ``pos``, tap ``kw``.

    ``rows`` are the indices of the leading spatial axes."""
    if phases == 1:
        return tuple(rows) + (pos * stride + kw * dil,)
    off = kw * dil
    return tuple(rows) + (off % phases, pos + off // phases)


def phases_for(stride: int) -> int:
    """De-interleave stride-2..4 windows (contiguous vector loads instead of gathers)."""
    return stride if 1 < stride <= 4 else 1


def activation_expr(name: str, params: list[float]) -> Act:
    """The element function of a fused activation ("" = none: None)."""
    if name == "Clip":
        _, bounds = activation_node(name, params)

        def clip(x: Expr) -> Expr:
            for b, side in zip(bounds, ("max", "min")):    # max(lo) first, then min(hi)
                if b is not None:
                    x = getattr(x, side)(Const(float(b), F32))
            return x
        return clip
    return unary_expr(activation_node(name, params)[0]) if name else None


def epilogue_activation(ctx: LowerCtx, node: Node) -> Act:
    """The activation expression (or None) of a fused node (FusedConv, FusedConvTranspose,
    FusedGemm, ...: its ``activation`` and ``activation_params``)."""
    attrs = op_context(ctx.graph, node).attrs
    return activation_expr(attrs["activation"], attrs["activation_params"])


def fused_parts(ctx: LowerCtx, node: Node) -> tuple[Node, Act, str | None]:
    """(plain Conv node, activation expression, residual value or None) of a FusedConv."""
    residual = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
    return conv_node(node), epilogue_activation(ctx, node), residual


def lower_fused_conv(ctx: LowerCtx, node: Node) -> None:
    """FusedConv: the conv lowering with the residual and the activation in its epilogue."""
    conv, act, residual = fused_parts(ctx, node)
    lower_conv(ctx, conv, act, node.outputs[0], residual)


def lower_conv(ctx: LowerCtx, node: Node, act: Act = None, out: str | None = None,
               residual: str | None = None) -> None:
    """Conv; ``act`` and ``residual`` (a graph value of the output's shape, added before
    ``act``) are applied in the epilogue, in registers before the single store."""
    g = ctx.graph
    out = out or node.outputs[0]
    x, w = node.inputs[0], node.inputs[1]
    if any(g.types[v].dtype is not DType.float32 for v in (x, w, out, residual) if v):
        raise unsupported(node, "only float32 is lowered")
    if residual and g.types[residual].shape != g.types[out].shape:
        raise unsupported(node, "the residual must have the output's shape")
    if any(i and i not in g.params for i in node.inputs[1:3]):
        return _runtime_weights(ctx, node, act, out, residual)
    wv = const_input(g, node, 1, "the weight")
    bias = const_input(g, node, 2, "the bias") if len(node.inputs) > 2 and node.inputs[2] \
        else None
    octx = op_context(g, node)
    xs = g.types[x].shape
    nd = len(xs) - 2
    win = resolve_window(octx, xs, wv.shape[2:])
    groups = octx["group"]
    oc, icg = wv.shape[0], wv.shape[1]
    ocg = oc // groups
    bias = np.zeros(oc, np.float32) if bias is None else bias.astype(np.float32)
    npix = int(np.prod(g.types[out].shape[2:]))
    if icg > 1 and is_pointwise(win, wv.shape[2:], npix, ctx.lanes):
        return pointwise(ctx, node, x, wv.astype(np.float32), bias, groups, act, out, residual)
    if icg == 1 and ocg == 1:
        phases = phases_for(win.strides[-1])
        xp = padded_input(ctx, node, x, [win.begin(d) for d in range(nd)],
                          [win.end(d) for d in range(nd)], phases=phases)
        return conv_depthwise(ctx, node, xp, wv, bias, win, act, out, phases, residual)
    xp = padded_input(ctx, node, x, [win.begin(d) for d in range(nd)],
                      [win.end(d) for d in range(nd)])
    conv_general(ctx, node, xp, wv, bias, win, groups, act, out, residual)


def _runtime_weights(ctx: LowerCtx, node: Node, act: Act, out: str,
                     residual: str | None = None) -> None:
    """Conv whose weight or bias is a run-time value: padded input + direct loop nest."""
    from .conv_direct import direct_conv
    g = ctx.graph
    x, w = node.inputs[0], node.inputs[1]
    xs, ws = g.types[x].shape, g.types[w].shape
    nd = len(xs) - 2
    win = resolve_window(op_context(g, node), xs, ws[2:])
    xp = padded_input(ctx, node, x, [win.begin(d) for d in range(nd)],
                      [win.end(d) for d in range(nd)])
    wb = ctx.value(w, bname="w")
    bias = ctx.value(node.inputs[2], bname="bias") if len(node.inputs) > 2 and \
        node.inputs[2] else None
    direct_conv(ctx, node.name, xp, lambda oc, ic, k: wb[(oc, ic) + tuple(k)], [wb], bias,
                out, tuple(ws[2:]), tuple(win.strides), tuple(win.dilations),
                op_context(g, node)["group"], ws[1], act, residual)


def tap_offsets(padded: tuple, ks: tuple, dilations, planes: int) -> np.ndarray:
    """[planes, *ks] flat offsets into ``planes`` consecutive padded input planes of spatial
    shape ``padded`` of every kernel tap (dilated): the index table of the direct convs."""
    nd = len(ks)
    pstride = [int(np.prod(padded[d + 1:])) for d in range(nd)]
    offs = np.zeros((planes,) + tuple(ks), np.int64)
    for d in range(nd):
        kd = np.arange(ks[d]) * dilations[d] * pstride[d]
        offs += kd.reshape((1,) + tuple(ks[d] if e == d else 1 for e in range(nd)))
    offs += (np.arange(planes) * int(np.prod(padded))).reshape((planes,) + (1,) * nd)
    return offs


def conv_general(ctx, node, xp, wv, bias, win, groups, act: Act, out, residual=None) -> None:
    """Register-tiled conv over flattened output pixels (see the module docstring).

    The reduction runs over t = (ic, k...) flattened, with a compile-time table of input
    offsets: one loop, no index arithmetic in it, R input base pointers per tile.
    """
    g = ctx.graph
    lanes = ctx.lanes
    oc, icg = wv.shape[0], wv.shape[1]
    ocg = oc // groups
    ks = wv.shape[2:]
    nd = len(ks)
    taps = icg * int(np.prod(ks))
    vt = 2 * lanes if ocg >= 2 * lanes else lanes
    ocb = -(-ocg // vt)
    wp = np.zeros((groups, ocb * vt, taps), np.float32)
    wp[:, :ocg] = wv.reshape(groups, ocg, taps)
    wp = np.ascontiguousarray(wp.reshape(groups, ocb, vt, taps).transpose(0, 1, 3, 2))
    bp = np.zeros((groups, ocb * vt), np.float32)
    bp[:, :ocg] = bias.reshape(groups, ocg)
    xshape = xp.shape
    psp = xshape[2:]                                    # padded input spatial shape
    pstride = [int(np.prod(psp[d + 1:])) for d in range(nd)]
    plane = int(np.prod(psp))
    offs = tap_offsets(psp, ks, win.dilations, icg)
    wbuf, bbuf = ctx.const(wp, "w"), ctx.const(bp, "b")
    obuf = ctx.const(offs.reshape(-1), "off")
    xflat = Buffer("x", DType.float32, (int(np.prod(xshape)),))
    ctx.binding[id(xflat)] = ctx.binding[id(xp)]
    oshape = g.types[out].shape
    osp = oshape[2:]
    npix = int(np.prod(osp))
    ybuf = ctx.value(out, (oshape[0], oc, npix), "y")
    zbuf = ctx.value(residual, (oshape[0], oc, npix), "z") if residual else None
    regs = ctx.vector_registers
    r_tile = min(npix, max(1, (regs - 4) // (vt // lanes)), base_registers(ctx))
    n, gv, ob, pb = Var("n"), Var("g"), Var("ob"), Var("pb")

    def base(p: Expr) -> Expr:
        """Flat input offset of output pixel ``p``'s window origin (at ic = 0)."""
        e: Expr = (n * xshape[1] + gv * icg) * plane
        rest = p
        for d in reversed(range(nd)):
            od = rest % osp[d] if d else rest
            rest = rest // osp[d]
            e = e + od * (win.strides[d] * pstride[d])
        return e

    def tile(p0: Expr, rr: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", DType.float32, (rr, vt), "local")
        r, v, r2, v2, r3, v3 = (Var(f"{q}{tag}") for q in ("r", "v", "r2", "v2", "r3", "v3"))
        t, o = Var(f"t{tag}"), Var(f"o{tag}")
        init = For(r, rr, For(v, vt, Store(acc, (r, v), Const(0.0, F32)), "vectorized"),
                   "unrolled")
        bases = [base(p0 + k) for k in range(rr)]
        upd = [For(v2, vt, Store(acc, (k, v2), acc[k, v2] + xflat[bases[k] + o]
                                 * wbuf[gv, ob, t, v2]), "vectorized") for k in range(rr)]
        red = For(t, taps, Let(o, obuf[t], seq(*upd)))
        val = acc[r3, v3] + bbuf[gv, ob * vt + v3]
        chan = gv * ocg + ob * vt + v3
        if zbuf is not None:
            # Padded lanes of the last channel block are clamped: the masked store's loads
            # must stay in bounds on every lane.
            val = val + zbuf[n, chan.min(oc - 1) if ocg % vt else chan, p0 + r3]
        if act is not None:
            val = act(val)
        if ctx.gpu:
            st_: Stmt = Store(ybuf, (n, chan, p0 + r3), val)
            if ocg % vt:
                st_ = If(ob * vt + v3 < ocg, st_, masked=True)     # acc and bias are padded
            epi = For(r3, rr, For(v3, vt, st_, "vectorized"), "unrolled")
            return Allocate(acc, seq(init, red, epi))
        # On a CPU the tile's outputs go through a local [channel, pixel] tile, then one row
        # of rr pixels per channel: vectors over channels stored straight to NCHW scatter every
        # lane to its own channel plane, and with planes a multiple of 4 KiB apart (224x224,
        # 64x64, 32x32 outputs) all those lines fall in one L1 set, missing on every store.
        # VGG-11's 3x3 stem at opt 0: 18.5 ms scattered (2.53 at 220x220).
        tb = Buffer(f"tb{tag}", F32, (vt, rr), "local")
        r4, v4 = Var(f"r4{tag}"), Var(f"v4{tag}")
        put = For(r3, rr, For(v3, vt, Store(tb, (v3, r3), val), "vectorized"), "unrolled")
        row: Stmt = For(r4, rr, Store(ybuf, (n, gv * ocg + ob * vt + v4, p0 + r4), tb[v4, r4]),
                        "vectorized")
        if ocg % vt:
            row = If(ob * vt + v4 < ocg, row)           # acc and bias are padded
        return Allocate(acc, Allocate(tb, seq(init, red, put, For(v4, vt, row))))

    full, rest = divmod(npix, r_tile)
    inner: Stmt = tile(pb * r_tile, r_tile, "")
    if rest:     # the last pixel tile is narrower: same loop, a branch per tile
        inner = If(pb < full, inner, tile(Const(npix - rest), rest, "t"))
    body = For(n, oshape[0], For(gv, groups, For(ob, ocb, For(pb, full + (rest > 0), inner))))
    params = [ybuf, xflat, wbuf, bbuf, obuf] + ([zbuf] if zbuf is not None else [])
    k = Kernel(node.name, params, body)
    work = int(np.prod(oshape)) * taps
    ctx.emit(parallel_outer(k, ["n", "g", "ob", "pb"], ctx, work))


def conv_depthwise(ctx, node, xp, wv, bias, win, act: Act, out, phases: int = 1,
               residual: str | None = None) -> None:
    g = ctx.graph
    ks = wv.shape[2:]
    nd = len(ks)
    oshape = g.types[out].shape
    osp = oshape[2:]
    ow = osp[-1]
    vt = ctx.lanes
    wbuf = ctx.const(wv.reshape((wv.shape[0],) + ks).astype(np.float32), "w")
    bbuf = ctx.const(bias, "b")
    ybuf = ctx.value(out, bname="y")
    zbuf = ctx.value(residual, bname="z") if residual else None
    st, dl = win.strides, win.dilations
    n, c = Var("n"), Var("c")
    orow = [Var(f"o{d}") for d in range(nd - 1)]
    kv = [Var(f"k{d}") for d in range(nd)]

    def tile(ow0: Expr, width: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", DType.float32, (width,), "local")
        v, v2, v3 = Var(f"v{tag}"), Var(f"v2{tag}"), Var(f"v3{tag}")
        init = For(v, width, Store(acc, (v,), bbuf[c]), "vectorized")
        rows = [o * st[d] + kv[d] * dl[d] for d, o in enumerate(orow)]
        xi = window_index(rows, ow0 + v2, kv[-1], st[-1], dl[-1], phases)
        upd = Store(acc, (v2,), acc[v2] + xp[(n, c) + xi] * wbuf[(c,) + tuple(kv)])
        red: Stmt = For(v2, width, upd, "vectorized")
        for d in reversed(range(nd)):
            red = For(kv[d], ks[d], red, "unrolled" if ks[d] <= 7 else "serial")
        yi = (n, c) + tuple(orow) + (ow0 + v3,)
        val = acc[v3] if zbuf is None else acc[v3] + zbuf[yi]
        if act is not None:
            val = act(val)
        epi = For(v3, width, Store(ybuf, yi, val), "vectorized")
        return Allocate(acc, seq(init, red, epi))

    owb = Var("owb")
    body: Stmt = For(owb, ow // vt, tile(owb * vt, vt, ""))
    if ow % vt:
        body = seq(body, tile(Const(ow - ow % vt), ow % vt, "t"))
    for d in reversed(range(nd - 1)):
        body = For(orow[d], osp[d], body)
    body = For(n, oshape[0], For(c, oshape[1], body))
    params = [ybuf, xp, wbuf, bbuf] + ([zbuf] if zbuf is not None else [])
    k = Kernel(node.name, params, body)
    work = int(np.prod(oshape)) * int(np.prod(ks))
    ctx.emit(parallel_outer(k, ["n", "c"] + [o.name for o in orow], ctx, work))
