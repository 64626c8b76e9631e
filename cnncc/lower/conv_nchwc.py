"""CPU lowering of ConvNCHWc (ir/ops/layout.py): 2-D convs on NCHW{c}c activations.

Dense convs (group = 1) use a direct register-tiled micro-kernel: a tile is TH x TW output
pixels x VB output-channel blocks (TH * TW * VB vector accumulators, initialized with the bias;
the shape, the packed weights and the loop order of the tiles: conv_nchwc_tiles.py). Per input
channel ci of a block and tap (kh, kw): VB weight vectors (packed once, at lowering, as [ocb
group, ICb, KH, KW, ci, VB * c] so a tile streams one contiguous array), one broadcast input
scalar per pixel (x[n, icb, ih, iw, ci]: one base address per tap plus constant offsets) and
TH * TW * VB FMAs. The ci loop is unrolled by CI_UNROLL only: fully unrolled, LLVM's scheduler
hoisted the loads of later channels and spilled accumulators. The epilogue adds the residual
(blocked like the output), applies the activation and stores one vector per (pixel, block).
A padded conv reads its input in place when the input has a zero halo (halo.py), else from a
zero-padded blocked copy, so the reduction has no branches.
A stride-1 unpadded 1x1 conv runs the same kernel over the H * W pixels flattened into one row.
A 1x1 conv reading a ChannelGather view reads the gather's inputs in place instead, a reduction
loop per input over its channels (gathered_input.py).
A prologue (inputs P, Q and pre_activation: fuse_prologue) is applied per tile, input block and
tap: the tile's input pixels of the block, act(x * P + Q) as vectors, into an L1 scratch the
broadcasts read (2 vector ops a pixel per c * VB FMAs; unpadded convs only).
The stem (in_layout = "NCHW", few input channels) reads plain NCHW input: one "channel block"
per input channel, with a block of one channel.
Grouped convs (k channels a group in and out, k dividing c or a multiple of it: ResNeXt,
RegNet; 1 < k < c: conv_grouped.py's block-diagonal kernel where it is cheaper) run the same
kernel: an output block reads only the K = max(k, c) input channels of
its groups (ir/ops/layout.group_span), K / c input blocks from its groups' first, and its packed
weights are those K channels with zeros across groups (a group of k < c channels does c / k
times its FMAs, in vectors; the tile's VB blocks stay within one group).

Weight-bound convs (deep layers: few pixel tiles per group of VB blocks, each group's weights
read once from L3 / DRAM, so the group's first tile stalls on them) prefetch the next group's
weights into L2 while a group runs: spread over its first tiles, a few lines per reduction
step (addresses in a flat view of the packed weights; conv_nchwc_tiles.prefetch_plan).

Depthwise convs are memory-bound: vectorized over the c channels of a block, they read the
unpadded input (per tile of R pixels, KH * KW taps of one input vector times one weight
vector; border columns and rows get only their valid taps).

Padding channels get zero weights and bias, so their output lanes are finite (0 before the
activation, plus the residual's lane).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Const, Expr, For, If, Kernel, Let, Prefetch, Stmt,
                           Store, Var, seq)
from cnncc.ir.ops.spatial import resolve_window
from cnncc.ir.schedule import Schedule

from .context import LowerCtx, const_input, op_context, unsupported
from .conv import Act, activation_expr, fused_parts
from .conv_grouped import block_diagonal_fits, lower_block_diagonal
from .cpu_schedule import parallel_contiguous, parallel_outer
from .gathered_input import gathered_input, gathered_reduction, row_weights, source_buffers
from .conv_nchwc_tiles import CI_UNROLL, LINE_BYTES, dense_tiling, vector_regs
from .halo import blocked, zero_halo
from .layout_nchwc import column_split, padded_blocked, row_tiles, valid_taps
from .tile_schedules import (choose, depthwise_default, depthwise_workload, pixel_candidates,
                             pixel_fits)


def lower_conv_nchwc(ctx: LowerCtx, node: Node) -> None:
    """ConvNCHWc with constant weights: the dense or the depthwise kernel."""
    g = ctx.graph
    conv, act, residual = fused_parts(ctx, node)
    octx = op_context(g, node)
    x, out = node.inputs[0], node.outputs[0]
    for v in (x, out, residual, node.inputs[1]):
        if v and g.types[v].dtype is not DType.float32:
            raise unsupported(node, "only float32 is lowered")
    if any(i and i not in g.params for i in node.inputs[1:3]):
        raise unsupported(node, "ConvNCHWc needs constant weights and bias")
    wv = np.asarray(const_input(g, node, 1, "the weight"), np.float32)
    oc = wv.shape[0]
    bias = const_input(g, node, 2, "the bias") if len(node.inputs) > 2 and node.inputs[2] \
        else None
    bias = np.zeros(oc, np.float32) if bias is None else np.asarray(bias, np.float32)
    c = octx["block"]
    stem = octx["in_layout"] == "NCHW"
    xs = g.types[x].shape
    plain = xs if stem else (xs[0], wv.shape[1] * octx["group"]) + tuple(xs[2:4])
    win = resolve_window(op_context(g, conv), plain, wv.shape[2:])
    scale = node.inputs[4] if len(node.inputs) > 4 and node.inputs[4] else None
    pre = len(node.inputs) > 5 and any(node.inputs[5:])
    if (scale or pre) and octx["group"] > 1:
        raise unsupported(node, "an input scale or prologue on a grouped or depthwise conv")
    if octx["group"] > 1 and wv.shape[1] == 1 and octx["group"] == oc:
        return _depthwise(ctx, node, wv, bias, win, act, residual, c)
    if block_diagonal_fits(ctx.lanes, c, wv.shape[1] * octx["group"], oc, octx["group"]) \
            and gathered_input(g, x) is None:
        return lower_block_diagonal(ctx, node, wv, bias, win, act, residual, c)
    _dense(ctx, node, wv, bias, win, act, residual, scale)


def _scaled_weights(ctx: LowerCtx, node: Node, lay, scale: str) -> list[Buffer]:
    """The packed weights [G, ICb, KH, KW, ci, VB * c] times the input scale [1, ICb, 1, 1, ci]
    of their input channel, into scratch buffers (one small kernel per pack, each call)."""
    sbuf = ctx.value(scale, bname="s")
    out = []
    for k, w in enumerate(lay.wbufs):
        t = ctx.temp(DType.float32, w.shape, f"ws{k}")
        ng, icb, kh, kw, ci, v = w.shape
        g_, i, h, x, j, o = (Var(n) for n in ("g", "i", "h", "x", "j", "o"))
        body = For(g_, ng, For(i, icb, For(h, kh, For(x, kw, For(j, ci, For(
            o, v, Store(t, (g_, i, h, x, j, o), w[g_, i, h, x, j, o] * sbuf[0, i, 0, 0, j])))))))
        sch = Schedule(Kernel(f"{node.name}_scale_w{k}", [t, w, sbuf], body))
        if v % ctx.lanes == 0:
            sch.vectorize(sch.split("o", ctx.lanes)[1])
        ctx.emit(sch.kernel)
        out.append(t)
    return out


def _prologue(ctx: LowerCtx, node: Node, icb: int, c: int) -> tuple[Buffer, Buffer, Act] | None:
    """The prologue's P, Q as [1 or N, ICb, c] buffers and its activation (None: none)."""
    if len(node.inputs) < 7 or not node.inputs[5]:
        return None
    bufs = []
    for i, tag in ((5, "pp"), (6, "pq")):
        v = node.inputs[i]
        shape = (ctx.graph.types[v].shape[0], icb, c)
        if v in ctx.graph.params:
            bufs.append(ctx.const(np.asarray(ctx.graph.params[v], np.float32)
                                  .reshape(shape), tag))
        else:
            bufs.append(ctx.value(v, shape, tag))
    attrs = op_context(ctx.graph, node).attrs
    return bufs[0], bufs[1], activation_expr(attrs["pre_activation"],
                                             attrs["pre_activation_params"])


def _dense(ctx: LowerCtx, node: Node, wv: np.ndarray, bias: np.ndarray, win, act: Act,
           residual: str | None, scale: str | None = None) -> None:
    out = node.outputs[0]
    # A ChannelGather view (inline_channel_gather): read its inputs' channels in place, the
    # weights' input channels in the order they are read (gathered_input.py).
    gat = gathered_input(ctx.graph, node.inputs[0])
    if gat is not None:
        wv = wv[:, gat.order]
    lay = dense_tiling(ctx, node, wv, win)
    if scale:
        lay.wbufs = _scaled_weights(ctx, node, lay, scale)
    if gat is not None:
        lay.wbufs = row_weights(ctx, lay.wbufs)
    c, cin, vb, th, tw = lay.c, lay.cin, lay.vb, lay.th, lay.tw
    nb, ocb, oh, ow = lay.nb, lay.ocb, lay.oh, lay.ow
    kh_, kw_ = win.kernel
    (sh, sw), (dh, dw) = win.strides, win.dilations
    xh = xw = 0
    xsrc, xoff = source_buffers(ctx, gat) if gat is not None else ([], None)
    if gat is not None:
        xin = xp = xsrc[0]
    elif lay.stem:   # NCHW input as [N, IC, H, W, 1]: the same kernel with blocks of 1 channel
        xin = ctx.value(node.inputs[0], bname="x")
        xv = Buffer("x", DType.float32, xin.shape + (1,))
        ctx.binding[id(xv)] = ctx.binding[id(xin)]
        xin = xv
    else:
        xin, xh, xw = blocked(ctx, node.inputs[0], "x")
    if lay.flat and gat is None:   # pixels flattened into one row
        xv = Buffer("x", DType.float32, (xin.shape[0], xin.shape[1], 1,
                                         xin.shape[2] * xin.shape[3], xin.shape[4]))
        ctx.binding[id(xv)] = ctx.binding[id(xin)]
        xin = xv
    # The input's halo (when it has one) holds every padding pixel this conv reads (halo.py);
    # pixel (ih, iw) of the padded input is then at (ih + oy, iw + ox).
    if gat is not None or (xh >= max(win.begin(0), win.end(0))
                           and xw >= max(win.begin(1), win.end(1))):
        xp, oy, ox = xin, xh - win.begin(0), xw - win.begin(1)
    else:
        assert not (xh or xw), "a halo smaller than the padding of a conv reading it"
        xp, oy, ox = padded_blocked(ctx, node.name, xin, (win.begin(0), win.begin(1)),
                                    (win.end(0), win.end(1))), 0, 0
    packs, wbufs = lay.packs, lay.wbufs
    pre = None if lay.stem else _prologue(ctx, node, lay.icb, c)
    split, steps, groups = lay.split, lay.steps, lay.groups
    ext = lay.extents()
    ntw = ext["t"]
    plan = lay.group_plan()
    placement = lay.placement(tuple(win.strides) == (1, 1))
    wflat = None
    if plan:       # the full groups' weights as one flat array, for the prefetch addresses
        wflat = Buffer("wf", DType.float32, (packs[0].size,))
        ctx.binding[id(wflat)] = ctx.binding[id(wbufs[0])]
    bp = np.zeros(ocb * c, np.float32)
    bp[:len(bias)] = bias
    bbuf = ctx.const(bp.reshape(ocb, c), "b")
    yh = yw = zh = zw = 0
    zbuf = None
    if lay.flat:
        ybuf = ctx.value(out, (nb, ocb, oh, ow, c), "y")
        zbuf = ctx.value(residual, (nb, ocb, oh, ow, c), "z") if residual else None
    else:
        ybuf, yh, yw = blocked(ctx, out, "y")
        if residual:
            zbuf, zh, zw = blocked(ctx, residual, "z")
    zero_halo(ctx, out, node.name)
    n, og, o, t = Var("n"), Var("og"), Var("ot"), Var("t")
    icv, khv, kwv = Var("icb"), Var("kh"), Var("kw")
    var = {"n": n, "og": og, "ot": o, "t": t}

    def tile(wb: Buffer, gi: Expr, vbt: int, oh0: Expr, rh: int, ow0: Expr, rw: int,
             tag: str) -> Stmt:
        """rh x rw pixels from (oh0, ow0) x vbt blocks from block gi * vb (runs: the rw
        pixels from flattened pixel ow0)."""
        acc = Buffer(f"acc{tag}", DType.float32, (rh * rw, vbt, c), "local")
        r, j, v, r2, j2, v2, r3, j3, v3, ci, ci0 = (Var(f"{q}{tag}") for q in (
            "r", "j", "v", "r2", "j2", "v2", "r3", "j3", "v3", "ci", "ci0"))
        ob0 = gi * vb

        def nest(rv: Var, jv: Var, vv: Var, st: Stmt) -> Stmt:
            return For(rv, rh * rw, For(jv, vbt, For(vv, c, st, "vectorized"), "unrolled"),
                       "unrolled")

        def pixel(rv: Var) -> tuple[Expr, Expr]:
            if lay.runs:
                return (ow0 + rv) // ow, (ow0 + rv) % ow
            return (oh0 + rv // rw, ow0 + rv % rw) if rh > 1 else (oh0, ow0 + rv)

        # ci unrolled by CI_UNROLL inside a loop: a fully unrolled block let LLVM's scheduler
        # hoist the loads of later channels and spill the accumulators.
        cc = ci + ci0 if split else ci
        init = nest(r, j, v, Store(acc, (r, j, v), bbuf[ob0 + j, v]))
        py, px = pixel(r2)
        gsel = gi if wb.shape[0] > 1 else 0
        pfb = Var(f"pfb{tag}")
        if gat is not None:
            red = gathered(wb, gsel, pfb, acc, (r2, j2, v2), (py, px), tag)
            return Allocate(acc, seq(init, red, epilogue(acc, ob0, rh, rw, pixel, tag)))
        # A grouped conv's tile reads the input blocks of its groups (group_span).
        icx = icv + ob0 // lay.span_blocks * lay.span_blocks if lay.span_blocks else icv
        xt = None
        if pre is None:
            xi = xp[n, icx, py * sh + khv * dh + oy, px * sw + kwv * dw + ox, cc]
        else:   # the tile's input pixels of this block and tap, act(x * P + Q), in L1
            xt = Buffer(f"xt{tag}", DType.float32, (rh * rw, c), "local")
            r4, v4 = Var(f"r4{tag}"), Var(f"v4{tag}")
            py4, px4 = pixel(r4)
            pn = [n if b.shape[0] > 1 else 0 for b in pre[:2]]
            pv = xp[n, icx, py4 * sh + khv * dh + oy, px4 * sw + kwv * dw + ox, v4] \
                * pre[0][pn[0], icx, v4] + pre[1][pn[1], icx, v4]
            pro = For(r4, rh * rw, For(v4, c, Store(xt, (r4, v4), pre[2](pv) if pre[2] else pv),
                                       "vectorized"), "unrolled")
            xi = xt[r2, cc]
        wi = wb[gsel, icv, khv, kwv, cc, j2 * c + v2]
        upd = Store(acc, (r2, j2, v2), acc[r2, j2, v2] + xi * wi)
        red: Stmt = For(ci, CI_UNROLL if split else cin, nest(r2, j2, v2, upd), "unrolled")
        cio = Var(f"cio{tag}")
        tap = (icv * kh_ + khv) * kw_ + kwv
        prefetching = wflat is not None and wb is wbufs[0]
        # Where the prefetches go (conv_nchwc_tiles.placement_rule, or tuned): "burst" = a
        # tap's lines before its channel loop, "spread" = a step's lines inside it.
        inside = prefetching and split and placement == "spread"
        if inside:
            red = seq(prefetch_group(pfb, tap * (cin // CI_UNROLL) + cio, 1), red)
        if split:
            red = For(cio, cin // CI_UNROLL, Let(ci0, cio * CI_UNROLL, red))
        if prefetching and not inside:
            red = seq(prefetch_group(pfb, tap, cin // CI_UNROLL if split else 1), red)
        if xt is not None:
            red = seq(pro, red)
        # Taps of straight-line FMAs (no channel loop: the stem's one-channel blocks) stay
        # rolled: unrolled, LLVM shared each input broadcast among the taps reading it (pixel
        # p + 1 at kw = pixel p at kw + stride), TW more live vectors: a 2x1x14 tile spilled.
        taps = "serial" if split else "rolled"
        red = For(icv, lay.icb, For(khv, kh_, For(kwv, kw_, red, taps), taps))
        if wflat is not None and wb is wbufs[0]:
            red = Let(pfb, group_base(), red)
        body = seq(init, red, epilogue(acc, ob0, rh, rw, pixel, tag))
        return Allocate(acc, body if xt is None else Allocate(xt, body))

    def epilogue(acc: Buffer, ob0: Expr, rh: int, rw: int, pixel, tag: str) -> Stmt:
        """The tile's accumulators (+ residual, activation) stored to the output."""
        r3, j3, v3 = Var(f"r3{tag}"), Var(f"j3{tag}"), Var(f"v3{tag}")
        py, px = pixel(r3)
        val = acc[r3, j3, v3]
        if zbuf is not None:
            val = val + zbuf[n, ob0 + j3, py + zh, px + zw, v3]
        if act is not None:
            val = act(val)
        return For(r3, rh * rw, For(j3, acc.shape[1], For(v3, c, Store(
            ybuf, (n, ob0 + j3, py + yh, px + yw, v3), val), "vectorized"), "unrolled"),
            "unrolled")

    def gathered(wb: Buffer, gsel, pfb: Var, acc: Buffer, rjv: tuple, pix: tuple,
                 tag: str) -> Stmt:
        """The reduction of a tile over a gathered input's rows (gathered_input.py): the
        accumulator loop variables ``rjv`` and the pixel ``pix`` of row r2."""
        (r2, j2, v2), (py, px) = rjv, pix
        iw = ctx.graph.types[gat.inputs[0]].shape[3]

        def step(k: int, row: Expr) -> Stmt:
            xi = xsrc[k][n, xoff[row] + ((py * sh) * iw + px * sw) * c]
            upd = Store(acc, (r2, j2, v2), acc[r2, j2, v2] + xi * wb[gsel, row, j2 * c + v2])
            return For(r2, acc.shape[0], For(j2, acc.shape[1], For(v2, c, upd, "vectorized"),
                                             "unrolled"), "unrolled")
        if wflat is None or wb is not wbufs[0]:
            return gathered_reduction(gat, tag, step, CI_UNROLL)
        return Let(pfb, group_base(), gathered_reduction(gat, tag, step, CI_UNROLL,
                                                         (wflat, pfb, plan[0])))

    def group_base() -> Expr:
        """Offset in ``wflat`` of the first line the tile (ot, t) prefetches: tile k of the
        group takes part k % U of the next group's weights (the last group: its own, in cache
        already); tiles past the U first repeat the prefetches of the first ones."""
        assert plan is not None
        per, used = plan
        nxt = (og + 1).min(groups - 1)
        part = (o * ntw + t) % used
        return nxt * packs[0][0].size + part * (steps * per * LINE_BYTES // 4)

    def prefetch_group(base: Var, first: Expr, steps: int) -> Stmt:
        """The prefetches of the next group's weights into L2 for ``steps`` reduction steps
        from step ``first`` * ``steps`` (P a step, a line each)."""
        assert plan is not None and wflat is not None
        lines = plan[0] * steps
        return seq(*[Prefetch(wflat, (base + (first * lines + p) * (LINE_BYTES // 4),), 2)
                     for p in range(lines)])

    def cell(wb: Buffer, gi: Expr, vbt: int, tag: str) -> Stmt:
        """The tile (ot, t) of a group: TH x TW pixels from (ot * TH, t * TW), or the
        remaining rows / columns for the last ones (branches per tile, not per FMA); runs:
        pixels t * TW.. of the flattened output, the last run shorter."""
        def cols(oh0: Expr, rh: int, tg: str, width: int = ow) -> Stmt:
            body = tile(wb, gi, vbt, oh0, rh, t * tw, tw, tg)
            if width % tw:
                body = If(t < width // tw, body, tile(
                    wb, gi, vbt, oh0, rh, Const(width - width % tw), width % tw, tg + "c"))
            return body
        if lay.runs:
            return cols(Const(0), 1, tag, oh * ow)
        body = cols(o * th, th, tag)
        if oh % th:
            body = If(o < oh // th, body, cols(Const(oh - oh % th), oh % th, tag + "h"))
        return body

    body = cell(wbufs[0], og, vb, "")
    if len(wbufs) > 1:
        tail = cell(wbufs[1], Const(groups), ocb % vb, "g")
        body = If(og < groups, body, tail) if groups else tail
    # Every tile is a task: enough of them for the threads even with one group and one row
    # (a flattened 1x1 conv).
    for name in reversed(list(ext)):
        body = For(var[name], ext[name], body)
    params = [ybuf] + (xsrc + [xoff] if gat is not None else [xp]) + [bbuf]
    params += wbufs + ([zbuf] if zbuf is not None else [])
    params += [wflat] if wflat is not None else []
    params += list(pre[:2]) if pre is not None else []
    # Contiguous shares: a group-major thread's next group is the one it prefetched; a
    # pixel-major one's rows are those its core wrote.
    schedule = parallel_contiguous if wflat is not None or lay.pixel_major else parallel_outer
    ctx.emit(schedule(Kernel(node.name, params, body), list(ext), ctx, lay.work))


def _depthwise_tile(ctx: LowerCtx, node: Node, wv: np.ndarray, win, c: int, iw: int,
                    ow: int) -> int:
    """R pixels per register tile of a depthwise conv: the tuned one (tile_schedules) or the
    cost model's; the conv is a tunable workload when its rows have interior columns."""
    regs = vector_regs(ctx)
    rmax = depthwise_default(regs, ctx.lanes, c)
    _, c0, c1 = column_split(iw, wv.shape[3], win.strides[1], win.dilations[1], win.begin(1), ow)
    if c1 - c0 < 2:
        return rmax
    key = depthwise_workload(ctx.target, ctx.graph.types[node.inputs[0]].shape, wv.shape, win)
    cands = pixel_candidates(c1 - c0, rmax, regs, ctx.lanes, c)
    return choose(ctx, node.name, key, cands,
                  lambda s: pixel_fits(s, c1 - c0, regs, ctx.lanes, c)).r


def _depthwise(ctx: LowerCtx, node: Node, wv: np.ndarray, bias: np.ndarray, win, act: Act,
               residual: str | None, c: int) -> None:
    """Depthwise conv, reading the unpadded input (memory-bound: no padded copy). Rows: the
    valid kh range of each output row from compile-time tables; columns: the interior ones
    (every kw tap inside) in tiles of R pixels, each border column on its own with its valid
    taps unrolled."""
    g = ctx.graph
    out = node.outputs[0]
    oc, _, kh_, kw_ = wv.shape
    ys = g.types[out].shape
    nb, cb, oh, ow = ys[:4]
    ih, iw = g.types[node.inputs[0]].shape[2:4]
    (sh, sw), (dh, dw) = win.strides, win.dilations
    pt, pl = win.begin(0), win.begin(1)
    xin, xh, xw = blocked(ctx, node.inputs[0], "x")
    w = np.zeros((cb * c, kh_, kw_), np.float32)
    w[:oc] = wv[:, 0]
    wbuf = ctx.const(np.ascontiguousarray(w.reshape(cb, c, kh_, kw_).transpose(0, 2, 3, 1)),
                     "w")
    bp = np.zeros(cb * c, np.float32)
    bp[:oc] = bias
    bbuf = ctx.const(bp.reshape(cb, c), "b")
    rows = [valid_taps(ih, kh_, sh, dh, pt, o) for o in range(oh)]
    khlo = ctx.const(np.array([r[0] if r else 0 for r in rows], np.int64), "khlo")
    khn = ctx.const(np.array([len(r) for r in rows], np.int64), "khn")
    ybuf, yh, yw = blocked(ctx, out, "y")
    zbuf, zh, zw = blocked(ctx, residual, "z") if residual else (None, 0, 0)
    zero_halo(ctx, out, node.name)
    n, b, o, t, khv = Var("n"), Var("cb"), Var("oh"), Var("t"), Var("kh")
    rmax = _depthwise_tile(ctx, node, wv, win, c, iw, ow)

    def tile(ow0: Expr, rr: int, taps: list[int], tag: str) -> Stmt:
        """rr pixels from column ow0, all with the kw taps ``taps``."""
        acc = Buffer(f"acc{tag}", DType.float32, (rr, c), "local")
        r, v, r2, v2, r3, v3 = (Var(f"{q}{tag}") for q in ("r", "v", "r2", "v2", "r3", "v3"))
        init = For(r, rr, For(v, c, Store(acc, (r, v), bbuf[b, v]), "vectorized"), "unrolled")
        upd = []
        for kw in taps:
            xi = xin[n, b, o * sh + (khv * dh + xh - pt), (ow0 + r2) * sw + (kw * dw + xw - pl),
                     v2]
            upd.append(For(r2, rr, For(v2, c, Store(acc, (r2, v2), acc[r2, v2] + xi
                                                    * wbuf[b, khv, kw, v2]), "vectorized"),
                           "unrolled"))
        red = For(khv, khn[o], seq(*upd), start=khlo[o])
        val = acc[r3, v3]
        if zbuf is not None:
            val = val + zbuf[n, b, o + zh, ow0 + r3 + zw, v3]
        if act is not None:
            val = act(val)
        epi = For(r3, rr, For(v3, c, Store(ybuf, (n, b, o + yh, ow0 + r3 + yw, v3), val),
                              "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    parts = row_tiles(tile, t, iw, kw_, sw, dw, pl, ow, rmax)
    body = For(n, nb, For(b, cb, For(o, oh, seq(*parts))))
    params = [ybuf, xin, wbuf, bbuf, khlo, khn] + ([zbuf] if zbuf is not None else [])
    work = nb * cb * oh * ow * c * kh_ * kw_
    ctx.emit(parallel_outer(Kernel(node.name, params, body), ["n", "cb", "oh"], ctx, work))
