"""fold_dequantized: DequantizeLinear of a constant becomes the float constant it computes.

    y = DequantizeLinear(q, scale, zero_point)   with every input a param   ==>   param y

The importer keeps these nodes (ir/fold.py KEEP_QUANTIZED) so that fuse_quantized can read the
integer weights; what it did not fuse is folded here, at every opt_level (the unfused baseline
too: a quantized weight is dequantized once at compile time, as a float model's weight is
stored, not at every inference). A graph without such nodes is returned unchanged.
"""
from __future__ import annotations

from cnncc.ir import Graph
from cnncc.ir.fold import fold_node

from .fold_constants import fold_nodes


def fold_dequantized(graph: Graph, ctx=None) -> Graph:
    if not any(n.op == "DequantizeLinear" and all(i in graph.params for i in n.inputs if i)
               for n in graph.nodes):
        return graph
    return fold_nodes(graph, lambda g, node: fold_node(g, node, keep=frozenset())
                      if node.op == "DequantizeLinear" and node.outputs[0] not in g.outputs
                      else None)
