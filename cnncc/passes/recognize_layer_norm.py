"""recognize_layer_norm: LayerNorm written out in elementwise ops (older exporters, hand-written
channels-first LayerNorms) becomes one op.

    m = ReduceMean(x; [a]); d = Sub(x, m); v = ReduceMean(Pow(d, 2) | Mul(d, d); [a])
    y = Div(d, Sqrt(Add(v, eps)))  [Mul(y, scale)]  [Add(., bias)]
    ==>  LayerNormalization(x, scale, bias; axis a, epsilon eps)    a = the last axis
    ==>  ChannelLayerNorm(x, scale, bias; epsilon eps)               a = 1 of a 4-D map (CPU)

scale and bias: constants broadcasting over the normalized axis only (ones / zeros when
absent); eps a scalar constant; keepdims 1; every intermediate read only inside the pattern
and not a graph output; float32. Runs before lift_channels_last, which takes the
LayerNormalization form on channels-last tensors to ChannelLayerNorm.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Graph, Node


def _axes(g: Graph, node: Node) -> list[int] | None:
    if node.op != "ReduceMean" or node.attrs.get("keepdims", 1) != 1:
        return None
    if len(node.inputs) > 1 and node.inputs[1]:
        a = g.params.get(node.inputs[1])
        return None if a is None else [int(v) for v in a.reshape(-1)]
    return list(node.attrs.get("axes", [])) or None


def _scalar(g: Graph, v: str) -> float | None:
    a = g.params.get(v)
    return float(a.reshape(())) if a is not None and a.size == 1 and a.dtype.kind == "f" else None


def _vector(g: Graph, v: str, axis: int, rank: int, n: int) -> np.ndarray | None:
    """Constant ``v`` as a length-n vector when it broadcasts over ``axis`` only."""
    a = g.params.get(v)
    if a is None or a.dtype.kind != "f" or a.ndim > rank:
        return None
    shape = (1,) * (rank - a.ndim) + a.shape
    if any(d != 1 for k, d in enumerate(shape) if k != axis) or shape[axis] not in (1, n):
        return None
    return np.broadcast_to(a.reshape(-1), (n,)).astype(np.float32)


def _match(g: Graph, div: Node, prod: dict, users: dict, cpu: bool):
    """(x, axis, eps, nodes of the core pattern) of a Div ending a LayerNorm, or None."""
    get = lambda v, op: prod.get(v) if prod.get(v) is not None and prod[v].op == op else None  # noqa: E731
    if div.op != "Div":
        return None
    d, s = div.inputs
    sub, sqrt = get(d, "Sub"), get(s, "Sqrt")
    add = get(sqrt.inputs[0], "Add") if sqrt else None
    if sub is None or add is None:
        return None
    x, m = sub.inputs
    mean = prod.get(m)
    ax = _axes(g, mean) if mean is not None and mean.inputs[0] == x else None
    rank = g.types[x].rank
    if ax is None or len(ax) != 1 or g.types[x].dtype is not DType.float32:
        return None
    axis = ax[0] % rank
    if not (axis == rank - 1 or (cpu and axis == 1 and rank == 4)):
        return None
    eps_v = [i for i in add.inputs if _scalar(g, i) is not None]
    var_v = [i for i in add.inputs if i not in eps_v]
    var = prod.get(var_v[0]) if len(eps_v) == 1 and len(var_v) == 1 else None
    if var is None or _axes(g, var) is None or [a % rank for a in _axes(g, var)] != [axis]:
        return None
    sq = prod.get(var.inputs[0])
    if sq is None or not ((sq.op == "Pow" and sq.inputs[0] == d and _scalar(g, sq.inputs[1])
                           == 2.0) or (sq.op == "Mul" and sq.inputs == [d, d])):
        return None
    core = [mean, sub, sq, var, add, sqrt]
    inner = {mean.outputs[0]: 1, sq.outputs[0]: 1, var.outputs[0]: 1, add.outputs[0]: 1,
             sqrt.outputs[0]: 1, d: 2}
    outputs = set(g.outputs)
    for v, k in inner.items():
        if v in outputs or len(users.get(v, [])) != k:
            return None
    return x, axis, _scalar(g, eps_v[0]), core


def recognize_layer_norm(graph: Graph, ctx=None) -> Graph:
    cpu = ctx is None or getattr(ctx, "machine", None) is not None
    g = graph.copy()
    prod, users, outputs = g.producers(), g.users(), set(g.outputs)
    gone: set[int] = set()
    replace: dict[int, Node] = {}
    for div in g.nodes:
        m = _match(g, div, prod, users, cpu) if id(div) not in gone else None
        if m is None:
            continue
        x, axis, eps, core = m
        rank, n = g.types[x].rank, g.types[x].shape[axis]
        part, last = core + [div], div
        scale, bias = np.ones(n, np.float32), np.zeros(n, np.float32)
        for op, which in (("Mul", "scale"), ("Add", "bias")):
            use = users.get(last.outputs[0], [])
            if len(use) != 1 or last.outputs[0] in outputs or use[0].op != op:
                continue
            other = [i for i in use[0].inputs if i != last.outputs[0]]
            vec = _vector(g, other[0], axis, rank, n) if len(other) == 1 else None
            if vec is None:
                continue
            if which == "scale":
                scale = vec
            else:
                bias = vec
            part, last = part + [use[0]], use[0]
        if any(id(p) in gone for p in part):
            continue
        origin = tuple(dict.fromkeys(s for p in part for s in p.origin))
        ins = [x, g.add_param(f"{div.name}_scale", scale), g.add_param(f"{div.name}_bias", bias)]
        if axis == rank - 1:
            node = Node("LayerNormalization", ins, list(last.outputs),
                        {"axis": -1, "epsilon": eps}, div.name, origin)
        else:
            node = Node("ChannelLayerNorm", ins, list(last.outputs), {"epsilon": eps},
                        div.name, origin)
        gone.update(id(p) for p in part)
        replace[id(last)] = node
        for p in part:
            if p is not last:
                g.types.pop(p.outputs[0], None)
    g.nodes = [replace.get(id(n), n) for n in g.nodes if id(n) not in gone or id(n) in replace]
    return g
