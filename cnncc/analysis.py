"""Static figures of a graph: parameter count and floating-point operations per node.

FLOPs count a multiply-add as 2, as is usual for CNNs (so a 3x3 conv from 64 to 64 channels on a
56x56 map is 2 * 56*56 * 64 * 64*9 = 231 MFLOP). The quantized convs' integer multiply-adds are
counted the same way (operations, not floating-point ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from cnncc.ir import Graph, Node
from cnncc.ir.ops.activation_exprs import UNARY_LOWERING
from cnncc.ir.ops.fused import ACTIVATION_EPILOGUES, anchor_node

# Operations per output element: the unary ops' own count (their op-table Lowering: one, as is
# customary), one for the other elementwise ops.
_PER_OUTPUT = {
    **{op: low.flops for op, low in UNARY_LOWERING.items()},
    **dict.fromkeys(("PRelu", "Clip", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean",
                     "Pow"), 1),
}


@dataclass
class LayerStats:
    node: str
    op: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


def node_flops(graph: Graph, node: Node) -> int:
    """Floating-point operations of one node (0 for data movement)."""
    out = graph.types[node.outputs[0]] if node.outputs and node.outputs[0] in graph.types else None
    if out is None:
        return 0
    in0 = graph.types[node.inputs[0]] if node.inputs and node.inputs[0] else None
    if node.op in ACTIVATION_EPILOGUES:     # the anchor, then its activation on every output
        act = node.attrs.get("activation", "")
        return node_flops(graph, anchor_node(node)) + out.size * _PER_OUTPUT.get(act, 0)
    if node.op == "DwPwConvNCHWc":     # the depthwise conv, then the 1x1 conv on its output
        wdw, wpw = graph.types[node.inputs[1]].shape, graph.types[node.inputs[3]].shape
        pix = prod(out.shape[2:-1]) * out.shape[0]
        return 2 * pix * (wdw[0] * prod(wdw[2:]) + wpw[0] * wpw[1])
    if node.op == "ConvNCHWc":        # blocked output: count the real channels only
        w = graph.types[node.inputs[1]].shape
        return 2 * out.shape[0] * prod(out.shape[2:-1]) * w[0] * prod(w[1:])
    if node.op in ("QLinearConv", "QConv", "QConvNCHWc"):      # integer multiply-adds, W input 3
        w = graph.types[node.inputs[3]].shape
        pix = prod(out.shape[2:-1] if node.op == "QConvNCHWc" else out.shape[2:])
        return 2 * out.shape[0] * pix * w[0] * prod(w[1:])
    if node.op in ("Conv", "FusedConv", "ConvTranspose", "DeformConv"):
        w = graph.types[node.inputs[1]].shape
        # Conv: every output element sums Cin/g * prod(k) products. ConvTranspose: every input
        # element scatters into Cout/g * prod(k) outputs.
        if node.op == "ConvTranspose":
            return 2 * in0.size * w[1] * prod(w[2:])
        return 2 * out.size * prod(w[1:])
    if node.op in ("LocallyConnected2d", "TiledConv2d"):      # W [S1, S2, OC, C, KH, KW]
        return 2 * out.size * prod(graph.types[node.inputs[1]].shape[3:])
    if node.op == "Maxout":
        return in0.size
    if node.op in ("Gemm", "MatMul"):
        k = in0.shape[-1]
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            k = in0.shape[0]
        return 2 * out.size * k
    if node.op in ("MaxPool", "AveragePool", "LpPool", "PoolNCHWc"):
        return out.size * prod(node.attrs.get("kernel_shape", [1]))
    if node.op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        return in0.size
    if node.op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization"):
        return 2 * out.size
    if node.op in ("Softmax", "LogSoftmax"):
        return 3 * out.size
    if node.op in _PER_OUTPUT:
        return out.size * _PER_OUTPUT[node.op]
    return 0


def layer_stats(graph: Graph) -> list[LayerStats]:
    rows = []
    for n in graph.nodes:
        params = sum(graph.params[i].size for i in n.inputs
                     if i in graph.params and graph.params[i].dtype.kind == "f")
        shape = graph.types[n.outputs[0]].shape if n.outputs[0] in graph.types else ()
        rows.append(LayerStats(n.name, n.op, shape, params, node_flops(graph, n)))
    return rows


def parameter_count(graph: Graph) -> int:
    """Learned parameters: floating-point constants (integer shape constants are not weights)."""
    return sum(v.size for v in graph.params.values() if v.dtype.kind == "f")


def format_info(graph: Graph) -> str:
    """The text `cnncc info` prints: inputs/outputs, op histogram, per-layer table, totals."""
    rows = layer_stats(graph)
    lines = [f"model {graph.name}"]
    for name in graph.inputs:
        lines.append(f"  input  {name}: {graph.types[name]}")
    for name in graph.outputs:
        lines.append(f"  output {name}: {graph.types[name]}")
    hist: dict[str, int] = {}
    for n in graph.nodes:
        hist[n.op] = hist.get(n.op, 0) + 1
    lines.append("ops: " + ", ".join(f"{op} x{k}" for op, k in sorted(hist.items())))
    width = max([len(r.node) for r in rows] + [4])
    lines.append(f"{'node':<{width}}  {'op':<20} {'output':<22} {'params':>10} {'MFLOP':>10}")
    for r in rows:
        shape = "x".join(map(str, r.output_shape))
        lines.append(f"{r.node:<{width}}  {r.op:<20} {shape:<22} {r.params:>10} "
                     f"{r.flops / 1e6:>10.2f}")
    total = sum(r.flops for r in rows)
    lines.append(f"parameters: {parameter_count(graph):,}   total: {total / 1e9:.3f} GFLOP")
    return "\n".join(lines)
