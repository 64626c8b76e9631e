"""fuse_quantized_ops: the classifier and pools of a QDQ graph stay 8-bit.

    Q(Gemm(DQ(aq), DQ(bq)[, bias]))  /  Q(MatMul(DQ(aq), DQ(bq)))   ==>  QGemm(aq, bq, C)
    Gemm(DQ(aq), DQ(bq)[, bias]) read by no Q (a float classifier output) ==> QGemm, float out
    Q(Relu(Gemm | MatMul(DQ(aq), DQ(bq) ...)))             ==>  Max(QGemm(aq, bq, C), Q's zero point)
    Q(GlobalAveragePool(DQ(xq)))                                     ==>  QLinearGlobalAveragePool(xq)
    Q(AveragePool(DQ(xq)))                                           ==>  QLinearAveragePool(xq)
    Q(MaxPool(DQ(xq)))  and  Q(Flatten | Reshape | Squeeze | Unsqueeze | Identity (DQ(xq)))
                        with the Q's scale and zero point equal to the DQ's  ==>  the op on xq
    Q(GlobalMaxPool(DQ(xq)))  (the same condition)  ==>  MaxPool(xq) over the whole image

Conditions: aq / xq are uint8 or int8 values with per-tensor scales and zero points (constants);
the pools' Q writes xq's element type; bq is a constant 8-bit [K, N] matrix (([N, K] with transB) quantized per tensor or per column;
A is 2-D; the bias is a constant, [N] or a scalar: int32 dequantized at a_scale * b_scale
(used as is when alpha = beta = 1) or float (rounded to the accumulator's step, an error below
half a step of it); every Q is per tensor; every intermediate has one user and is not a graph
output. The rewrites are exact where stated in the ops' references: QGemm / the quantized pools
compute the chain's integer semantics (the float chain rounds once more: within one output
step); max and the data-movement ops commute with a strictly increasing dequantization
(scale > 0), and Q(DQ(v)) = v for equal parameters, so those outputs are equal; Q is
non-decreasing and Q(0) is its zero point, so Q(Relu(y)) = max(Q(y), zero point) exactly.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import Graph, Node
from cnncc.ir.ops.quant import QUANT_TYPES
from .fuse_quantized import qdq_per_tensor, zp_input

MOVES = ("MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity")
# GlobalMaxPool is float-only in ONNX: on 8-bit values it is the MaxPool of the whole image.
BYTE_OP = {"GlobalMaxPool": "MaxPool"}


def _value(g: Graph, name: str) -> np.ndarray | None:
    return g.params[name] if name and name in g.params else None


class _Rewrite:
    def __init__(self, g: Graph):
        self.g = g
        self.prod = g.producers()
        self.users = g.users()

    def dq_input(self, node: Node, i: int = 0) -> Node | None:
        """The per-tensor DequantizeLinear of an 8-bit value feeding input i, or None."""
        dq = self.prod.get(node.inputs[i]) if i < len(node.inputs) else None
        if not qdq_per_tensor(self.g, dq, "DequantizeLinear") \
                or self.g.types[dq.inputs[0]].dtype not in QUANT_TYPES:
            return None
        return dq

    def q_output(self, node: Node) -> Node | None:
        """The per-tensor QuantizeLinear that alone reads the node's only output, or None."""
        out = node.outputs[0]
        use = self.users.get(out, [])
        if len([o for o in node.outputs if o]) != 1 or out in self.g.outputs or len(use) != 1 \
                or not qdq_per_tensor(self.g, use[0], "QuantizeLinear") \
                or self.g.types[use[0].outputs[0]].dtype not in QUANT_TYPES:
            return None
        return use[0]

    def params(self, qdq: Node) -> tuple[float, int]:
        g = self.g
        zp = _value(g, qdq.inputs[2]) if len(qdq.inputs) > 2 else None
        return float(g.params[qdq.inputs[1]].reshape(-1)[0]), \
            0 if zp is None else int(zp.reshape(-1)[0])

    def rewrite(self, node: Node) -> tuple[list[Node], list[Node]] | None:
        """(the replacement nodes, the nodes they replace, the Q last) or None."""
        g = self.g
        dq = self.dq_input(node)
        q = self.q_output(node) if dq is not None else None
        if dq is not None and node.op in ("Gemm", "MatMul"):
            relu = self.relu_q(node) if q is None else None
            if relu is not None:
                return self.gemm_relu(node, dq, *relu)
            done = self.gemm(node, dq, q)
            return None if done is None else ([done[0]], done[1])
        if q is None:
            return None
        xq, out = dq.inputs[0], q.outputs[0]
        x_dt = g.types[xq].dtype
        io = [xq, dq.inputs[1], zp_input(g, dq, x_dt.np), q.inputs[1],
              zp_input(g, q, np.uint8)]
        if node.op in MOVES:
            (s, z), (s2, z2) = self.params(dq), self.params(q)
            if not (s > 0 and s == s2 and z == z2 and g.types[out].dtype == x_dt):
                return None
            attrs = dict(node.attrs)
            if node.op == "GlobalMaxPool":
                spatial = list(g.types[xq].shape[2:])
                if not all(isinstance(d, int) and d > 0 for d in spatial):
                    return None
                attrs = {"kernel_shape": spatial}
            return [Node(BYTE_OP.get(node.op, node.op), [xq] + node.inputs[1:], [out], attrs,
                         node.name, sources=node.origin + q.origin)], [node, q]
        if g.types[out].dtype != x_dt:          # the quantized pools keep the element type
            return None
        if node.op == "GlobalAveragePool":
            return [Node("QLinearGlobalAveragePool", io, [out], {}, node.name,
                         sources=node.origin + q.origin)], [node, q]
        if node.op == "AveragePool":
            return [Node("QLinearAveragePool", io, [out], dict(node.attrs), node.name,
                         sources=node.origin + q.origin)], [node, q]
        return None

    def relu_q(self, node: Node) -> tuple[Node, Node] | None:
        """(Relu, Q) when the node's output is read by a Relu alone, and the Relu's by a
        per-tensor 8-bit Q alone (neither a graph output)."""
        out = node.outputs[0]
        use = self.users.get(out, [])
        if out in self.g.outputs or len(use) != 1 or use[0].op != "Relu":
            return None
        q = self.q_output(use[0])
        return None if q is None else (use[0], q)

    def gemm_relu(self, node: Node, dq: Node, relu: Node,
                  q: Node) -> tuple[list[Node], list[Node]] | None:
        """QGemm to the Q's 8-bit output, then the Relu as a max with the Q's zero point."""
        done = self.gemm(node, dq, q)
        if done is None:
            return None
        qgemm, _ = done
        g = self.g
        out = q.outputs[0]
        t = g.types[out]
        mid = g.fresh_name(f"{out}_before_relu")
        g.types[mid] = t
        zp = g.add_param(f"{relu.name}_zero_point", np.array(self.params(q)[1], t.dtype.np))
        qgemm.outputs = [mid]
        return [qgemm, Node("Max", [mid, zp], [out], {}, relu.name, sources=relu.origin)], \
            [node, relu, q]
    def gemm(self, node: Node, dq: Node, q: Node | None) -> tuple[Node, list[Node]] | None:
        """QGemm of a quantized output (q given) or a float32 one."""
        g = self.g
        attrs = node.attrs
        trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        bdq = self.prod.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if bdq is None or bdq.op != "DequantizeLinear" or g.types[dq.inputs[0]].rank != 2:
            return None
        bq = _value(g, bdq.inputs[0])
        b_s = _value(g, bdq.inputs[1])
        b_zp = _value(g, bdq.inputs[2]) if len(bdq.inputs) > 2 and bdq.inputs[2] else None
        if bq is None or bq.dtype not in (np.uint8, np.int8) or bq.ndim != 2 or b_s is None \
                or (len(bdq.inputs) > 2 and bdq.inputs[2] and b_zp is None):
            return None
        n = bq.shape[0] if trans_b else bq.shape[1]
        if b_s.size > 1 and (b_s.size != n or bdq.attrs.get("axis", 1) % 2 != (0 if trans_b
                                                                               else 1)):
            return None
        a_s, _ = self.params(dq)
        step = (np.float32(a_s) * b_s.astype(np.float32)).reshape(-1)
        bias = self.bias(node, step, alpha, beta, n)
        if bias is None:
            return None
        ins = [dq.inputs[0], dq.inputs[1], zp_input(g, dq, g.types[dq.inputs[0]].dtype.np),
               bdq.inputs[0], bdq.inputs[1], zp_input(g, bdq, bq.dtype), bias]
        last = [q] if q is not None else []
        if q is not None:
            ins += [q.inputs[1], zp_input(g, q, np.uint8)]
        return Node("QGemm", ins, [(q or node).outputs[0]], {"alpha": alpha, "transA": trans_a,
                                                             "transB": trans_b}, node.name,
                    sources=tuple(s for n in [node] + last for s in n.origin)), [node] + last

    def bias(self, node: Node, step: np.ndarray, alpha: float, beta: float,
             n: int) -> str | None:
        """The int32 C param (quantized at alpha * a_scale * b_scale), "" without a bias,
        None when it cannot be fused."""
        g = self.g
        if len(node.inputs) < 3 or not node.inputs[2] or beta == 0.0:
            return ""
        b = node.inputs[2]
        if g.types[b].size not in (1, n) or g.types[b].shape[-1:] not in ((n,), (1,), ()):
            return None
        cdq = self.prod.get(b)
        if cdq is not None and cdq.op == "DequantizeLinear" and alpha == beta == 1.0:
            c, scale = _value(g, cdq.inputs[0]), _value(g, cdq.inputs[1])
            zp = _value(g, cdq.inputs[2]) if len(cdq.inputs) > 2 and cdq.inputs[2] else None
            if c is not None and c.dtype == np.int32 and scale is not None \
                    and (zp is None or not zp.any()) \
                    and np.allclose(scale.reshape(-1), step, rtol=1e-6, atol=0):
                return cdq.inputs[0]
        if cdq is not None and cdq.op == "DequantizeLinear":
            value = None
            if all(i in g.params for i in cdq.inputs if i):
                zp = _value(g, cdq.inputs[2]) if len(cdq.inputs) > 2 and cdq.inputs[2] else 0
                value = (g.params[cdq.inputs[0]].astype(np.float64) - np.asarray(zp, np.float64)) \
                    * g.params[cdq.inputs[1]].astype(np.float64)
        else:
            value = _value(g, b)
        if value is None or value.dtype.kind != "f":
            return None
        c = np.rint(beta * value.astype(np.float64).reshape(-1)
                    / (alpha * step.astype(np.float64)))
        if np.abs(c).max(initial=0) >= 2 ** 31 - 1:
            return None
        return g.add_param(f"{node.name}_bias_q", np.broadcast_to(c, (n,)).astype(np.int32))


def fuse_quantized_ops(graph: Graph, ctx=None) -> Graph:
    ops = MOVES + ("GlobalAveragePool", "AveragePool", "Gemm", "MatMul")
    if not any(n.op == "QuantizeLinear" for n in graph.nodes):
        return graph
    g = graph.copy()
    rw = _Rewrite(g)
    replace: dict[int, Node] = {}
    gone: set[int] = set()
    for node in g.nodes:
        if node.op not in ops or id(node) in gone:
            continue
        done = rw.rewrite(node)
        if done is None:
            continue
        new, replaced = done
        gone.update(id(n) for n in replaced)
        replace[id(replaced[-1])] = new          # where the Q was
    g.nodes = [m for n in g.nodes if id(n) in replace or id(n) not in gone
               for m in replace.get(id(n), [n])]
    return g
