"""GPU schedules of Conv and FusedConv (1D/2D/3D, groups, dilation, strides, asymmetric pads,
fused residual and activation).

General convs are an implicit GEMM per group (gpu_tiles.tiled_product): for group g,
Y[n, g OCg + oc, p] = act(bias + sum_r W[g, oc, r] X[n, g ICg + ic(r), window(p, r)]) with
rows = output channels, columns = q = n P + p (the batch folded into the output pixels, P per
image) and the reduction r = (ic, kernel taps) flattened. Grid: (groups, OC tiles, pixel
tiles) on blockIdx (z, y, x); a single-group conv with few tiles and a long reduction (late
ResNet layers at batch 1) splits r over blockIdx.z instead. The weights are packed at compile
time as [G, K, OCp] (zero padded to whole tiles: their shared tile loads are unguarded and
coalesced along the output channels); the input tile gathers its window elements straight from
the unpadded input (consecutive threads -> consecutive output pixels -> consecutive input
columns at stride 1); pads and tile edges read as 0 through clamped loads + select, so no
padded copy of the input is made. Each thread keeps TM x TN outputs in registers; the epilogue
adds the bias and the residual (loaded at the store's index) and applies the activation before
the single store (consecutive threads: consecutive pixels of a row).

Depthwise convs (one input and one output channel per group) have no reuse across output
channels: one block per (image, channel, pixel tile), each thread R output pixels strided by
the block size (coalesced loads and stores), the window unrolled, one accumulator live at a
time (registers), no shared memory.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Const, Expr, F32, For, If, Kernel, Select, Stmt,
                           Store, Var, seq)
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, op_context
from .conv import fused_parts, lower_conv
from .gpu_tiles import cdiv, packed, padded_k, plan, split_scratch, tiled_product
from .gpu_schedule import block_threads

Act = Callable[[Expr], Expr] | None


def lower_fused_conv_gpu(ctx: LowerCtx, node: Node) -> None:
    """FusedConv for the CUDA target: the conv schedules with the residual and the activation
    in their epilogue."""
    conv, act, residual = fused_parts(ctx, node)
    lower_conv_gpu(ctx, conv, act, node.outputs[0], residual)


def lower_conv_gpu(ctx: LowerCtx, node: Node, act: Act = None, out: str | None = None,
                   residual: str | None = None) -> None:
    """Conv for the CUDA target: implicit-GEMM tiles, or the depthwise schedule. Run-time
    weights and non-float32 convs take the generic rule (its parallel loops become the grid).
    ``residual`` (a value of the output's shape) is added before ``act``."""
    g = ctx.graph
    out = out or node.outputs[0]
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if any(g.types[v].dtype is not DType.float32 for v in (x, w, out, residual) if v) or \
            any(v not in g.params for v in (w, b) if v) or \
            (residual and g.types[residual].shape != g.types[out].shape):
        return lower_conv(ctx, node, act, out, residual)
    wv = g.params[w].astype(np.float32)
    oc, icg = wv.shape[0], wv.shape[1]
    bias = np.zeros(oc, np.float32) if b is None else g.params[b].astype(np.float32)
    octx = op_context(g, node)
    win = resolve_window(octx, g.types[x].shape, wv.shape[2:])
    groups = octx["group"]
    if icg == 1 and oc == groups:
        return _depthwise(ctx, node, x, wv, bias, win, act, out, residual)
    return _implicit_gemm(ctx, node, x, wv, bias, win, groups, act, out, residual)


def unflatten(q: Expr, dims: tuple) -> list:
    """Row-major coordinates of flat index ``q`` (q may run past the end: the first
    coordinate then exceeds its dim)."""
    coords, rest = [], q
    for d in reversed(range(len(dims))):
        if d == 0:
            coords.append(rest)
        elif dims[d] == 1:
            coords.append(Const(0))
        else:
            coords.append(rest % dims[d])
            rest = rest // dims[d]
    return coords[::-1]


def tap(o: Expr, stride: int, k: Expr, dil: int, begin: int) -> Expr:
    """Input position o * stride + k * dil - begin (without the trivial terms)."""
    e = o * stride if stride != 1 else o
    if not (isinstance(k, Const) and k.value == 0):
        e = e + (k * dil if dil != 1 else k)
    return e - begin if begin else e


def window_load(xb: Buffer, lead: tuple, pos: list, sizes: tuple, low: list,
                high: list, extra=None, value=None, zero: Expr = Const(0.0, F32)) -> Expr:
    """xb[lead + pos] with every position checked against [0, size): outside (a pad, or a
    tile edge) the value is ``zero`` and the load is clamped into the input. ``low`` /
    ``high`` say which bounds can fail; ``extra`` is an additional validity condition;
    ``value`` maps the loaded element (the int8 convs subtract the zero point)."""
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
    v = value(v) if value is not None else v
    return v if cond is None else Select(cond, v, zero)


def pixel_tiling(npix: int) -> tuple[int, int, int]:
    """(pixels per thread, threads per block, pixels per block) of a per-channel GPU kernel
    over ``npix`` output pixels (the depthwise convs, float and int8)."""
    reps = 4 if npix >= 4096 else 2 if npix >= 1024 else 1
    nt = block_threads(cdiv(npix, reps))
    return reps, nt, nt * reps


def window_bounds(win, osp: tuple, ks: tuple, sizes: tuple, tail: bool) -> tuple:
    """(begin, low, high) per spatial dim of a conv window over an input of ``sizes``: the
    leading pad, whether a tap can fall before the input, whether one can fall past its end.
    Pixels past the end (the last tile's tail) only overflow the first output coordinate."""
    nd = len(osp)
    begin = [win.begin(d) for d in range(nd)]
    low = [b > 0 for b in begin]
    high = [(osp[d] - 1) * win.strides[d] + (ks[d] - 1) * win.dilations[d] - begin[d]
            >= sizes[d] or (tail and d == 0) for d in range(nd)]
    return begin, low, high


def _implicit_gemm(ctx: LowerCtx, node: Node, x: str, wv: np.ndarray, bias: np.ndarray,
                   win, groups: int, act: Act, out: str, residual: str | None = None) -> None:
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
    t, splits = plan(ocg, nq, k, groups)
    kp = padded_k(k, t, splits)
    ocp = cdiv(ocg, t.bm) * t.bm
    wg = wv.reshape(groups, ocg, k)
    wp = np.stack([packed(wg[i].T, kp, ocp) for i in range(groups)])
    bp = np.stack([packed(bias.reshape(groups, 1, ocg)[i], 1, ocp)[0] for i in range(groups)])
    wbuf, bbuf = ctx.const(wp, "w"), ctx.const(bp, "bias")
    st, dl = win.strides, win.dilations
    begin = [win.begin(d) for d in range(nd)]
    # 1x1, stride 1, unpadded: output pixel p reads input pixel p (a plain matrix product).
    flat = taps == 1 and all(s == 1 for s in st) and not any(win.pads)
    xb = ctx.value(x, (batch, xs[1], npix) if flat else None, "x")
    yb = ctx.value(out, (batch, oc, npix), "y")
    zb = ctx.value(residual, (batch, oc, npix), "z") if residual else None
    q_pad = nq % t.bn != 0
    # Which window bounds can fail (a pad on that side); the pixel tile's padded tail is
    # clamped to the last pixel and masked as a whole.
    low = [begin[d] > 0 for d in range(nd)]
    high = [(osp[d] - 1) * st[d] + (ks[d] - 1) * dl[d] - begin[d] >= xs[2 + d]
            for d in range(nd)]

    def load_a(zz, mi, ki):
        return wbuf[zz, ki, mi]

    def load_b(zz, qi, ki):
        extra = ki < k if kp > k else None
        if q_pad:
            extra = qi < nq if extra is None else And(extra, qi < nq)
            qi = qi.min(nq - 1)
        nb, p = (qi // npix, qi % npix) if batch > 1 else (Const(0), qi)
        kc = unflatten(ki, (icg,) + ks)
        ic = kc[0].min(icg - 1) if kp > k else kc[0]
        o = unflatten(p, osp)
        pos = [tap(o[d], st[d], kc[1 + d], dl[d], begin[d]) for d in range(nd)]
        chan = zz * icg + ic if groups > 1 else ic
        if flat:
            v = xb[nb, chan, p]
            return v if extra is None else Select(extra, v, Const(0.0, F32))
        return window_load(xb, (nb, chan), pos, xs[2:], low, high, extra)

    def epilogue(zz, mi, qi, v):
        val = v + bbuf[zz, mi]
        nb, p = (qi // npix, qi % npix) if batch > 1 else (Const(0), qi)
        yi = (nb, zz * ocg + mi if groups > 1 else mi, p)
        if zb is not None:      # the store is guarded to the output: so is this load
            val = val + zb[yi]
        if act is not None:
            val = act(val)
        return Store(yb, yi, val)

    params = [yb, xb, wbuf, bbuf] + ([zb] if zb is not None else [])
    part = split_scratch(ctx, splits, ocg, nq)      # only with groups = 1: z is the split
    if part is not None:
        params.append(part)
    ctx.emit(tiled_product(node.name, params, t, ocg, nq, k, groups, load_a, False, load_b,
                           False, epilogue, splits, part))


def _depthwise(ctx: LowerCtx, node: Node, x: str, wv: np.ndarray, bias: np.ndarray, win,
               act: Act, out: str, residual: str | None = None) -> None:
    chans = ctx.graph.types[x].shape[1]
    ks = tuple(wv.shape[2:])

    def epilogue(acc: Expr, c: Expr, z: Expr | None) -> Expr:
        val = acc if z is None else acc + z
        return val if act is None else act(val)

    ctx.emit(depthwise_kernel(ctx, node.name, x, out, residual, win, ks,
                              ctx.const(wv.reshape((chans,) + ks), "w"),
                              ctx.const(bias, "bias"), [], F32, epilogue))


def depthwise_kernel(ctx: LowerCtx, name: str, x: str, out: str, residual: str | None, win,
                     ks: tuple, wbuf: Buffer, bbuf: Buffer, extra: list, acc_dtype: DType,
                     epilogue: Callable, value: Callable | None = None,
                     zero: Expr = Const(0.0, F32)) -> Kernel:
    """A depthwise conv of ``x`` into ``out`` (float or int8): a block of threads per channel
    and pixel range, each thread ``reps`` pixels (pixel_tiling), one accumulator of
    ``acc_dtype`` per pixel starting at ``bbuf[c]``, summing window_load(..., value, zero) x
    ``wbuf[c, taps]``; then out = epilogue(acc, c, the residual's value or None). ``extra``:
    the epilogue's buffers (kernel parameters after the bias)."""
    g = ctx.graph
    xs = g.types[x].shape
    batch, chans, nd = xs[0], xs[1], len(xs) - 2
    osp = tuple(g.types[out].shape[2:])
    npix = int(np.prod(osp))
    reps, nt, tile = pixel_tiling(npix)
    xb = ctx.value(x, bname="x")
    yb = ctx.value(out, (batch, chans, npix), "y")
    zb = ctx.value(residual, (batch, chans, npix), "z") if residual else None
    st, dl = win.strides, win.dilations
    tail = npix % tile != 0
    begin, low, high = window_bounds(win, osp, ks, xs[2:], tail)
    n, c, pb, tv = Var("n"), Var("c"), Var("pb"), Var("t")
    acc = Buffer("acc", acc_dtype, (reps,), "local")
    r0, r1, r2 = Var("r0"), Var("r1"), Var("r2")
    kv = [Var(f"k{d}") for d in range(nd)]
    nn = n if batch > 1 else Const(0)

    def pix(r: Expr) -> Expr:
        return pb * tile + tv + r * nt

    o = unflatten(pix(r1), osp)
    pos = [tap(o[d], st[d], kv[d], dl[d], begin[d]) for d in range(nd)]
    xv = window_load(xb, (nn, c), pos, xs[2:], low, high, value=value, zero=zero)
    # Pixel-outer order: one accumulator live at a time (the window's weights are the same
    # for every pixel of the block: uniform loads, cached).
    red: Stmt = Store(acc, (r1,), acc[r1] + xv * wbuf[(c,) + tuple(kv)])
    for d in reversed(range(nd)):
        red = For(kv[d], ks[d], red, "unrolled" if ks[d] <= 7 else "serial")
    red = For(r1, reps, red, "unrolled")
    yi = (nn, c, pix(r2))
    st_: Stmt = Store(yb, yi, epilogue(acc[r2], c, zb[yi] if zb is not None else None))
    if tail:
        st_ = If(pix(r2) < npix, st_)
    body: Stmt = For(tv, nt, Allocate(acc, seq(
        For(r0, reps, Store(acc, (r0,), bbuf[c]), "unrolled"), red,
        For(r2, reps, st_, "unrolled"))), "gpu_thread")
    body = For(c, chans, For(pb, cdiv(npix, tile), body, "gpu_block"), "gpu_block")
    if batch > 1:
        body = For(n, batch, body, "gpu_block")
    return Kernel(name, [yb, xb, wbuf, bbuf] + extra + ([zb] if zb is not None else []), body)
