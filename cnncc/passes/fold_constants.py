"""fold_constants: evaluate at compile time every node whose inputs are all constants.

    y = Op(c1, c2, ...)   with every ci a param   ==>   param y = reference(Op)(c1, c2, ...)
    y = Shape(x)          with x statically shaped ==>   param y = shape of x

Outputs larger than FOLD_LIMIT_BYTES stay runtime nodes. The folded nodes disappear; params left
unread are dropped by eliminate_dead_code.
"""
from __future__ import annotations

from cnncc.ir import Graph
from cnncc.ir.fold import fold_node


def fold_constants(graph: Graph, ctx=None) -> Graph:
    return fold_nodes(graph, lambda g, node: fold_node(g, node))


def fold_nodes(graph: Graph, fold) -> Graph:
    """A copy of ``graph`` whose nodes ``fold(g, node)`` evaluates (a list of output values,
    or None to keep the node) are replaced by parameters."""
    g = graph.copy()
    kept = []
    for node in g.nodes:
        values = fold(g, node)
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.outputs, values):
            if name:
                g.params[name] = value
    g.nodes = kept
    return g
