"""A node of the graph IR: an op applied to named values (see graph.py)."""
from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

# Attribute values shared (not copied) by Node.copy: immutable, as copy.deepcopy would share them.
_IMMUTABLE = (str, int, float, complex, bytes, type(None), enum.Enum)


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    # Names of the imported graph's nodes whose work this node does (set by rewrites that
    # replace nodes; empty: just this node). Not part of the node's meaning: printing, cache
    # keys and codegen ignore it; the roofline joins fused kernels to the nodes they replaced.
    sources: tuple[str, ...] = ()

    @property
    def origin(self) -> tuple[str, ...]:
        """The imported nodes this node stands for: ``sources``, or its own name."""
        return self.sources or (self.name,)

    def copy(self) -> "Node":
        """A copy as independent as ``copy.deepcopy(node)`` (lists, dicts, arrays and subgraphs
        in the attributes are copied; immutable values shared), without deepcopy's generic
        walk: graph passes copy every node of the graph they rewrite."""
        return Node(self.op, list(self.inputs), list(self.outputs),
                    {k: _copy_attr(v) for k, v in self.attrs.items()}, self.name, self.sources)

    def __str__(self) -> str:
        return f"{self.name}: {', '.join(self.outputs)} = {self.op}({', '.join(self.inputs)})"


def _copy_attr(value: Any) -> Any:
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, list):
        return [_copy_attr(v) for v in value]
    if isinstance(value, tuple) and all(isinstance(v, _IMMUTABLE) for v in value):
        return value
    return copy.deepcopy(value)
