"""canonicalize: remove ops that compute nothing at inference, merge chains of reshapes, spell
a Sum as the Adds the later passes know.

    y = Identity(x) | Dropout(x)          ==>  uses of y read x
    z = Reshape(Reshape(x, s1), s2)       ==>  z = Reshape(x, s2)       (s2 has no 0 or -1 left
    z = Flatten(x)                        ==>  z = Reshape(x, shape(z))  that refers to the middle)
    y = Sum(a, b, c, ...)                 ==>  y = Add(Add(a, b), c) ...  (same order, same
                                                broadcasting: a residual Sum fuses like an Add)

When y is a graph output and x is not renamable (a graph input, a param or another output), the
Identity stays: the output needs a buffer of its own.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import Graph, Node
from cnncc.ir.rewrite import AnyValue, Builder, Match, Op, Param, Rule, apply_rules

_NO_OPS = ("Identity", "Dropout")


def _is_noop(node: Node) -> bool:
    # Dropout's optional mask output is a value somebody may read: only the plain form is a no-op.
    return node.op in _NO_OPS and len([o for o in node.outputs if o]) == 1


def _remove_noops(g: Graph) -> Graph:
    rename: dict[str, str] = {}
    kept = []
    producers = g.producers()
    outputs = set(g.outputs)
    for node in g.nodes:
        node.inputs = [rename.get(i, i) for i in node.inputs]
        if not _is_noop(node):
            kept.append(node)
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if dst not in outputs:
            rename[dst] = src
            g.types.pop(dst, None)
            continue
        prod = producers.get(src)
        if prod is None or src in outputs:
            kept.append(node)          # the output must stay a distinct value
            continue
        # Let the producer write the graph output directly; later readers of src read dst.
        prod.outputs = [dst if o == src else o for o in prod.outputs]
        rename[src] = dst
        g.types.pop(src, None)
    g.nodes = kept
    for node in g.nodes:
        node.inputs = [rename.get(i, i) for i in node.inputs]
    return g


def _static_reshape(b: Builder, m: Match) -> bool:
    root = m.root
    out = b.graph.types[root.outputs[0]]
    shape = b.param(f"{root.name}_shape", np.array(out.shape, dtype=np.int64))
    b.node("Reshape", [m.values["x"], shape], {}, outputs=list(root.outputs))
    return True


def _sum_to_adds(b: Builder, m: Match) -> bool:
    terms = list(m.root.inputs)
    if len(terms) < 2 or not all(terms):
        return False
    acc = terms[0]
    for i, term in enumerate(terms[1:], 2):
        last = i == len(terms)
        acc = b.node("Add", [acc, term], {},
                     outputs=list(m.root.outputs) if last else None)[0]
    return True


RULES = [
    Rule("reshape_reshape", Op("Reshape", Op("Reshape", AnyValue("x"), Param("s1")), Param("s2")),
         _static_reshape),
    Rule("flatten_to_reshape", Op("Flatten", AnyValue("x")), _static_reshape),
    Rule("sum_to_adds", Op("Sum", exact=False), _sum_to_adds),
]


def canonicalize(graph: Graph, ctx=None) -> Graph:
    return apply_rules(_remove_noops(graph.copy()), RULES)
