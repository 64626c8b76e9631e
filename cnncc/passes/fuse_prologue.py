"""fuse_prologue: a per-channel affine + activation of a blocked map (DenseNet's and
pre-activation ResNets' BN + ReLU) becomes the prologue of the conv that reads the map.

    ConvNCHWc(act(Add(Mul(x, s), b)), W, B?, Z?)  ==>  ConvNCHWc(x, W, B?, Z?, -, P, Q;
                                                                pre_activation=act)

with s, b constants [1, CB, 1, 1, c] (either may be missing: P = s or 1, Q = b or 0; Mul and
Add with the constant on either side), or s a run-time per-image scale [N, CB, 1, 1, c] at batch
N > 1 (a squeeze-excitation gate: at batch 1 fuse_channel_scale scales the conv's weights) and act an optional fusable activation (ir/ops/fused.py
ACTIVATIONS; Clip with constant bounds). The lowering applies act(x * P + Q) to each input
tile as the conv reads it (cnncc/lower/conv_nchwc.py), so the map is never written in between:
one kernel instead of up to four, and one read of x instead of a read and a write per op.
Only when the conv is dense (group 1), unpadded (its zero padding would otherwise go through
the affine: not rewritten), reads NCHWc input and has no input scale (fuse_channel_scale), every
intermediate has exactly one user and is not a graph output, and every value is float32 with
x's shape. Runs after depthwise_separable (a depthwise conv feeding a 1x1 conv directly is
fused there) and before fuse_channel_scale.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Graph, Node
from cnncc.ir.ops.fused import fusable_activation


def _takes_prologue(g: Graph, conv: Node) -> bool:
    a = conv.attrs
    return (conv.op == "ConvNCHWc" and len(conv.inputs) <= 4 and a.get("group", 1) == 1
            and a.get("in_layout", "NCHWc") == "NCHWc" and not a.get("pre_activation")
            and not any(a.get("pads", [])) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
            and g.types[conv.inputs[0]].dtype is DType.float32)


def _constant_of(g: Graph, node: Node, x_shape: tuple) -> tuple[str, np.ndarray] | None:
    """(the other input, the per-channel constant [1, CB, 1, 1, c]) of a binary node."""
    if len(node.inputs) != 2:
        return None
    want = (1, x_shape[1], 1, 1, x_shape[4])
    for v, k in (node.inputs, node.inputs[::-1]):
        arr = g.params.get(k)
        if arr is not None and arr.shape == want and arr.dtype == np.float32 and \
                v not in g.params:
            return v, arr
    return None


def _gate_of(g: Graph, mul: Node, ty) -> tuple[str, str] | None:
    """(x, s) of a Mul scaling x by a run-time per-image, per-channel s [N, CB, 1, 1, c] with
    N > 1 (at batch 1, fuse_channel_scale scales the conv's weights instead)."""
    if len(mul.inputs) != 2 or ty.shape[0] == 1:
        return None
    want = (ty.shape[0], ty.shape[1], 1, 1, ty.shape[4])
    for x, s in (mul.inputs, mul.inputs[::-1]):
        ts = g.types.get(s)
        if g.types.get(x) == ty and s not in g.params and ts is not None \
                and ts.shape == want and ts.dtype is DType.float32:
            return x, s
    return None


def _chain(g: Graph, y: str, producers: dict, users: dict, outputs: set):
    """(x, P, Q, (activation, params), nodes replaced) of the prologue chain ending in value
    ``y``, or None."""
    ty = g.types[y]
    if ty.rank != 5:
        return None
    act, scale, shift, nodes = ("", []), None, None, []

    def sole(v: str) -> Node | None:
        """The producer of ``v`` when the chain may absorb it."""
        node = producers.get(v)
        ok = (node is not None and v not in outputs and len(users.get(v, [])) == 1
              and len(node.outputs) == 1 and g.types[v] == ty)
        return node if ok else None

    node = sole(y)
    if node is not None and node.inputs and g.types.get(node.inputs[0]) == ty and \
            all(i == "" or i in g.params for i in node.inputs[1:]):
        found = fusable_activation(node, *[g.params.get(i) for i in node.inputs[1:3]])
        if found is not None:
            act, y = found, node.inputs[0]
            nodes.append(node)
            node = sole(y)
    for op in ("Add", "Mul"):
        hit = _constant_of(g, node, ty.shape) if node is not None and node.op == op else None
        if hit is not None:
            y = hit[0]
            if op == "Add":
                shift = hit[1]
            else:
                scale = hit[1]
            nodes.append(node)
            node = sole(y)
    gate = _gate_of(g, node, ty) if node is not None and node.op == "Mul" and scale is None \
        else None
    if gate is not None:       # a squeeze-excitation gate at batch N > 1
        y, scale = gate
        nodes.append(node)
    if not nodes or g.types.get(y) != ty:
        return None
    per_channel = (1, ty.shape[1], 1, 1, ty.shape[4])
    p = np.ones(per_channel, np.float32) if scale is None else scale
    q = np.zeros(per_channel, np.float32) if shift is None else shift
    return y, p, q, act, nodes


def fuse_prologue(graph: Graph, ctx=None) -> Graph:
    g = graph.copy()
    producers = g.producers()
    users = g.users()
    outputs = set(g.outputs)
    gone: set[int] = set()
    for conv in g.nodes:
        if not _takes_prologue(g, conv):
            continue
        found = _chain(g, conv.inputs[0], producers, users, outputs)
        if found is None:
            continue
        x, p, q, (name, params), nodes = found
        inputs = list(conv.inputs) + [""] * (5 - len(conv.inputs))
        inputs += [p if isinstance(p, str) else g.add_param(g.fresh_name(
            f"{conv.name}_pre_scale"), p), g.add_param(g.fresh_name(f"{conv.name}_pre_shift"), q)]
        conv.inputs = [x] + inputs[1:]
        if name:
            conv.attrs = {**conv.attrs, "pre_activation": name,
                          "pre_activation_params": list(params)}
        conv.sources = tuple(dict.fromkeys(sum((n.origin for n in reversed(nodes)), ())
                                           + conv.origin))
        for n in nodes:
            g.types.pop(n.outputs[0], None)
            gone.add(id(n))
    g.nodes = [n for n in g.nodes if id(n) not in gone]
    return g
