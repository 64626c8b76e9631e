"""GPU schedules of the quantized convs (QLinearConv, QConv from fuse_quantized): dense, 1x1,
grouped and strided/dilated convs as an implicit GEMM on ``__dp4a``, depthwise convs one thread
per output pixels; int32 accumulation and the fused epilogue of conv_int8_parts.py (bias,
float32 requantization with the per-channel multipliers, zero point, ReLU/ReLU6, quantized
residual) before the single 8-bit store.

Dense / grouped convs, with x the input, zx its zero point and w' = w - w_zero_point:
1. A pack kernel (one thread per padded input pixel and word) writes the input as signed bytes
   xs = x - 128 for uint8 inputs (x for int8) in words of 4 channels of a group,
   [N, G * C4, H + pads, W + pads, 4] (C4 = ceil(ICg / 4)): pads hold the zero point (as a
   signed byte), a group's missing channels 0.
2. Weights are packed at compile time as int32 words of 4 input channels, [G, C4 * taps, OCp]
   (tile padded, zero words past the reduction), and the bias absorbs the zero point:
   sum (x - zx) w' = sum xs w' - zs sum w' (zs = the shifted zero point), so the reduction
   needs no subtraction and the pads contribute zs w' - zs w' = 0.
3. The tiled product of gpu_tiles.py with int32 tiles and accumulators and
   acc = __dp4a(xs word, w' word, acc) (signed x signed: 4 multiply-adds per instruction; the
   loop IR's dot4_i8i8): rows = output channels of a group, columns = batch x output pixels,
   reduction = (C4, taps) words read straight from the packed input (no bounds checks: the
   pack holds the pads; loads past the last column or reduction word are clamped, their
   products are zero or never stored). A long reduction over few tiles is split over
   blockIdx.z with exact int32 partial sums.
When w' leaves int8 (uint8 weights with a zero point far from their values) or the bias
cannot absorb zs sum w' in int32, the same kernel runs on int32 elements (x - zx, one channel
per element, pads 0) with plain multiply-adds: exact, 1 multiply-add per instruction.

Depthwise convs (one input and one output channel per group): one block per (image, channel,
pixel tile), each thread R output pixels strided by the block size, the window unrolled,
(x - zx) read from the unpadded input (pads: 0), int32 accumulators.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (And, Buffer, Call, Cast, Const, Expr, For, Kernel,
                           Select, Stmt, Store, Var)
from cnncc.ir.ops.quant_blocked import compensation, signed_zero_point

from .context import LowerCtx
from .conv_int8_dot import words
from .conv_int8_parts import QConvParts, qconv_parts
from .gpu_conv import depthwise_kernel, unflatten
from .gpu_schedule import gpu_map
from .gpu_tiles import cdiv, padded_k, plan, split_scratch, tiled_product

I8, I32 = DType.int8, DType.int32


def lower_qconv_gpu(ctx: LowerCtx, node: Node) -> None:
    """QLinearConv / QConv for the CUDA target: the depthwise kernel, or pack + the tiled
    product on __dp4a (on int32 products when the weights or the bias do not fit it)."""
    qp = qconv_parts(ctx, node)
    if qp.icg == 1 and qp.ocg == 1:
        return _depthwise(ctx, node, qp)
    x_dt = ctx.graph.types[qp.x].dtype
    zs = signed_zero_point(x_dt, qp.x_zp)
    bias = qp.bias - compensation(qp.wz, zs)
    dp4a = bool(qp.wz.min() >= -128 and qp.wz.max() <= 127 and bias.min() >= -2**31
                and bias.max() < 2**31)
    if dp4a:
        wk = words(qp.wz.astype(np.int8))
        shifted = (lambda v: Cast(I8, Cast(I32, v) - Const(128, I32))) \
            if x_dt is DType.uint8 else (lambda v: v)
        xw = _pack(ctx, node, qp, 4, shifted, Const(zs, I8))
    else:
        wk, bias = qp.wz.astype(np.int32), qp.bias
        xw = _pack(ctx, node, qp, 1, lambda v: Cast(I32, v) - Const(qp.x_zp, I32), Const(0, I32))
    _implicit_gemm(ctx, node, qp, xw, wk, bias, dp4a)


def _pack(ctx: LowerCtx, node: Node, qp: QConvParts, per_word: int, value, pad: Expr) -> Buffer:
    """The padded input in words of ``per_word`` channels of a group, [N, G * CW, padded
    spatial..., per_word] of ``value(x)`` (``pad`` in the pads; a missing channel 0), and its
    int32 view [N, G * CW, padded spatial...]."""
    xs, win, groups, icg = qp.xs, qp.win, qp.groups, qp.icg
    nd = len(xs) - 2
    cw = -(-icg // per_word)
    psp = tuple(s + win.begin(d) + win.end(d) for d, s in enumerate(xs[2:]))
    xb = ctx.temp(pad.dtype, (xs[0], groups * cw) + psp + (per_word,), "xq")
    xin = ctx.value(qp.x, bname="x")
    n, gq, j = Var("n"), Var("gq"), Var("j")
    sp = [Var(f"p{d}") for d in range(nd)]
    cin = (gq % cw) * per_word + j if per_word > 1 else gq % cw
    cond, idx = None, []
    for d, p in enumerate(sp):
        q = p - win.begin(d) if win.begin(d) else p
        ok = []
        if win.begin(d):
            ok.append(q >= 0)
            q = q.max(0)
        if win.end(d):
            ok.append(q < xs[2 + d])
            q = q.min(xs[2 + d] - 1)
        for c in ok:
            cond = c if cond is None else And(cond, c)
        idx.append(q)
    src = (n, (gq // cw) * icg + (cin.min(icg - 1) if icg % per_word else cin)) + tuple(idx)
    v = value(xin[src])
    if cond is not None:
        v = Select(cond, v, pad)
    if icg % per_word:
        v = Select(cin < icg, v, Const(0, pad.dtype))
    body: Stmt = For(j, per_word, Store(xb, (n, gq) + tuple(sp) + (j,), v), "unrolled")
    for d in reversed(range(nd)):
        body = For(sp[d], psp[d], body)
    k = Kernel(f"{node.name}_pack", [xb, xin], For(n, xs[0], For(gq, groups * cw, body)))
    ctx.emit(gpu_map(k, ["n", "gq"] + [p.name for p in sp]))
    view = Buffer("xw", I32, xb.shape[:-1])
    ctx.binding[id(view)] = ctx.binding[id(xb)]
    return view


def _implicit_gemm(ctx: LowerCtx, node: Node, qp: QConvParts, xw: Buffer, wk: np.ndarray,
                   bias: np.ndarray, dp4a: bool) -> None:
    g = ctx.graph
    osh = g.types[qp.out].shape
    batch, nd = osh[0], len(osh) - 2
    groups, ocg, oc = qp.groups, qp.ocg, qp.oc
    ks = tuple(wk.shape[2:])
    cw = wk.shape[1]
    k = cw * int(np.prod(ks))
    osp = tuple(osh[2:])
    npix = int(np.prod(osp))
    nq = batch * npix
    t, splits = plan(ocg, nq, k, groups)
    kp = padded_k(k, t, splits)
    ocp = cdiv(ocg, t.bm) * t.bm
    wp = np.zeros((groups, kp, ocp), np.int32)
    wp[:, :k, :ocg] = wk.reshape(groups, ocg, k).transpose(0, 2, 1)
    bp = np.zeros((groups, ocp), np.int32)
    bp[:, :ocg] = bias.reshape(groups, ocg)
    mp = np.zeros((groups, ocp), np.float32)
    mp[:, :ocg] = qp.mult.reshape(groups, ocg)
    wbuf, bbuf, mbuf = ctx.const(wp, "w"), ctx.const(bp, "bias"), ctx.const(mp, "m")
    yb = ctx.value(qp.out, (batch, oc, npix), "y")
    zb = ctx.value(qp.residual, (batch, oc, npix), "z") if qp.residual else None
    st, dl = qp.win.strides, qp.win.dilations

    def load_a(zz, mi, ki):
        return wbuf[zz, ki, mi]

    def load_b(zz, qi, ki):
        # Past the last column or reduction word: clamped (never stored / zero weights).
        qi = qi.min(nq - 1) if nq % t.bn else qi
        ki = ki.min(k - 1) if kp > k else ki
        nb, p = (qi // npix, qi % npix) if batch > 1 else (Const(0), qi)
        kc = unflatten(ki, (cw,) + ks)
        o = unflatten(p, osp)
        pos = [o[d] * st[d] + kc[1 + d] * dl[d] for d in range(nd)]
        return xw[(nb, zz * cw + kc[0] if groups > 1 else kc[0]) + tuple(pos)]

    def epilogue(zz, mi, qi, v):
        nb, p = (qi // npix, qi % npix) if batch > 1 else (Const(0), qi)
        yi = (nb, zz * ocg + mi if groups > 1 else mi, p)
        z = zb[yi] if zb is not None else None
        return Store(yb, yi, qp.epilogue(v + bbuf[zz, mi], mbuf[zz, mi], z))

    def mac(acc: Expr, a: Expr, b: Expr) -> Expr:
        return Call("dot4_i8i8", (acc, b, a), I32) if dp4a else acc + a * b

    params = [yb, xw, wbuf, bbuf, mbuf] + ([zb] if zb is not None else [])
    part = split_scratch(ctx, splits, ocg, nq, I32)
    if part is not None:
        params.append(part)
    ctx.emit(tiled_product(node.name, params, t, ocg, nq, k, groups, load_a, False, load_b,
                           False, epilogue, splits, part, I32, mac))


def _depthwise(ctx: LowerCtx, node: Node, qp: QConvParts) -> None:
    chans = qp.xs[1]
    ks = tuple(qp.wz.shape[2:])
    wbuf = ctx.const(qp.wz.reshape((chans,) + ks).astype(np.int32), "w")
    bbuf = ctx.const(qp.bias.astype(np.int32), "bias")
    mbuf = ctx.const(qp.mult, "m")
    ctx.emit(depthwise_kernel(
        ctx, node.name, qp.x, qp.out, qp.residual, qp.win, ks, wbuf, bbuf, [mbuf], I32,
        lambda acc, c, z: qp.epilogue(acc, mbuf[c], z),
        value=lambda v: Cast(I32, v) - Const(qp.x_zp, I32), zero=Const(0, I32)))


GPU_QCONV_RULES = {"QLinearConv": lower_qconv_gpu, "QConv": lower_qconv_gpu}
