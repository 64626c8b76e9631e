"""fuse_quantized: QDQ conv chains become one quantized conv (QConv).

    Q(Conv(DQ(xq), DQ(wq), DQ(bq)))                          ==>  QConv(xq, wq, bq)
    Q(Relu(Conv(...)))                                       ==>  QConv(..., relu=1)
    Q(Clip(Conv(...), 0, M))                                 ==>  QConv(..., relu=1, relu_max=M)
    Q([Relu](Add(DQ(Q(Conv(...))), DQ(rq))))                 ==>  QConv(..., rq, [relu=1])

Conditions: xq and rq are uint8/int8 with per-tensor scales and zero points; wq is a constant
int8/uint8 quantized per tensor or per output channel (axis 0); the bias is a constant, either
int32 dequantized at scale x_scale * w_scale (used as is) or float32 (rounded to that scale:
an error below half a step of the accumulator, far below one output step); every Q is per
tensor; every intermediate has no other user and is not a graph output (the Add's other operand
may have any users). The fused node's reference (ir/ops/quant.py) is the chain's integer
semantics: its outputs equal the unfused graph's up to float rounding in the unfused conv (at
most one output step). Relu is fused only where it commutes with the quantization it sits
before (Q(max(v, 0)) = max(Q(v), zero point); Clip(v, 0, M) likewise with min(., Q(M))).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import Graph, Node
from cnncc.ir.ops.quant import QUANT_TYPES


def _scalar_param(g: Graph, name: str) -> bool:
    return bool(name) and name in g.params and g.params[name].size == 1


def qdq_per_tensor(g: Graph, node: Node | None, op: str) -> bool:
    return (node is not None and node.op == op and _scalar_param(g, node.inputs[1])
            and (len(node.inputs) < 3 or not node.inputs[2] or _scalar_param(g, node.inputs[2])))


def zp_input(g: Graph, node: Node, dtype) -> str:
    """The node's zero point input, or a new zero param of ``dtype``."""
    if len(node.inputs) > 2 and node.inputs[2]:
        return node.inputs[2]
    return g.add_param(f"{node.name}_zp", np.zeros((), dtype))


def relu_bounds(g: Graph, node: Node) -> tuple[int, float] | None:
    """(1, upper bound or 0.0) of a Relu or a Clip(0, M) with constant bounds (the
    activations a QConv applies), else None."""
    if node.op == "Relu":
        return 1, 0.0
    if node.op != "Clip":
        return None
    bounds = [node.inputs[i] if len(node.inputs) > i else "" for i in (1, 2)]
    if not all(_scalar_param(g, b) for b in bounds):
        return None
    lo, hi = (float(g.params[b].reshape(-1)[0]) for b in bounds)
    return (1, hi) if lo == 0.0 and hi > 0.0 else None


class _Chains:
    def __init__(self, g: Graph, claimed: set):
        self.g = g
        self.claimed = claimed          # ids of nodes already fused into some QConv
        self.prod = g.producers()
        self.users = g.users()

    def only_user(self, value: str, op: str | tuple) -> Node | None:
        use = self.users.get(value, [])
        if len(use) != 1 or value in self.g.outputs or use[0].op not in (
                (op,) if isinstance(op, str) else op):
            return None
        return use[0]

    def fuse(self, conv: Node) -> tuple[Node, list[Node]] | None:
        """(the QConv replacing the chain, the nodes it replaces) or None."""
        g, prod = self.g, self.prod
        if len(conv.inputs) < 2:
            return None
        xdq, wdq = prod.get(conv.inputs[0]), prod.get(conv.inputs[1])
        if not qdq_per_tensor(g, xdq, "DequantizeLinear") or wdq is None \
                or wdq.op != "DequantizeLinear":
            return None
        xq = xdq.inputs[0]
        wq = wdq.inputs[0]
        if g.types[xq].dtype not in QUANT_TYPES or wq not in g.params \
                or g.types[wq].dtype not in QUANT_TYPES:
            return None
        w_scale = g.params.get(wdq.inputs[1])
        if w_scale is None or (w_scale.size > 1 and wdq.attrs.get("axis", 1) != 0):
            return None
        if len(wdq.inputs) > 2 and wdq.inputs[2] and wdq.inputs[2] not in g.params:
            return None
        x_scale = g.params[xdq.inputs[1]].reshape(())
        bias = self._bias(conv, x_scale, w_scale, g.types[wq].shape[0])
        if bias is False:
            return None
        tail = self._activation_then_quantize(conv.outputs[0])
        if tail is None:
            return None
        relu, act_nodes, q = tail
        replaced = [conv] + act_nodes + [q]
        yq = q.inputs
        y_zp = zp_input(g, q, np.uint8)
        inputs = [xq, xdq.inputs[1], zp_input(g, xdq, g.types[xq].dtype.np), wq, wdq.inputs[1],
                  zp_input(g, wdq, g.types[wq].dtype.np), yq[1], y_zp, bias or ""]
        out = q.outputs[0]
        res = None if relu[0] else self._residual(out)
        if res is not None:
            add_nodes, rdq, sq, relu = res
            replaced += add_nodes
            rq = rdq.inputs[0]
            inputs += [rq, rdq.inputs[1], zp_input(g, rdq, g.types[rq].dtype.np),
                       sq.inputs[1], zp_input(g, sq, np.uint8)]
            out = sq.outputs[0]
        attrs = dict(conv.attrs, relu=relu[0], relu_max=relu[1])
        node = Node("QConv", inputs, [out], attrs, conv.name,
                    sources=tuple(s for n in replaced for s in n.origin))
        return node, replaced

    def _bias(self, conv: Node, x_scale, w_scale, channels: int):
        """Name of the int32 bias param, "" without bias, False when it cannot be fused."""
        g = self.g
        if len(conv.inputs) < 3 or not conv.inputs[2]:
            return ""
        b = conv.inputs[2]
        step = (np.float32(x_scale) * w_scale.astype(np.float32)).reshape(-1)
        bdq = self.prod.get(b)
        if bdq is not None and bdq.op == "DequantizeLinear" and bdq.inputs[0] in g.params \
                and g.types[bdq.inputs[0]].dtype.np == np.int32:
            scale = g.params.get(bdq.inputs[1])
            zp = g.params.get(bdq.inputs[2]) if len(bdq.inputs) > 2 and bdq.inputs[2] else None
            if scale is not None and (zp is None or not zp.any()) and np.allclose(
                    scale.reshape(-1), step, rtol=1e-6, atol=0):
                return bdq.inputs[0]
            return False
        if b not in g.params or g.params[b].dtype != np.float32:
            return False
        q = np.rint(g.params[b].astype(np.float64) / step.astype(np.float64))
        if np.abs(q).max(initial=0) >= 2 ** 31 - 1:
            return False
        return g.add_param(f"{conv.name}_bias_q", np.broadcast_to(q, (channels,)).astype(np.int32))

    def _residual(self, yq: str):
        """(replaced nodes, DQ of the other operand, final Q, relu) of a quantized Add that
        reads conv output ``yq`` alone, or None."""
        g = self.g
        dq = self.only_user(yq, "DequantizeLinear")
        if not qdq_per_tensor(g, dq, "DequantizeLinear"):
            return None
        add = self.only_user(dq.outputs[0], "Add")
        if add is None or id(add) in self.claimed or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            return None
        other = add.inputs[1] if add.inputs[0] == dq.outputs[0] else add.inputs[0]
        rdq = self.prod.get(other)
        if not qdq_per_tensor(g, rdq, "DequantizeLinear") or rdq.inputs[0] in g.params \
                or g.types[rdq.inputs[0]] != g.types[yq]:
            return None
        tail = self._activation_then_quantize(add.outputs[0])
        if tail is None:
            return None
        relu, act_nodes, q = tail
        return [dq, add] + act_nodes + [q], rdq, q, relu

    def _activation_then_quantize(self, cur: str):
        """(ReLU bounds, [the Relu/Clip node] or [], the QuantizeLinear) when ``cur`` is read
        only by an optional Relu / Clip(0, M) and then only by a per-tensor QuantizeLinear."""
        relu, nodes = (0, 0.0), []
        nxt = self.only_user(cur, ("Relu", "Clip", "QuantizeLinear"))
        if nxt is not None and nxt.op != "QuantizeLinear":
            relu = relu_bounds(self.g, nxt)
            if relu is None:
                return None
            nodes.append(nxt)
            nxt = self.only_user(nxt.outputs[0], "QuantizeLinear")
        if not qdq_per_tensor(self.g, nxt, "QuantizeLinear"):
            return None
        return relu, nodes, nxt


def fuse_quantized(graph: Graph, ctx=None) -> Graph:
    g = graph.copy()
    replace: dict[int, Node] = {}
    gone: set[int] = set()
    chains = _Chains(g, gone)
    for node in g.nodes:
        if node.op != "Conv" or id(node) in gone:
            continue
        fused = chains.fuse(node)
        if fused is None:
            continue
        new, replaced = fused
        if any(id(n) in gone for n in replaced):
            continue
        for n in replaced:
            gone.add(id(n))
        replace[id(replaced[-1])] = new      # placed where the chain's last node was
    nodes = []
    for node in g.nodes:
        if id(node) in replace:
            nodes.append(replace[id(node)])
        elif id(node) not in gone:
            nodes.append(node)
    g.nodes = nodes
    return g
