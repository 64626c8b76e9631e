"""A dense 1x1 NCHWc conv reading a ChannelGather view (inline_channel_gather) in place.

The gather Y = ChannelGather(X_0, X_1, ...; sources, view=1) has no memory. Its reader, a 1x1
conv, sums W[o, i] * Y[i] over its input channels i; Y[i] is channel s of some X_k. Sorting the
conv's input channels by (k, s) and permuting the rows of W alike, the reduction becomes a few
runs: a run is ``count`` consecutive channels of one block of one X_k (from lane ``lane``) that
meet rows ``row`` .. ``row + count - 1`` of the permuted weights. The kernel loops over each run
(an input channel per iteration, as the plain kernel's unrolled ci loop does) with the input
scalar at X_k[n, block, pixel, lane + u] and the weight vectors at row + u of the packed weights
viewed as [G, rows, VB * c]: no copy of Y, and no FMA on a channel the conv does not read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncc.ir import Graph
from cnncc.ir.loop import Buffer, Expr, For, Stmt, Var, seq

from .context import LowerCtx


@dataclass(frozen=True)
class Run:
    source: int     # which input of the gather
    block: int      # the channel block of that input
    lane: int       # the run's first lane in the block
    count: int      # channels in the run
    row: int        # the first row of the permuted weights


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
    runs: list[Run]
    picks: list[tuple[int, int, int]]   # (input, its channel, conv input channel), sorted
    block: int


def gathered_input(g: Graph, x: str) -> GatheredInput | None:
    """How a conv reads ``x`` when ``x`` is a ChannelGather view; None for any other value."""
    node = next((n for n in g.nodes if n.outputs and n.outputs[0] == x), None)
    if node is None or node.op != "ChannelGather" or not node.attrs.get("view"):
        return None
    c = node.attrs["block"]
    starts = np.cumsum([0] + list(node.attrs["in_channels"]))
    pairs = []
    for i, s in enumerate(node.attrs["sources"]):
        k = int(np.searchsorted(starts, s, side="right")) - 1
        pairs.append((k, int(s - starts[k]), i))
    pairs.sort()
    runs: list[Run] = []
    for row, (k, s, _) in enumerate(pairs):
        last = runs[-1] if runs else None
        if last is not None and last.source == k and last.block == s // c \
                and last.lane + last.count == s % c:
            runs[-1] = Run(k, s // c, last.lane, last.count + 1, last.row)
        else:
            runs.append(Run(k, s // c, s % c, 1, row))
    return GatheredInput(list(node.inputs), [i for _, _, i in pairs], runs, pairs, c)


def gathered_blocks(gat: GatheredInput) -> tuple[list[Segment], np.ndarray]:
    """For a reader that needs whole blocks (a depthwise conv, vectorized over a block's
    lanes): the blocks of the inputs holding the gathered channels, in segments of consecutive
    blocks of one input, numbered one after another (the reader's V "virtual" blocks), and the
    virtual channel (virtual block * c + lane) of each conv input channel. The other lanes of
    those blocks are read too; the reader gives them zero weights."""
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


def source_buffers(ctx: LowerCtx, gat: GatheredInput, flat: bool) -> list[Buffer]:
    """The gather's inputs as [N, CB, H, W, c] buffers ([N, CB, 1, H * W, c] when ``flat``);
    they are never stored with a halo (a gather reads them)."""
    bufs = []
    for k, v in enumerate(gat.inputs):
        n, cb, h, w, c = ctx.graph.types[v].shape
        bufs.append(ctx.value(v, (n, cb, 1, h * w, c) if flat else None, f"x{k}"))
    return bufs


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


def gathered_reduction(gat: GatheredInput, tag: str, step, prefetch=None) -> Stmt:
    """The reduction over the runs: ``step(k, block, lane, row)`` is one input channel's update
    (block, lane of input k; row of the weights); ``prefetch(row)``, when given, the weight
    prefetches issued with that row."""
    loops = []
    for i, run in enumerate(gat.runs):
        u = Var(f"u{i}{tag}")
        row: Expr = u + run.row
        body = step(run.source, run.block, u + run.lane, row)
        if prefetch is not None:
            body = seq(prefetch(row), body)
        loops.append(For(u, run.count, body))
    return seq(*loops)
