"""recognize_activations: the elementwise subgraphs exporters write for one activation become that
activation's single op, so it is one kernel (and fuse_epilogue can put it in a conv epilogue).

    Mul(x, Sigmoid(x))                                    ==>  Swish(x)          (SiLU, alpha 1)
    Mul(x, HardSigmoid(x; 1/6, 1/2)), Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6), ...
                                                          ==>  HardSwish(x)
    Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5), ...    ==>  Gelu(x)           (erf form)
    0.5 x (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3))), ...  ==>  Gelu(x; tanh)
    Mul(x, Tanh(Softplus(x)))                             ==>  Mish(x)

Recognised by what the subgraph computes, not by its spelling (operand order, Div by c or Mul by
1/c, Pow(x, 3) or x*x*x): a subgraph is the nodes reachable from one value x through elementwise
ops whose other inputs are scalar constants, with one output read outside; its function of x is
evaluated with the op table's references in float64 on sample points in [-12, 12] and compared
with each candidate's reference (relative 1e-5: exporters round the constants to float32).
Interior values must have no reader outside the subgraph and must not be graph outputs.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Graph, Node
from cnncc.ir.ops.registry import run_reference

# Elementwise ops a pattern may be built from; their other inputs must be scalar constants.
_PARTS = ("Mul", "Div", "Add", "Sub", "Pow", "Sigmoid", "HardSigmoid", "Clip", "Tanh", "Erf",
          "Softplus", "Relu", "Max", "Min", "Neg", "Exp", "Log")
# The replacements (op, attributes), tried in order.
CANDIDATES = (("Swish", {}), ("HardSwish", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}),
              ("Mish", {}))
_MAX_NODES = 12
_SAMPLES = np.concatenate([np.linspace(-12.0, 12.0, 193), [-1e-3, 1e-3, 0.3, -0.7, 2.9, 3.1]])


def _reference(op: str, attrs: dict, x: np.ndarray) -> np.ndarray:
    return run_reference(Node(op, ["x"], ["y"], attrs), [x])[0]


_WANT = [(op, attrs, _reference(op, attrs, _SAMPLES)) for op, attrs in CANDIDATES]


def _scalar_const(g: Graph, name: str) -> bool:
    return name in g.params and g.params[name].size == 1 and g.params[name].dtype.kind == "f"


def _closure(g: Graph, x: str, users: dict[str, list[Node]]) -> list[Node]:
    """The nodes computed from x alone (x, their own outputs, scalar constants), in graph order."""
    inside: set[str] = {x}
    nodes: list[Node] = []
    frontier = [x]
    while frontier and len(nodes) < _MAX_NODES:
        v = frontier.pop()
        for u in users.get(v, []):
            if u in nodes or u.op not in _PARTS or len(u.outputs) != 1:
                continue
            if all(i in inside or _scalar_const(g, i) for i in u.inputs if i):
                nodes.append(u)
                inside.add(u.outputs[0])
                frontier.append(u.outputs[0])
    order = {id(n): k for k, n in enumerate(g.nodes)}
    return sorted(nodes, key=lambda n: order[id(n)])


def _evaluate(g: Graph, x: str, nodes: list[Node]) -> np.ndarray | None:
    vals = {x: _SAMPLES}
    with np.errstate(all="ignore"):
        for n in nodes:
            args = [vals.get(i, g.params[i].astype(np.float64) if i in g.params else None)
                    if i else None for i in n.inputs]
            vals[n.outputs[0]] = np.asarray(run_reference(n, args)[0], np.float64)
    return vals[nodes[-1].outputs[0]]


def _ancestors(root: Node, nodes: list[Node]) -> list[Node]:
    prod = {n.outputs[0]: n for n in nodes}
    keep, stack = {id(root)}, [root]
    while stack:
        for i in stack.pop().inputs:
            p = prod.get(i)
            if p is not None and id(p) not in keep:
                keep.add(id(p))
                stack.append(p)
    return [n for n in nodes if id(n) in keep]


def _match(g: Graph, x: str, users: dict[str, list[Node]]) -> tuple[list[Node], str, dict] | None:
    closure = _closure(g, x, users)
    outputs = set(g.outputs)
    t = g.types.get(x)
    if t is None or t.dtype is not DType.float32:
        return None
    for root in reversed(closure):              # the largest subgraph first
        part = _ancestors(root, closure)
        if len(part) < 2 or g.types[root.outputs[0]] != t:
            continue
        members = {id(n) for n in part}
        inner = [n.outputs[0] for n in part if n is not root]
        if any(v in outputs or any(id(u) not in members for u in users.get(v, []))
               for v in inner):
            continue
        got = _evaluate(g, x, part)
        for op, attrs, want in _WANT:
            if np.allclose(got, want, rtol=1e-5, atol=1e-7, equal_nan=False):
                return part, op, attrs
    return None


def recognize_activations(graph: Graph, ctx=None) -> Graph:
    g = graph.copy()
    users = g.users()
    taken: set[int] = set()
    replace: dict[int, Node] = {}
    for x in [*g.inputs, *(o for n in g.nodes for o in n.outputs if o)]:
        if len(users.get(x, [])) < 2:           # every pattern reads x twice
            continue
        m = _match(g, x, users)
        if m is None or any(id(n) in taken for n in m[0]):
            continue
        part, op, attrs = m
        root = part[-1]
        taken.update(id(n) for n in part)
        origin = tuple(dict.fromkeys(s for n in part for s in n.origin))
        replace[id(root)] = Node(op, [x], list(root.outputs), dict(attrs), root.name, origin)
        for n in part:
            if n is not root:
                g.types.pop(n.outputs[0], None)
    g.nodes = [replace.get(id(n), n) for n in g.nodes if id(n) not in taken or id(n) in replace]
    return g
