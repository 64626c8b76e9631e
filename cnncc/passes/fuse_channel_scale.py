"""fuse_channel_scale: a per-channel scale of a blocked feature map (the squeeze-excitation gate)
moves into the dense 1x1 conv that reads the scaled map.

    y = Mul(x, s) | Mul(s, x);  ConvNCHWc(y, W, B?, Z?)  ==>  ConvNCHWc(x, W, B?, Z?, s)

with x [1, CB, H, W, c] and s [1, CB, 1, 1, c] (float32), the conv dense (group 1), 1x1,
unpadded, reading NCHWc input, y read by nothing else and not a graph output. The lowering
multiplies the conv's packed weights by s (a [Cout x Cin] kernel per call) instead of a pass
over the feature map: conv(x * s, W) = conv(x, W diag(s)). Runs last (after
depthwise_separable, which would fuse a depthwise conv into a 1x1 conv reading it).
"""
from __future__ import annotations

from cnncc.ir import DType, Graph, Node


def _scale_of(g: Graph, mul: Node) -> tuple[str, str] | None:
    """(x, s) of a Mul that scales a blocked map per channel, or None."""
    if mul.op != "Mul" or len(mul.inputs) != 2:
        return None
    for x, s in (mul.inputs, mul.inputs[::-1]):
        tx, ts = g.types.get(x), g.types.get(s)
        if tx is None or ts is None or tx.rank != 5 or tx.shape[0] != 1:
            continue
        if tx.dtype is DType.float32 and ts.dtype is DType.float32 and \
                ts.shape == (1, tx.shape[1], 1, 1, tx.shape[4]) and \
                g.types[mul.outputs[0]].shape == tx.shape:
            return x, s
    return None


def _takes_scale(g: Graph, conv: Node, y: str) -> bool:
    a = conv.attrs
    return (conv.op == "ConvNCHWc" and conv.inputs[0] == y and len(conv.inputs) <= 4
            and a.get("group", 1) == 1 and a.get("in_layout", "NCHWc") == "NCHWc"
            and g.types[conv.inputs[1]].shape[2:] == (1, 1)
            and not any(a.get("pads", [])) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
            and all(d == 1 for d in a.get("dilations", [1, 1])))


def fuse_channel_scale(graph: Graph, ctx=None) -> Graph:
    g = graph.copy()
    users = g.users()
    outputs = set(g.outputs)
    gone: set[int] = set()
    for mul in g.nodes:
        xs = _scale_of(g, mul)
        y = mul.outputs[0]
        if xs is None or y in outputs or len(users.get(y, [])) != 1:
            continue
        (conv,) = users[y]
        if not _takes_scale(g, conv, y):
            continue
        x, s = xs
        conv.inputs = [x] + list(conv.inputs[1:]) + [""] * (4 - len(conv.inputs)) + [s]
        conv.sources = tuple(dict.fromkeys(conv.origin + mul.origin))
        g.types.pop(y, None)
        gone.add(id(mul))
    g.nodes = [n for n in g.nodes if id(n) not in gone]
    return g
