"""alter_layout_int8: quantized convs run on blocked 8-bit activations (NCHW{c}c bytes).

c is the target's vector width in 32-bit lanes (16 with AVX-512, 8 with AVX2): the conv's
accumulators are int32 vectors of c output channels, so its epilogue stores the c bytes of one
pixel at once, and the next conv's dot product reads 4 input channels of a pixel as one 32-bit
word (c / 4 words per pixel) without repacking (ir/ops/quant_blocked.py defines the op):

    QConv(X, ..., R?, ...)   ==>  QConvNCHWc(Xb, ..., Rb?, ...; block=c)      X uint8, 2-D;
                                  group 1 with weights the dot products take (dot4_fits),
                                  or depthwise
    QConv(X, ...)            ==>  QConvNCHWc(X, ...; block=c, in_layout=NCHW)  (<= 4 input
                                  channels: a stem reading the quantized image)

Any other consumer of X (and a graph output X) reads FromNCHWc(Xb), made once, right before its
first such consumer; a QConv reading a value that exists only in NCHW gets ToNCHWc(X), made
once. So between quantized convs nothing is converted: the layout changes only at the edges of
a region. Runs after alter_layout_nchwc (which leaves QConv and 8-bit values alone), for CPU
targets (llvm, and reference for `cnncc verify`); GPU targets keep NCHW.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Graph, Node
from cnncc.ir.ops import OP_TABLE, infer_node
from cnncc.ir.ops.quant_blocked import dot4_fits, shifted_zero_point, weights_minus_zero_point
from cnncc.ir.ops.registry import resolve_attrs

from .alter_layout_nchwc import GPU_TARGETS, STEM_MAX_CHANNELS


def _blockable(g: Graph, node: Node) -> str | None:
    """The input layout a QConv keeps when blocked ("NCHWc", or "NCHW" for a stem), or None
    when it stays an NCHW QConv."""
    if node.op != "QConv" or any(i and i not in g.params for i in node.inputs[1:9]) \
            or any(i and i not in g.params for i in node.inputs[10:]):
        return None
    x, wq = node.inputs[0], g.params[node.inputs[3]]
    xt = g.types[x]
    if xt.rank != 4 or wq.ndim != 4:
        return None
    group = resolve_attrs(OP_TABLE["QConv"], node)["group"]
    oc, icg = wq.shape[:2]
    ic = icg * group
    if icg == 1 and group == oc == ic:
        return "NCHWc" if xt.dtype is DType.uint8 else None
    if group != 1:
        return None
    x_zp = int(g.params[node.inputs[2]].reshape(-1)[0])
    wz = weights_minus_zero_point(wq, g.params[node.inputs[5]])
    bias = g.params[node.inputs[8]].astype(np.int64) if len(node.inputs) > 8 and node.inputs[8] \
        else np.zeros(oc, np.int64)
    if not dot4_fits(wz, icg, oc, bias, shifted_zero_point(xt.dtype, x_zp)):
        return None
    if ic <= STEM_MAX_CHANNELS:
        return "NCHW"
    return "NCHWc" if xt.dtype is DType.uint8 else None


class _Rewriter:
    def __init__(self, graph: Graph, block: int):
        self.g = graph
        self.block = block
        self.nodes: list[Node] = []
        self.types = dict(graph.types)
        self.blocked: dict[str, str] = {}     # NCHW value -> its blocked twin
        self.available: set[str] = set(graph.inputs) | set(graph.params)
        self.names = {n.name for n in graph.nodes}
        self.values = set(graph.types) | set(graph.params) | set(graph.inputs)

    def fresh(self, base: str, used: set[str]) -> str:
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    def emit(self, node: Node) -> None:
        for out, t in zip(node.outputs, infer_node(node, self.types, self.g.params)):
            self.types[out] = t
        self.nodes.append(node)
        self.available.update(o for o in node.outputs if o)

    def to_blocked(self, v: str) -> str:
        if v not in self.blocked:
            out = self.fresh(f"{v}_nchwc", self.values)
            self.emit(Node("ToNCHWc", [v], [out], {"block": self.block},
                           self.fresh(f"{v}_to_nchwc", self.names)))
            self.blocked[v] = out
        return self.blocked[v]

    def need_nchw(self, v: str) -> None:
        if not v or v in self.available:
            return
        self.emit(Node("FromNCHWc", [self.blocked[v]], [v],
                       {"channels": self.g.types[v].shape[1]},
                       self.fresh(f"{v}_from_nchwc", self.names)))

    def run(self) -> Graph:
        for node in self.g.nodes:
            layout = _blockable(self.g, node)
            if layout is None:
                for v in node.inputs:
                    self.need_nchw(v)
                self.nodes.append(node)
                self.available.update(o for o in node.outputs if o)
                continue
            ins = list(node.inputs)
            if layout == "NCHW":
                self.need_nchw(ins[0])
            else:
                ins[0] = self.to_blocked(ins[0])
            if len(ins) > 9 and ins[9]:
                ins[9] = self.to_blocked(ins[9])
            out = node.outputs[0]
            self.blocked[out] = self.fresh(f"{out}_nchwc", self.values)
            attrs = dict(node.attrs, block=self.block, in_layout=layout)
            self.emit(Node("QConvNCHWc", ins, [self.blocked[out]], attrs, node.name,
                           node.origin))
        for v in self.g.outputs:
            self.need_nchw(v)
        live = set(self.g.inputs) | set(self.g.params) | \
            {o for n in self.nodes for o in n.outputs if o}
        types = {k: t for k, t in self.types.items() if k in live}
        return Graph(self.g.name, self.nodes, list(self.g.inputs), list(self.g.outputs),
                     dict(self.g.params), types)


def alter_layout_int8(graph: Graph, ctx=None) -> Graph:
    machine = getattr(ctx, "machine", None)
    if getattr(ctx, "target", "llvm") in GPU_TARGETS or machine is None \
            or not any(_blockable(graph, n) for n in graph.nodes):
        return graph
    return _Rewriter(graph, machine.lanes).run()
