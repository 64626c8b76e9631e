"""The graph IR: values named by strings, nodes applying ops, graphs holding both.

A graph is a list of nodes (kept in topological order by every pass), the names of its runtime inputs
and outputs, constant parameters (weights, folded shapes) and a type for every value. Values are plain
strings; an omitted optional input is the empty string "" (as in ONNX).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx
import numpy as np

from .dtypes import DType
from .errors import CompileError
from .node import Node
from .ops import OP_TABLE, infer_node
from .types import TensorType


@dataclass
class Graph:
    name: str = "graph"
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    types: dict[str, TensorType] = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------

    def fresh_name(self, base: str) -> str:
        """A value or node name not used yet in this graph, derived from ``base``."""
        used = self._used_names()
        if base not in used:
            return base
        i = 1
        while f"{base}_{i}" in used:
            i += 1
        return f"{base}_{i}"

    def _used_names(self) -> set[str]:
        used = set(self.types) | set(self.params) | set(self.inputs)
        used.update(n.name for n in self.nodes)
        return used

    def add_input(self, name: str, ttype: TensorType) -> str:
        self.inputs.append(name)
        self.types[name] = ttype
        return name

    def add_param(self, name: str, value: np.ndarray) -> str:
        name = self.fresh_name(name)
        # np.require keeps 0-d scalars 0-d (np.ascontiguousarray would make them shape [1]).
        value = np.require(np.asarray(value), requirements="C")
        self.params[name] = value
        self.types[name] = TensorType(DType.from_numpy(value.dtype), value.shape)
        return name

    def add_node(self, op: str, inputs: Iterable[str], attrs: dict | None = None,
                 name: str | None = None, outputs: Iterable[str] | int = 1) -> list[str]:
        """Append a node, infer its output types, and return its output names."""
        from .ops import infer_node

        name = self.fresh_name(name or op.lower())
        if isinstance(outputs, int):
            outputs = [self.fresh_name(f"{name}_out{i}" if outputs > 1 else name)
                       for i in range(outputs)]
        node = Node(op, list(inputs), list(outputs), dict(attrs or {}), name)
        for out, ttype in zip(node.outputs, infer_node(node, self.types, self.params)):
            if out:
                self.types[out] = ttype
        self.nodes.append(node)
        return node.outputs

    def copy(self) -> "Graph":
        """A deep copy of the structure; parameter arrays are shared (passes replace, never mutate)."""
        return Graph(self.name, [n.copy() for n in self.nodes], list(self.inputs), list(self.outputs),
                     dict(self.params), dict(self.types))

    # ---- queries ------------------------------------------------------------------------------

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    def users(self) -> dict[str, list[Node]]:
        use: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    use.setdefault(i, []).append(n)
        return use

    def to_networkx(self) -> nx.DiGraph:
        """Node-level dependency graph: an edge a -> b when b reads a value a writes."""
        dg = nx.DiGraph()
        prod_idx = {o: idx for idx, n in enumerate(self.nodes) for o in n.outputs if o}
        for idx, n in enumerate(self.nodes):
            dg.add_node(idx)
            for i in n.inputs:
                if i in prod_idx:
                    dg.add_edge(prod_idx[i], idx)
        return dg

    def toposort(self) -> "Graph":
        """Reorder nodes topologically (stable: ties keep their current order)."""
        dg = self.to_networkx()
        try:
            order = list(nx.lexicographical_topological_sort(dg))
        except nx.NetworkXUnfeasible:
            raise CompileError(f"graph '{self.name}' has a cycle: {self._cycle_text(dg)}") from None
        self.nodes = [self.nodes[i] for i in order]
        return self

    def _cycle_text(self, dg: nx.DiGraph) -> str:
        cycle = nx.find_cycle(dg)
        return " -> ".join(self.nodes[a].name for a, _ in cycle) + f" -> {self.nodes[cycle[0][0]].name}"

    # ---- verification -------------------------------------------------------------------------

    def verify(self) -> "Graph":
        """Check structure and types; raise CompileError naming the first problem found.

        Catches: duplicate node or value names, values defined twice, dangling inputs (read but
        never defined), outputs never produced, cycles, nodes out of topological order, unknown ops,
        and type mismatches (recorded types that re-inference disagrees with).
        """
        defined: set[str] = set()
        for name in list(self.inputs) + list(self.params):
            if name in defined:
                raise CompileError(f"value '{name}' is defined twice (input/parameter)")
            defined.add(name)
            if name not in self.types:
                raise CompileError(f"value '{name}' has no type")
        for name, value in self.params.items():
            t = self.types[name]
            if t.shape != tuple(value.shape) or t.dtype.np != value.dtype:
                raise CompileError(f"parameter '{name}' is {value.dtype}{list(value.shape)} but "
                                   f"its type says {t}")
        node_names: set[str] = set()
        for n in self.nodes:
            if not n.name or n.name in node_names:
                raise CompileError(f"duplicate or empty node name '{n.name}'", n.name)
            node_names.add(n.name)
            for o in n.outputs:
                if o and o in defined:
                    raise CompileError(f"value '{o}' is defined twice", n.name)
            defined.update(o for o in n.outputs if o)
        dg = self.to_networkx()
        if not nx.is_directed_acyclic_graph(dg):
            raise CompileError(f"graph '{self.name}' has a cycle: {self._cycle_text(dg)}")
        seen = set(self.inputs) | set(self.params)
        for n in self.nodes:
            if n.op not in OP_TABLE:
                raise CompileError(f"unknown op '{n.op}'", n.name)
            for i in n.inputs:
                if i and i not in defined:
                    raise CompileError(f"input '{i}' is never defined (dangling)", n.name)
                if i and i not in seen:
                    raise CompileError(f"input '{i}' is used before it is defined "
                                       "(nodes out of topological order)", n.name)
            inferred = infer_node(n, self.types, self.params)
            for o, t in zip(n.outputs, inferred):
                if o and self.types.get(o) != t:
                    raise CompileError(f"type mismatch on '{o}': recorded {self.types.get(o)}, "
                                       f"inferred {t}", n.name)
            seen.update(o for o in n.outputs if o)
        for o in self.outputs:
            if o not in defined:
                raise CompileError(f"graph output '{o}' is never produced")
        return self

    # ---- printing -----------------------------------------------------------------------------

    def __str__(self) -> str:
        return format_graph(self)


def _format_attr(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor<{value.dtype}{list(value.shape)}>"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_attr(v) for v in value) + "]"
    if isinstance(value, Graph):
        return f"graph<{value.name}>"
    return repr(value) if isinstance(value, str) else str(value)


def format_graph(graph: Graph) -> str:
    """Deterministic text form: same graph, same text (attributes sorted, params summarized)."""
    lines = [f"graph {graph.name}("]
    for name in graph.inputs:
        lines.append(f"    %{name}: {graph.types[name]}")
    lines.append(") {")
    for name in sorted(graph.params):
        lines.append(f"  param %{name}: {graph.types[name]}")
    for n in graph.nodes:
        outs = ", ".join(f"%{o}: {graph.types[o]}" if o in graph.types else f"%{o}"
                         for o in n.outputs)
        ins = ", ".join(f"%{i}" if i else "_" for i in n.inputs)
        attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in sorted(n.attrs.items()))
        attrs = f" {{{attrs}}}" if attrs else ""
        lines.append(f"  {outs} = {n.op}({ins}){attrs}  # {n.name}")
    lines.append(f"  return {', '.join('%' + o for o in graph.outputs)}")
    lines.append("}")
    return "\n".join(lines)
