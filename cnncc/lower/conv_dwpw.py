"""DwPwConvNCHWc on the CPU: a depthwise conv and the 1x1 conv reading it, in one kernel.

Activations are NCHW{c}c ([N, C/c, H, W, c], c = block). An output row is cut into sub-tiles
of R pixels (R ~ 8); one task is (n, output row oh, chunk of K consecutive sub-tiles: the whole
row unless its tile would exceed TILE_BYTES). It

1. computes the depthwise output of its pixels for ALL C input channels into a local tile
   T[K * R, C/c * c] (L1/L2-resident, <= TILE_BYTES): channel block by channel block (so the
   input is read along its rows), per sub-tile R accumulator vectors of c lanes start at the
   bias, take one FMA per (tap, pixel) of the input vector at that tap with the packed filter
   vector wd[cb, kh, kw, :], and leave through the depthwise activation into T. Taps in the
   zero padding are left out at compile time: border rows and border sub-tiles get their own
   code with their valid taps (interior ones share one code; no test in any inner loop);
2. then the pointwise conv from T: for each group of VB output blocks and each sub-tile, a
   register tile of R x VB accumulator vectors starts at the bias; per input channel ic
   (padding channels are skipped: their weights would be 0) the VB packed weight vectors
   wp[ob, ic, vb, :] are multiplied with the broadcast scalar T[r, ic] of every pixel; the
   epilogue adds the residual, applies the pointwise activation and stores each output vector
   once.

So the depthwise output never goes to memory beyond the task's tile. The (n, oh, chunk) loops
run in parallel when ctx.threads > 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Cmp, Const, Expr, For, If, Kernel, Let, Select,
                           Stmt, Store, Var, seq)

from .context import LowerCtx, const_input, op_context, unsupported
from .conv import activation_expr
from .conv_nchwc_tiles import TUNE_TILES
from .cpu_schedule import parallel_outer
from .gathered_input import gathered_blocks, gathered_input
from .tile_schedules import choose, dims, int_fields

# Pixels of a register tile per vector register of the target: 8 with 32 registers, 4 with 16.
R_PIXELS_PER_REGISTER = 0.25
TILE_BYTES = 64 << 10   # the depthwise tile T of one task stays under this
IC_UNROLL = 4           # input channels per iteration of the pointwise reduction loop


@dataclass(frozen=True)
class DwpwSchedule:
    """The tunable choices of a fused depthwise->pointwise kernel: R pixels per sub-tile and VB
    output blocks per pointwise register tile. Every schedule within the register limit
    (``fits``) computes the same result; only the speed differs (cnncc/tune.py)."""
    r: int
    vb: int

    def as_dict(self) -> dict:
        return {"r": self.r, "vb": self.vb}

    @classmethod
    def from_dict(cls, d: dict) -> "DwpwSchedule":
        return cls(*int_fields(d, ("r", "vb"), "depthwise->pointwise"))

    def label(self) -> str:
        return f"{self.r} px x {self.vb} blocks"


def _r_cap(ow: int, channels: int) -> int:
    """The most pixels a sub-tile may have: the output row, and the tile T under TILE_BYTES."""
    return max(1, min(ow, TILE_BYTES // (4 * channels)))


def _r_limit(vb: int, per_block: int, regs: int) -> int:
    """The most pixels of an R x VB register tile that leaves 4 registers free."""
    return (regs - 4) // (vb * per_block)


def fits(sched: DwpwSchedule, ow: int, ocb: int, channels: int, lanes: int, block: int,
         regs: int) -> bool:
    per_block = -(-block // lanes)
    return (1 <= sched.vb <= min(4, ocb) and 1 <= sched.r <= _r_cap(ow, channels)
            and sched.r <= _r_limit(sched.vb, per_block, regs))


def _near_divisor(ow: int, rmax: int) -> int:
    """The largest R in [3/4 rmax, rmax] dividing the row (no partial sub-tile), else rmax."""
    for r in range(rmax, (3 * rmax + 3) // 4 - 1, -1):
        if ow % r == 0:
            return r
    return rmax


def cost_model_tile(ow: int, ocb: int, channels: int, lanes: int, block: int, regs: int
                    ) -> DwpwSchedule:
    """(R pixels, VB output blocks) of the pointwise register tile within ``regs`` vector
    registers. Measured on MobileNetV2's blocks (AVX-512, 32 registers): VB = 2 with R = 7 or 8
    beats VB = 3 or 4 with 6 to 8 pixels (more accumulators, which spill) and R = 12 to 14,
    except for many output blocks in groups of 4 (960 -> 320: VB = 4, R = 7 reuses each
    broadcast 4 times: 28 accumulators, 4 registers left). So R is at most a quarter of the
    registers and leaves 4 of them free of accumulators. R divides the row when a divisor is
    near. Other machines may prefer other tiles: ``candidates`` are what `cnncc tune` tries."""
    per_block = -(-block // lanes)                 # registers per c-lane vector
    wide = ocb >= 8 and ocb % 4 == 0
    vb = max(1, min(ocb, (4 if wide else 2) // per_block))
    rmax = min(int(regs * R_PIXELS_PER_REGISTER), _r_limit(vb, per_block, regs))
    rmax = max(1, min(rmax, _r_cap(ow, channels)))
    return DwpwSchedule(_near_divisor(ow, rmax), vb)


def candidates(ow: int, ocb: int, channels: int, lanes: int, block: int, regs: int,
               limit: int = TUNE_TILES) -> list[DwpwSchedule]:
    """The cost model's tile first, then for each VB the largest R that fits the registers,
    one dividing the row, and one a quarter smaller: at most ``limit`` schedules."""
    per_block = -(-block // lanes)
    out = [cost_model_tile(ow, ocb, channels, lanes, block, regs)]
    for vb in range(1, min(4, ocb) + 1):
        rmax = min(_r_limit(vb, per_block, regs), _r_cap(ow, channels))
        if rmax < 1:
            continue
        for r in (rmax, _near_divisor(ow, rmax), max(1, (3 * rmax) // 4)):
            sched = DwpwSchedule(r, vb)
            if sched not in out:
                out.append(sched)
    return out[:limit]


def dwpw_workload(target, xs, dw_shape, pw_shape, strides, dilations, pads) -> str:
    """The tuning log's key of a fused dw->pw kernel: the target's vectors and threads, the
    shapes and the depthwise window; never the model, its weights or its activations."""
    return (f"conv_dwpw/{target.isa}/l{target.lanes}/t{target.threads}/x{dims(xs)}"
            f"/dw{dims(dw_shape)}/pw{dims(pw_shape)}/s{dims(strides)}/d{dims(dilations)}"
            f"/p{dims(pads)}")


def _valid_taps(size: int, k: int, stride: int, dil: int, pad: int, pos: int) -> tuple:
    """Taps t of output position ``pos`` that read inside [0, size): pos*stride - pad + t*dil."""
    return tuple(t for t in range(k) if 0 <= pos * stride - pad + t * dil < size)


def lower_dwpw(ctx: LowerCtx, node: Node) -> None:
    """DwPwConvNCHWc as one kernel (see the module docstring); weights must be constants."""
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    z = node.inputs[5] if len(node.inputs) > 5 and node.inputs[5] else None
    if any(g.types[v].dtype is not DType.float32 for v in node.inputs + [out] if v):
        raise unsupported(node, "only float32 is lowered")
    attrs = op_context(g, node).attrs
    wd = const_input(g, node, 1, "the depthwise weight").astype(np.float32)
    wpw = const_input(g, node, 3, "the pointwise weight").astype(np.float32)
    bd = const_input(g, node, 2, "the depthwise bias")
    bpw = const_input(g, node, 4, "the pointwise bias")
    channels, kh, kw = wd.shape[0], wd.shape[2], wd.shape[3]
    oc = wpw.shape[0]
    c = attrs["block"]
    n_, cb_n, h, w = g.types[x].shape[:4]
    # A ChannelGather view (inline_channel_gather): the depthwise reads the blocks of its
    # inputs that hold the gathered channels, in place (V virtual blocks; the other lanes get
    # zero weights and are zeroed after it); vchan: the virtual channel of each channel.
    gat = gathered_input(g, x)
    segs, vchan = gathered_blocks(gat) if gat is not None else (None, np.arange(channels))
    if segs is not None:
        cb_n = sum(sg.count for sg in segs)
    red_n = cb_n * c if segs is not None else channels     # the pointwise reduction
    _, ocb_n, oh_n, ow_n = g.types[out].shape[:4]
    pt, pl = (attrs["dw_pads"] or [0, 0, 0, 0])[:2]
    sh, sw = attrs["dw_strides"] or [1, 1]
    dh, dl = attrs["dw_dilations"] or [1, 1]
    act_d = activation_expr(attrs["dw_activation"], list(attrs["dw_activation_params"]))
    act_p = activation_expr(attrs["pw_activation"], list(attrs["pw_activation_params"]))
    regs = ctx.vector_registers
    key = dwpw_workload(ctx.target, g.types[x].shape, wd.shape, wpw.shape, [sh, sw], [dh, dl],
                        attrs["dw_pads"] or [0, 0, 0, 0])
    sched = choose(ctx, node.name, key, candidates(ow_n, ocb_n, red_n, ctx.lanes, c, regs),
                   lambda s: fits(s, ow_n, ocb_n, red_n, ctx.lanes, c, regs))
    r_tile, vb = sched.r, sched.vb
    oct_n = -(-ocb_n // vb)

    # Packed constants (zero in the padding channels).
    wdp = np.zeros((cb_n * c, kh, kw), np.float32)
    wdp[vchan] = wd[:, 0]
    wdp = wdp.reshape(cb_n, c, kh, kw).transpose(0, 2, 3, 1)
    bdp = np.zeros(cb_n * c, np.float32)
    if bd is not None:
        bdp[vchan] = bd
    wpp = np.zeros((oct_n * vb * c, red_n), np.float32)
    wpp[:oc, vchan] = wpw[:, :, 0, 0]
    wpp = wpp.reshape(oct_n, vb, c, red_n).transpose(0, 3, 1, 2)
    bpp = np.zeros(oct_n * vb * c, np.float32)
    if bpw is not None:
        bpp[:oc] = bpw
    wdb, bdb = ctx.const(wdp, "wd"), ctx.const(bdp.reshape(cb_n, c), "bd")
    used = None
    if segs is not None:    # the virtual lanes of gathered channels: 1, the others 0
        lanes = np.zeros(cb_n * c, np.float32)
        lanes[vchan] = 1.0
        used = ctx.const(lanes.reshape(cb_n, c), "used")
    wpb, bpb = ctx.const(wpp, "wp"), ctx.const(bpp.reshape(oct_n * vb, c), "bp")
    xbufs = [ctx.value(v, bname=f"x{k}") for k, v in enumerate(gat.inputs)] \
        if gat is not None else [ctx.value(x, bname="x")]
    yb = ctx.value(out, bname="y")
    zb = ctx.value(z, bname="z") if z else None

    n, oh, q = Var("n"), Var("oh"), Var("q")
    # Compile-time tap sets: the valid kh of each border row, the valid kw of each pixel of
    # each border tile; interior rows and tiles take every tap (no test in the inner loops).
    all_kh, all_kw = tuple(range(kh)), tuple(range(kw))
    row_taps = {o: _valid_taps(h, kh, sh, dh, pt, o) for o in range(oh_n)}
    border_rows = [(o, t) for o, t in row_taps.items() if t != all_kh]

    def col_taps(ow0: int, rr: int) -> list[tuple[int, ...]] | None:
        cols = [_valid_taps(w, kw, sw, dl, pl, ow0 + r) for r in range(rr)]
        return None if all(t == all_kw for t in cols) else cols

    def depthwise(tile: Buffer, cb: Var, ow0: Expr, t0: Expr, rr: int, cols, tag: str,
                  xb: Buffer, xblk: Expr) -> Stmt:
        """T[t0 + r, cb * c + j] = act_d(bias + sum of taps) for the rr pixels from ow0, from
        block ``xblk`` of ``xb``; ``cols``: the valid kw of each pixel (None: all)."""
        acc = Buffer(f"dacc{tag}", DType.float32, (rr, c), "local")
        r, j, j2, r3, j3 = (Var(f"{q}{tag}") for q in ("dr", "dj", "dj2", "dr3", "dj3"))
        init = For(r, rr, For(j, c, Store(acc, (r, j), bdb[cb, j]), "vectorized"), "unrolled")

        a, b = Var(f"dka{tag}"), Var(f"dkb{tag}")
        ih = oh * sh + (a * dh - pt)

        def fma(k: int, tap: Expr) -> Stmt:
            iw = (ow0 + k) * sw + (tap * dl - pl)
            value = acc[k, j2] + xb[n, xblk, ih, iw, j2] * wdb[cb, a, tap, j2]
            return For(j2, c, Store(acc, (k, j2), value), "vectorized")

        # Pixels with every kw tap share a kw loop; the others take their valid taps one by
        # one. Both tap loops are unrolled by LLVM (the accumulators are indexed by the
        # pixel only), so each accumulator still sums its taps in (kh, kw) order.
        full = [k for k in range(rr) if cols is None or cols[k] == all_kw]

        def taps(khs: tuple[int, ...]) -> Stmt:
            if not khs:
                return seq()
            row = [For(b, kw, seq(*[fma(k, b) for k in full]), "unrolled")] if full else []
            row += [fma(k, Const(t)) for k in range(rr) if k not in full for t in cols[k]]
            return For(a, len(khs), seq(*row), "unrolled", start=khs[0])

        red = taps(all_kh)
        for o, t in reversed(border_rows):
            red = If(oh.eq(o), taps(t), red)
        val = acc[r3, j3] if act_d is None else act_d(acc[r3, j3])
        if used is not None:    # a lane the gather does not read is 0, even if its input is not
            val = Select(Cmp("gt", used[cb, j3], Const(0.0, DType.float32)), val,
                         Const(0.0, DType.float32))
        epi = For(r3, rr, For(j3, c, Store(tile, (t0 + r3, cb * c + j3), val), "vectorized"),
                  "unrolled")
        return Allocate(acc, seq(init, red, epi))

    def pointwise(tile: Buffer, ob: Var, ow0: Expr, t0: Expr, rr: int, vbb: int,
                  tag: str) -> Stmt:
        """y[n, ob*vb + v, oh, ow0 + r, :] = act_p(bias + T[t0 + r, :] . wp + z), vbb blocks."""
        acc = Buffer(f"pacc{tag}", DType.float32, (rr, vbb, c), "local")
        r, v, j, r2, v2, j2, r3, v3, j3, ic = (Var(f"{q}{tag}") for q in (
            "pr", "pv", "pj", "pr2", "pv2", "pj2", "pr3", "pv3", "pj3", "ic"))
        init = For(r, rr, For(v, vbb, For(j, c, Store(acc, (r, v, j), bpb[ob * vb + v, j]),
                                          "vectorized"), "unrolled"), "unrolled")
        upd = Store(acc, (r2, v2, j2), acc[r2, v2, j2] + tile[t0 + r2, ic] * wpb[ob, ic, v2, j2])
        red = For(r2, rr, For(v2, vbb, For(j2, c, upd, "vectorized"), "unrolled"), "unrolled")
        # ic unrolled by IC_UNROLL in a loop (measured 3-5% faster than a plain loop).
        unroll = next(u for u in (IC_UNROLL, 2, 1) if red_n % u == 0)
        if unroll > 1:
            icu, icl = Var(f"icu{tag}"), Var(f"icl{tag}")
            red = For(icu, red_n // unroll, For(icl, unroll, Let(ic, icu * unroll + icl, red),
                                                "unrolled"))
        else:
            red = For(ic, red_n, red)
        yi = (n, ob * vb + v3, oh, ow0 + r3, j3)
        val = acc[r3, v3, j3]
        if zb is not None:
            val = val + zb[yi]
        if act_p is not None:
            val = act_p(val)
        epi = For(r3, rr, For(v3, vbb, For(j3, c, Store(yb, yi, val), "vectorized"),
                              "unrolled"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    # The row is cut into sub-tiles of R pixels (full ones: s < nfull, then a tail of `rest`);
    # a task takes a chunk of K consecutive sub-tiles (the whole row when its tile fits).
    nfull, rest = divmod(ow_n, r_tile)
    k_sub = max(1, min(nfull, TILE_BYTES // (4 * r_tile * cb_n * c)))
    chunks = -(-nfull // k_sub)
    tile = Buffer("t", DType.float32, (k_sub * r_tile + rest, cb_n * c), "local")
    cb, si, ob = Var("cb"), Var("si"), Var("ob")
    sub = q * k_sub + si                       # the sub-tile of iteration si of chunk q
    # Depthwise, channel block by channel block (streaming along the input rows): interior
    # sub-tiles share one code, each border sub-tile has its own (its taps known statically).
    border = [(p, cols) for p in range(nfull)
              if (cols := col_taps(p * r_tile, r_tile)) is not None]

    def dw_row(xb: Buffer, xblk: Expr, tg: str) -> Stmt:
        """The depthwise of the task's sub-tiles for virtual block cb (block xblk of xb)."""
        dw: Stmt | None = None
        if len(border) < nfull:
            dw = depthwise(tile, cb, sub * r_tile, si * r_tile, r_tile, None, tg, xb, xblk)
        for p, cols in reversed(border):
            d = depthwise(tile, cb, Const(p * r_tile), si * r_tile, r_tile, cols, f"{tg}b{p}",
                          xb, xblk)
            dw = d if dw is None else If(sub.eq(p), d, dw)
        if nfull % k_sub:
            dw = If(sub < nfull, dw)
        row: Stmt = For(si, k_sub, dw)
        if rest:
            ow0 = ow_n - rest
            tail = depthwise(tile, cb, Const(ow0), Const(k_sub * r_tile), rest,
                             col_taps(ow0, rest), f"{tg}t", xb, xblk)
            row = seq(row, tail if chunks == 1 else If(q.eq(chunks - 1), tail))
        return row

    if segs is None:
        dw_all = For(cb, cb_n, dw_row(xbufs[0], cb, ""))
    else:       # a loop per segment of consecutive blocks of one input
        loops = []
        for i, sg in enumerate(segs):
            cbi = Var(f"cb{i}")
            loops.append(For(cbi, sg.count, Let(cb, cbi + sg.vblock, dw_row(
                xbufs[sg.source], cbi + sg.block, f"s{i}"))))
        dw_all = seq(*loops)

    def pw_blocks(vbb: int, tag: str) -> Stmt:
        pw: Stmt = pointwise(tile, ob, sub * r_tile, si * r_tile, r_tile, vbb, tag)
        if nfull % k_sub:
            pw = If(sub < nfull, pw)
        pw = For(si, k_sub, pw)
        if rest:
            ow0 = ow_n - rest
            tail = pointwise(tile, ob, Const(ow0), Const(k_sub * r_tile), rest, vbb, tag + "t")
            pw = seq(pw, tail if chunks == 1 else If(q.eq(chunks - 1), tail))
        return pw

    full_ob, rest_ob = divmod(ocb_n, vb)
    pw_all: Stmt = pw_blocks(vb, "f")
    if rest_ob:
        pw_all = If(ob < full_ob, pw_all, pw_blocks(rest_ob, "r"))
    body = Allocate(tile, seq(dw_all, For(ob, oct_n, pw_all)))
    body = For(n, n_, For(oh, oh_n, For(q, chunks, body)))
    params = [yb] + xbufs + [wdb, bdb, wpb, bpb] + ([zb] if zb is not None else [])
    params += [used] if used is not None else []
    k = Kernel(node.name, params, body)
    work = n_ * oh_n * ow_n * red_n * (kh * kw + oc)
    ctx.emit(parallel_outer(k, ["n", "oh", "q"], ctx, work))
