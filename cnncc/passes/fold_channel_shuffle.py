"""fold_channel_shuffle: channel split, concat and shuffle become channel gathers, composed.

    Reshape(X, [N, G, C/G, H, W]) -> Transpose([0, 2, 1, 3, 4]) -> Reshape([N, C, H, W])
                                   ==>  ChannelGather(X; sources = the shuffle's permutation)
    Split(X, axis=1) -> Y_0, Y_1, ...  ==>  Y_i = ChannelGather(X; sources = Y_i's channels)
    ChannelGather(..., V, ...) with V = Concat(A, B, ..., axis=1) or V = ChannelGather(A, ...)
                                   ==>  ChannelGather(..., A, B, ..., ...)  (sources remapped)

(ChannelGather: ir/ops/channel_gather.py.) Composed, ShuffleNet's Concat -> shuffle -> Split
of every unit becomes gathers that read each channel where its producer wrote it: the half
passed through a unit unchanged is copied once, into the next branch's input, not once per
op; the Concats, Reshapes and Transposes are left dead (eliminate_dead_code, next, removes
them). NCHW here; alter_layout_nchwc blocks the gathers (no layout transform around them).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import Graph, Node
from cnncc.ir.ops.channel_gather import shuffle_sources, split_sources


def _shuffle_input(g: Graph, last: Node, producers: dict, users: dict) -> tuple | None:
    """(X, groups, [the nodes matched]) when ``last`` ends a channel shuffle of X."""
    if last.op != "Reshape":
        return None
    tr = producers.get(last.inputs[0])
    if tr is None or tr.op != "Transpose" or list(tr.attrs.get("perm", [])) != [0, 2, 1, 3, 4]:
        return None
    first = producers.get(tr.inputs[0])
    if first is None or first.op != "Reshape":
        return None
    x = first.inputs[0]
    xs, mid, ys = g.types[x].shape, g.types[first.outputs[0]].shape, g.types[last.outputs[0]].shape
    if len(xs) != 4 or xs != ys or len(mid) != 5 or mid[0] != xs[0] or mid[3:] != xs[2:] \
            or mid[1] * mid[2] != xs[1]:
        return None
    for v in (first.outputs[0], tr.outputs[0]):
        if len(users.get(v, [])) != 1 or v in g.outputs:
            return None
    return x, mid[1]


def _pairs(g: Graph, node: Node) -> list[tuple[str, int]]:
    """A channel gather's (input value, channel) per output channel."""
    chans = [g.types[v].shape[1] for v in node.inputs]
    starts = np.cumsum([0] + chans)
    out = []
    for s in node.attrs["sources"]:
        k = int(np.searchsorted(starts, s, side="right")) - 1
        out.append((node.inputs[k], int(s - starts[k])))
    return out


def _compose(g: Graph, pairs: list[tuple[str, int]], gathers: dict,
             producers: dict) -> list[tuple[str, int]]:
    """Replace every channel read from a Concat or an earlier gather by the channel it copies."""
    out = []
    for v, ch in pairs:
        while True:
            if v in gathers:
                v, ch = gathers[v][ch]
                continue
            p = producers.get(v)
            if p is not None and p.op == "Concat" and _channel_concat(g, p):
                for u in p.inputs:
                    if ch < g.types[u].shape[1]:
                        v = u
                        break
                    ch -= g.types[u].shape[1]
                continue
            break
        out.append((v, ch))
    return out


def _channel_concat(g: Graph, node: Node) -> bool:
    rank = g.types[node.outputs[0]].rank
    axis = node.attrs.get("axis", 1)
    return rank >= 2 and axis in (1, 1 - rank) and all(v for v in node.inputs)


def _gather(g: Graph, pairs: list[tuple[str, int]], out: str, name: str, origin) -> Node:
    inputs = list(dict.fromkeys(v for v, _ in pairs))
    start = dict(zip(inputs, np.cumsum([0] + [g.types[v].shape[1] for v in inputs]).tolist()))
    sources = [start[v] + ch for v, ch in pairs]
    return Node("ChannelGather", inputs, [out], {"sources": sources}, name, origin)


def fold_channel_shuffle(graph: Graph, ctx=None) -> Graph:
    g = graph.copy()
    producers = {o: n for n in g.nodes for o in n.outputs if o}
    users = g.users()
    gathers: dict[str, list[tuple[str, int]]] = {}     # value -> its (input, channel) pairs
    nodes: list[Node] = []
    for node in g.nodes:
        made: list[tuple[str, list[tuple[str, int]]]] = []
        shuffle = _shuffle_input(g, node, producers, users)
        if shuffle is not None:
            x, groups = shuffle
            perm = shuffle_sources(g.types[x].shape[1], groups)
            made.append((node.outputs[0], [(x, s) for s in perm]))
        elif node.op == "Split" and g.types[node.inputs[0]].rank >= 2 \
                and node.attrs.get("axis", 0) in (1, 1 - g.types[node.inputs[0]].rank):
            x = node.inputs[0]
            sizes = [g.types[o].shape[1] if o else 0 for o in node.outputs]
            for o, src in zip(node.outputs, split_sources(g.types[x].shape[1], sizes)):
                if o:
                    made.append((o, [(x, s) for s in src]))
        elif node.op == "ChannelGather" and not node.attrs.get("block"):
            made.append((node.outputs[0], _pairs(g, node)))
        if not made:
            nodes.append(node)
            continue
        for i, (out, pairs) in enumerate(made):
            pairs = _compose(g, pairs, gathers, producers)
            gathers[out] = pairs
            new = _gather(g, pairs, out, node.name if len(made) == 1 else f"{node.name}_{i}",
                          node.origin)
            producers[out] = new
            nodes.append(new)
    g.nodes = nodes
    return g
