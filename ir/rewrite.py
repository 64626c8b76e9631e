"""Pattern rewriting over the graph IR: rules as data, one driver.

A rule is a pattern (a small tree of ops rooted at the node being rewritten) and a function that
builds the replacement from what the pattern bound:

    Rule("conv_bn", Op("BatchNormalization", Op("Conv", AnyValue("x"), Param("w"), Opt(Param("b")),
                                                 bind="conv"),
                       Param("scale"), Param("bias"), Param("mean"), Param("var"), bind="bn"),
         rewrite=fold)

Matched interior nodes (all but the root) must have exactly one user and not be graph outputs, so
a rewrite never duplicates work or drops a value somebody else reads. The replacement keeps the
root's output names, so no use has to be renamed and types stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .graph import Graph, Node
from .ops import infer_node


@dataclass(frozen=True)
class AnyValue:
    """Matches any value (present input); binds its name."""
    bind: str


@dataclass(frozen=True)
class Param:
    """Matches a constant value (a graph param); binds its name."""
    bind: str


@dataclass(frozen=True)
class Opt:
    """Matches an omitted optional input too (binds None then)."""
    inner: "Pattern"


@dataclass(frozen=True)
class Op:
    """Matches a node of one of ``ops`` whose leading inputs match ``inputs`` (extra inputs are
    allowed only when ``exact`` is False)."""
    ops: str | tuple[str, ...]
    inputs: tuple["Pattern", ...] = ()
    bind: str | None = None
    exact: bool = True
    where: Callable[[Node], bool] | None = None

    def __init__(self, ops, *inputs, bind=None, exact=True, where=None):
        object.__setattr__(self, "ops", (ops,) if isinstance(ops, str) else tuple(ops))
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "bind", bind)
        object.__setattr__(self, "exact", exact)
        object.__setattr__(self, "where", where)


Pattern = AnyValue | Param | Opt | Op


@dataclass
class Match:
    root: Node
    nodes: dict[str, Node] = field(default_factory=dict)      # bind -> matched node
    values: dict[str, str | None] = field(default_factory=dict)  # bind -> value name
    interior: list[Node] = field(default_factory=list)         # matched nodes other than root

    def param(self, graph: Graph, bind: str) -> np.ndarray | None:
        name = self.values.get(bind)
        return None if name is None else graph.params[name]


@dataclass
class Rule:
    name: str
    pattern: Op
    rewrite: Callable[["Builder", Match], bool]   # adds replacement nodes; False = declined


class Builder:
    """Collects the replacement nodes of one rewrite, inferring types as they are added."""

    def __init__(self, graph: Graph, root: Node, replaced: list[Node]):
        self.graph = graph
        self.root = root
        self.nodes: list[Node] = []
        # Names of the nodes being replaced are free again (a folded conv keeps its name).
        gone = {id(n) for n in replaced}
        self._names = {n.name for n in graph.nodes if id(n) not in gone}
        # Every replacement node does (part of) the work of all the replaced ones.
        self.sources = tuple(dict.fromkeys(s for n in replaced for s in n.origin))

    def param(self, base: str, value: np.ndarray) -> str:
        return self.graph.add_param(base, value)

    def node(self, op: str, inputs: Iterable[str], attrs: dict | None = None,
             outputs: list[str] | None = None, name: str | None = None) -> list[str]:
        base = name or f"{self.root.name}_{op.lower()}"
        node_name = base
        i = 1
        while node_name in self._names:
            node_name, i = f"{base}_{i}", i + 1
        self._names.add(node_name)
        if outputs is None:
            outputs = [self.graph.fresh_name(node_name)]
        node = Node(op, list(inputs), list(outputs), dict(attrs or {}), node_name,
                    self.sources)
        for out, t in zip(node.outputs, infer_node(node, self.graph.types, self.graph.params)):
            if out:
                self.graph.types[out] = t
        self.nodes.append(node)
        return node.outputs


def match(graph: Graph, node: Node, pattern: Op, producers: dict[str, Node],
          users: dict[str, list[Node]]) -> Match | None:
    return _Matcher(graph, producers, users, Match(root=node)).run(node, pattern)


class _Matcher:
    """One match attempt. A class, not two nested functions calling each other: such closures
    form a reference cycle holding ``graph`` (and through it every parameter array) until the
    cyclic garbage collector runs, which kept the imported weights of a large model resident
    after lowering had released them."""

    def __init__(self, graph: Graph, producers: dict[str, Node], users: dict[str, list[Node]],
                 m: Match):
        self.graph, self.producers, self.users, self.m = graph, producers, users, m
        self.outputs = set(graph.outputs)

    def run(self, node: Node, pattern: Op) -> Match | None:
        return self.m if self.node_match(node, pattern) else None

    def value(self, name: str, pat: Pattern) -> bool:
        m = self.m
        if isinstance(pat, Opt):
            if not name:
                if isinstance(pat.inner, (AnyValue, Param)):
                    m.values[pat.inner.bind] = None
                return True
            return self.value(name, pat.inner)
        if not name:
            return False
        if isinstance(pat, AnyValue):
            m.values[pat.bind] = name
            return True
        if isinstance(pat, Param):
            if name not in self.graph.params:
                return False
            m.values[pat.bind] = name
            return True
        prod = self.producers.get(name)
        if prod is None or len(self.users.get(name, [])) != 1 or name in self.outputs:
            return False
        if not self.node_match(prod, pat):
            return False
        m.interior.append(prod)
        return True

    def node_match(self, n: Node, pat: Op) -> bool:
        if n.op not in pat.ops or (pat.where is not None and not pat.where(n)):
            return False
        if len(n.inputs) < len(pat.inputs) and not all(
                isinstance(p, Opt) for p in pat.inputs[len(n.inputs):]):
            return False
        if pat.exact and len([i for i in n.inputs[len(pat.inputs):] if i]):
            return False
        for i, p in enumerate(pat.inputs):
            if not self.value(n.inputs[i] if i < len(n.inputs) else "", p):
                return False
        if pat.bind:
            self.m.nodes[pat.bind] = n
        return True


def apply_rules(graph: Graph, rules: list[Rule]) -> Graph:
    """Apply ``rules`` until none matches; returns a new graph (the input is not modified).

    Each round rewrites the first match in node order. A node's match depends only on itself,
    its producers and the user counts of their values, so after a rewrite the nodes before the
    first one that is new or reads a value the rewrite touched (an input of a replaced or new
    node) still do not match: the next round scans from there, not from the start."""
    g = graph.copy()
    start = 0
    while True:
        producers, users = g.producers(), g.users()
        hit = None
        for node in g.nodes[start:]:
            for rule in rules:
                m = match(g, node, rule.pattern, producers, users)
                if m is None:
                    continue
                b = Builder(g, node, [*m.interior, node])
                if rule.rewrite(b, m):
                    hit = ([*m.interior, node], b.nodes, node)
                    break
            if hit is not None:
                break
        if hit is None:
            return remove_unused_params(g)
        old, new, root = hit
        touched = {v for n in old + new for v in n.inputs if v}
        _replace(g, old, new, root)
        fresh = {id(n) for n in new}
        start = next((k for k, n in enumerate(g.nodes)
                      if id(n) in fresh or any(v in touched for v in n.inputs)), 0)


def _replace(g: Graph, old: list[Node], new: list[Node], root: Node) -> None:
    gone = {id(n) for n in old}
    at = next(i for i, n in enumerate(g.nodes) if n is root)
    kept_before = [n for n in g.nodes[:at] if id(n) not in gone]
    kept_after = [n for n in g.nodes[at + 1:] if id(n) not in gone]
    g.nodes = kept_before + new + kept_after
    live = {o for n in g.nodes for o in n.outputs} | set(g.inputs) | set(g.params)
    for n in old:
        for o in n.outputs:
            if o not in live:
                g.types.pop(o, None)


def remove_unused_params(g: Graph) -> Graph:
    used = {i for n in g.nodes for i in n.inputs} | set(g.outputs)
    for name in [p for p in g.params if p not in used]:
        del g.params[name]
        g.types.pop(name, None)
    return g
