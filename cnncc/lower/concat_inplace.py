"""Copy-free concatenation: producers write straight into their slice of the concat's buffer.

A Concat along an axis with only size-1 dims before it (channels of a batch-1 NCHW or NCHWc
tensor) is its inputs' bytes one after another. When every input X_i can live inside the
output Y, at byte offset o_i = o + sum_{j < i} bytes(X_j), no kernel copies them: X_i's
producer writes into Y's memory at o_i, and Y is complete once the last one has. X_i may then be
read (by its other users) where it lies; Y lives (in the arena plan) from its first input's
producer to its last reader.

Nested concats share one buffer: processing the concats last to first, a concat whose inputs
already lie one after another in some buffer S (DenseNet: layer j's Concat(x_0..x_j) is the
start of the block's final Concat(x_0..x_n)) is itself a view of S, with no kernel either.

The same views serve channel slices: a ChannelGather (a Split, after fold_channel_shuffle)
that copies a range of one input's channels starting and ending on block boundaries (any range
in NCHW) is that input's memory from the range's first byte on, and its readers (a conv after a
channel split) read it in place. A range that ends inside a block is copied: the rest of that
block holds other channels, where its readers expect padding.

X_i qualifies when it is the float output of a kernel (not a graph input, output or constant),
is stored without a halo (halo.py), is no view of another value and has no view taken of it
(Reshape etc.: ALIAS_OPS), appears once in the concat and is not placed elsewhere already; Y
likewise (no halo, not a graph output, no views), and every o_i is a multiple of the kernels'
64-byte pointer alignment. Otherwise the concat copies, as before.
"""
from __future__ import annotations

import math

from cnncc.ir import Graph

ALIGN = 64


def _axis(g: Graph, node) -> int | None:
    """The concat axis when every dim before it is 1 (the inputs are contiguous slices)."""
    shape = g.types[node.outputs[0]].shape
    axis = node.attrs.get("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape) or math.prod(shape[:axis]) != 1:
        return None
    return axis


def plan_inplace_concats(g: Graph, halo: dict, alias_ops: tuple[str, ...]
                         ) -> tuple[dict[str, tuple[str, int]], set[int]]:
    """(value -> (buffer value, byte offset) for every value placed inside another's memory,
    the graph indices of the Concat nodes that need no kernel)."""
    producer = {o: (i, n) for i, n in enumerate(g.nodes) for o in n.outputs if o}
    users = g.users()
    outputs = set(g.outputs)

    def movable(v: str) -> bool:
        if v not in producer or v in outputs or v in g.params or v in halo:
            return False
        if producer[v][1].op in alias_ops or not g.types[v].dtype.is_float:
            return False
        return not any(u.op in alias_ops for u in users.get(v, []))

    place: dict[str, tuple[str, int]] = {}
    skipped: set[int] = set()
    for idx in range(len(g.nodes) - 1, -1, -1):
        node = g.nodes[idx]
        if node.op != "Concat" or _axis(g, node) is None:
            continue
        out, ins = node.outputs[0], [v for v in node.inputs if v]
        if not ins or len(set(ins)) != len(ins) or not movable(out):
            continue
        sizes = [g.types[v].nbytes for v in ins]
        if out not in place and all(v in place for v in ins):
            # Inputs already one after another in one buffer: the concat is a view of it.
            root, start = place[ins[0]]
            offs = [start + sum(sizes[:i]) for i in range(len(ins))]
            if all(place[v] == (root, o) for v, o in zip(ins, offs)):
                place[out] = (root, start)
                skipped.add(idx)
            continue
        root, start = place.get(out, (out, 0))
        offs = [start + sum(sizes[:i]) for i in range(len(ins))]
        if any(o % ALIGN for o in offs) or not all(movable(v) and v not in place for v in ins):
            continue
        for v, o in zip(ins, offs):
            place[v] = (root, o)
        skipped.add(idx)
    for idx, node in enumerate(g.nodes):
        view = _slice_view(g, node)
        if view is None or node.outputs[0] in place or not movable(node.outputs[0]):
            continue
        x, offset = view
        if x in g.inputs or x in outputs or x not in producer \
                or producer[x][1].op in alias_ops:
            continue
        root, start = place.get(x, (x, 0))
        if (start + offset) % ALIGN == 0:
            place[node.outputs[0]] = (root, start + offset)
            skipped.add(idx)
    return place, skipped


def _slice_view(g: Graph, node) -> tuple[str, int] | None:
    """(input, byte offset) when ``node`` is a ChannelGather of one batch-1 input's channels
    s0 .. s0 + n - 1, whole blocks of them when blocked."""
    if node.op != "ChannelGather" or len(node.inputs) != 1:
        return None
    x, src = node.inputs[0], list(node.attrs["sources"])
    xs = g.types[x].shape
    s0, n = src[0], len(src)
    block = node.attrs.get("block", 0)
    if xs[0] != 1 or src != list(range(s0, s0 + n)):
        return None
    if block and (s0 % block or n % block):
        return None
    per_channel = g.types[x].nbytes // (xs[1] * (block or 1))
    return x, s0 * per_channel


__all__ = ["plan_inplace_concats"]
