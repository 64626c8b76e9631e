"""The reference interpreter: runs a graph node by node with the numpy references of the op table."""
from __future__ import annotations

import numpy as np

from .errors import CompileError
from .graph import Graph
from .ops import run_reference


def run_graph(graph: Graph, feeds: dict[str, np.ndarray],
              keep: bool = False) -> dict[str, np.ndarray]:
    """Evaluate ``graph`` on ``feeds`` (one array per graph input).

    Returns the graph outputs by name; with ``keep=True`` every intermediate value too (used by
    `cnncc verify` and the per-pass equivalence tests). Each result is checked against the type
    inference recorded in the graph, so an op whose reference and shape rule disagree is caught.
    """
    env: dict[str, np.ndarray] = dict(graph.params)
    for name in graph.inputs:
        env[name] = feeds[name]
    users = graph.users()
    remaining = {k: len(v) for k, v in users.items()}
    outputs = set(graph.outputs)
    for node in graph.nodes:
        args = [env[i] if i else None for i in node.inputs]
        types = [graph.types[i] if i else None for i in node.inputs]
        results = run_reference(node, args, types)
        for name, value in zip(node.outputs, results):
            if not name:
                continue
            expect = graph.types.get(name)
            if expect is not None and (value.shape != expect.shape
                                       or value.dtype != expect.dtype.np):
                raise CompileError(f"reference of {node.op} produced {value.dtype}"
                                   f"{list(value.shape)}, inferred {expect}", node.name)
            env[name] = value
        if not keep:   # free intermediates once their last user ran
            for i in node.inputs:
                if i in remaining:
                    remaining[i] -= 1
                    if remaining[i] == 0 and i not in outputs and i not in graph.params \
                            and i not in graph.inputs:
                        env.pop(i, None)
    if keep:
        return env
    return {name: env[name] for name in graph.outputs}
