"""CPU lowering of grouped ConvNCHWc with 1 < k < c channels a group (in and out) dividing
the block c (ResNeXt-50's 4 and 8, RegNet's 8 with AVX-512): a block-diagonal kernel.

An output block of c lanes holds c / k whole groups and reads the input block of the same
index (ir/ops/layout.group_span: K = c). Output lane o needs the k input lanes of its group:
for d in 0..k-1 the lane o ^ d (permutes), one constant lane permutation of the input
block's vector (ir/loop.LanePermute: a shufflevector; d = 0 is the vector itself) times the
weight vector of those channels (pack_block_diagonal). Per tap and pixel: one vector load,
k - 1 permutes and k FMAs, where the dense kernel over zero-filled weights (conv_nchwc.py)
takes c broadcasts and c FMAs, c / k times the conv's FLOPs.

A register tile is TH x TW output pixels of one block (TH * TW accumulators, initialized with
the bias; at most as many as the registers hold (tile_limit), or a tuned PixelSchedule's R) next to the k weight vectors of a tap; per tap (kh, kw), pixel by pixel: its input
vector, its permutes and k FMAs. The epilogue adds the residual, applies the activation and
stores one vector a pixel. The input is read in place when it has a large enough zero halo
(halo.py), else from a zero-padded blocked copy. Padding channels (C not a multiple of c) get
zero weights and bias.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Allocate, Buffer, Const, Expr, For, If, Kernel, LanePermute, Stmt, \
    Store, Var, seq

from .context import LowerCtx
from .conv import Act
from .conv_nchwc_tiles import vector_regs
from .cpu_schedule import parallel_outer
from .halo import blocked, zero_halo
from .layout_nchwc import padded_blocked
from .tile_schedules import GROUPED_KIND, PixelSchedule, choose, depthwise_workload

# Vector registers a tile leaves besides its accumulators and the k weight vectors: k + this
# (the input vector, its k - 1 permutes in flight, spares). Measured on Zen 5, AVX-512:
# ResNeXt's k = 4 with 24-pixel tiles (3 registers left) spilled ~100 vectors a tap and ran
# at half the speed of 21-pixel tiles (7 left, no spill); k = 8 ran as fast with 12 pixels
# (11 left) as with 16.
PERMUTE_SPARE = 3
# Floats in a 128-bit lane: x86 shuffles with an immediate (vshufps, vpermilps) stay inside one.
SUBLANE_FLOATS = 4
# A tile's cost besides its pixels, in pixels (pixel_tile).
TILE_OVERHEAD = 2


def block_diagonal_fits(lanes: int, block: int, ic: int, oc: int, group: int) -> bool:
    """Whether a grouped (not depthwise) conv runs the block-diagonal kernel on a target with
    ``lanes``-wide vectors (blocks of ``block`` = lanes channels): k = IC / group = OC / group
    channels a group dividing the block, 1 < k < c, and fewer instructions per pixel and tap
    (instructions_per_tap)."""
    if group <= 1 or ic != oc or ic % group or block != lanes:
        return False
    k = ic // group
    if not (1 < k < block and block % k == 0):
        return False
    dense, diagonal = instructions_per_tap(k, lanes)
    return diagonal < dense


def instructions_per_tap(k: int, lanes: int) -> tuple[int, int]:
    """(dense, block-diagonal) vector instructions per output pixel, tap and block of a
    grouped conv with k channels a group: the dense kernel's c broadcasts and c FMAs (c =
    ``lanes``); the block-diagonal one's input load, k FMAs and k - 1 permutes, one shuffle
    each inside 128-bit lanes (o ^ d for d < 4) and two across them (the larger d). Both keep
    their FMAs independent (one accumulator a pixel), so instructions bound them. Measured (Zen
    5, AVX-512, one thread, a conv alone): k = 4 3.4x and k = 8 1.6x faster than the dense
    kernel (README: ResNeXt-50's and RegNetY-400MF's convs)."""
    sublane = min(SUBLANE_FLOATS, lanes)
    shuffles = sum(1 if d < sublane else 2 for d in range(1, k))
    return 2 * lanes, 1 + k + shuffles


def pixel_tile(oh: int, ow: int, limit: int) -> tuple[int, int]:
    """(TH, TW) of at most ``limit`` pixels minimizing the tiles' cost: per tile its pixels
    plus TILE_OVERHEAD (the tap's weight loads, the loop), tails included; ties: fewer rows."""
    best = None
    for th in range(1, min(4, oh, limit) + 1):
        for tw in range(1, min(ow, limit // th) + 1):
            cost = 0
            for rows, rh in ((oh // th, th), (oh % th > 0, oh % th)):
                for cols, rw in ((ow // tw, tw), (ow % tw > 0, ow % tw)):
                    cost += rows * cols * (rh * rw + TILE_OVERHEAD)
            if best is None or cost < best[0]:
                best = (cost, th, tw)
    assert best is not None
    return best[1], best[2]


def tile_limit(ctx: LowerCtx, c: int, k: int) -> int:
    """The most pixels of a tile: the registers (in c-channel blocks) less the tap's k weight
    vectors, k for the input vector and its permutes, and PERMUTE_SPARE."""
    return max(1, vector_regs(ctx) * ctx.lanes // c - 2 * k - PERMUTE_SPARE)


def tile_schedule(ctx: LowerCtx, node: Node, win, wshape, oh: int, ow: int, c: int,
                  k: int) -> tuple[int, int]:
    """(TH, TW) of ``node``'s register tile: a tuned PixelSchedule of its workload (a tunable
    kind, tile_schedules.GROUPED_KIND) or the cost model's, the most pixels (tile_limit). The
    candidates: that, then the distinct tiles of 3/4, 1/2, 3/8 and 1/4 of it."""
    top = tile_limit(ctx, c, k)
    cands, tiles = [], set()
    for num, den in ((1, 1), (3, 4), (1, 2), (3, 8), (1, 4)):
        r = max(1, top * num // den)
        if pixel_tile(oh, ow, r) not in tiles:
            tiles.add(pixel_tile(oh, ow, r))
            cands.append(PixelSchedule(r))
    key = depthwise_workload(ctx.target, ctx.graph.types[node.inputs[0]].shape, wshape, win,
                             GROUPED_KIND)
    sched = choose(ctx, node.name, key, cands, lambda s: 1 <= s.r <= top)
    return pixel_tile(oh, ow, sched.r)


def permutes(k: int, c: int) -> list[tuple[int, ...]]:
    """The k lane permutations: permutation d gives lane o the lane o ^ d (k is a power of
    two, as c is, so o ^ d for d < k is a lane of o's group, and the k of them are its k
    lanes). Permutation 0 is the identity (no shuffle); x86 does o ^ d for d < 4 with one
    shuffle inside 128-bit lanes, o ^ 4 with one that swaps them."""
    return [tuple(o ^ d for o in range(c)) for d in range(k)]


def pack_block_diagonal(wv: np.ndarray, c: int) -> np.ndarray:
    """W [OC, k, KH, KW] -> [OCb, KH, KW, k, c]: entry (b, kh, kw, d, v) is the weight of
    output channel o = b * c + v for the input lane that permutation d gives it (permutes):
    W[o, (v % k) ^ d], the (v % k) ^ d-th channel of o's group; zeros for padding channels."""
    oc, k, kh, kw = wv.shape
    ocb = -(-oc // c)
    w = np.zeros((ocb * c, k, kh, kw), np.float32)
    w[:oc] = wv
    lane = np.arange(ocb * c) % k
    w = np.stack([w[np.arange(ocb * c), lane ^ d] for d in range(k)], 1)   # [OC', k, KH, KW]
    return np.ascontiguousarray(w.reshape(ocb, c, k, kh, kw).transpose(0, 3, 4, 2, 1))


def lower_block_diagonal(ctx: LowerCtx, node: Node, wv: np.ndarray, bias: np.ndarray, win,
                         act: Act, residual: str | None, c: int) -> None:
    """The block-diagonal grouped conv ``node`` (block_diagonal_fits) with weights ``wv``
    [OC, k, KH, KW], window ``win`` (resolve_window) and a fused activation / residual."""
    g = ctx.graph
    out = node.outputs[0]
    oc, k, kh_, kw_ = wv.shape
    nb, ocb, oh, ow = g.types[out].shape[:4]
    (sh, sw), (dh, dw) = win.strides, win.dilations
    th, tw = tile_schedule(ctx, node, win, wv.shape, oh, ow, c, k)
    wbuf = ctx.const(pack_block_diagonal(wv, c), "w")
    bp = np.zeros(ocb * c, np.float32)
    bp[:oc] = bias
    bbuf = ctx.const(bp.reshape(ocb, c), "b")
    xin, xh, xw = blocked(ctx, node.inputs[0], "x")
    if xh >= max(win.begin(0), win.end(0)) and xw >= max(win.begin(1), win.end(1)):
        xp, oy, ox = xin, xh - win.begin(0), xw - win.begin(1)
    else:
        assert not (xh or xw), "a halo smaller than the padding of a conv reading it"
        xp, oy, ox = padded_blocked(ctx, node.name, xin, (win.begin(0), win.begin(1)),
                                    (win.end(0), win.end(1))), 0, 0
    ybuf, yh, yw = blocked(ctx, out, "y")
    zbuf, zh, zw = blocked(ctx, residual, "z") if residual else (None, 0, 0)
    zero_halo(ctx, out, node.name)
    n, b, o, t, khv, kwv = (Var(q) for q in ("n", "cb", "ot", "t", "kh", "kw"))
    perms = permutes(k, c)

    def tile(oh0: Expr, rh: int, ow0: Expr, rw: int, tag: str) -> Stmt:
        """rh x rw pixels from (oh0, ow0) of block cb."""
        acc = Buffer(f"acc{tag}", DType.float32, (rh * rw, c), "local")
        r, v, r2, v2, r3, v3 = (Var(f"{q}{tag}") for q in ("r", "v", "r2", "v2", "r3", "v3"))

        def pixel(rv: Var) -> tuple[Expr, Expr]:
            return oh0 + rv // rw, ow0 + rv % rw

        def per_pixel(rv: Var, vv: Var, st: Stmt) -> Stmt:
            return For(rv, rh * rw, For(vv, c, st, "vectorized"), "unrolled")

        init = per_pixel(r, v, Store(acc, (r, v), bbuf[b, v]))
        py, px = pixel(r2)
        xv = xp[n, b, py * sh + khv * dh + oy, px * sw + kwv * dw + ox, v2]
        # Pixels outer, offsets inner: a pixel's input vector is loaded once and dies after its
        # k permutes; the k weight vectors of the tap stay in registers (offsets outer kept the
        # tile's input vectors live across them, and they spilled).
        upd = per_pixel(r2, v2, seq(*[Store(acc, (r2, v2), acc[r2, v2] + (
            LanePermute(xv, v2, perm) if d else xv) * wbuf[b, khv, kwv, d, v2])
            for d, perm in enumerate(perms)]))
        red = For(khv, kh_, For(kwv, kw_, upd))
        py3, px3 = pixel(r3)
        val = acc[r3, v3]
        if zbuf is not None:
            val = val + zbuf[n, b, py3 + zh, px3 + zw, v3]
        if act is not None:
            val = act(val)
        epi = per_pixel(r3, v3, Store(ybuf, (n, b, py3 + yh, px3 + yw, v3), val))
        return Allocate(acc, seq(init, red, epi))

    def cols(oh0: Expr, rh: int, tag: str) -> Stmt:
        body = tile(oh0, rh, t * tw, tw, tag)
        if ow % tw:
            body = If(t < ow // tw, body, tile(oh0, rh, Const(ow - ow % tw), ow % tw,
                                               tag + "c"))
        return body

    body = cols(o * th, th, "")
    if oh % th:
        body = If(o < oh // th, body, cols(Const(oh - oh % th), oh % th, "h"))
    ext = {"n": nb, "cb": ocb, "ot": -(-oh // th), "t": -(-ow // tw)}
    var = {"n": n, "cb": b, "ot": o, "t": t}
    for name in reversed(list(ext)):
        body = For(var[name], ext[name], body)
    params = [ybuf, xp, bbuf, wbuf] + ([zbuf] if zbuf is not None else [])
    work = nb * ocb * oh * ow * c * k * kh_ * kw_
    ctx.emit(parallel_outer(Kernel(node.name, params, body), list(ext), ctx, work))
