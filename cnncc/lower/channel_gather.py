"""ChannelGather (ir/ops/channel_gather.py): output channels copied from the inputs' channels.

NCHW and NCHW{c}c share one kernel per input, over a view of every tensor as [N, CB, P, c]
(P pixels; NCHW: c = 1, CB = C): for each image and pixel, the output channels taken from that
input, through compile-time tables of (output block, output lane, input block, input lane).
Blocked: pixels outside the channels (a pixel's lines of every block are read and written
together; the parallel loop splits pixels); NCHW: channels outside the contiguous pixels. The output's padding lanes (blocked, C not a multiple of c) are
written 0 (a conv reading them multiplies them by zero weights: they must be finite). A view
(view=1) gets no kernel: its readers, 1x1 convs, read the inputs (cnncc/lower/gathered_input.py).
"""
from __future__ import annotations

import math

import numpy as np

from cnncc.ir import Node
from cnncc.ir.loop import Const, F32, Kernel, Store, loop_nest

from .context import LowerCtx, op_context
from .cpu_schedule import parallel_outer


def lower_channel_gather(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    attrs = op_context(g, node).attrs
    if attrs["view"]:       # no kernel: its readers read the inputs in place (gathered_input.py)
        return
    block, sources, out = attrs["block"], list(attrs["sources"]), node.outputs[0]
    chans = list(attrs["in_channels"]) if block else [g.types[v].shape[1] for v in node.inputs]
    c = block or 1
    ys = g.types[out].shape
    n, pixels = ys[0], math.prod(ys[2:-1] if block else ys[2:])
    yb = ctx.value(out, (n, ys[1], pixels, c), "y")
    starts = np.cumsum([0] + chans)
    for k, v in enumerate(node.inputs):
        picks = [(o, s - int(starts[k])) for o, s in enumerate(sources)
                 if starts[k] <= s < starts[k + 1]]
        if not picks:
            continue
        xb = ctx.value(v, (n, g.types[v].shape[1], pixels, c), "x")
        o, s = np.array(picks, np.int64).T
        ob, oj, sb, sj = (ctx.const(a, name) for a, name in (
            (o // c, "ob"), (o % c, "oj"), (s // c, "sb"), (s % c, "sj")))
        loops = [("n", n), ("p", pixels), ("t", len(picks))]
        if not block:       # NCHW: a channel's pixels are contiguous, pixels innermost
            loops[1], loops[2] = loops[2], loops[1]

        def copy(i, a, b):
            p, t = (a, b) if block else (b, a)
            return Store(yb, (i, ob[t], p, oj[t]), xb[i, sb[t], p, sj[t]])
        kern = Kernel(f"{node.name}_{k}", [yb, xb, ob, oj, sb, sj], loop_nest(loops, copy))
        ctx.emit(parallel_outer(kern, [loops[0][0], loops[1][0]], ctx,
                                n * pixels * len(picks)))
    pad = ys[1] * c - len(sources)
    if pad:
        body = loop_nest([("n", n), ("p", pixels), ("j", pad)], lambda i, p, j: Store(
            yb, (i, ys[1] - 1, p, j + (c - pad)), Const(0.0, F32)))
        kern = Kernel(f"{node.name}_pad", [yb], body)
        ctx.emit(parallel_outer(kern, ["n", "p"], ctx, n * pixels * pad))
