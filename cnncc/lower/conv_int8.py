"""Quantized convs (QLinearConv, and QConv from cnncc/passes/fuse_quantized.py) on integers,
with bias, requantization, the quantized residual and ReLU fused in the epilogue.

The input minus its zero point is copied once into a padded int32 scratch buffer (the pads
read zero there, i.e. the zero point: what ONNX defines); weights minus their zero points are
packed at compile time as int32 [G, OCb, taps, VT] (VT = 1 or 2 vectors of output channels);
each task accumulates R output pixels x VT channels exactly in int32 registers (R unrolled,
VT vectorized, one input scalar broadcast per pixel and tap), then requantizes in float32:
round_half_even(float(acc + bias) * (x_scale * w_scale / y_scale)) + y_zero_point, saturated;
with a residual R: round_half_even(((y - y_zp) * y_scale + (R - r_zp) * r_scale) / s_scale)
+ s_zp, saturated; ReLU: max with the output zero point (conv_int8_parts.py, shared with the
GPU kernels of gpu_conv_int8.py). The output is stored as int8/uint8: activations stay 8-bit
between convs.
Exactness: the accumulation is exact; the requantization rounds once in float32 where the
reference multiplies in float64, so an output may differ by one step at a rounding tie.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Cast, Cmp, Const, Expr, For, If, Kernel, Let,
                           Stmt, Store, Var, seq)
from cnncc.ir.ops.quant_blocked import shifted_zero_point

from .context import LowerCtx, op_context, unsupported
from .conv import phases_for, tap_offsets, window_index
from .conv_int8_depthwise import depthwise_blocked
from .conv_int8_dot import (blocked_words, dot_plan, dot_registers, dot_weights, input_words,
                            int32_update, pack_dot, tile_vectors)
from .conv_int8_parts import qconv_parts
from .cpu_schedule import parallel_outer

I32 = DType.int32


def _padded(ctx: LowerCtx, node: Node, x: str, zp: int, win, phases: int = 1) -> Buffer:
    """(x - zp) as int32, zero-padded by the window's pads: [N, C, H + pads, W + pads] (pad
    rows and columns filled apart, interior rows copied contiguously); ``phases`` > 1
    de-interleaves W as conv.padded_input does ([..., W % phases, W // phases])."""
    shape = ctx.graph.types[x].shape
    nd = len(shape) - 2
    pshape = shape[:2] + tuple(s + win.begin(d) + win.end(d) for d, s in enumerate(shape[2:]))
    wfull = pshape[-1]
    if phases > 1:
        wfull = -(-pshape[-1] // phases) * phases
        pshape = pshape[:-1] + (phases, wfull // phases)
    xp = ctx.temp(I32, pshape, "xp")
    xin = ctx.value(x, bname="x")
    n, c = Var("n"), Var("c")
    rows = [Var(f"r{d}") for d in range(nd - 1)]
    w, fl, fr, fa = Var("w"), Var("fl"), Var("fr"), Var("fa")
    zero = Const(0, I32)
    bl, width = win.begin(nd - 1), shape[-1]
    def at(col: Expr) -> tuple:
        return (n, c) + tuple(rows) + ((col % phases, col // phases) if phases > 1 else (col,))
    src = (n, c) + tuple(r - win.begin(d) for d, r in enumerate(rows)) + (w,)
    interior = seq(For(fl, bl, Store(xp, at(fl), zero)),
                   For(w, width, Store(xp, at(w + bl), Cast(I32, xin[src]) - Const(zp, I32))),
                   For(fr, wfull - bl - width, Store(xp, at(fr + (bl + width)), zero)))
    inside = None
    for d, r in enumerate(rows):
        ok = And(Cmp("ge", r, Const(win.begin(d))), Cmp("lt", r, Const(win.begin(d) + shape[2 + d])))
        inside = ok if inside is None else And(inside, ok)
    body: Stmt = interior if inside is None else If(inside, interior,
                                                    For(fa, wfull, Store(xp, at(fa), zero)))
    for d in reversed(range(nd - 1)):
        body = For(rows[d], pshape[2 + d], body)
    k = Kernel(f"{node.name}_pad", [xp, xin], For(n, shape[0], For(c, shape[1], body)))
    ctx.emit(parallel_outer(k, ["n", "c"], ctx, int(np.prod(pshape))))
    return xp


def lower_qconv(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    oc_ = op_context(g, node)
    qp = qconv_parts(ctx, node)
    x, out, residual, epilogue = qp.x, qp.out, qp.residual, qp.epilogue
    wq, x_zp, groups, win, xs = qp.wq, qp.x_zp, qp.groups, qp.win, qp.xs
    bias, mult_oc = qp.bias, qp.mult
    oc, icg, ocg = qp.oc, qp.icg, qp.ocg
    # QConvNCHWc (alter_layout_int8): the output and residual in NCHW{block}c bytes, the input
    # too unless in_layout is NCHW.
    block = oc_["block"] if node.op == "QConvNCHWc" else 0
    in_blocked = bool(block) and oc_["in_layout"] == "NCHWc"
    nd = len(xs) - 2
    wz = qp.wz
    zx = shifted_zero_point(g.types[x].dtype, x_zp)
    if icg == 1 and ocg == 1:
        if block:
            return depthwise_blocked(ctx, node, wz.reshape(oc, -1), bias, mult_oc, win,
                                     residual, epilogue)
        wz = wz.reshape(oc, -1)
        phases = phases_for(win.strides[-1])
        return _depthwise(ctx, node, _padded(ctx, node, x, x_zp, win, phases), wz, bias,
                          mult_oc, win, residual, epilogue, phases)
    lanes = ctx.lanes
    ks = wq.shape[2:]
    vt = tile_vectors(ocg, lanes)
    ocb = -(-ocg // vt)
    dot = dot_plan(ctx, wz, icg, ocg, bias, zx, copied=in_blocked)
    if block and dot is None:
        raise unsupported(node, "blocked quantized convs need the byte dot products")
    ws = 1                              # int32 words per pixel of the input view
    if in_blocked:
        xp, dot = blocked_words(ctx, node, x, x_zp, win, dot)
        ws, planes = xp.shape[-1], -(-icg // 4)
        wps, comp, update = dot_weights(wz, zx, dot)
    elif dot is not None:
        xp, planes = pack_dot(ctx, node, x, x_zp, win, groups)
        wps, comp, update = dot_weights(wz, zx, dot)
    else:
        xp = _padded(ctx, node, x, x_zp, win)
        planes = icg
        wps = [wz]
        comp = np.zeros(oc, np.int64)
        update = int32_update
    taps = planes * int(np.prod(ks))
    packed = []
    for wv in wps:
        wp = np.zeros((groups, ocb * vt, taps), np.int32)
        wp[:, :ocg] = wv.reshape(groups, ocg, taps)
        packed.append(wp.reshape(groups, ocb, vt, taps).transpose(0, 1, 3, 2))
    order = nhi = None
    if len(packed) == 2 and dot.endswith("_avx2"):
        # AVX2 pair split: per output vector block, the taps with a non-zero high part first
        # (two dot calls), then the others (one).
        need = (packed[1] != 0).any(axis=3)
        order = np.argsort(~need, axis=2, kind="stable")
        packed = [np.take_along_axis(p, order[..., None], axis=2) for p in packed]
        nhi = need.sum(axis=2).astype(np.int64)
        packed[1] = packed[1][:, :, :max(1, int(nhi.max()))]
    wbufs = [ctx.const(np.ascontiguousarray(p), f"w{k}") for k, p in enumerate(packed)]

    def per_channel(v: np.ndarray, dtype) -> np.ndarray:
        p = np.zeros((groups, ocb * vt), dtype)
        p[:, :ocg] = np.broadcast_to(v, (oc,)).reshape(groups, ocg)
        return p
    bias_total = bias - comp
    bp = per_channel(bias_total, np.int32)
    mult = per_channel(mult_oc, np.float32)
    psp = xp.shape[2:2 + nd]
    pstride = [int(np.prod(psp[d + 1:])) * ws for d in range(nd)]
    plane = int(np.prod(psp))
    if in_blocked:      # 4 channels q of a pixel: block q // per_block, then its words
        q = np.arange(planes).reshape((planes,) + (1,) * nd)
        per_block = ws // input_words(dot)
        offs = tap_offsets(psp, ks, win.dilations, 1) * ws + (q // per_block) * (plane * ws) \
            + (q % per_block) * input_words(dot)
    else:
        offs = tap_offsets(psp, ks, win.dilations, planes)
    bbuf, mbuf = ctx.const(bp, "b"), ctx.const(mult, "m")
    obuf = ctx.const(offs.reshape(-1) if order is None else offs.reshape(-1)[order], "off")
    hbuf = ctx.const(nhi, "nhi") if nhi is not None else None
    xflat = Buffer("x", I32, (int(np.prod(xp.shape)),))
    ctx.binding[id(xflat)] = ctx.binding[id(xp)]
    oshape = g.types[out].shape
    osp = oshape[2:-1] if block else oshape[2:]
    npix = int(np.prod(osp))
    yshape = (oshape[0], oshape[1], npix, block) if block else (oshape[0], oc, npix)
    ybuf = ctx.value(out, yshape, "y")
    zbuf = ctx.value(residual, yshape, "z") if residual else None
    regs = ctx.vector_registers
    if dot is None:
        r_tile = min(npix, max(1, (regs - 4) // (vt // lanes)))
    else:
        # A dot's input word is used by every weight vector, so it lives in a register.
        per_row, spare = dot_registers(dot, vt // lanes)
        r_tile = min(npix, max(1, (regs - spare) // per_row))
    n, gv, ob, pb = Var("n"), Var("g"), Var("ob"), Var("pb")

    def base(p: Expr) -> Expr:
        # NCHW packing: G * C4 planes of words; blocked: CB planes of pixels of ws words.
        e: Expr = n * (xp.shape[1] * plane * ws) if in_blocked else \
            (n * xp.shape[1] + gv * planes) * plane
        rest = p
        for d in reversed(range(nd)):
            od = rest % osp[d] if d else rest
            rest = rest // osp[d]
            e = e + od * (win.strides[d] * pstride[d])
        return e

    def blocked_store(blk: Expr, first: int, p: Expr, acc: Buffer, r3: Var, tag: str) -> Stmt:
        """The block ``blk`` of output pixel p: accumulator lanes first.. first + block."""
        j = Var(f"j{tag}")
        z = zbuf[n, blk, p, j] if zbuf is not None else None
        st_: Stmt = For(j, block, Store(ybuf, (n, blk, p, j), epilogue(
            acc[r3, first + j], mbuf[gv, ob * vt + first + j], z)), "vectorized")
        if first and ocb * vt > oshape[1] * block:
            st_ = If(blk < oshape[1], st_)
        return st_

    def tile(p0: Expr, rr: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", I32, (rr, vt), "local")
        r, v, v2, r3, v3 = (Var(f"{q}{tag}") for q in ("r", "v", "v2", "r3", "v3"))
        t, o = Var(f"t{tag}"), Var(f"o{tag}")
        init = For(r, rr, For(v, vt, Store(acc, (r, v), bbuf[gv, ob * vt + v]), "vectorized"),
                   "unrolled")
        bases = [base(p0 + k) for k in range(rr)]

        def upd(t: Var, o: Var, v2: Var, ws: list) -> Stmt:
            return seq(*[For(v2, vt, Store(acc, (k, v2), update(
                acc[k, v2], lambda i, k=k: xflat[bases[k] + o + i],
                [w[gv, ob, t, v2] for w in ws])), "vectorized") for k in range(rr)])
        if hbuf is None:
            red = For(t, taps, Let(o, obuf[t], upd(t, o, v2, wbufs)))
        else:
            t2, o2, v4 = Var(f"t2{tag}"), Var(f"o2{tag}"), Var(f"v4{tag}")
            nh = hbuf[gv, ob]
            red = seq(For(t, nh, Let(o, obuf[gv, ob, t], upd(t, o, v2, wbufs))),
                      For(t2, Const(taps) - nh, Let(o2, obuf[gv, ob, t2], upd(t2, o2, v4,
                                                                            wbufs[:1])),
                          start=nh))
        if block:
            epi = For(r3, rr, seq(*[blocked_store(ob * (vt // block) + k, k * block, p0 + r3,
                                                  acc, r3, f"{tag}_{k}")
                                    for k in range(vt // block)]), "unrolled")
            return Allocate(acc, seq(init, red, epi))
        chan = gv * ocg + ob * vt + v3
        z = None
        if zbuf is not None:
            z = zbuf[n, chan.min(oc - 1) if ocg % vt else chan, p0 + r3]
        st_: Stmt = Store(ybuf, (n, chan, p0 + r3), epilogue(acc[r3, v3], mbuf[gv, ob * vt + v3], z))
        if ocg % vt:
            st_ = If(ob * vt + v3 < ocg, st_, masked=True)
        epi = For(r3, rr, For(v3, vt, st_, "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    full, rest = divmod(npix, r_tile)
    inner: Stmt = tile(pb * r_tile, r_tile, "")
    if rest:
        inner = If(pb < full, inner, tile(Const(npix - rest), rest, "t"))
    body = For(n, oshape[0], For(gv, groups, For(ob, ocb, For(pb, full + (rest > 0), inner))))
    params = [ybuf, xflat, *wbufs, bbuf, mbuf, obuf] + ([zbuf] if zbuf is not None else []) \
        + ([hbuf] if hbuf is not None else [])
    k = Kernel(node.name, params, body)
    ctx.emit(parallel_outer(k, ["n", "g", "ob", "pb"], ctx, int(np.prod(oshape)) * taps))


def _depthwise(ctx: LowerCtx, node: Node, xp: Buffer, wz: np.ndarray, bias: np.ndarray,
               mult: np.ndarray, win, residual: str | None, epilogue, phases: int) -> None:
    """One input channel per output channel: a row of output pixels per vector (the
    accumulators, exact int32), a scalar weight per tap broadcast, the epilogue as above."""
    g = ctx.graph
    out = node.outputs[0]
    oshape = g.types[out].shape
    nd = len(oshape) - 2
    ks = tuple(g.types[node.inputs[3]].shape[2:])
    osp = oshape[2:]
    ow, vt = osp[-1], ctx.lanes
    wbuf = ctx.const(wz.reshape((oshape[1],) + ks).astype(np.int32), "w")
    bbuf, mbuf = ctx.const(bias.astype(np.int32), "b"), ctx.const(mult, "m")
    ybuf = ctx.value(out, bname="y")
    zbuf = ctx.value(residual, bname="z") if residual else None
    st, dl = win.strides, win.dilations
    n, c = Var("n"), Var("c")
    orow = [Var(f"o{d}") for d in range(nd - 1)]
    kv = [Var(f"k{d}") for d in range(nd)]

    def tile(ow0: Expr, width: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", I32, (width,), "local")
        v, v2, v3 = Var(f"v{tag}"), Var(f"v2{tag}"), Var(f"v3{tag}")
        init = For(v, width, Store(acc, (v,), bbuf[c]), "vectorized")
        rows = [o * st[d] + kv[d] * dl[d] for d, o in enumerate(orow)]
        xi = (n, c) + window_index(rows, ow0 + v2, kv[-1], st[-1], dl[-1], phases)
        red: Stmt = For(v2, width, Store(acc, (v2,), acc[v2] + xp[xi] * wbuf[(c,) + tuple(kv)]),
                        "vectorized")
        for d in reversed(range(nd)):
            red = For(kv[d], ks[d], red, "unrolled" if ks[d] <= 7 else "serial")
        yi = (n, c) + tuple(orow) + (ow0 + v3,)
        val = epilogue(acc[v3], mbuf[c], zbuf[yi] if zbuf is not None else None)
        return Allocate(acc, seq(init, red, For(v3, width, Store(ybuf, yi, val), "vectorized")))

    owb = Var("owb")
    body: Stmt = For(owb, ow // vt, tile(owb * vt, vt, ""))
    if ow % vt:
        body = seq(body, tile(Const(ow - ow % vt), ow % vt, "t"))
    for d in reversed(range(nd - 1)):
        body = For(orow[d], osp[d], body)
    body = For(n, oshape[0], For(c, oshape[1], body))
    params = [ybuf, xp, wbuf, bbuf, mbuf] + ([zbuf] if zbuf is not None else [])
    ctx.emit(parallel_outer(Kernel(node.name, params, body), ["n", "c"] + [o.name for o in orow],
                            ctx, int(np.prod(oshape)) * int(np.prod(ks))))


INT8_CONV_RULES = {"QLinearConv": lower_qconv, "QConv": lower_qconv, "QConvNCHWc": lower_qconv}
