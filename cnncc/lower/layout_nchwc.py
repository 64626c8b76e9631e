"""CPU lowering of the NCHWc layout ops (ir/ops/layout.py): ToNCHWc, FromNCHWc, PoolNCHWc, and
the zero-padded blocked scratch copy the dense NCHWc convs read.

In NCHW{c}c the c channels of one pixel are one vector, so a pool is vectorized over the
channels of a block (no gathers at any stride); pools (and depthwise convs) are memory-bound and
read the unpadded input, with the border columns handled apart (``column_split``). A padded copy
moves whole rows of W * c contiguous floats. The layout changes are transposes (ToNCHWc: rows of
W pixels of one channel read as vectors, written lane by lane; FromNCHWc: left to LLVM).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Cast, Cmp, Const, Expr, For, If, Kernel,
                           Stmt, Store, Var, nan_max, seq)
from cnncc.ir.ops import OP_TABLE
from cnncc.ir.ops.layout import pool_of
from cnncc.ir.ops.registry import OpContext
from cnncc.ir.ops.spatial import resolve_window
from cnncc.ir.schedule import Schedule

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import parallel_outer
from .halo import blocked, zero_halo
from .tile_schedules import choose, pixel_candidates, pixel_fits, pool_default, pool_workload

NEG_INF = float("-inf")


def padded_blocked(ctx: LowerCtx, name: str, x: Buffer, begin: tuple[int, int],
                   end: tuple[int, int], fill: float = 0.0, to_uint8: bool = False,
                   int16_pairs: bool = False) -> Buffer:
    """``x`` [N, CB, H, W, c] copied into a scratch [N, CB, H + pads, W + pads, c] whose pad
    pixels hold ``fill`` (0; a quantized conv's input zero point); ``x`` itself when there is
    no padding and no int16 copy. ``to_uint8``: int8 ``x`` is copied as uint8 x + 128
    (``fill`` is a uint8 then). ``int16_pairs``: 8-bit ``x`` copied widened to int16 (padded or
    not; the input of the dot2_i16i16 calls: channels 4q, 4q + 1 in one word, 4q + 2, 4q + 3
    in the next).

    Each padded row is written once: pad rows whole, interior rows as left fill + the row
    (W * c contiguous values) + right fill, as vectors."""
    if not any(begin) and not any(end) and not int16_pairs:
        return x
    nb, cb, h, w, c = x.shape
    hp, wp = h + begin[0] + end[0], w + begin[1] + end[1]
    dt = DType.int16 if int16_pairs else DType.uint8 if to_uint8 else x.dtype
    xp = ctx.temp(dt, (nb, cb, hp, wp * c), "xp")
    src = Buffer(x.name, x.dtype, (nb, cb, h, w * c))
    ctx.binding[id(src)] = ctx.binding[id(x)]
    n, b, r = Var("n"), Var("cb"), Var("r")
    fl, e, fr, fa = Var("fl"), Var("e"), Var("fr"), Var("fa")
    fv = Const(fill, dt)
    left, width = begin[1] * c, w * c

    def value(at: Expr) -> Expr:
        v: Expr = src[n, b, r - begin[0], at]
        if to_uint8:
            v = Cast(DType.int32, v) + Const(128, DType.int32)
        return Cast(dt, v) if dt is not x.dtype else v
    row = For(e, width, Store(xp, (n, b, r, e + left), value(e)))
    interior = seq(For(fl, left, Store(xp, (n, b, r, fl), fv)), row,
                   For(fr, end[1] * c, Store(xp, (n, b, r, fr + (left + width)), fv)))
    ok = And(Cmp("ge", r, Const(begin[0])), Cmp("lt", r, Const(begin[0] + h)))
    body = If(ok, interior, For(fa, wp * c, Store(xp, (n, b, r, fa), fv)))
    sch = Schedule(Kernel(f"{name}_pad", [xp, src],
                          For(n, nb, For(b, cb, For(r, hp, body)))))
    for loop, ext in (("fl", left), ("e", width), ("fr", end[1] * c), ("fa", wp * c)):
        if ext >= ctx.lanes:
            sch.vectorize(sch.split(loop, ctx.lanes, mode="tail")[1])
    ctx.emit(parallel_outer(sch.kernel, ["n", "cb", "r"], ctx, xp.size))
    view = Buffer("xp", dt, (nb, cb, hp, wp, c))
    ctx.binding[id(view)] = ctx.binding[id(xp)]
    return view


def _float32(ctx: LowerCtx, node: Node) -> None:
    for v in list(node.inputs) + list(node.outputs):
        if v and ctx.graph.types[v].dtype is not DType.float32:
            raise unsupported(node, "only float32 is lowered")


def _float32_or_bytes(ctx: LowerCtx, node: Node) -> None:
    """The layout changes move float32 values or the 8-bit activations of the quantized convs."""
    for v in list(node.inputs) + list(node.outputs):
        if v and ctx.graph.types[v].dtype not in (DType.float32, DType.uint8, DType.int8):
            raise unsupported(node, "only float32, uint8 and int8 are lowered")


def lower_to_nchwc(ctx: LowerCtx, node: Node) -> None:
    """Y[n, cb, h, w, j] = X[n, cb*c + j, h, w] (0 for the padding channels): rows of X read as
    vectors along w, each channel's lane of the blocked pixels written one by one; the padding
    channels of the last block are a separate loop of zero stores."""
    _float32_or_bytes(ctx, node)
    y = ctx.value(node.outputs[0], bname="y")
    nb, ch, h, w = ctx.graph.types[node.inputs[0]].shape
    # An NCHW ChannelGather view of one input (inline_channel_gather): channel i of X is
    # channel src[i] of the gather's input, read there.
    view = ctx.graph.producers().get(node.inputs[0])
    if view is not None and view.op == "ChannelGather" and view.attrs.get("view"):
        x = ctx.value(view.inputs[0], bname="x")
        src = ctx.const(np.array(view.attrs["sources"], np.int64), "src")
        params = [y, x, src]

        def chan(i: Expr) -> Expr:
            return src[i]
    else:
        x = ctx.value(node.inputs[0], bname="x")
        params = [y, x]

        def chan(i: Expr) -> Expr:
            return i
    c = y.shape[-1]
    full, rem = divmod(ch, c)
    n, r, b, j, p = Var("n"), Var("h"), Var("cb"), Var("j"), Var("w")
    jt, pt, jz, pz = Var("jt"), Var("wt"), Var("jz"), Var("wz")
    parts = [For(b, full, For(j, c, For(p, w, Store(y, (n, b, r, p, j),
                                                    x[n, chan(b * c + j), r, p]))))]
    if rem:
        parts.append(For(jt, rem, For(pt, w, Store(y, (n, full, r, pt, jt),
                                                   x[n, chan(full * c + jt), r, pt]))))
        parts.append(For(jz, c - rem, For(pz, w, Store(y, (n, full, r, pz, jz + rem),
                                                       Const(0, y.dtype)))))
    sch = Schedule(Kernel(node.name, params, For(n, nb, For(r, h, seq(*parts)))))
    if w >= ctx.lanes:
        for loop in ("w", "wt", "wz")[:1 + 2 * (rem > 0)]:
            sch.vectorize(sch.split(loop, ctx.lanes, mode="tail")[1])
    # Work for the fork threshold: its blocked side is written (or, below, read) lane by lane,
    # one instruction an element, where the threshold's units are vector lanes: 106k-element
    # changes took 24-33 us on one thread (ShuffleNet v1 at 2 threads 1.68 -> 1.40 ms forking).
    ctx.emit(parallel_outer(sch.kernel, ["n", "h"], ctx, y.size * ctx.lanes))


def lower_from_nchwc(ctx: LowerCtx, node: Node) -> None:
    """Y[n, ch, h, w] = X[n, ch // c, h, w, ch % c], the padding channels dropped."""
    _float32_or_bytes(ctx, node)
    x, y = ctx.value(node.inputs[0], bname="x"), ctx.value(node.outputs[0], bname="y")
    nb, cb, h, w, c = x.shape
    ch = y.shape[1]
    n, b, r, p, j = Var("n"), Var("cb"), Var("h"), Var("w"), Var("j")
    st: Stmt = Store(y, (n, b * c + j, r, p), x[n, b, r, p, j])
    if ch % c:
        st = If(b * c + j < ch, st)
    # Serial loops: LLVM's own vectorizer did this 2x faster than a vectorized j loop (whose
    # stores go lane by lane).
    body = For(n, nb, For(b, cb, For(r, h, For(p, w, For(j, c, st)))))
    ctx.emit(parallel_outer(Kernel(node.name, [y, x], body), ["n", "cb", "h"], ctx,
                            x.size * ctx.lanes))     # lane by lane: see lower_to_nchwc


def valid_taps(size: int, k: int, stride: int, dil: int, pad: int, pos: int) -> list[int]:
    """Taps t of output position ``pos`` whose input index pos * stride - pad + t * dil is
    inside [0, size)."""
    return [t for t in range(k) if 0 <= pos * stride - pad + t * dil < size]


def column_split(size: int, k: int, stride: int, dil: int, pad: int, out: int
                 ) -> tuple[list[list[int]], int, int]:
    """(valid taps of each output column, first and end of the interior columns: those whose
    taps are all inside) of a window along one axis; no interior: (taps, out, out)."""
    cols = [valid_taps(size, k, stride, dil, pad, p) for p in range(out)]
    inner = [p for p in range(out) if len(cols[p]) == k]
    return (cols, inner[0], inner[-1] + 1) if inner else (cols, out, out)


def row_tiles(tile: Callable[[Expr, int, list[int], str], Stmt], t: Var, size: int, k: int,
              stride: int, dil: int, pad: int, out: int, rmax: int) -> list[Stmt]:
    """The statements covering one output row: each border column on its own with its valid
    taps, the interior columns in a loop ``t`` over tiles of at most ``rmax`` pixels (equal
    sizes, a narrower last one). ``tile(first column, width, taps, tag)`` makes one tile."""
    cols, c0, c1 = column_split(size, k, stride, dil, pad, out)
    parts: list[Stmt] = [tile(Const(p), 1, cols[p], f"l{p}") for p in range(c0)]
    if c1 > c0:
        width = c1 - c0
        rt = -(-width // -(-width // rmax))
        full, rest = divmod(width, rt)
        parts.append(For(t, full, tile(t * rt + c0, rt, list(range(k)), "")))
        if rest:
            parts.append(tile(Const(c1 - rest), rest, list(range(k)), "r"))
    parts += [tile(Const(p), 1, cols[p], f"e{p}") for p in range(c1, out)]
    return parts


def _pool_tile(ctx: LowerCtx, node: Node, kind: str, win, c: int) -> int:
    """R pixels per register tile of an NCHWc pool: the tuned one (tile_schedules) or the cost
    model's; the pool is a tunable workload when its rows have interior columns."""
    g, regs = ctx.graph, ctx.vector_registers
    rmax = pool_default(regs, ctx.lanes, c)
    iw, ow = g.types[node.inputs[0]].shape[3], g.types[node.outputs[0]].shape[3]
    _, c0, c1 = column_split(iw, win.kernel[1], win.strides[1], win.dilations[1], win.begin(1),
                             ow)
    if c1 - c0 < 2:
        return rmax
    key = pool_workload(ctx.target, kind, g.types[node.inputs[0]].shape,
                        g.types[node.outputs[0]].shape, win)
    cands = pixel_candidates(c1 - c0, rmax, regs, ctx.lanes, c)
    return choose(ctx, node.name, key, cands,
                  lambda s: pixel_fits(s, c1 - c0, regs, ctx.lanes, c)).r


def lower_pool_nchwc(ctx: LowerCtx, node: Node) -> None:
    """MaxPool / AveragePool on NCHWc, reading the unpadded input (memory-bound: no padded
    copy): per output row the valid kh range from compile-time tables; the interior columns in
    tiles of R pixels x c channels in registers, each border column on its own with its valid
    kw taps. Average divides by a compile-time table of window sizes per output pixel. MaxPool
    also takes the 8-bit activations of a quantized region (alter_layout_int8)."""
    g = ctx.graph
    kind = op_context(g, node)["kind"]
    dt = g.types[node.inputs[0]].dtype
    if kind != "MaxPool" or dt not in (DType.uint8, DType.int8):
        _float32(ctx, node)
    plain = pool_of(node)
    if kind == "MaxPool":
        plain.attrs.pop("count_include_pad", None)
    xs5, ys5 = g.types[node.inputs[0]].shape, g.types[node.outputs[0]].shape
    xs = (xs5[0], xs5[1] * xs5[-1]) + tuple(xs5[2:-1])
    if len(xs) != 4:
        raise unsupported(node, "NCHWc pools are 2-D")
    octx = OpContext(plain, OP_TABLE[kind], [None], [None])
    win = resolve_window(octx, xs, octx["kernel_shape"], bool(octx["ceil_mode"]))
    is_max = kind == "MaxPool"
    (pt, pl), (ih, iw) = (win.begin(0), win.begin(1)), xs[2:]
    xin, xh, xw = blocked(ctx, node.inputs[0], "x")
    ybuf, yh, yw = blocked(ctx, node.outputs[0], "y")
    zero_halo(ctx, node.outputs[0], node.name)
    nb, cb, oh, ow, c = ys5
    (sh, sw), (dh, dw), (kh_, kw_) = win.strides, win.dilations, win.kernel
    rows = [valid_taps(ih, kh_, sh, dh, pt, o) for o in range(oh)]
    khlo = ctx.const(np.array([r[0] if r else 0 for r in rows], np.int64), "khlo")
    khn = ctx.const(np.array([len(r) for r in rows], np.int64), "khn")
    inv = None
    if not is_max:
        include = octx["count_include_pad"] == 1
        count = np.ones((), np.float64)
        for d in range(2):
            pos = (np.arange(win.out[d]) * win.strides[d] - win.begin(d))[:, None] \
                + np.arange(win.kernel[d])[None, :] * win.dilations[d]
            lo, hi = (-win.begin(d), xs[2 + d] + win.end(d)) if include else (0, xs[2 + d])
            count = np.multiply.outer(count, ((pos >= lo) & (pos < hi)).sum(1))
        inv = ctx.const((1.0 / np.maximum(count, 1)).astype(np.float32), "inv")
    n, b, o, t, kh = Var("n"), Var("cb"), Var("oh"), Var("t"), Var("kh")

    def tile(ow0: Expr, width: int, taps: list[int], tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", dt, (width, c), "local")
        r, v, r2, v2, r3, v3 = (Var(f"{q}{tag}") for q in ("r", "v", "r2", "v2", "r3", "v3"))
        lowest = NEG_INF if dt.is_float else int(np.iinfo(dt.np).min)
        init = For(r, width, For(v, c, Store(acc, (r, v), Const(lowest if is_max else 0.0, dt)),
                                 "vectorized"), "unrolled")
        upd = []
        for kw in taps:
            xv = xin[n, b, o * sh + (kh * dh + xh - pt), (ow0 + r2) * sw + (kw * dw + xw - pl),
                     v2]
            val = nan_max(acc[r2, v2], xv) if is_max else acc[r2, v2] + xv
            upd.append(For(r2, width, For(v2, c, Store(acc, (r2, v2), val), "vectorized"),
                           "unrolled"))
        red = For(kh, khn[o], seq(*upd), start=khlo[o])
        val = acc[r3, v3] if inv is None else acc[r3, v3] * inv[o, ow0 + r3]
        epi = For(r3, width, For(v3, c, Store(ybuf, (n, b, o + yh, ow0 + r3 + yw, v3), val),
                                 "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    parts = row_tiles(tile, t, iw, kw_, sw, dw, pl, ow, _pool_tile(ctx, node, kind, win, c))
    body = For(n, nb, For(b, cb, For(o, oh, seq(*parts))))
    params = [ybuf, xin, khlo, khn] + ([inv] if inv is not None else [])
    work = nb * cb * oh * ow * c * kh_ * kw_
    ctx.emit(parallel_outer(Kernel(node.name, params, body), ["n", "cb", "oh"], ctx, work))
