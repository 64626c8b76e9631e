"""The reference target: the graph run by the numpy interpreter, op by op."""
from __future__ import annotations

import numpy as np

from cnncc.ir import Graph, run_graph
from cnncc.runtime import CompiledModel, signature
from . import check_options


class ReferenceModel(CompiledModel):
    target = "reference"

    def __init__(self, graph: Graph):
        super().__init__(*signature(graph))
        self.graph = graph

    def _execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        out = run_graph(self.graph, dict(zip(self.graph.inputs, inputs)))
        return [np.array(out[name], copy=True) for name in self.graph.outputs]


def build(graph: Graph, options: dict) -> ReferenceModel:
    # threads and opt_level mean nothing to the interpreter but are accepted for every target.
    known = ("opt_level", "threads")
    check_options("reference", options, known)
    return ReferenceModel(graph)
