"""A node of the graph IR: an op applied to named values (see graph.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    def __str__(self) -> str:
        return f"{self.name}: {', '.join(self.outputs)} = {self.op}({', '.join(self.inputs)})"
