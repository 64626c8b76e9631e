"""lift_channels_last: a channels-last stretch between two transposes is computed on the NCHW
map itself, so the feature map is never transposed (ConvNeXt's LayerNorm2d and its blocks).

    t = Transpose(x; 0, 2, 3, 1) -> ops on the last axis -> y = Transpose(.; 0, 3, 1, 2)
    ==>  the same ops on the channel axis of x:
         LayerNormalization(axis -1)       ->  ChannelLayerNorm
         MatMul(., W [C, K]) (+ Add(b [K])) ->  Conv 1x1 (weights W^T, bias b)
         Add / Mul by a constant [K]        ->  the same with the constant as [K, 1, 1]
         a unary op of the op table         ->  itself
    and a Mul of y by a per-channel constant [K, 1, 1] (ConvNeXt's layer scale) is folded into
    the conv when the stretch ends in one.

x is a 4-D float32 value; every value inside the stretch has exactly one reader (the next op)
and is not a graph output; LayerNormalization's Scale and B are constants over the last axis
and its optional Mean / InvStdDev outputs are unused. Runs for CPU targets only (the CUDA
schedules keep the exporters' form), before fuse_epilogue, which then fuses the activation into
the conv and alter_layout_nchwc keeps the whole stretch in NCHWc.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Graph, Node
from cnncc.ir.ops import infer_node
from cnncc.ir.ops.activation_exprs import UNARY_LOWERING

_IN, _OUT = [0, 2, 3, 1], [0, 3, 1, 2]


def _const_last(g: Graph, v: str, k: int) -> np.ndarray | None:
    """The constant ``v`` as a vector over the last axis (length k), or None."""
    a = g.params.get(v)
    if a is None or a.dtype.kind != "f" or a.size not in (1, k) or \
            any(d != 1 for d in a.shape[:-1]):
        return None
    return np.broadcast_to(a.reshape(-1), (k,)).astype(a.dtype)


def _chain(t1: Node, users: dict, outputs: set) -> list[Node] | None:
    """The nodes after ``t1``, each reading the previous one's output, up to and including the
    closing Transpose; None when the stretch branches or ends otherwise."""
    chain, v = [], t1.outputs[0]
    while len(chain) <= 16:
        use = users.get(v, [])
        if len(use) != 1 or v in outputs:
            return None
        u = use[0]
        chain.append(u)
        if u.op == "Transpose":
            return chain if list(u.attrs.get("perm", [])) == _OUT else None
        if len([o for o in u.outputs if o]) != 1 or u.inputs.count(v) != 1:
            return None
        v = u.outputs[0]
    return None


def _rewrite(g: Graph, x: str, t1: Node, chain: list[Node], fresh) -> list[Node] | None:
    """NCHW nodes computing ``chain`` on x (the last writes the closing Transpose's output)."""
    out: list[Node] = []
    cur, k, src = x, g.types[x].shape[1], t1.outputs[0]
    for n in chain[:-1]:
        others = [i for i in n.inputs if i and i != src]
        if n.op == "LayerNormalization" and n.inputs[0] == src:
            s = _const_last(g, n.inputs[1], k)
            b = _const_last(g, others[1], k) if len(others) > 1 else np.zeros(k, np.float32)
            if n.attrs.get("axis", -1) not in (-1, 3) or s is None or b is None or \
                    n.attrs.get("stash_type", 1) != 1:
                return None
            node = Node("ChannelLayerNorm", [cur, fresh(f"{n.name}_scale", s),
                                             fresh(f"{n.name}_bias", b)], [fresh(n.outputs[0])],
                        {"epsilon": float(n.attrs.get("epsilon", 1e-5))}, n.name, n.origin)
        elif n.op == "MatMul" and n.inputs[0] == src:
            w = g.params.get(n.inputs[1])
            if w is None or w.ndim != 2 or w.shape[0] != k:
                return None
            wt = np.ascontiguousarray(w.T.reshape(w.shape[1], k, 1, 1))
            k = w.shape[1]
            node = Node("Conv", [cur, fresh(f"{n.name}_w", wt)], [fresh(n.outputs[0])],
                        {"kernel_shape": [1, 1]}, n.name, n.origin)
        elif n.op in ("Add", "Mul") and len(others) == 1:
            c = _const_last(g, others[0], k)
            if c is None:
                return None
            if n.op == "Add" and out and out[-1].op == "Conv" and len(out[-1].inputs) == 2:
                out[-1].inputs.append(fresh(f"{n.name}_b", c))    # MatMul + bias: conv bias
                out[-1].sources = tuple(dict.fromkeys(out[-1].origin + n.origin))
                src = n.outputs[0]
                continue
            node = Node(n.op, [cur, fresh(f"{n.name}_c", c.reshape(k, 1, 1))],
                        [fresh(n.outputs[0])], {}, n.name, n.origin)
        elif n.op in UNARY_LOWERING and n.inputs == [src]:
            node = Node(n.op, [cur], [fresh(n.outputs[0])], dict(n.attrs), n.name, n.origin)
        else:
            return None
        out.append(node)
        cur, src = node.outputs[0], n.outputs[0]
    if not out:
        return None
    out[-1].outputs = list(chain[-1].outputs)
    return out


def _fold_scale(g: Graph, conv: Node, users: dict, outputs: set) -> Node | None:
    """The Mul of the conv's output by a constant [K, 1, 1] (layer scale), if it is its only
    reader: folded into the conv's weights and bias (the conv takes the Mul's output)."""
    y = conv.outputs[0]
    use = users.get(y, [])
    if len(use) != 1 or y in outputs or use[0].op != "Mul":
        return None
    mul = use[0]
    other = [i for i in mul.inputs if i != y]
    k = g.params[conv.inputs[1]].shape[0]
    a = g.params.get(other[0]) if len(other) == 1 else None
    if a is None or a.dtype.kind != "f" or a.size != k or a.shape[-2:] != (1, 1) or a.ndim != 3:
        return None
    return mul


def lift_channels_last(graph: Graph, ctx=None) -> Graph:
    if ctx is not None and getattr(ctx, "machine", None) is None:
        return graph                                   # not a CPU target
    g = graph.copy()
    users, outputs = g.users(), set(g.outputs)
    replace: dict[int, list[Node]] = {}
    gone: set[int] = set()

    used = set(g.types) | set(g.params) | set(g.inputs) | {n.name for n in g.nodes}

    def fresh(base: str, value: np.ndarray | None = None) -> str:
        """A new value name (a param holding ``value`` when given)."""
        if value is not None:
            name = g.add_param(base, value)
        else:
            name, i = f"{base}_nchw", 1
            while name in used:
                name, i = f"{base}_nchw_{i}", i + 1
        used.add(name)
        return name

    for t1 in list(g.nodes):
        if t1.op != "Transpose" or list(t1.attrs.get("perm", [])) != _IN:
            continue
        x = t1.inputs[0]
        if g.types[x].rank != 4 or g.types[x].dtype is not DType.float32:
            continue
        chain = _chain(t1, users, outputs)
        before = set(g.params)
        new = _rewrite(g, x, t1, chain, fresh) if chain else None
        if new is None:                     # declined half way: drop the constants it added
            for name in set(g.params) - before:
                del g.params[name]
                g.types.pop(name, None)
            continue
        last = chain[-1]
        if new[-1].op == "Conv":
            mul = _fold_scale(g, new[-1], users, outputs)
            if mul is not None:
                conv = new[-1]
                other = [i for i in mul.inputs if i != last.outputs[0]][0]
                s = g.params[other].reshape(-1).astype(np.float64)
                w = g.params[conv.inputs[1]]
                conv.inputs[1] = g.add_param(f"{conv.name}_w_scaled",
                                             (w * s.reshape(-1, 1, 1, 1)).astype(w.dtype))
                if len(conv.inputs) > 2:
                    b = g.params[conv.inputs[2]]
                    conv.inputs[2] = g.add_param(f"{conv.name}_b_scaled",
                                                 (b * s).astype(b.dtype))
                conv.outputs = list(mul.outputs)
                conv.sources = tuple(dict.fromkeys(conv.origin + mul.origin))
                gone.add(id(mul))
                g.types.pop(last.outputs[0], None)
                last = mul
        for n in [t1] + chain:
            gone.add(id(n))
        replace[id(last)] = new
    nodes: list[Node] = []
    for n in g.nodes:
        if id(n) in replace:
            nodes.extend(replace[id(n)])
        elif id(n) not in gone:
            nodes.append(n)
    g.nodes = nodes
    live = {o for n in nodes for o in n.outputs} | set(g.inputs) | set(g.params)
    g.types = {k: t for k, t in g.types.items() if k in live}
    for n in nodes:                                    # types of the new values
        if any(o not in g.types for o in n.outputs):
            for o, t in zip(n.outputs, infer_node(n, g.types, g.params)):
                g.types[o] = t
    return g
