"""eliminate_dead_code: drop nodes and params nothing reads.

    n: outs = Op(...)   with no output read by a node or the graph   ==>   (removed)
"""
from __future__ import annotations

from cnncc.ir import Graph
from cnncc.ir.rewrite import remove_unused_params


def eliminate_dead_code(graph: Graph, ctx=None) -> Graph:
    g = graph.copy()
    live = set(g.outputs)
    kept = []
    for node in reversed(g.nodes):          # reverse topological: users before producers
        if any(o in live for o in node.outputs if o):
            kept.append(node)
            live.update(i for i in node.inputs if i)
        else:
            for o in node.outputs:
                g.types.pop(o, None)
    g.nodes = kept[::-1]
    return remove_unused_params(g)
