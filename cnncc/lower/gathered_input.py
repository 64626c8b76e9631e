"""A dense 1x1 NCHWc conv reading a ChannelGather view (inline_channel_gather) in place.

The gather Y = ChannelGather(X_0, X_1, ...; sources, view=1) has no memory. Its reader, a 1x1
conv, sums W[o, i] * Y[i] over its input channels i; Y[i] is channel s of some X_k. Sorting the
conv's input channels by (k, s) and permuting the rows of W alike, the rows of each X_k are
consecutive: the kernel loops over them (CI_UNROLL channels an iteration, unrolled, as the
plain kernel's ci loop), reading the input scalar of row r at offset off[r] + pixel * c of X_k's
image (off[r] = block * H * W * c + lane of its channel: a compile-time table, one load per
channel and tile) and the weight vectors at row r of the packed weights viewed as [G, rows,
VB * c]: no copy of Y, and no FMA on a channel the conv does not read. A loop per input, not
per run of consecutive channels: ShuffleNet's gathers hold up to ~60 runs of a block or less,
whose loops made the kernel's code several times larger and slower (AVX2, measured).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncc.ir import DType, Graph
from cnncc.ir.loop import Buffer, Const, For, Prefetch, Stmt, Var, seq

from .context import LowerCtx
from .conv_nchwc_tiles import LINE_BYTES

LINE_FLOATS = LINE_BYTES // 4


@dataclass(frozen=True)
class Segment:
    source: int     # which input of the gather
    block: int      # its first channel block read
    count: int      # consecutive blocks read
    vblock: int     # where they start in the reader's blocks (see gathered_blocks)


@dataclass(frozen=True)
class GatheredInput:
    inputs: list[str]   # the gather's inputs (the buffers read)
    order: list[int]    # the conv input channel of each permuted weight row
    picks: list[tuple[int, int, int]]   # (input, its channel, conv input channel) per row
    block: int

    def spans(self) -> list[tuple[int, int, int]]:
        """(input k, first row, end row) of each input's rows."""
        out: list[tuple[int, int, int]] = []
        for row, (k, _, _) in enumerate(self.picks):
            if out and out[-1][0] == k:
                out[-1] = (k, out[-1][1], row + 1)
            else:
                out.append((k, row, row + 1))
        return out


def gathered_input(g: Graph, x: str) -> GatheredInput | None:
    """How a conv reads ``x`` when ``x`` is a ChannelGather view; None for any other value."""
    node = next((n for n in g.nodes if n.outputs and n.outputs[0] == x), None)
    if node is None or node.op != "ChannelGather" or not node.attrs.get("view"):
        return None
    starts = np.cumsum([0] + list(node.attrs["in_channels"]))
    pairs = []
    for i, s in enumerate(node.attrs["sources"]):
        k = int(np.searchsorted(starts, s, side="right")) - 1
        pairs.append((k, int(s - starts[k]), i))
    pairs.sort()
    return GatheredInput(list(node.inputs), [i for _, _, i in pairs], pairs,
                         node.attrs["block"])


def gathered_blocks(gat: GatheredInput) -> tuple[list[Segment], np.ndarray]:
    """For a reader that needs whole blocks (a depthwise conv, vectorized over a block's
    lanes): the blocks of the inputs holding the gathered channels, in segments of consecutive
    blocks of one input, numbered one after another (the reader's V "virtual" blocks), and the
    virtual channel (virtual block * c + lane) of each conv input channel. The other lanes of
    those blocks are read too; the reader gives them zero weights and zeroes them after the
    depthwise (an Inf there must not reach the sums as NaN)."""
    c = gat.block
    blocks = sorted({(k, s // c) for k, s, _ in gat.picks})
    vblock = {kb: v for v, kb in enumerate(blocks)}
    segments: list[Segment] = []
    for v, (k, b) in enumerate(blocks):
        last = segments[-1] if segments else None
        if last is not None and last.source == k and last.block + last.count == b:
            segments[-1] = Segment(k, last.block, last.count + 1, last.vblock)
        else:
            segments.append(Segment(k, b, 1, v))
    vchan = np.zeros(len(gat.picks), np.int64)
    for k, s, i in gat.picks:
        vchan[i] = vblock[(k, s // c)] * c + s % c
    return segments, vchan


def source_buffers(ctx: LowerCtx, gat: GatheredInput) -> tuple[list[Buffer], Buffer]:
    """The gather's inputs, each viewed as [N, CB * H * W * c] (they never have a halo: a gather
    reads them), and the table of each row's offset in its input's image."""
    bufs, off = [], []
    for k, v in enumerate(gat.inputs):
        n, cb, h, w, c = ctx.graph.types[v].shape
        bufs.append(ctx.value(v, (n, cb * h * w * c), f"x{k}"))
    for k, s, _ in gat.picks:
        h, w, c = ctx.graph.types[gat.inputs[k]].shape[2:]
        off.append(s // c * h * w * c + s % c)
    return bufs, ctx.const(np.array(off, DType.int64.np), "xoff")


def row_weights(ctx: LowerCtx, wbufs: list[Buffer]) -> list[Buffer]:
    """The packed 1x1 weights [G, ICb, 1, 1, ci, V] viewed as [G, ICb * ci, V] (same storage)."""
    views = []
    for k, w in enumerate(wbufs):
        g_, icb, kh, kw, ci, v = w.shape
        assert kh == kw == 1, "a gathered input is read by 1x1 convs only"
        view = Buffer(f"wr{k}", w.dtype, (g_, icb * ci, v))
        ctx.binding[id(view)] = ctx.binding[id(w)]
        views.append(view)
    return views


def gathered_reduction(gat: GatheredInput, tag: str, step, unroll: int,
                       prefetch: tuple | None = None) -> Stmt:
    """The reduction over the rows, a loop per input: ``step(k, row)`` is one input channel's
    update (input k, row of the weights); ``unroll`` rows an iteration (unrolled), the rest
    unrolled after the loop. ``prefetch`` = (flat weights, base, P): the dense kernel's
    next-group prefetch (conv_nchwc_tiles.prefetch_plan), its P lines per ``unroll`` rows from
    line row * P // unroll on, issued before each group of rows."""
    def lines(row, rows: int) -> Stmt:
        if prefetch is None:
            return seq()
        wflat, base, per = prefetch
        first, last = row * per // unroll, wflat.shape[0] - LINE_FLOATS
        return seq(*[Prefetch(wflat, ((base + (first + p) * LINE_FLOATS).min(last),), 2)
                     for p in range(-(-rows * per // unroll))])

    loops = []
    for i, (k, r0, r1) in enumerate(gat.spans()):
        full, rest = divmod(r1 - r0, unroll)
        uo, ui, ur = Var(f"uo{i}{tag}"), Var(f"ui{i}{tag}"), Var(f"ur{i}{tag}")
        if full:
            body = For(ui, unroll, step(k, uo * unroll + ui + r0), "unrolled")
            loops.append(For(uo, full, seq(lines(uo * unroll + r0, unroll), body)))
        if rest:
            u0 = r0 + full * unroll
            loops.append(seq(lines(Const(u0), rest), For(ur, rest, step(k, ur + u0),
                                                          "unrolled")))
    return seq(*loops)
