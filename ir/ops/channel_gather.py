"""ChannelGather: output channels picked from the channels of several inputs (internal op).

    ChannelGather(X_0, X_1, ...; sources=[s_0, ...], block=0)
        Y[:, o] = concat(X_0, X_1, ..., axis=1)[:, sources[o]]

One op for the channel plumbing exporters write around channel split and shuffle (Split,
Concat, Reshape -> Transpose -> Reshape: made by the fold_channel_shuffle pass). With block = c
> 0 the inputs and the output are NCHW{c}c (layout.py), ``in_channels`` giving each input's real
channel count; the output's padding lanes are 0. With view = 1 (made by the
inline_channel_gather pass; blocked, or NCHW with one input) the value is the same, but no
kernel computes it: its readers (1x1 convs, fused depthwise -> 1x1 convs; ToNCHWc of an NCHW
one) read the inputs' channels in place.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.types import TensorType
from .layout import blocked_shape, from_blocked, to_blocked
from .registry import Attr, OpContext, OpDef, register


def _channels(ctx: OpContext) -> list[int]:
    n = len(ctx.types)
    block = ctx["block"]
    if not block:
        return [ctx.type(i).shape[1] if ctx.type(i).rank >= 2 else 0 for i in range(n)]
    chans = list(ctx["in_channels"])
    ctx.check(len(chans) == n, f"in_channels {chans} has {len(chans)} entries for {n} inputs")
    return chans


def _infer(ctx: OpContext) -> list[TensorType]:
    block = ctx["block"]
    ctx.check(block >= 0, f"block must be >= 0, got {block}")
    ctx.check(ctx["view"] in (0, 1), f"view must be 0 or 1, got {ctx['view']}")
    ctx.check(not ctx["view"] or block > 0 or len(ctx.types) == 1,
              "view=1 is for a blocked gather (block > 0) or an NCHW gather of one input")
    first = ctx.type(0)
    rank = 5 if block else first.rank
    chans = _channels(ctx)
    for i in range(len(ctx.types)):
        t = ctx.type(i)
        ctx.check(t.rank == rank and t.rank >= 2, f"input {i} shape {list(t.shape)}: expected "
                  f"rank {rank}" + (" (NCHW{c}c)" if block else " (>= 2)"))
        ctx.check(t.dtype == first.dtype, f"input {i} is {t.dtype}, input 0 is {first.dtype}")
        ctx.check(t.shape[0] == first.shape[0] and t.shape[2:] == first.shape[2:],
                  f"input {i} shape {list(t.shape)} does not match input 0 {list(first.shape)} "
                  "outside the channel axis")
        if block:
            ctx.check(t.shape[-1] == block and t.shape[1] == -(-chans[i] // block),
                      f"input {i} shape {list(t.shape)} is not NCHW{block}c of {chans[i]} "
                      "channels")
    sources = list(ctx["sources"])
    total = sum(chans)
    ctx.check(len(sources) > 0 and all(0 <= s < total for s in sources),
              f"sources must pick channels in [0, {total})")
    if block:
        plain = (first.shape[0], len(sources)) + tuple(first.shape[2:4])
        return [TensorType(first.dtype, blocked_shape(plain, block))]
    return [TensorType(first.dtype, (first.shape[0], len(sources)) + tuple(first.shape[2:]))]


def _reference(ctx: OpContext, *xs: np.ndarray) -> np.ndarray:
    block = ctx["block"]
    chans = _channels(ctx)
    plain = [from_blocked(x, c) for x, c in zip(xs, chans)] if block else list(xs)
    y = np.concatenate(plain, axis=1)[:, list(ctx["sources"])]
    return to_blocked(y, block) if block else np.ascontiguousarray(y)


def split_sources(x_channels: int, sizes: list[int]) -> list[list[int]]:
    """The sources of each output of a channel Split of ``x_channels`` into ``sizes``."""
    starts = np.cumsum([0] + sizes)
    assert starts[-1] == x_channels
    return [list(range(int(a), int(b))) for a, b in zip(starts[:-1], starts[1:])]


def shuffle_sources(channels: int, groups: int) -> list[int]:
    """Y = reshape(transpose(reshape(X, [N, G, C/G, ...]), [0, 2, 1, ...]), [N, C, ...]) as
    sources: Y[:, j * G + g] = X[:, g * C/G + j]."""
    per = channels // groups
    return [(o % groups) * per + o // groups for o in range(channels)]


register(OpDef("ChannelGather", infer=_infer, reference=_reference, inputs=(1, -1),
               attrs={"sources": Attr("ints"), "block": Attr("int", 0),
                      "in_channels": Attr("ints", []), "view": Attr("int", 0)},
               doc="Channels picked from the concatenated inputs' channels (internal op of "
                   "fold_channel_shuffle; NCHW or NCHW{c}c)."))
